//! `sprig staff add|list|disable`: the service's staff accounts, kept in the database;
//! `sprig staff people|inactive|active`: who can be assigned referrals, and stopping
//! (or restarting) a person who signs in through the identity provider being assignable.
//! There is no default account: each is added here, with a password read from standard
//! input (or `--password-file`), never from the command line where `ps` would show it.
//!
//! Exit status: 0 done, 1 refused (a taken username, a short password) or failed,
//! 2 bad usage or configuration.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{DatabaseArgs, open_store};
use crate::identity::staff::{self, MIN_PASSWORD_CHARS, PersonSource, StaffError, StaffRole};

/// Arguments of `sprig staff`.
#[derive(Debug, Args)]
pub struct StaffArgs {
    #[command(subcommand)]
    command: StaffCommand,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
enum StaffCommand {
    /// Add a staff account; the password is read from standard input (one line) or
    /// --password-file.
    Add {
        /// Sign-in name: lower-case letters, digits and . _ @ - (the person's stable id).
        #[arg(long)]
        username: String,
        /// The name shown to people.
        #[arg(long)]
        name: String,
        /// link_worker, service_manager or administrator.
        #[arg(long, value_parser = parse_role)]
        role: StaffRole,
        /// Read the password from this file (its first line) instead of standard input.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// List the accounts (no passwords or hashes).
    List,
    /// Disable an account: it cannot sign in, and its tokens stop working at once.
    Disable {
        /// The account's username.
        username: String,
    },
    /// List everyone the console knows (staff accounts and people who signed in through
    /// the identity provider) and whether referrals can be assigned to them.
    People,
    /// Stop a person who signs in through the identity provider being assignable. They
    /// stay in the audit and keep the referrals they hold, which managers see flagged
    /// to reassign.
    Inactive {
        /// Their username.
        username: String,
    },
    /// Make a person who signs in through the identity provider assignable again.
    Active {
        /// Their username.
        username: String,
    },
}

/// Who changed a person's assignability from here, as the people page shows it.
const CLI_ACTOR: &str = "the command line";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `sprig staff active|inactive USERNAME`.
async fn change_assignable(
    store: &crate::store::Store,
    username: &str,
    assignable: bool,
) -> ExitCode {
    let verb = if assignable { "active" } else { "inactive" };
    match staff::set_assignable(store, username, assignable, CLI_ACTOR, unix_now()).await {
        Ok(()) if assignable => {
            println!("{username} can be assigned referrals again");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!(
                "{username} can no longer be assigned referrals (those they hold stay theirs until a manager reassigns them)"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sprig staff {verb}: {error}");
            ExitCode::from(1)
        }
    }
}

/// One line of `sprig staff people`: username, role, how they sign in, assignable or
/// why not, name (tab-separated).
fn person_line(person: &staff::Person) -> String {
    let source = match &person.source {
        PersonSource::Account { enabled: true } => "account".to_owned(),
        PersonSource::Account { enabled: false } => "account (disabled)".to_owned(),
        PersonSource::Provider { .. } => "identity provider".to_owned(),
    };
    let assignable = match (&person.source, person.assignable) {
        (_, true) => "assignable".to_owned(),
        (
            PersonSource::Provider {
                inactive: Some((_, by)),
                ..
            },
            false,
        ) => {
            format!("inactive (by {by})")
        }
        (PersonSource::Account { enabled: false }, false) => "not assignable (disabled)".to_owned(),
        (_, false) => "not assignable (role)".to_owned(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}",
        person.username,
        person.role.map_or("unknown", StaffRole::as_str),
        source,
        assignable,
        person.display_name
    )
}

fn parse_role(text: &str) -> Result<StaffRole, String> {
    StaffRole::parse(text).ok_or_else(|| {
        format!("unknown role {text:?}: use link_worker, service_manager or administrator")
    })
}

/// The first line of `reader`, without its line ending.
fn first_line(reader: impl Read) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(reader).read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Runs `sprig staff`.
pub fn run(args: StaffArgs) -> ExitCode {
    let StaffArgs { command, database } = args;
    // The password is read before anything else, so a prompt-less pipe works.
    let password = match &command {
        StaffCommand::Add { password_file, .. } => {
            let read = match password_file {
                Some(path) => std::fs::File::open(path).and_then(first_line),
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!(
                            "password (at least {MIN_PASSWORD_CHARS} characters; it will be shown as typed, so prefer --password-file or a pipe):"
                        );
                    }
                    first_line(std::io::stdin())
                }
            };
            match read {
                Ok(password) => Some(password),
                Err(error) => {
                    eprintln!("sprig staff add: cannot read the password: {error}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprig staff: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let store = match open_store(&database).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let code = match command {
            StaffCommand::Add {
                username,
                name,
                role,
                ..
            } => {
                let password = password.unwrap_or_default();
                match staff::add_account(&store, &username, &name, role, password).await {
                    Ok(account) => {
                        println!(
                            "added {} ({}, {})",
                            account.username,
                            account.display_name,
                            account.role.as_str()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(error @ StaffError::Store(_)) => {
                        eprintln!("sprig staff add: {error}");
                        ExitCode::from(1)
                    }
                    Err(error) => {
                        eprintln!("sprig staff add: {error}");
                        ExitCode::from(1)
                    }
                }
            }
            StaffCommand::List => match staff::list_accounts(&store).await {
                Ok(accounts) => {
                    for account in accounts {
                        println!(
                            "{}\t{}\t{}\t{}",
                            account.username,
                            account.role.as_str(),
                            if account.enabled {
                                "enabled"
                            } else {
                                "disabled"
                            },
                            account.display_name
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("sprig staff list: {error}");
                    ExitCode::from(1)
                }
            },
            StaffCommand::Disable { username } => {
                match staff::disable_account(&store, &username).await {
                    Ok(()) => {
                        println!("disabled {username}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("sprig staff disable: {error}");
                        ExitCode::from(1)
                    }
                }
            }
            StaffCommand::People => match staff::people(&store).await {
                Ok(people) => {
                    for person in &people {
                        println!("{}", person_line(person));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("sprig staff people: {error}");
                    ExitCode::from(1)
                }
            },
            StaffCommand::Inactive { username } => {
                change_assignable(&store, &username, false).await
            }
            StaffCommand::Active { username } => change_assignable(&store, &username, true).await,
        };
        store.close().await;
        code
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line_without_its_ending() {
        assert_eq!(
            first_line(&b"correct horse battery\r\nsecond"[..]).expect("read"),
            "correct horse battery"
        );
        assert_eq!(first_line(&b""[..]).expect("read"), "");
        assert!(parse_role("administrator").is_ok());
        assert!(parse_role("root").is_err());
    }
}
