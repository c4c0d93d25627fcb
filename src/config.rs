//! Settings: built-in defaults, then `sprig.toml` (or the `--config` file),
//! then `SPRIG_*` environment variables, then command-line flags.
//!
//! Every key is optional. Nested keys are set from the environment with a
//! double underscore: `SPRIG_LIMITS__MAX_BODY_BYTES=1048576`. Unknown keys
//! are an error, so a misspelt setting is noticed rather than ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use std::collections::BTreeMap;

use crate::fhir::ResourceType;
use crate::fhir::json::MAX_SUPPORTED_DEPTH;
use crate::validation::profile::{NoticeLevel, ReportLevel};
use crate::validation::size::FieldLimits;

/// The config file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "sprig.toml";

/// The largest `limits.body_budget_bytes` (the budget is kept in KiB permits).
const MAX_BODY_BUDGET: u64 = 1 << 40;

/// Settings could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A named config file does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// Asked to listen beyond this machine with no authentication configured.
    #[error(
        "refusing to serve on {listen} without authentication: configure auth.clients (a \
         client registry) or [auth.external] (an identity provider), listen on a loopback \
         address (127.0.0.1) for development, or set auth.mode = \"none\" if a proxy in \
         front of Sprig authenticates every request"
    )]
    Insecure {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// A value is out of range.
    #[error("invalid configuration: {key}: {reason}")]
    OutOfRange {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty when standard error is a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// All of Sprig's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// SQLite file path or `sqlite:` URL.
    pub database: String,
    /// Absolute base URL clients reach Sprig's FHIR API at (for example
    /// `https://sprig.example.org/fhir`), used in `Location` headers and the
    /// CapabilityStatement; when unset, `Location` is a path.
    pub public_base_url: Option<String>,
    /// Logging.
    pub log: LogSettings,
    /// Request limits.
    pub limits: Limits,
    /// Connections: how many, how long they may idle or dawdle.
    pub server: ServerSettings,
    /// HTTPS, and client certificates.
    pub tls: TlsSettings,
    /// SQLite tuning.
    pub sqlite: SqliteSettings,
    /// Validation choices.
    pub validation: ValidationSettings,
    /// The social prescribing service Sprig runs for.
    pub service: ServiceSettings,
    /// A folder holding `inbound.toml` and `outbound.toml` to use instead of
    /// the mappings shipped in `mappings/` (compiled into the binary).
    pub mappings_dir: Option<PathBuf>,
    /// A folder holding `measures/*.toml` and `metrics.toml` to use instead of the
    /// outcome measures and report metrics shipped in `outcomes/` (compiled in).
    pub outcomes_dir: Option<PathBuf>,
    /// The practice directory (`pcns.toml`: practice ODS code → Primary Care Network), for
    /// reports per PCN; reloaded when it changes. Without it every practice is "no PCN".
    pub pcns_file: Option<PathBuf>,
    /// Delivery of updates to GP systems.
    pub delivery: DeliverySettings,
    /// Who may call Sprig, and how they prove it.
    pub auth: AuthSettings,
    /// FHIR REST choices.
    pub fhir: FhirSettings,
    /// How long data is kept (`store::retention`): applied at start-up and hourly,
    /// and by `sprig purge`.
    pub retention: RetentionSettings,
    /// The console (`/console`): targets it shows, and signing in through the
    /// service's identity provider.
    pub console: ConsoleSettings,
}

/// How long data is kept; 0 keeps it for ever (the default: a service chooses its
/// periods from the NHS records retention schedule and its own DPIA).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a request body is kept byte for byte (resource versions' received
    /// bodies, referral submissions' bodies, message replay records).
    pub raw_bodies_days: u32,
    /// Years a closed referral (completed, declined, unable to contact, withdrawn) is
    /// kept after it closed; then it and everything that belongs to it go.
    pub closed_referrals_years: u32,
    /// Days a delivered outbox row is kept after its delivery.
    pub delivered_outbox_days: u32,
}

/// Whether Sprig asks callers who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Required when anything is configured (a client registry, an external identity
    /// provider); with nothing configured, open on a loopback address only.
    Auto,
    /// Always required, even with nothing configured (then only staff accounts can
    /// sign in).
    Required,
    /// Never asked, on any address: for a deployment that authenticates in front of
    /// Sprig. Logged as a warning at every start.
    None,
}

/// What start-up decided about authentication (`Settings::security_decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// Nothing configured and a loopback address: every request is allowed, as the
    /// developer on this machine. Said loudly at start-up.
    OpenOnLoopback,
    /// `auth.mode = "none"`: every request is allowed, on any address. A warning at
    /// every start.
    Disabled,
    /// Every request to a FHIR or `/api` route must carry valid credentials.
    Enforced,
}

