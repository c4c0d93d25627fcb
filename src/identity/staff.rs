//! Staff accounts: the people of the social prescribing service who sign in with a
//! username and password (`sprig staff add`), their roles, and sign-in to a staff token.
//!
//! Invariants:
//! - there is no default account and no default password anywhere: an account exists only
//!   when an operator adds one, with a password of at least [`MIN_PASSWORD_CHARS`]
//!   characters;
//! - passwords are kept only as Argon2id PHC strings (RustCrypto `argon2`, its default
//!   parameters, a fresh random salt each), and neither a password nor a hash is logged
//!   or put in an error message;
//! - sign-in answers alike, and takes about as long, for an unknown user, a disabled
//!   account and a wrong password, so it does not tell which usernames exist;
//! - hashing is CPU-heavy: the async functions run it on the blocking pool.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use super::token::{IssuedToken, TokenError, TokenService};
use crate::fhir::Instant;
use crate::store::{StaffAccountRow, Store, StoreError};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The longest password accepted (hashing cost is linear in it).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What a person may do in the service (issue 17's three roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaffRole {
    /// Works referrals assigned to them (or unassigned): outcomes, notes, stage changes.
    LinkWorker,
    /// Every referral of the service, assignment, reports.
    ServiceManager,
    /// Deliveries, dead letters, the endpoint and client registries, audit, metrics.
    Administrator,
}

impl StaffRole {
    /// Every role.
    pub const ALL: [StaffRole; 3] = [
        StaffRole::LinkWorker,
        StaffRole::ServiceManager,
        StaffRole::Administrator,
    ];

    /// The role's code, as stored, in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::LinkWorker => "link_worker",
            StaffRole::ServiceManager => "service_manager",
            StaffRole::Administrator => "administrator",
        }
    }

    /// Parses a role's code.
    pub fn parse(code: &str) -> Option<Self> {
        StaffRole::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

/// A staff account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffAccount {
    /// The sign-in name: the person's stable id, the `by` of what they do.
    pub username: String,
    /// The name shown to people.
    pub display_name: String,
    /// The role.
    pub role: StaffRole,
    /// Whether the account may sign in (and its tokens work).
    pub enabled: bool,
}

/// Why a staff account could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    /// The username is not usable.
    #[error(
        "username {0:?}: use 1 to 64 lower-case letters, digits and . _ @ -, starting with a letter or digit"
    )]
    BadUsername(String),
    /// The display name is empty or too long.
    #[error("the display name must be 1 to 200 characters")]
    BadDisplayName,
    /// The password is too short or too long.
    #[error(
        "the password must be at least {MIN_PASSWORD_CHARS} characters (and at most {MAX_PASSWORD_BYTES} bytes)"
    )]
    WeakPassword,
    /// The username is taken.
    #[error("a staff account named {0:?} already exists")]
    Exists(String),
    /// No such account.
    #[error("no staff account named {0:?}")]
    NotFound(String),
    /// A stored row holds something Sprig never writes.
    #[error("staff account {0:?} is corrupt in the database")]
    Corrupt(String),
    /// Hashing failed (a defect).
    #[error("cannot hash the password: {0}")]
    Hashing(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why sign-in failed. Deliberately one answer for every wrong-credentials case.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown user, disabled account or wrong password: the caller cannot tell which.
    #[error("the username or password is wrong, or the account is disabled")]
    WrongCredentials,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token could not be made.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The hashing task failed (a defect).
    #[error("sign-in failed: {0}")]
    Internal(String),
}

/// Checks a username: 1–64 of `a-z 0-9 . _ @ -`, starting with a letter or digit.
pub fn check_username(username: &str) -> Result<(), StaffError> {
    let ok = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
        && username
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StaffError::BadUsername(username.chars().take(80).collect()))
    }
}

/// Checks a password's length.
pub fn check_password(password: &str) -> Result<(), StaffError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(StaffError::WeakPassword);
    }
    Ok(())
}

/// An Argon2id PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, StaffError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| StaffError::Hashing(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`. An unreadable hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash no password is known for, checked when there is no account so that an unknown
/// username costs as long as a wrong password.
static DECOY_HASH: LazyLock<Option<String>> = LazyLock::new(|| {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).ok()?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hash_password(&password).ok()
});

