//! The operator's commands: `sprig migrate [--check]`, `sprig backup PATH`,
//! `sprig restore PATH [--force]`, `sprig purge [--dry-run]` and
//! `sprig erase REFERRAL_ID --reason CODE [--reference REF]` (README, Operating Sprig).
//!
//! Exit status: 0 done (for `migrate --check`: up to date), 1 refused, failed, or (for
//! `migrate --check`) migrations pending, 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{DatabaseArgs, load_settings, store_options};
use crate::app::{purge_past_retention, retention_cutoffs};
use crate::config::Settings;
use crate::fhir::Instant;
use crate::store::admin::{self, AdminError, MigrationState};
use crate::store::retention::{ErasureReason, PurgeKind, erasure_detail, is_case_reference};
use crate::store::{AuditRecord, Store};

/// Arguments of `sprig migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Only report the pending migrations: exit 0 when there are none, 1 when there are.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Arguments of `sprig backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write (it must not exist).
    path: PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Arguments of `sprig restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file to restore (from `sprig backup`).
    path: PathBuf,
    /// Replace the database when it exists (never while a server has it open).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Arguments of `sprig purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Count what would go, per kind, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Arguments of `sprig erase`.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The referral's id (its ServiceRequest's id).
    referral_id: String,
    /// Why: right-to-erasure, sent-in-error, wrong-patient or legal-order.
    #[arg(long, value_parser = parse_reason)]
    reason: ErasureReason,
    /// The case's reference (the data protection officer's or the court's number):
    /// letters, digits and -_./: only, at most 64.
    #[arg(long, value_parser = parse_reference)]
    reference: Option<String>,
    #[command(flatten)]
    database: DatabaseArgs,
}

fn parse_reason(text: &str) -> Result<ErasureReason, String> {
    ErasureReason::parse(text).ok_or_else(|| {
        format!(
            "unknown reason {text:?}: use one of {}",
            ErasureReason::codes()
        )
    })
}

fn parse_reference(text: &str) -> Result<String, String> {
    if is_case_reference(text) {
        Ok(text.to_owned())
    } else {
        Err("a reference is 1 to 64 letters, digits and -_./: (a case number, never a name)".into())
    }
}

/// Runs `future` on a small runtime, giving the exit status.
/// Loads the settings for `database`, then runs `command` to its exit status on a
/// runtime of its own: every operator command starts this way.
fn with_settings<F, Fut>(database: &DatabaseArgs, command: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let settings = match load_settings(database) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command(settings)),
        Err(error) => {
            eprintln!("sprig: cannot start the async runtime: {error}");
            ExitCode::from(1)
        }
    }
}

/// Opens the store, runs `command` on it, and closes it (whatever `command` answered),
/// so a command's last writes are checkpointed before the process ends.
async fn with_store<F>(settings: &Settings, command: F) -> ExitCode
where
    F: AsyncFnOnce(&Store) -> ExitCode,
{
    let store = match Store::open(&store_options(settings)).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("sprig: cannot open the database: {error}");
            return ExitCode::from(1);
        }
    };
    let status = command(&store).await;
    store.close().await;
    status
}

/// The exit status of an administrative step: `done` prints what it did; a failure is
/// printed as it is.
fn finish<T>(result: Result<T, AdminError>, done: impl FnOnce(T)) -> ExitCode {
    match result {
        Ok(value) => {
            done(value);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sprig: {error}");
            ExitCode::from(1)
        }
    }
}