/// Who may call Sprig, and how they prove it (`[auth]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `auto`, `required` or `none`.
    pub mode: AuthMode,
    /// The client registry (`[[client]]` tables, see `clients.example.toml`).
    pub clients: Option<PathBuf>,
    /// The token endpoint's URL as clients reach it: the `aud` their assertions must
    /// carry, exactly. Unset: `public_base_url` with its last segment (`/fhir`) replaced
    /// by `/auth/token`, or, on a loopback address, `http://{listen}/auth/token`.
    pub token_url: Option<String>,
    /// How long Sprig's access tokens last.
    pub token_lifetime_secs: u64,
    /// A file of at least 32 random bytes to sign Sprig's access tokens with, readable
    /// by its owner only; unset: a secret made once and kept in the database.
    pub token_secret_file: Option<PathBuf>,
    /// How often the client registry's files are checked for changes.
    pub reload_poll_secs: u64,
    /// Whether a link worker may open the detail of a referral assigned to another link
    /// worker (the worklist shows every referral either way).
    pub link_workers_see_all_referrals: bool,
    /// Tokens from an external identity provider (OIDC).
    pub external: Option<ExternalAuthSettings>,
    /// Requests a minute each machine client, and each staff session, may make (a
    /// steady rate; 0 turns rate limiting off). Over it: `429` with `Retry-After`.
    pub rate_limit_per_minute: u32,
    /// How many requests a caller may make at once above the steady rate (0: as many
    /// as `rate_limit_per_minute`).
    pub rate_limit_burst: u32,
    /// Days of audit rows kept, today (UTC) not counted: rows of older whole days are
    /// dropped at start-up and hourly after. 0: kept for ever (the default).
    pub audit_retention_days: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            clients: None,
            token_url: None,
            token_lifetime_secs: 300,
            token_secret_file: None,
            reload_poll_secs: 5,
            link_workers_see_all_referrals: false,
            external: None,
            rate_limit_per_minute: 600,
            rate_limit_burst: 100,
            audit_retention_days: 0,
        }
    }
}

/// The JWS algorithms Sprig verifies external tokens and client assertions with: the
/// asymmetric ones only (never `none` or HMAC, whose key would be public).
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// An external identity provider whose access tokens Sprig accepts (`[auth.external]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthSettings {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// The `aud` Sprig's tokens from it carry (one of).
    pub audience: String,
    /// Its keys as a JWK Set file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Its keys as a JWK Set URL (fetched at start-up, refreshed every
    /// `jwks_refresh_secs`, and when a token names a key not held).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWK Set is fetched again.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// The algorithms its tokens may use (from this list, never from the token).
    #[serde(default = "default_external_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim naming the calling client (machine tokens).
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    /// The claim naming the person (staff tokens): a stable id.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim holding the ODS code(s) the caller acts for (a string or a list).
    #[serde(default = "default_ods_claim")]
    pub ods_claim: String,
    /// The claim holding the SMART scopes (a space-separated string or a list).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// The claim holding a person's role (`link_worker`, `service_manager`,
    /// `administrator`; a string or a list, the first known one counts). A token with
    /// it is a person's; without it, a client's.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_jwks_refresh_secs() -> u64 {
    3600
}
fn default_external_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_client_id_claim() -> String {
    "azp".into()
}
fn default_username_claim() -> String {
    "sub".into()
}
fn default_ods_claim() -> String {
    "ods".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}
fn default_role_claim() -> String {
    "sprig_role".into()
}

/// Delivery of Task and Observation updates to GP systems.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// The endpoint registry (`[[endpoint]]` tables); without one, every
    /// update is kept for pull.
    pub endpoints: Option<PathBuf>,
    /// Whether this instance runs the delivery worker.
    pub enabled: bool,
    /// How often the worker looks for due messages when nothing wakes it.
    pub poll_interval_ms: u64,
    /// How long a claimed message stays claimed for its send (at least four
    /// times an endpoint's timeout plus 5 s, whatever is set, so a send in
    /// flight is never claimed again); a claim adds
    /// `delivery::worker::QUEUE_ALLOWANCE` for its wait in the worker's queue.
    pub lease_secs: u64,
    /// The wait after a first failure; it doubles after each further one.
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts (a Retry-After may ask for more).
    pub max_backoff_secs: u64,
    /// How long after the change delivery gives up and dead-letters it.
    pub max_age_secs: u64,
    /// How often the endpoint file is checked for changes.
    pub reload_poll_secs: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            endpoints: None,
            enabled: true,
            poll_interval_ms: 1000,
            lease_secs: 120,
            initial_backoff_ms: 1000,
            max_backoff_secs: 900,
            max_age_secs: 72 * 3600,
            reload_poll_secs: 5,
        }
    }
}

