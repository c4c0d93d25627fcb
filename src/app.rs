//! Assembling and running the gateway: open the store, load the validator,
//! bind the listener, serve until told to stop, then drain and close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::api::{self, AppState, capability};
use crate::config::{
    ConfigError, RetentionSettings, SecurityMode, Settings, SqliteSynchronousSetting,
};
use crate::console;
use crate::delivery::endpoints::{EndpointError, EndpointRegistry, Endpoints};
use crate::delivery::metrics::DeliveryMetrics;
use crate::delivery::policy::RetryPolicy;
use crate::delivery::worker::{Worker, WorkerSettings};
use crate::fhir::{Instant, ResourceType};
use crate::fhirpath::FhirPath;
use crate::identity::{
    AssertionVerifier, Authenticator, ClientRegistryError, Clients, ConsoleOidc, ExternalVerifier,
    TokenSecret, TokenService,
};
use crate::mapping::{MappingError, Mappings};
use crate::outcomes::pcn::PcnDirectory;
use crate::outcomes::{Outcomes, OutcomesError};
use crate::reload::Reloadable;
use crate::server::{Server, ServerError};
use crate::store::retention::{PurgeKind, Removed};
use crate::store::{AuditRecord, Store, StoreError, StoreOptions};
use crate::validation::Validator;
use crate::validation::profile::{ProfileError, ProfileOptions, ProfilePass};
use crate::validation::schema::{SchemaError, SchemaPass};
use crate::workflow::{ServiceIdentity, Workflow};

