//! The `sprig` command line: parses arguments, runs a subcommand (`serve`,
//! `validate`, `conformance`, `staff`, `audit`, `report`, and the operator's `migrate`,
//! `backup`, `restore`, `purge`, `erase`), and decides the exit status (0 success, 1 runtime failure
//! or invalid files, 2 bad usage or configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod audit;
mod conformance;
mod operate;
mod report;
mod staff;
mod validate;

use crate::app::{Application, shutdown_signal};
use crate::config::{Overrides, Settings};
use crate::store::{Store, StoreOptions};
use crate::telemetry;

/// Sprig: the social prescribing referral gateway (FHIR R4).
#[derive(Debug, Parser)]
#[command(name = "sprig", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate FHIR JSON files and folders, as the gateway would on a create.
    Validate(validate::ValidateArgs),
    /// Run FHIR TestScripts against a FHIR server (`sprig conformance run`).
    Conformance(conformance::ConformanceArgs),
    /// Staff accounts: add, list, disable.
    Staff(staff::StaffArgs),
    /// The audit log: export.
    Audit(audit::AuditArgs),
    /// Outcome and service reports (`sprig report outcomes --from --to`).
    Report(report::ReportArgs),
    /// Apply pending database migrations and exit (`--check`: only report them).
    Migrate(operate::MigrateArgs),
    /// Copy a SQLite database to a new file, consistently, while a server writes to it.
    Backup(operate::BackupArgs),
    /// Restore a SQLite backup as the database (refuses a database in use).
    Restore(operate::RestoreArgs),
    /// Remove what `[retention]` no longer keeps (`--dry-run`: count it).
    Purge(operate::PurgeArgs),
    /// Erase one referral and everything that belongs to it (recorded in the audit).
    Erase(operate::EraseArgs),
}

/// Where the database is, for the subcommands that open it without serving.
#[derive(Debug, Args)]
struct DatabaseArgs {
    /// SQLite file path or sqlite: URL [default: from the config, ./sprig.db]
    #[arg(
        long,
        global = true,
        env = "SPRIG_DATABASE",
        value_name = "PATH_OR_URL"
    )]
    database: Option<String>,
    /// TOML config file [default: ./sprig.toml if present]
    #[arg(long, global = true, env = "SPRIG_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The settings, with `--database` applied, or says why not on standard error and
/// gives the exit status.
fn load_settings(args: &DatabaseArgs) -> Result<Settings, ExitCode> {
    let overrides = Overrides {
        database: args.database.clone(),
        ..Overrides::default()
    };
    Settings::load(args.config.as_deref(), &overrides).map_err(|error| {
        eprintln!("sprig: {error}");
        ExitCode::from(2)
    })
}

/// How a command opens the store the settings name: as the server does, with one reader.
fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        max_read_connections: 1,
        ..crate::app::store_options(settings)
    }
}

/// Opens the store the settings name (creating and migrating it if needed), or says why
/// not on standard error and gives the exit status.
async fn open_store(args: &DatabaseArgs) -> Result<Store, ExitCode> {
    let settings = load_settings(args)?;
    Store::open(&store_options(&settings))
        .await
        .map_err(|error| {
            eprintln!("sprig: cannot open the database: {error}");
            ExitCode::from(1)
        })
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080]
    #[arg(long, env = "SPRIG_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// SQLite file path or sqlite: URL [default: ./sprig.db]
    #[arg(long, env = "SPRIG_DATABASE", value_name = "PATH_OR_URL")]
    database: Option<String>,
    /// Endpoint registry (where to deliver updates) [default: none: updates are kept for pull]
    #[arg(long, env = "SPRIG_ENDPOINTS", value_name = "FILE")]
    endpoints: Option<PathBuf>,
    /// TOML config file [default: ./sprig.toml if present]
    #[arg(long, env = "SPRIG_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Validate(args) => validate::run(args),
        Command::Conformance(args) => conformance::run(args),
        Command::Staff(args) => staff::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Report(args) => report::run(args),
        Command::Migrate(args) => operate::migrate(args),
        Command::Backup(args) => operate::backup(args),
        Command::Restore(args) => operate::restore(args),
        Command::Purge(args) => operate::purge(args),
        Command::Erase(args) => operate::erase(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let started = StdInstant::now();
    let overrides = Overrides {
        listen: args.listen,
        database: args.database,
        endpoints: args.endpoints,
    };
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("sprig: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprig: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_server(settings, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sprig stopped with an error");
            eprintln!("sprig: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_server(settings: Settings, started: StdInstant) -> anyhow::Result<()> {
    let database = settings.database.clone();
    let app = Application::build(settings)
        .await
        .context("start-up failed")?;
    tracing::info!(
        address = %app.local_addr(),
        database = %database,
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on {}://{}",
        app.scheme(),
        app.local_addr()
    );
    app.run_until_stopped(shutdown_signal())
        .await
        .context("server error")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings' default page caches are the store's (neither module imports the other).
    #[test]
    fn the_default_sqlite_caches_are_the_stores() {
        let options = store_options(&Settings::default());
        assert_eq!(options.sqlite_caches, crate::store::SqliteCaches::default());
    }
}