fn account_of(row: StaffAccountRow) -> Result<StaffAccount, StaffError> {
    let role =
        StaffRole::parse(&row.role).ok_or_else(|| StaffError::Corrupt(row.username.clone()))?;
    Ok(StaffAccount {
        username: row.username,
        display_name: row.display_name,
        role,
        enabled: row.enabled,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())
}

/// Adds an enabled account. The password is checked and hashed here and not kept.
pub async fn add_account(
    store: &Store,
    username: &str,
    display_name: &str,
    role: StaffRole,
    password: String,
) -> Result<StaffAccount, StaffError> {
    check_username(username)?;
    let display_name = display_name.trim();
    if display_name.is_empty() || display_name.chars().count() > 200 {
        return Err(StaffError::BadDisplayName);
    }
    check_password(&password)?;
    let password_hash = blocking(move || hash_password(&password))
        .await
        .map_err(StaffError::Hashing)??;
    let now = Instant::now().to_fhir();
    let row = StaffAccountRow {
        username: username.to_owned(),
        display_name: display_name.to_owned(),
        role: role.as_str().to_owned(),
        password_hash,
        enabled: true,
        created_at: now.clone(),
        updated_at: now,
    };
    if !store.insert_staff_account(&row).await? {
        return Err(StaffError::Exists(username.to_owned()));
    }
    tracing::info!(username, role = role.as_str(), "staff account added");
    account_of(row)
}

/// Every account, by username.
pub async fn list_accounts(store: &Store) -> Result<Vec<StaffAccount>, StaffError> {
    store
        .staff_accounts()
        .await?
        .into_iter()
        .map(account_of)
        .collect()
}

/// One account, if it exists.
pub async fn account(store: &Store, username: &str) -> Result<Option<StaffAccount>, StaffError> {
    store
        .staff_account(username)
        .await?
        .map(account_of)
        .transpose()
}

/// Someone a referral can be assigned to: an enabled link worker or service manager,
/// with a staff account or signed in at least once through the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignable {
    /// The username referrals are assigned to.
    pub username: String,
    /// The name shown.
    pub display_name: String,
    /// Signed in through the identity provider (no staff account).
    pub from_provider: bool,
}

fn may_hold_caseload(role: StaffRole) -> bool {
    matches!(role, StaffRole::LinkWorker | StaffRole::ServiceManager)
}

/// Everyone referrals can be assigned to, by username: enabled staff accounts of a
/// caseload-holding role, and the identity provider's people (`console_people`, the
/// role of their last sign-in) whom no administrator has made inactive and who have no
/// staff account of the same username (an account decides: a disabled one bars the
/// person, as at sign-in).
pub async fn assignable(store: &Store) -> Result<Vec<Assignable>, StaffError> {
    let accounts = list_accounts(store).await?;
    let mut people: Vec<Assignable> = accounts
        .iter()
        .filter(|a| a.enabled && may_hold_caseload(a.role))
        .map(|a| Assignable {
            username: a.username.clone(),
            display_name: a.display_name.clone(),
            from_provider: false,
        })
        .collect();
    for person in store.provider_people().await? {
        let caseload = StaffRole::parse(&person.role).is_some_and(may_hold_caseload);
        if caseload
            && person.inactive.is_none()
            && !accounts.iter().any(|a| a.username == person.username)
        {
            people.push(Assignable {
                username: person.username,
                display_name: person.display_name,
                from_provider: true,
            });
        }
    }
    people.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(people)
}

/// Whether `username` can be assigned referrals (`assignable`'s rule): who, if so.
pub async fn assignable_one(
    store: &Store,
    username: &str,
) -> Result<Option<Assignable>, StaffError> {
    Ok(assignable(store)
        .await?
        .into_iter()
        .find(|a| a.username == username))
}

/// How a person signs in, and whether that still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonSource {
    /// A Sprig staff account (`sprig staff add`): disabled ones cannot sign in.
    Account {
        /// Whether the account may sign in.
        enabled: bool,
    },
    /// Through the identity provider, with no staff account of the same username.
    Provider {
        /// Their last sign-in (Unix seconds).
        last_signed_in: i64,
        /// When an administrator made them inactive (Unix seconds), and who did.
        inactive: Option<(i64, String)>,
    },
}

