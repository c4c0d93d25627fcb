//! `sprig audit export --since DATE [--until DATE] --format ndjson`: the audit log as one
//! JSON object per line on standard output, oldest first, read in pages so a long log
//! never sits in memory. The rows hold ids, never patient data.
//!
//! Exit status: 0 done, 1 failed, 2 bad usage or configuration.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{DatabaseArgs, open_store};
use crate::fhir::Instant;
use crate::store::{AuditEventRow, AuditFilter, AuditPage};

/// Rows read per page.
const PAGE: u32 = 1000;

/// Arguments of `sprig audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write audit rows to standard output.
    Export {
        /// From this day (2026-12-01, UTC) or instant (RFC 3339), inclusive.
        #[arg(long, value_parser = parse_moment)]
        since: Instant,
        /// Up to this day or instant, exclusive.
        #[arg(long, value_parser = parse_moment)]
        until: Option<Instant>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// One JSON object per line.
    Ndjson,
}

/// A day (`2026-12-01`, midnight UTC) or an RFC 3339 instant.
fn parse_moment(text: &str) -> Result<Instant, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    Instant::parse(&full).map_err(|_| format!("{text:?} is not a date (2026-12-01) or an instant"))
}

/// One row as exported.
fn row_json(row: &AuditEventRow) -> Value {
    let r = &row.record;
    json!({
        "seq": row.seq,
        "recorded": r.recorded_at.to_fhir(),
        "client_id": r.client_id,
        "ods_code": r.ods_code,
        "staff_username": r.staff_username,
        "staff_role": r.staff_role,
        "proxy_id": r.proxy_id,
        "end_user_ods": r.end_user_ods,
        "peer_address": r.peer_address,
        "interaction": r.interaction,
        "resource_type": r.resource_type,
        "resource_id": r.resource_id,
        "search_params": r.search_params,
        "patient_ids": r.patient_ids,
        "referral_ids": r.referral_ids,
        "status": r.status,
        "outcome": r.outcome.code(),
        "request_id": r.request_id,
        "correlation_id": r.correlation_id,
        "message_id": r.message_id,
        "ignored_end_user_header": r.ignored_end_user_header,
        "detail": r.detail,
    })
}

/// Runs `sprig audit`.
pub fn run(args: AuditArgs) -> ExitCode {
    let AuditArgs { command, database } = args;
    let AuditCommand::Export {
        since,
        until,
        format: ExportFormat::Ndjson,
    } = command;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprig audit: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let store = match open_store(&database).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let filter = AuditFilter {
            since: Some(since),
            before: until,
            ..AuditFilter::default()
        };
        let stdout = std::io::stdout();
        let mut after = None;
        let mut code = ExitCode::SUCCESS;
        loop {
            let rows = match store
                .audit_events(&filter, AuditPage { after, limit: PAGE })
                .await
            {
                Ok(rows) => rows,
                Err(error) => {
                    eprintln!("sprig audit export: {error}");
                    code = ExitCode::from(1);
                    break;
                }
            };
            let mut out = stdout.lock();
            for row in &rows {
                if writeln!(out, "{}", row_json(row)).is_err() {
                    // Standard output closed (| head): stop quietly.
                    store.close().await;
                    return ExitCode::SUCCESS;
                }
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE as usize => after = Some(last.seq),
                _ => break,
            }
        }
        store.close().await;
        code
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditRecord;

    #[test]
    fn days_and_instants_parse() {
        assert_eq!(
            parse_moment("2026-12-01").expect("day").to_fhir(),
            "2026-12-01T00:00:00.000Z"
        );
        assert!(parse_moment("2026-12-01T10:00:00+01:00").is_ok());
        assert!(parse_moment("yesterday").is_err());
    }

    #[test]
    fn a_row_exports_as_one_json_object() {
        let row = AuditEventRow {
            seq: 7,
            record: AuditRecord {
                client_id: Some("gp-a".into()),
                search_params: vec!["patient".into()],
                ..AuditRecord::new("search-type", 200)
            },
        };
        let value = row_json(&row);
        assert_eq!(value["seq"], 7);
        assert_eq!(value["outcome"], "0");
        assert_eq!(value["search_params"], json!(["patient"]));
        assert!(!value.to_string().contains('\n'));
    }
}
