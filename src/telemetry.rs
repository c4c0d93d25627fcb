//! Logging with `tracing`: human-readable for a terminal, JSON for
//! production. Every line logged while serving a request carries that
//! request's id (from the span opened in `api::middleware`).
//!
//! Privacy rule: log lines carry ids, types, codes, counts and timings, never
//! names, NHS numbers, dates of birth or any free text from a resource.
//! Validation messages can quote the sender's values, so they are returned
//! to the sender but never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Later calls do nothing (tests start many
/// gateways in one process).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(true);
    let _already_set = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