/// Someone the console knows: a staff account or a person who signed in through the
/// identity provider, and whether referrals can be assigned to them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Their username (what referrals and audit rows name).
    pub username: String,
    /// The name shown.
    pub display_name: String,
    /// Their role (`None`: a provider's role code Sprig does not know).
    pub role: Option<StaffRole>,
    /// How they sign in.
    pub source: PersonSource,
    /// Whether referrals can be assigned to them (`assignable`'s rule).
    pub assignable: bool,
}

/// Everyone the console knows, by username: every staff account, and every person who
/// signed in through the identity provider without one. Nobody is ever removed, so the
/// usernames in the audit and the timelines keep their names.
pub async fn people(store: &Store) -> Result<Vec<Person>, StaffError> {
    let accounts = list_accounts(store).await?;
    let mut people: Vec<Person> = accounts
        .iter()
        .map(|a| Person {
            username: a.username.clone(),
            display_name: a.display_name.clone(),
            role: Some(a.role),
            source: PersonSource::Account { enabled: a.enabled },
            assignable: a.enabled && may_hold_caseload(a.role),
        })
        .collect();
    for person in store.provider_people().await? {
        if accounts.iter().any(|a| a.username == person.username) {
            continue;
        }
        let role = StaffRole::parse(&person.role);
        people.push(Person {
            assignable: role.is_some_and(may_hold_caseload) && person.inactive.is_none(),
            username: person.username,
            display_name: person.display_name,
            role,
            source: PersonSource::Provider {
                last_signed_in: person.last_signed_in,
                inactive: person.inactive,
            },
        });
    }
    people.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(people)
}

/// Why a person's assignability could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum AssignableError {
    /// No one of that username has signed in through the identity provider.
    #[error("no one named {0:?} has signed in through the identity provider")]
    NotFound(String),
    /// A staff account of that username decides: disable it instead.
    #[error(
        "{0:?} has a staff account, which decides: disable it with `sprig staff disable` instead"
    )]
    HasAccount(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StaffError),
}

/// Stops a person who signed in through the identity provider being assignable
/// (`assignable = false`), or makes them assignable again. `by` is who decided (kept
/// with the row). Referrals already assigned to them stay so, for a manager to
/// reassign; they can still sign in if the provider lets them (the provider decides
/// that), and a later sign-in does not make them assignable again.
pub async fn set_assignable(
    store: &Store,
    username: &str,
    assignable: bool,
    by: &str,
    now: i64,
) -> Result<(), AssignableError> {
    if account(store, username).await?.is_some() {
        return Err(AssignableError::HasAccount(username.to_owned()));
    }
    let inactive = (!assignable).then_some((now, by));
    if !store
        .set_provider_person_inactive(username, inactive)
        .await
        .map_err(StaffError::from)?
    {
        return Err(AssignableError::NotFound(username.to_owned()));
    }
    tracing::info!(
        username,
        assignable,
        by,
        "assignability of a person changed"
    );
    Ok(())
}

/// Disables an account: it cannot sign in, and its tokens stop working at once.
pub async fn disable_account(store: &Store, username: &str) -> Result<(), StaffError> {
    if !store.set_staff_enabled(username, false).await? {
        return Err(StaffError::NotFound(username.to_owned()));
    }
    tracing::info!(username, "staff account disabled");
    Ok(())
}

/// Checks a username and password: the account, if they are right for an enabled one.
/// As slow for an unknown username as for a wrong password (a decoy hash is checked).
pub async fn check_credentials(
    store: &Store,
    username: &str,
    password: String,
) -> Result<StaffAccount, SignInError> {
    let row = match check_username(username) {
        Ok(()) => store.staff_account(username).await?,
        Err(_) => None,
    };
    let hash = row.as_ref().map(|r| r.password_hash.clone());
    let matches = blocking(move || match hash {
        Some(hash) => verify_password(&password, &hash),
        None => {
            // As long as a real check, and never a match.
            if let Some(decoy) = DECOY_HASH.as_deref() {
                let _ = verify_password(&password, decoy);
            }
            false
        }
    })
    .await
    .map_err(SignInError::Internal)?;
    let Some(row) = row.filter(|r| matches && r.enabled) else {
        tracing::info!(username_known = false, "staff sign-in refused");
        return Err(SignInError::WrongCredentials);
    };
    account_of(row).map_err(|_| SignInError::WrongCredentials)
}