/// The social prescribing service Sprig runs for: the owner of every Task
/// and the performer of every outcome Observation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// The service's name, as GP systems will display it.
    pub name: String,
    /// The service's ODS code, if it has one.
    pub ods_code: Option<String>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            name: "Social prescribing service".into(),
            ods_code: None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: "sprig.db".into(),
            public_base_url: None,
            log: LogSettings::default(),
            limits: Limits::default(),
            server: ServerSettings::default(),
            tls: TlsSettings::default(),
            sqlite: SqliteSettings::default(),
            validation: ValidationSettings::default(),
            service: ServiceSettings::default(),
            mappings_dir: None,
            outcomes_dir: None,
            pcns_file: None,
            delivery: DeliverySettings::default(),
            auth: AuthSettings::default(),
            fhir: FhirSettings::default(),
            retention: RetentionSettings::default(),
            console: ConsoleSettings::default(),
        }
    }
}

/// The console (`[console]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Working days (Monday to Friday, England and Wales bank holidays excepted) within
    /// which a referral should be first contacted; the worklist calls it overdue after.
    pub first_contact_target_working_days: u32,
    /// Signing people in through the service's identity provider (OpenID Connect).
    pub oidc: Option<ConsoleOidcSettings>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            first_contact_target_working_days: 5,
            oidc: None,
        }
    }
}

/// The service's identity provider for console sign-in (`[console.oidc]`): OpenID
/// Connect authorization code flow with PKCE; its ID token's claims name the person
/// and their role, as `[auth.external]`'s do for access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidcSettings {
    /// The provider's issuer (`iss`, exactly); its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Sprig's client id at the provider (the ID token's `aud`).
    pub client_id: String,
    /// A file holding the client secret, for a confidential client
    /// (`client_secret_post`); unset: a public client (PKCE only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where the provider sends the browser back; unset: this server's
    /// `/console/sign-in/idp/callback` at the address the browser used.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// The name on the sign-in button ("Sign in with …").
    #[serde(default = "default_oidc_display_name")]
    pub display_name: String,
    /// The scopes asked for (`openid` is always among them).
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The algorithms its ID tokens may use (from this list, never from the token).
    #[serde(default = "default_external_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim naming the person: a stable id, their username in Sprig.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim holding their name as shown.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim holding their role (`link_worker`, `service_manager`,
    /// `administrator`; a string or a list, the first known one counts). Without a
    /// known role no one is signed in.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_oidc_display_name() -> String {
    "your organisation's account".into()
}
fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}
fn default_name_claim() -> String {
    "name".into()
}

/// What an update (`PUT /fhir/ServiceRequest/{id}`) must carry to say which
/// version it changes. Either way a stale version is a 412, never a silent
/// lost update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateRequires {
    /// `If-Match` with the ETag of the version read (428 without it).
    IfMatch,
    /// `If-Match`, or else `meta.versionId` in the body naming the version
    /// read (what fhirpy's `save()` and fhirclient's `update()` send).
    IfMatchOrVersionId,
}

/// How `$process-message` answers a message it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageRefusal {
    /// A bare OperationOutcome with the BaRS `http-error-codes` code, as the
    /// BaRS API specifies for every 4xx and 5xx (its proxy reads `issue[0]`).
    Outcome,
    /// A `servicerequest-response` message Bundle (`response.code`
    /// `fatal-error` or `transient-error`) carrying the OperationOutcome, as
    /// FHIR messaging has it.
    Message,
}

/// FHIR REST choices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FhirSettings {
    /// What an update must carry to say which version it changes.
    pub update_requires: UpdateRequires,
    /// The shape of a `$process-message` refusal.
    pub message_refusal: MessageRefusal,
}

impl Default for FhirSettings {
    fn default() -> Self {
        Self {
            update_requires: UpdateRequires::IfMatchOrVersionId,
            message_refusal: MessageRefusal::Outcome,
        }
    }
}

/// Validation choices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSettings {
    /// What an extension Sprig holds no definition for gets: `ignore`,
    /// `information`, `warning` or `error`.
    pub unknown_extensions: ReportLevel,
    /// What a profile named in `meta.profile` that Sprig does not hold (a
    /// BaRS or UK Core profile) gets: `information`, `warning` or `error`.
    /// Short of `error`, the resource is still checked against the profile
    /// Sprig applies to it.
    pub unknown_profiles: NoticeLevel,
    /// Best-practice invariants (dom-6, narrative): `ignore`,
    /// `information`, `warning` or `error`.
    pub best_practice: ReportLevel,
    /// Per resource type, the profile a resource sent to Sprig must meet
    /// when its `meta.profile` names none.
    pub default_profiles: BTreeMap<String, String>,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            unknown_extensions: ReportLevel::Warning,
            unknown_profiles: NoticeLevel::Warning,
            best_practice: ReportLevel::Ignore,
            default_profiles: crate::validation::DEFAULT_PROFILES
                .iter()
                .map(|(resource_type, url)| ((*resource_type).to_owned(), (*url).to_owned()))
                .collect(),
        }
    }
}

