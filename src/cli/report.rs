//! `sprig report outcomes --from 2026-04-01 --to 2026-06-30 [--period quarter]
//! [--format csv|json|fhir|svg|detail-csv]` and `sprig report service --from --to`: the
//! reports `GET /api/reports/...` serves, read straight from the database, written to
//! standard output. `detail-csv` carries NHS numbers: whoever runs it holds the database.
//!
//! Exit status: 0 done, 1 failed, 2 bad usage or configuration.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use time::Date;

use super::{DatabaseArgs, open_store};
use crate::config::{Overrides, Settings};
use crate::outcomes::Outcomes;
use crate::outcomes::report::{self, Period};
use crate::outcomes::schedule::uk_date;

/// Arguments of `sprig report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// The outcome metrics per period and practice.
    Outcomes {
        /// First day (2026-04-01), inclusive.
        #[arg(long, value_parser = parse_date)]
        from: Date,
        /// Last day, inclusive.
        #[arg(long, value_parser = parse_date)]
        to: Date,
        /// Group by month or quarter.
        #[arg(long, value_enum, default_value_t = PeriodArg::Quarter)]
        period: PeriodArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
    },
    /// The service summary (received, reasons, practices, acceptance, first contact).
    Service {
        /// First day, inclusive.
        #[arg(long, value_parser = parse_date)]
        from: Date,
        /// Last day, inclusive.
        #[arg(long, value_parser = parse_date)]
        to: Date,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeriodArg {
    Month,
    Quarter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Counts as CSV.
    Csv,
    /// Counts and distributions as JSON.
    Json,
    /// A FHIR Bundle of Measure and MeasureReport.
    Fhir,
    /// A chart.
    Svg,
    /// Every person behind every count, with ids and NHS numbers.
    DetailCsv,
}

fn parse_date(text: &str) -> Result<Date, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, &format).map_err(|_| format!("{text:?} is not a date (2026-04-01)"))
}

/// Runs `sprig report`.
pub fn run(args: ReportArgs) -> ExitCode {
    let ReportArgs { command, database } = args;
    let settings = match Settings::load(database.config.as_deref(), &Overrides::default()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("sprig: {error}");
            return ExitCode::from(2);
        }
    };
    let outcomes = match &settings.outcomes_dir {
        Some(dir) => Outcomes::load_dir(dir).map_err(|e| e.to_string()),
        None => Outcomes::shipped().map_err(|e| e.to_string()),
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(error) => {
            eprintln!("sprig: outcome definitions: {error}");
            return ExitCode::from(2);
        }
    };
    let pcns = match &settings.pcns_file {
        Some(path) => match crate::outcomes::pcn::PcnDirectory::load(path) {
            Ok(pcns) => pcns,
            Err(error) => {
                eprintln!("sprig: PCN directory: {error}");
                return ExitCode::from(2);
            }
        },
        None => crate::outcomes::pcn::PcnDirectory::default(),
    };
    let (from, to) = match &command {
        ReportCommand::Outcomes { from, to, .. } | ReportCommand::Service { from, to } => {
            (*from, *to)
        }
    };
    if to < from {
        eprintln!("sprig report: --to must be on or after --from");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprig report: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let store = match open_store(&database).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let today = uk_date(time::OffsetDateTime::now_utc());
        // Streamed a page of referrals at a time through the builders: memory follows the
        // people counted in the range, not every referral ever received. Every referral: a
        // measurement may be dated before its referral was received.
        let output = match command {
            ReportCommand::Outcomes { period, format, .. } => {
                let period = match period {
                    PeriodArg::Month => Period::Month,
                    PeriodArg::Quarter => Period::Quarter,
                };
                let mut builder = report::OutcomesBuilder::new(
                    &outcomes.metrics,
                    &outcomes.catalogue,
                    period,
                    from,
                    to,
                    today,
                )
                .with_complexity(&outcomes.complexity);
                let read = store.each_referral_facts(|f| builder.add(f)).await;
                store.close().await;
                if let Err(error) = read {
                    eprintln!("sprig report: {error}");
                    return ExitCode::from(1);
                }
                let report = builder.finish().with_pcns(&pcns);
                match format {
                    Format::Csv => report.to_csv(),
                    Format::Json => serde_json::to_string_pretty(&report).unwrap_or_default(),
                    Format::Fhir => report.to_fhir("urn:sprig").to_string(),
                    Format::Svg => report.to_svg(),
                    Format::DetailCsv => report.detail_csv(),
                }
            }
            ReportCommand::Service { .. } => {
                let mut summary = report::SummaryBuilder::new(from, to);
                let read = store.each_referral_facts(|f| summary.add(f)).await;
                store.close().await;
                if let Err(error) = read {
                    eprintln!("sprig report: {error}");
                    return ExitCode::from(1);
                }
                serde_json::to_string_pretty(&summary.finish()).unwrap_or_default()
            }
        };
        if std::io::stdout()
            .lock()
            .write_all(output.as_bytes())
            .is_err()
        {
            return ExitCode::from(1);
        }
        ExitCode::SUCCESS
    })
}