/// Checks a username and password and, if they are right for an enabled account, issues
/// a staff token. `now` is Unix seconds.
pub async fn sign_in(
    store: &Store,
    tokens: &TokenService,
    username: &str,
    password: String,
    now: i64,
) -> Result<(StaffAccount, IssuedToken), SignInError> {
    let account = check_credentials(store, username, password).await?;
    let token = tokens.issue_staff(&account.username, account.role.as_str(), now)?;
    tracing::info!(username = %account.username, token_id = %token.jti, "staff signed in");
    Ok((account, token))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::token::{TokenKind, TokenSecret};
    use crate::store::test_support::open_store;

    #[test]
    fn roles_round_trip() {
        for role in StaffRole::ALL {
            assert_eq!(StaffRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(StaffRole::parse("admin"), None);
    }

    #[test]
    fn usernames_and_passwords_are_checked() {
        for good in ["amara", "a.okafor", "amara@service.nhs.uk", "lw-01"] {
            check_username(good).expect(good);
        }
        for bad in ["", "Amara", "-amara", "a b", &"a".repeat(65), "amara\n"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short-pass1").is_err());
        check_password("twelve chars").expect("12");
        check_password("ünïcödé pässwörd").expect("counted in characters");
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let first = hash_password("correct horse battery").expect("hash");
        let second = hash_password("correct horse battery").expect("hash");
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "a fresh salt each time");
        assert!(verify_password("correct horse battery", &first));
        assert!(!verify_password("correct horse battery!", &first));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[tokio::test]
    async fn accounts_sign_in_and_stop_when_disabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path()).await;
        let tokens = TokenService::new(
            &TokenSecret::from_bytes(&[3; 32]).expect("secret"),
            "sprig",
            "sprig",
            Duration::from_secs(300),
        );
        let password = "a long enough password".to_string();
        let account = add_account(
            &store,
            "amara",
            " Amara Okafor ",
            StaffRole::LinkWorker,
            password.clone(),
        )
        .await
        .expect("added");
        assert_eq!(account.display_name, "Amara Okafor");
        assert!(matches!(
            add_account(
                &store,
                "amara",
                "Again",
                StaffRole::Administrator,
                password.clone()
            )
            .await,
            Err(StaffError::Exists(_))
        ));
        assert!(matches!(
            add_account(
                &store,
                "bo",
                "Bo",
                StaffRole::Administrator,
                "too short".into()
            )
            .await,
            Err(StaffError::WeakPassword)
        ));
        let stored = store
            .staff_account("amara")
            .await
            .expect("read")
            .expect("row");
        assert!(!stored.password_hash.contains(&password));

        let now = 1_800_000_000;
        let (signed_in, token) = sign_in(&store, &tokens, "amara", password.clone(), now)
            .await
            .expect("signed in");
        assert_eq!(signed_in.role, StaffRole::LinkWorker);
        let claims = tokens.verify(&token.access_token, now).expect("valid");
        assert_eq!(claims.kind, TokenKind::Staff);
        assert_eq!(claims.sub, "amara");

        for (username, password) in [
            ("amara", "the wrong password"),
            ("nobody", "a long enough password"),
            ("Not A Username", "a long enough password"),
        ] {
            assert!(
                matches!(
                    sign_in(&store, &tokens, username, password.into(), now).await,
                    Err(SignInError::WrongCredentials)
                ),
                "{username}"
            );
        }
        disable_account(&store, "amara").await.expect("disabled");
        assert!(matches!(
            sign_in(&store, &tokens, "amara", password, now).await,
            Err(SignInError::WrongCredentials)
        ));
        assert!(matches!(
            disable_account(&store, "nobody").await,
            Err(StaffError::NotFound(_))
        ));
        let listed = list_accounts(&store).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].enabled);
        store.close().await;
    }
}