impl ValidationSettings {
    /// The default profiles by resource type.
    pub fn default_profiles(
        &self,
    ) -> Result<std::collections::HashMap<ResourceType, String>, ConfigError> {
        self.default_profiles
            .iter()
            .map(|(name, url)| {
                ResourceType::parse(name)
                    .map(|resource_type| (resource_type, url.clone()))
                    .map_err(|_| ConfigError::OutOfRange {
                        key: "validation.default_profiles",
                        reason: format!("'{name}' is not an R4 resource type"),
                    })
            })
            .collect()
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `auto`, `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,sprig=debug`
    /// (`RUST_LOG` overrides it).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Limits that protect the gateway from oversized or slow requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: u64,
    /// Deepest JSON nesting accepted (1 to 127).
    pub max_json_depth: usize,
    /// A request still running after this many seconds is answered 408 when
    /// its body had not all arrived, else 503.
    pub request_timeout_secs: u64,
    /// Most issues reported in one OperationOutcome.
    pub max_issues: usize,
    /// On shutdown, wait this many seconds for requests in flight.
    pub shutdown_timeout_secs: u64,
    /// The memory budget for request bodies: the bytes of all bodies being
    /// read or handled at once (a body without a declared length counts as
    /// `max_body_bytes`). At least `max_body_bytes`.
    pub body_budget_bytes: u64,
    /// How long a body waits for room in the budget before it is answered
    /// 503 with `Retry-After`, in milliseconds.
    pub body_budget_wait_ms: u64,
    /// Room for small bodies on top of `body_budget_bytes`, which only a body
    /// of at most `small_body_max_bytes` may use (once the budget has no
    /// room), so that large or stalled uploads cannot make an ordinary
    /// referral wait or be refused. 0: no reserve.
    pub small_body_reserve_bytes: u64,
    /// The largest body the small-body reserve admits (a declared length).
    pub small_body_max_bytes: u64,
    /// Longest `identifier.value` accepted, in characters (longer: 422).
    pub max_identifier_chars: usize,
    /// Longest other string accepted (a note, a name), in characters
    /// (longer: 422); `Attachment.data` is bounded by the body limit only.
    pub max_string_chars: usize,
    /// Most items in one array (notes, reasons, Bundle entries; more: 422).
    pub max_repeats: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 5 * 1024 * 1024,
            max_json_depth: 64,
            request_timeout_secs: 30,
            max_issues: 100,
            shutdown_timeout_secs: 30,
            // Six largest bodies at once: with the validator's and the
            // transaction's working memory (a few times the body) that keeps
            // a small VM's RSS in the low hundreds of MiB (BENCHMARKS.md).
            body_budget_bytes: 32 * 1024 * 1024,
            body_budget_wait_ms: 2000,
            // 32 bodies of 64 KiB, or hundreds of ordinary (3 to 10 KB) referrals.
            small_body_reserve_bytes: 2 * 1024 * 1024,
            small_body_max_bytes: 64 * 1024,
            max_identifier_chars: FieldLimits::default().max_identifier_chars,
            max_string_chars: FieldLimits::default().max_string_chars,
            max_repeats: FieldLimits::default().max_repeats,
        }
    }
}

impl Limits {
    /// The per-field limits (`validation::size`).
    pub fn field_limits(&self) -> FieldLimits {
        FieldLimits {
            max_identifier_chars: self.max_identifier_chars,
            max_string_chars: self.max_string_chars,
            max_repeats: self.max_repeats,
        }
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Connection limits: what any client that can reach the port may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Connections beyond `max_connections` kept for `GET /healthz` and
    /// `GET /readyz`; any other request on one is answered 503.
    pub health_reserve_connections: usize,
    /// How long a connection beyond both waits for a free slot before it is closed.
    pub connection_wait_ms: u64,
    /// A second address serving only `GET /healthz` and `GET /readyz`, over
    /// plain HTTP, with connections of its own: probes answer whatever the
    /// main address is going through.
    pub health_listen: Option<SocketAddr>,
    /// A request's head must arrive within this many seconds of Sprig starting to
    /// wait for it (the connection opened, or the previous answer was sent).
    pub header_read_timeout_secs: u64,
    /// A connection with no request in progress and nothing received for this
    /// many seconds is closed.
    pub keep_alive_timeout_secs: u64,
    /// A request body must arrive at least this fast, in bytes per second
    /// (0: no minimum).
    pub min_body_bytes_per_sec: u64,
    /// How far behind that rate a body may fall, in seconds (its start and any
    /// pause count), before it is cut with 408.
    pub body_grace_secs: u64,
    /// Whether HTTP/2 is accepted on a cleartext connection (prior knowledge,
    /// h2c). Over TLS HTTP/2 is negotiated (ALPN) whatever this says.
    pub h2c: bool,
    /// HTTP/2: most requests in progress at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: send a ping after this many seconds (0: never).
    pub http2_keep_alive_interval_secs: u64,
    /// HTTP/2: close the connection when a ping is not answered within this many seconds.
    pub http2_keep_alive_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 512,
            health_reserve_connections: 8,
            connection_wait_ms: 250,
            health_listen: None,
            header_read_timeout_secs: 10,
            keep_alive_timeout_secs: 5,
            min_body_bytes_per_sec: 1024,
            body_grace_secs: 10,
            h2c: false,
            http2_max_concurrent_streams: 32,
            http2_keep_alive_interval_secs: 20,
            http2_keep_alive_timeout_secs: 10,
        }
    }
}