/// The gateway could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(StoreError),
    /// The bundled FHIR schema could not be loaded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The bundled FHIR definitions could not be loaded.
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    /// The mappings (`mappings/` or `mappings_dir`) are wrong.
    #[error("mappings: {0}")]
    Mappings(MappingError),
    /// The outcome measures or metrics (`outcomes/` or `outcomes_dir`) are wrong.
    #[error("outcome definitions: {0}")]
    Outcomes(#[from] OutcomesError),
    /// The practice directory (`pcns_file`) is wrong.
    #[error("PCN directory: {0}")]
    Pcns(crate::located::LocatedError),
    /// A measure's Observation would fail its profile or the definition's own rules.
    #[error("outcome definitions: {0}")]
    Measures(String),
    /// The endpoint registry (`delivery.endpoints`) is wrong.
    #[error("endpoint registry: {0}")]
    Endpoints(#[from] EndpointError),
    /// Asked to serve beyond this machine without authentication.
    #[error("{0}")]
    Security(ConfigError),
    /// The client registry (`auth.clients`) is wrong.
    #[error("client registry: {0}")]
    Clients(#[from] ClientRegistryError),
    /// The token secret or the external identity provider cannot be used.
    #[error("authentication: {0}")]
    Identity(String),
    /// The validation settings name something Sprig does not hold.
    #[error("validation settings: {0}")]
    Validation(String),
    /// A defect: a start-up task failed unexpectedly.
    #[error("internal error during start-up: {0}")]
    Internal(String),
    /// The listen address could not be bound, or the TLS files used.
    #[error(transparent)]
    Server(#[from] ServerError),
}

// The message already includes the cause, so the cause is not also a
// `source` (a report of the error chain would print it twice).
impl From<StoreError> for StartupError {
    fn from(error: StoreError) -> Self {
        StartupError::Store(error)
    }
}

impl From<MappingError> for StartupError {
    fn from(error: MappingError) -> Self {
        StartupError::Mappings(error)
    }
}

/// A gateway ready to serve: store open, validator compiled, port bound.
pub struct Application {
    server: Server,
    state: AppState,
    /// The delivery worker and the registry watcher, started by `build` so
    /// the SIGHUP handler is in place before Sprig says it is listening.
    background: Vec<tokio::task::JoinHandle<()>>,
    stop_background: tokio::sync::watch::Sender<bool>,
    /// Who is calling: handed to the request layer.
    authenticator: Arc<Authenticator>,
}

/// How the settings open the store (the server's; `cli`'s commands use the same, with
/// one reader). Here, not in `config`, which must not import `store`.
pub fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        database: settings.database.clone(),
        busy_timeout: Duration::from_millis(settings.sqlite.busy_timeout_ms),
        max_read_connections: settings.sqlite.max_read_connections,
        durable_commits: settings.sqlite.synchronous == SqliteSynchronousSetting::Full,
        sqlite_caches: crate::store::SqliteCaches {
            writer_kib: settings.sqlite.writer_cache_kib,
            reader_kib: settings.sqlite.reader_cache_kib,
        },
    }
}

impl Application {
    /// Opens everything the gateway needs. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let started = Instant::now();
        // Before anything is opened: an open gateway on a public address is refused.
        let security = settings
            .security_decision(settings.listen)
            .map_err(StartupError::Security)?;
        let store = Store::open(&store_options(&settings)).await?;
        // Compiling the schema takes tens of milliseconds per type: do the
        // types Sprig accepts now, off the async threads, with the Bundle and
        // MessageHeader that transactions and messages arrive in (compiled
        // together, they share their datatypes: `validation::schema`).
        let eager: Vec<ResourceType> = capability::SUPPORTED
            .iter()
            .map(|c| c.resource_type)
            .chain([ResourceType::BUNDLE, ResourceType::named("MessageHeader")])
            .collect();
        let profile_options = ProfileOptions {
            unknown_extensions: settings.validation.unknown_extensions,
            unknown_profiles: settings.validation.unknown_profiles,
            best_practice: settings.validation.best_practice,
        };
        let default_profiles = settings
            .validation
            .default_profiles()
            .map_err(|e| StartupError::Validation(e.to_string()))?;
        let (schema, profiles) = tokio::task::spawn_blocking(move || {
            Ok::<_, StartupError>((
                SchemaPass::load(&eager)?,
                ProfilePass::load_with(profile_options)?,
            ))
        })
        .await
        .map_err(|e| {
            StartupError::Internal(format!("the definition-loading task failed: {e}"))
        })??;
        let validator = Validator::new(vec![Box::new(schema), Box::new(profiles)])
            .with_default_profiles(default_profiles)
            .map_err(|e| StartupError::Validation(e.to_string()))?;
        let fhirpath =
            FhirPath::new().map_err(|e| StartupError::Internal(format!("FHIRPath engine: {e}")))?;
        let mappings = match &settings.mappings_dir {
            Some(dir) => Mappings::load_dir(dir, &fhirpath)?,
            None => Mappings::shipped(&fhirpath)?,
        };
        let outcomes = match &settings.outcomes_dir {
            Some(dir) => Outcomes::load_dir(dir)?,
            None => Outcomes::shipped().map_err(OutcomesError::from)?,
        };
        let pcn_directory = match &settings.pcns_file {
            Some(path) => PcnDirectory::load(path).map_err(StartupError::Pcns)?,
            None => PcnDirectory::default(),
        };
        let pcns = Arc::new(Reloadable::new(
            "PCN directory",
            pcn_directory,
            settings.pcns_file.clone(),
            |path: &std::path::Path, _: &PcnDirectory| PcnDirectory::load(path),
        ));
        let validator = Arc::new(validator);
        let registry = match &settings.delivery.endpoints {
            Some(path) => EndpointRegistry::load(path)?,
            None => EndpointRegistry::empty(),
        };
        tracing::info!(
            endpoints = registry.len(),
            "endpoint registry loaded; practices without an endpoint keep their updates for pull"
        );
        // A message carries absolute URLs of Sprig's own (its focus, its source); without a
        // public address there is none the practice could reach. An instance that does not
        // deliver sends no messages, so it may share a registry that has such endpoints.
        let message_mode_allowed = settings.public_base_url.is_some() || !settings.delivery.enabled;
        let endpoints = Endpoints::new(
            registry,
            settings.delivery.endpoints.clone(),
            message_mode_allowed,
        )?;
        let workflow = Workflow::new(
            Arc::new(mappings),
            Arc::new(outcomes.catalogue.clone()),
            Arc::clone(&validator),
            ServiceIdentity {
                name: settings.service.name.clone(),
                ods_code: settings.service.ods_code.clone(),
            },
        );
        workflow.check_measures().map_err(StartupError::Measures)?;

        let clients = Clients::load(settings.auth.clients.as_deref())?;
        let secret = TokenSecret::load(&settings.auth, &store)
            .await
            .map_err(|e| StartupError::Identity(e.to_string()))?;
        // Sprig's tokens name Sprig's FHIR base as their audience.
        let audience = settings
            .public_base_url
            .as_deref()
            .map_or("sprig", |url| url.trim_end_matches('/'));
        let tokens = Arc::new(TokenService::new(
            &secret,
            "sprig",
            audience,
            Duration::from_secs(settings.auth.token_lifetime_secs),
        ));
        let external = match &settings.auth.external {
            Some(external) => {
                Some(Arc::new(ExternalVerifier::new(external).await.map_err(
                    |e| StartupError::Identity(format!("auth.external: {e}")),
                )?))
            }
            None => None,
        };

        let server = Server::bind(&settings).await?;
        let address = server.local_addr();
        let mut authenticator = Authenticator::new(
            security,
            Arc::clone(&clients),
            tokens,
            external,
            store.clone(),
            settings.auth.link_workers_see_all_referrals,
        );
        let token_url = settings
            .auth
            .token_endpoint(settings.public_base_url.as_deref(), address);
        if let Some(url) = token_url {
            authenticator = authenticator.with_token_endpoint(AssertionVerifier::new(url));
        }
        if let Some(oidc) = &settings.console.oidc {
            authenticator = authenticator.with_console_oidc(
                ConsoleOidc::new(oidc).map_err(|e| StartupError::Identity(e.to_string()))?,
            );
        }
        report_security(
            &authenticator,
            &clients,
            address,
            settings.auth.external.is_some(),
        );
        let capability_statement = capability::with_security(
            capability::capability_statement(&settings, started),
            authenticator.token_endpoint(),
        );
        let state = AppState {
            store,
            validator,
            settings: Arc::new(settings),
            capability_statement: Arc::new(capability_statement),
            workflow,
            endpoints,
            delivery_metrics: Arc::new(DeliveryMetrics::new()),
            outcomes: Arc::new(outcomes),
            pcns,
        };
        let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
        let mut background = start_background(&state, background_stopped.clone()).await;
        if state.pcns.source().is_some() {
            let mut stop = background_stopped.clone();
            background.push(state.pcns.spawn_watcher(
                Duration::from_secs(state.settings.auth.reload_poll_secs),
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            ));
        }
        if clients.source().is_some() {
            let mut stop = background_stopped;
            background.push(clients.spawn_watcher(
                Duration::from_secs(state.settings.auth.reload_poll_secs),
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            ));
        }
        Ok(Self {
            server,
            state,
            background,
            stop_background,
            authenticator: Arc::new(authenticator),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `https` when Sprig serves TLS itself, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.server.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The store, for tools and tests that inspect what was written.
    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// lets requests in flight finish (up to `limits.shutdown_timeout_secs`)
    /// and closes the database cleanly.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let grace = Duration::from_secs(self.state.settings.limits.shutdown_timeout_secs);
        let store = self.state.store.clone();
        let stop_background = self.stop_background;
        let background = self.background;
        let auth = &self.state.settings.auth;
        let rate_limits =
            api::rate_limit::RateLimits::new(auth.rate_limit_per_minute, auth.rate_limit_burst);
        // The request layer finds the authenticator (and the rate limits) as extensions.
        let mut router = api::router_with(self.state, console::routes())
            .layer(axum::Extension(self.authenticator));
        if let Some(limits) = rate_limits {
            router = router.layer(axum::Extension(Arc::new(limits)));
        }
        self.server.serve(router, shutdown, grace).await;
        // Requests are done: no more outbox rows can appear. Let deliveries
        // in flight finish (bounded by the worker's grace), then close.
        let _ = stop_background.send(true);
        for task in background {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Says at start-up how callers are authenticated: loudly when they are not.
fn report_security(
    authenticator: &Authenticator,
    clients: &Clients,
    address: SocketAddr,
    external: bool,
) {
    match authenticator.mode() {
        SecurityMode::OpenOnLoopback => tracing::warn!(
            listen = %address,
            "NO AUTHENTICATION: nothing is configured (auth.clients, [auth.external]), so \
             Sprig serves on this loopback address without asking who calls; anyone on this \
             machine can read and change every referral. Configure auth.clients to require \
             tokens"
        ),
        SecurityMode::Disabled => tracing::warn!(
            listen = %address,
            "NO AUTHENTICATION: auth.mode = \"none\"; Sprig does not ask who calls, so a \
             proxy in front of it must authenticate every request"
        ),
        SecurityMode::Enforced => {
            tracing::info!(
                clients = clients.current().len(),
                external_identity_provider = external,
                token_endpoint = authenticator.token_endpoint().unwrap_or("none"),
                "authentication configured"
            );
            if authenticator.token_endpoint().is_none() && !clients.current().is_empty() {
                tracing::warn!(
                    "no token endpoint URL: set auth.token_url or public_base_url (ending in \
                     /fhir), or clients cannot get tokens"
                );
            }
        }
    }
}

/// Starts the endpoint registry's watcher and the delivery worker; both
/// stop when `stop` turns true.
async fn start_background(
    state: &AppState,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let delivery = &state.settings.delivery;
    let mut tasks = Vec::new();
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let retention = state.settings.retention.clone();
    if !retention_cutoffs(&retention, Instant::now()).is_empty() {
        tasks.push(tokio::spawn(keep_data_for(
            state.store.clone(),
            retention,
            stopped(stop.clone()),
        )));
    }
    let retention = state.settings.auth.audit_retention_days;
    if retention > 0 {
        tasks.push(tokio::spawn(keep_audit_for(
            state.store.clone(),
            retention,
            stopped(stop.clone()),
        )));
    }
    // Also without a registry file: the watcher owns the SIGHUP handler,
    // and an operator's reload signal must never kill the gateway.
    tasks.push(state.endpoints.spawn_watcher(
        Duration::from_secs(delivery.reload_poll_secs),
        stopped(stop.clone()),
    ));
    if !delivery.enabled {
        tracing::info!("delivery is disabled on this instance (delivery.enabled = false)");
        return tasks;
    }
    // SQLite is one process's file: leases left by this process's
    // previous run (killed mid-send) are released now rather than left to
    // lapse, so everything it had claimed is sent again at once.
    match state.store.release_leases().await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "claims from a previous run released"),
        Err(error) => {
            tracing::warn!(%error, "cannot release earlier claims; they lapse instead")
        }
    }
    // Only messages use it, and message-mode endpoints are refused without
    // `public_base_url` (`Endpoints::new`), so it is always the public base there.
    let fhir_base = state.fhir_base();
    let worker = Worker::new(
        state.store.clone(),
        Arc::clone(&state.endpoints),
        Arc::clone(&state.delivery_metrics),
        WorkerSettings {
            poll_interval: Duration::from_millis(delivery.poll_interval_ms),
            lease: Duration::from_secs(delivery.lease_secs),
            policy: RetryPolicy {
                initial_backoff: Duration::from_millis(delivery.initial_backoff_ms),
                max_backoff: Duration::from_secs(delivery.max_backoff_secs),
                max_age: Duration::from_secs(delivery.max_age_secs),
            },
            fhir_base,
            service_name: state.settings.service.name.clone(),
            shutdown_grace: Duration::from_secs(state.settings.limits.shutdown_timeout_secs),
        },
    );
    tasks.push(tokio::spawn(worker.run(stop)));
    tasks
}

/// Applies `auth.audit_retention_days` now and every hour until `stop`: the whole days
/// before the oldest kept are dropped.
async fn keep_audit_for(store: Store, days: u32, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let today = time::OffsetDateTime::now_utc().date();
        let keep_from = today
            .checked_sub(time::Duration::days(i64::from(days)))
            .unwrap_or(time::Date::MIN);
        match store.drop_audit_before(keep_from).await {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::info!(dropped, keep_from = %keep_from, "audit rows past retention dropped")
            }
            Err(error) => {
                tracing::warn!(%error, "cannot apply the audit retention; retrying later")
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// The cut-off of each purge `[retention]` turns on, at `now`: everything of that kind
/// before it goes. A kind whose setting is 0 (keep for ever) is absent.
pub fn retention_cutoffs(settings: &RetentionSettings, now: Instant) -> Vec<(PurgeKind, Instant)> {
    let now = now.as_offset_date_time();
    let days_before = |days: u32| {
        now.checked_sub(time::Duration::days(i64::from(days)))
            .map(Instant::from_offset)
    };
    let mut cutoffs = Vec::new();
    if settings.raw_bodies_days > 0
        && let Some(cutoff) = days_before(settings.raw_bodies_days)
    {
        cutoffs.push((PurgeKind::RawBodies, cutoff));
    }
    if settings.closed_referrals_years > 0 {
        // The same date N years earlier (29 February: the 28th).
        let year = now.year() - i32::try_from(settings.closed_referrals_years).unwrap_or(i32::MAX);
        let earlier = now
            .replace_year(year)
            .or_else(|_| {
                now.replace_day(28)
                    .and_then(|feb28| feb28.replace_year(year))
            })
            .ok();
        if let Some(cutoff) = earlier {
            cutoffs.push((PurgeKind::ClosedReferrals, Instant::from_offset(cutoff)));
        }
    }
    if settings.delivered_outbox_days > 0
        && let Some(cutoff) = days_before(settings.delivered_outbox_days)
    {
        cutoffs.push((PurgeKind::DeliveredOutbox, cutoff));
    }
    cutoffs
}

/// Runs every purge `[retention]` turns on, now, each transaction audited as done by
/// `actor` (`sprig:retention` on the schedule, `sprig purge` from the command line).
/// Returns what went, per kind.
pub async fn purge_past_retention(
    store: &Store,
    settings: &RetentionSettings,
    actor: &str,
) -> Result<Vec<(PurgeKind, Removed)>, StoreError> {
    let audit = AuditRecord {
        client_id: Some(actor.to_owned()),
        ..AuditRecord::new("purge", 200)
    };
    let mut done = Vec::new();
    for (kind, cutoff) in retention_cutoffs(settings, Instant::now()) {
        let removed = store.purge(kind, cutoff, &audit).await?;
        done.push((kind, removed));
    }
    Ok(done)
}

/// Applies `[retention]` now and every hour until `stop`.
async fn keep_data_for(store: Store, settings: RetentionSettings, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        match purge_past_retention(&store, &settings, "sprig:retention").await {
            Ok(done) => {
                for (kind, removed) in done {
                    if !removed.is_empty() {
                        tracing::info!(
                            kind = kind.name(),
                            removed = %removed.summary(),
                            "data past retention purged"
                        );
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot apply the retention settings; retrying later")
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