fn names(state: &MigrationState) -> String {
    state
        .pending
        .iter()
        .map(|m| format!("{:04} ({})", m.version, m.description))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `sprig migrate`.
pub fn migrate(args: MigrateArgs) -> ExitCode {
    with_settings(&args.database, async |settings| {
        if !args.check {
            return finish(admin::migrate(&store_options(&settings)).await, |before| {
                if before.pending.is_empty() {
                    println!("up to date: nothing to apply");
                } else {
                    println!(
                        "applied {} migrations: {}",
                        before.pending.len(),
                        names(&before)
                    );
                }
            });
        }
        let state = match admin::migration_state(&settings.database).await {
            Ok(state) => state,
            Err(error) => {
                eprintln!("sprig: {error}");
                return ExitCode::from(1);
            }
        };
        if !state.is_compatible() {
            eprintln!(
                "sprig: this Sprig cannot use the database: {}",
                admin::incompatible(&state)
            );
            return ExitCode::from(1);
        }
        if state.pending.is_empty() {
            println!(
                "up to date: {} migrations applied, none pending",
                state.applied.len()
            );
            return ExitCode::SUCCESS;
        }
        println!(
            "{} migrations pending: {}",
            state.pending.len(),
            names(&state)
        );
        ExitCode::from(1)
    })
}

/// Runs `sprig backup`.
pub fn backup(args: BackupArgs) -> ExitCode {
    with_settings(&args.database, async |settings| {
        finish(
            admin::backup(&settings.database, &args.path).await,
            |report| {
                println!(
                    "backed up to {} ({} bytes, {} migrations applied)",
                    args.path.display(),
                    report.bytes,
                    report.migrations.applied.len()
                );
            },
        )
    })
}

/// Runs `sprig restore`.
pub fn restore(args: RestoreArgs) -> ExitCode {
    with_settings(&args.database, async |settings| {
        finish(
            admin::restore(&args.path, &settings.database, args.force).await,
            |state| {
                println!("restored {} as {}", args.path.display(), settings.database);
                if !state.pending.is_empty() {
                    println!(
                        "{} migrations pending (applied at the next start, or by sprig migrate): {}",
                        state.pending.len(),
                        names(&state)
                    );
                }
            },
        )
    })
}

/// Runs `sprig purge`.
pub fn purge(args: PurgeArgs) -> ExitCode {
    with_settings(&args.database, async |settings| {
        let cutoffs = retention_cutoffs(&settings.retention, Instant::now());
        if cutoffs.is_empty() {
            println!("[retention] keeps everything (every period is 0): nothing to purge");
            return ExitCode::SUCCESS;
        }
        with_store(&settings, async |store| {
            if args.dry_run {
                count_purge(store, cutoffs).await
            } else {
                run_purge(store, &settings).await
            }
        })
        .await
    })
}

/// `sprig purge --dry-run`: what each kind of retention would remove, counted.
async fn count_purge(store: &Store, cutoffs: Vec<(PurgeKind, Instant)>) -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for (kind, cutoff) in cutoffs {
        match store.purge_counts(kind, cutoff).await {
            Ok(counts) => {
                for (what, count) in counts {
                    println!(
                        "{}: {what}: {count} (before {})",
                        kind.name(),
                        cutoff.to_fhir()
                    );
                }
            }
            Err(error) => {
                eprintln!("sprig: cannot count {}: {error}", kind.name());
                status = ExitCode::from(1);
            }
        }
    }
    status
}

async fn run_purge(store: &Store, settings: &Settings) -> ExitCode {
    match purge_past_retention(store, &settings.retention, "sprig purge").await {
        Ok(done) => {
            for (kind, removed) in done {
                let summary = removed.summary();
                let summary = if summary.is_empty() {
                    "nothing"
                } else {
                    &summary
                };
                println!("{}: {summary}", kind.name());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sprig: purge failed: {error}");
            ExitCode::from(1)
        }
    }
}

/// Runs `sprig erase`.
pub fn erase(args: EraseArgs) -> ExitCode {
    with_settings(&args.database, async |settings| {
        with_store(&settings, async |store| erase_with(store, &args).await).await
    })
}

async fn erase_with(store: &Store, args: &EraseArgs) -> ExitCode {
    let done = async {
        let mut tx = store.begin_write().await?;
        let Some(removed) = tx.erase_referral(&args.referral_id).await? else {
            return Ok(None);
        };
        let record = AuditRecord {
            client_id: Some("sprig erase".into()),
            resource_type: Some("ServiceRequest".into()),
            resource_id: Some(args.referral_id.clone()),
            referral_ids: vec![args.referral_id.clone()],
            detail: Some(erasure_detail(
                args.reason,
                args.reference.as_deref(),
                &removed,
            )),
            ..AuditRecord::new("erase", 200)
        };
        tx.record_audit(&record).await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(Some(removed))
    };
    match done.await {
        Ok(Some(removed)) => {
            println!(
                "erased referral {}: {}",
                args.referral_id,
                removed.summary()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("sprig: no referral {}", args.referral_id);
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("sprig: erasure failed, nothing was removed: {error}");
            ExitCode::from(1)
        }
    }
}