/// Client certificates: whether a client must present one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client may present one; if it does, it must verify.
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

/// HTTPS served by Sprig itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain (PEM), server certificate first. With `key_file`,
    /// Sprig serves HTTPS only.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` or `required`.
    pub client_auth: Option<ClientAuth>,
    /// How often the files are checked for changes (also reloaded on SIGHUP).
    pub reload_poll_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: None,
            reload_poll_secs: 5,
        }
    }
}

impl TlsSettings {
    /// Whether Sprig serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// SQLite settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSettings {
    /// `full`: a commit is on disk before the client hears 201 (default);
    /// `normal`: faster, but a power cut may lose the last commits.
    pub synchronous: SqliteSynchronousSetting,
    /// Milliseconds to wait for a lock or a connection.
    pub busy_timeout_ms: u64,
    /// Connections for reads.
    pub max_read_connections: u32,
    /// The writer connection's page cache, in KiB.
    pub writer_cache_kib: u32,
    /// Each read connection's page cache, in KiB.
    pub reader_cache_kib: u32,
}

/// SQLite's `synchronous` pragma, as far as Sprig allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronousSetting {
    /// fsync on every commit.
    Full,
    /// fsync at checkpoints.
    Normal,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            synchronous: SqliteSynchronousSetting::Full,
            busy_timeout_ms: 5_000,
            max_read_connections: 8,
            // The store's defaults (`store::SqliteCaches`; a test in `cli` keeps them equal).
            writer_cache_kib: 4_096,
            reader_cache_kib: 1_024,
        }
    }
}

/// Values given on the command line, which win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--database`.
    pub database: Option<String>,
    /// `--endpoints`.
    pub endpoints: Option<PathBuf>,
}

impl Settings {
    /// Loads settings from the defaults, the config file, the environment
    /// and the command line, in that order of precedence (last wins).
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_from(config_file, overrides, Env::prefixed("SPRIG_"))
    }

    fn load_from(
        config_file: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match config_file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_owned())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        figment = figment.merge(env.split("__").ignore(&["config", "endpoints"]));
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("listen", listen));
        }
        if let Some(database) = &overrides.database {
            figment = figment.merge(Serialized::default("database", database));
        }
        if let Some(endpoints) = &overrides.endpoints {
            figment = figment.merge(Serialized::default("delivery.endpoints", endpoints));
        }
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let range = |key, reason: &str| ConfigError::OutOfRange {
            key,
            reason: reason.to_owned(),
        };
        if self.limits.max_body_bytes == 0 {
            return Err(range("limits.max_body_bytes", "must be at least 1"));
        }
        if self.limits.body_budget_bytes < self.limits.max_body_bytes {
            return Err(range(
                "limits.body_budget_bytes",
                "must be at least limits.max_body_bytes",
            ));
        }
        if self.limits.body_budget_bytes > MAX_BODY_BUDGET {
            return Err(range("limits.body_budget_bytes", "must be at most 1 TiB"));
        }
        if self.limits.small_body_reserve_bytes > MAX_BODY_BUDGET {
            return Err(range(
                "limits.small_body_reserve_bytes",
                "must be at most 1 TiB",
            ));
        }
        if self.limits.small_body_reserve_bytes > 0
            && !(1..=self.limits.small_body_reserve_bytes)
                .contains(&self.limits.small_body_max_bytes)
        {
            return Err(range(
                "limits.small_body_max_bytes",
                "must be between 1 and limits.small_body_reserve_bytes",
            ));
        }
        if self.limits.max_identifier_chars == 0
            || self.limits.max_string_chars == 0
            || self.limits.max_repeats == 0
        {
            return Err(range(
                "limits.max_identifier_chars",
                "max_identifier_chars, max_string_chars and max_repeats must each be at least 1",
            ));
        }
        if !(1..=MAX_SUPPORTED_DEPTH).contains(&self.limits.max_json_depth) {
            return Err(range("limits.max_json_depth", "must be between 1 and 127"));
        }
        let delivery = &self.delivery;
        if delivery.poll_interval_ms == 0 {
            return Err(range("delivery.poll_interval_ms", "must be at least 1"));
        }
        if delivery.lease_secs == 0 {
            return Err(range("delivery.lease_secs", "must be at least 1"));
        }
        if delivery.initial_backoff_ms == 0 {
            return Err(range("delivery.initial_backoff_ms", "must be at least 1"));
        }
        if delivery.max_backoff_secs.saturating_mul(1000) < delivery.initial_backoff_ms {
            return Err(range(
                "delivery.max_backoff_secs",
                "must be at least delivery.initial_backoff_ms",
            ));
        }
        // Far beyond any retention schedule, and within what date arithmetic holds.
        if self.retention.closed_referrals_years > 1000 {
            return Err(range(
                "retention.closed_referrals_years",
                "must be at most 1000",
            ));
        }
        for (key, days) in [
            ("retention.raw_bodies_days", self.retention.raw_bodies_days),
            (
                "retention.delivered_outbox_days",
                self.retention.delivered_outbox_days,
            ),
        ] {
            if days > 365_000 {
                return Err(range(key, "must be at most 365000"));
            }
        }
        if delivery.max_age_secs == 0 {
            return Err(range("delivery.max_age_secs", "must be at least 1"));
        }
        if delivery.reload_poll_secs == 0 {
            return Err(range("delivery.reload_poll_secs", "must be at least 1"));
        }
        if self.limits.request_timeout_secs == 0 {
            return Err(range("limits.request_timeout_secs", "must be at least 1"));
        }
        let server = &self.server;
        if server.max_connections == 0 {
            return Err(range("server.max_connections", "must be at least 1"));
        }
        if server.health_listen.is_some_and(|health| {
            health == self.listen || (health.port() != 0 && health.port() == self.listen.port())
        }) {
            return Err(range(
                "server.health_listen",
                "must be another address (another port) than listen",
            ));
        }
        if server.header_read_timeout_secs == 0 {
            return Err(range(
                "server.header_read_timeout_secs",
                "must be at least 1",
            ));
        }
        if server.keep_alive_timeout_secs == 0 {
            return Err(range(
                "server.keep_alive_timeout_secs",
                "must be at least 1",
            ));
        }
        if server.min_body_bytes_per_sec > 0 && server.body_grace_secs == 0 {
            return Err(range(
                "server.body_grace_secs",
                "must be at least 1 when server.min_body_bytes_per_sec is set",
            ));
        }
        if server.http2_max_concurrent_streams == 0 {
            return Err(range(
                "server.http2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if server.http2_keep_alive_interval_secs > 0 && server.http2_keep_alive_timeout_secs == 0 {
            return Err(range(
                "server.http2_keep_alive_timeout_secs",
                "must be at least 1 when server.http2_keep_alive_interval_secs is set",
            ));
        }
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(range(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together: give both or neither",
            ));
        }
        if tls.client_ca_file.is_some() != tls.client_auth.is_some() {
            return Err(range(
                "tls.client_auth",
                "tls.client_ca_file and tls.client_auth go together: give both (client_auth = \"optional\" or \"required\") or neither",
            ));
        }
        if tls.reload_poll_secs == 0 {
            return Err(range("tls.reload_poll_secs", "must be at least 1"));
        }
        if tls.client_ca_file.is_some() && !tls.enabled() {
            return Err(range(
                "tls.client_ca_file",
                "client certificates need HTTPS: set tls.cert_file and tls.key_file too",
            ));
        }
        if self.limits.max_issues == 0 {
            return Err(range("limits.max_issues", "must be at least 1"));
        }
        if self.database.trim().is_empty() {
            return Err(range("database", "must not be empty"));
        }
        if let Some(url) = &self.public_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(range("public_base_url", "must be an absolute http(s) URL"));
        }
        self.validation.default_profiles()?;
        self.auth.check()?;
        self.console.check()?;
        Ok(())
    }

    /// Whether Sprig may serve on `listen` with the authentication configured, and how:
    /// with nothing configured (`auth.mode = "auto"`, no client registry, no external
    /// identity provider) only on a loopback address; anywhere with `auth.mode = "none"`.
    /// Staff accounts in the database do not count: what the configuration says decides,
    /// before the database is read, so a row can never open or close the FHIR API (use
    /// `auth.mode = "required"` for a deployment with staff accounts only).
    pub fn security_decision(&self, listen: SocketAddr) -> Result<SecurityMode, ConfigError> {
        match self.auth.mode {
            AuthMode::None => Ok(SecurityMode::Disabled),
            AuthMode::Required => Ok(SecurityMode::Enforced),
            AuthMode::Auto if self.auth.clients.is_some() || self.auth.external.is_some() => {
                Ok(SecurityMode::Enforced)
            }
            AuthMode::Auto if listen.ip().is_loopback() => Ok(SecurityMode::OpenOnLoopback),
            AuthMode::Auto => Err(ConfigError::Insecure { listen }),
        }
    }
}

impl ConsoleSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let range = |key, reason: String| ConfigError::OutOfRange { key, reason };
        if !(1..=60).contains(&self.first_contact_target_working_days) {
            return Err(range(
                "console.first_contact_target_working_days",
                "must be between 1 and 60".into(),
            ));
        }
        let Some(oidc) = &self.oidc else {
            return Ok(());
        };
        if !(oidc.issuer.starts_with("https://") || oidc.issuer.starts_with("http://")) {
            return Err(range(
                "console.oidc.issuer",
                "must be an absolute http(s) URL".into(),
            ));
        }
        if oidc.client_id.trim().is_empty() {
            return Err(range("console.oidc.client_id", "must not be empty".into()));
        }
        if let Some(url) = &oidc.redirect_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(range(
                "console.oidc.redirect_url",
                "must be an absolute http(s) URL".into(),
            ));
        }
        if let Some(bad) = oidc
            .algorithms
            .iter()
            .find(|a| !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(range(
                "console.oidc.algorithms",
                format!("{bad:?} is not an asymmetric JWS algorithm"),
            ));
        }
        if oidc.algorithms.is_empty() {
            return Err(range("console.oidc.algorithms", "must not be empty".into()));
        }
        Ok(())
    }
}

impl AuthSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let range = |key, reason: String| ConfigError::OutOfRange { key, reason };
        if !(30..=86_400).contains(&self.token_lifetime_secs) {
            return Err(range(
                "auth.token_lifetime_secs",
                "must be between 30 and 86400".into(),
            ));
        }
        if self.reload_poll_secs == 0 {
            return Err(range("auth.reload_poll_secs", "must be at least 1".into()));
        }
        if let Some(url) = &self.token_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(range(
                "auth.token_url",
                "must be an absolute http(s) URL".into(),
            ));
        }
        let Some(external) = &self.external else {
            return Ok(());
        };
        if external.issuer.trim().is_empty() {
            return Err(range("auth.external.issuer", "must not be empty".into()));
        }
        if external.audience.trim().is_empty() {
            return Err(range("auth.external.audience", "must not be empty".into()));
        }
        match (&external.jwks_file, &external.jwks_url) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(range(
                    "auth.external",
                    "give exactly one of jwks_file and jwks_url".into(),
                ));
            }
            (None, Some(url)) if !url.starts_with("https://") && !url.starts_with("http://") => {
                return Err(range(
                    "auth.external.jwks_url",
                    "must be an absolute http(s) URL".into(),
                ));
            }
            _ => {}
        }
        if external.jwks_refresh_secs == 0 {
            return Err(range(
                "auth.external.jwks_refresh_secs",
                "must be at least 1".into(),
            ));
        }
        if external.algorithms.is_empty() {
            return Err(range(
                "auth.external.algorithms",
                "name at least one algorithm".into(),
            ));
        }
        if let Some(bad) = external
            .algorithms
            .iter()
            .find(|a| !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(range(
                "auth.external.algorithms",
                format!(
                    "{bad:?} is not allowed; use {}",
                    ASYMMETRIC_ALGORITHMS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The token endpoint's URL, the `aud` client assertions must carry: `token_url`;
    /// else `public_base_url` with a last segment `fhir` replaced by `auth/token`; else,
    /// when Sprig listens on a loopback address, `http://{bound}/auth/token`. `None`
    /// when none applies (then no client can get a token; start-up says so).
    pub fn token_endpoint(
        &self,
        public_base_url: Option<&str>,
        bound: SocketAddr,
    ) -> Option<String> {
        if let Some(url) = &self.token_url {
            return Some(url.clone());
        }
        if let Some(base) = public_base_url {
            let base = base.trim_end_matches('/');
            return base
                .strip_suffix("/fhir")
                .map(|root| format!("{root}/auth/token"));
        }
        bound
            .ip()
            .is_loopback()
            .then(|| format!("http://{bound}/auth/token"))
    }
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_file_then_environment_then_flags() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "custom.toml",
                "database = \"from-file.db\"\n[limits]\nmax_issues = 7\nmax_body_bytes = 10\n",
            )?;
            jail.set_env("SPRIG_LIMITS__MAX_BODY_BYTES", "2048");
            jail.set_env("SPRIG_CONFIG", "ignored-here.toml");
            let settings = Settings::load(Some(Path::new("custom.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(settings.database, "from-file.db");
            assert_eq!(settings.limits.max_issues, 7);
            assert_eq!(settings.limits.max_body_bytes, 2048);
            assert_eq!(settings.listen.port(), 8080);

            let overrides = Overrides {
                listen: Some("127.0.0.1:0".parse().map_err(|_| "addr")?),
                database: Some("flag.db".into()),
                endpoints: None,
            };
            let settings = Settings::load(Some(Path::new("custom.toml")), &overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(settings.database, "flag.db");
            assert_eq!(settings.listen.port(), 0);
            Ok(())
        });
    }

    #[test]
    fn the_documented_example_file_is_the_defaults() {
        // In a jail: tests that set SPRIG_* variables hold the same lock.
        Jail::expect_with(|jail| {
            jail.clear_env();
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/sprig.example.toml");
            let settings = Settings::load(Some(Path::new(example)), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(
                serde_json::to_value(&settings).map_err(|e| e.to_string())?,
                serde_json::to_value(Settings::default()).map_err(|e| e.to_string())?
            );
            Ok(())
        });
    }

    #[test]
    fn security_is_decided_from_the_configuration_and_the_address() {
        let loopback: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let loopback6: SocketAddr = "[::1]:8080".parse().expect("addr");
        let anywhere: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let mut settings = Settings::default();
        assert_eq!(
            settings.security_decision(loopback).expect("ok"),
            SecurityMode::OpenOnLoopback
        );
        assert_eq!(
            settings.security_decision(loopback6).expect("ok"),
            SecurityMode::OpenOnLoopback
        );
        let refused = settings.security_decision(anywhere).expect_err("refused");
        let message = refused.to_string();
        assert!(message.contains("auth.mode = \"none\""), "{message}");
        assert!(message.contains("auth.clients"), "{message}");

        settings.auth.clients = Some("clients.toml".into());
        assert_eq!(
            settings.security_decision(anywhere).expect("ok"),
            SecurityMode::Enforced
        );
        assert_eq!(
            settings.security_decision(loopback).expect("ok"),
            SecurityMode::Enforced
        );
        settings.auth.clients = None;
        settings.auth.mode = AuthMode::Required;
        assert_eq!(
            settings.security_decision(loopback).expect("ok"),
            SecurityMode::Enforced
        );
        settings.auth.mode = AuthMode::None;
        assert_eq!(
            settings.security_decision(anywhere).expect("ok"),
            SecurityMode::Disabled
        );
    }

    #[test]
    fn the_token_endpoint_follows_the_public_address() {
        let auth = AuthSettings::default();
        let bound: SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(
            auth.token_endpoint(Some("https://sprig.example.org/fhir/"), bound)
                .as_deref(),
            Some("https://sprig.example.org/auth/token")
        );
        assert_eq!(
            auth.token_endpoint(Some("https://sprig.example.org/api-base"), bound),
            None
        );
        assert_eq!(
            auth.token_endpoint(None, bound).as_deref(),
            Some("http://127.0.0.1:4321/auth/token")
        );
        assert_eq!(
            auth.token_endpoint(None, "10.0.0.5:80".parse().expect("addr")),
            None
        );
        let explicit = AuthSettings {
            token_url: Some("https://idp.example.org/token".into()),
            ..AuthSettings::default()
        };
        assert_eq!(
            explicit.token_endpoint(None, bound).as_deref(),
            Some("https://idp.example.org/token")
        );
    }

    #[test]
    fn external_identity_provider_settings_are_checked() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "ok.toml",
                "[auth.external]\nissuer = \"https://idp\"\naudience = \"sprig\"\njwks_url = \"https://idp/jwks\"\n",
            )?;
            let settings = Settings::load(Some(Path::new("ok.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            let external = settings.auth.external.ok_or("external")?;
            assert_eq!(external.algorithms, ["RS256"]);
            assert_eq!(external.role_claim, "sprig_role");
            for (name, text, problem) in [
                (
                    "hs.toml",
                    "algorithms = [\"HS256\"]\njwks_url = \"https://idp/jwks\"\n",
                    "HS256",
                ),
                (
                    "none.toml",
                    "algorithms = [\"none\"]\njwks_url = \"https://idp/jwks\"\n",
                    "none",
                ),
                (
                    "both.toml",
                    "jwks_url = \"https://idp/jwks\"\njwks_file = \"k.json\"\n",
                    "exactly one",
                ),
                ("neither.toml", "", "exactly one"),
            ] {
                jail.create_file(
                    name,
                    &format!(
                        "[auth.external]\nissuer = \"https://idp\"\naudience = \"sprig\"\n{text}"
                    ),
                )?;
                let error = Settings::load(Some(Path::new(name)), &Overrides::default())
                    .expect_err(name)
                    .to_string();
                assert!(error.contains(problem), "{name}: {error}");
            }
            jail.create_file("life.toml", "[auth]\ntoken_lifetime_secs = 5\n")?;
            assert!(Settings::load(Some(Path::new("life.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("a.toml", "[limits]\nmax_body_byte = 1\n")?;
            let err = Settings::load(Some(Path::new("a.toml")), &Overrides::default())
                .expect_err("unknown key");
            assert!(err.to_string().contains("max_body_byte"), "{err}");
            jail.create_file("b.toml", "[limits]\nmax_json_depth = 500\n")?;
            assert!(Settings::load(Some(Path::new("b.toml")), &Overrides::default()).is_err());
            assert!(Settings::load(Some(Path::new("nope.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }
}
