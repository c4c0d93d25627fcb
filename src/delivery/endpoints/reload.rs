//! The live registry: shared, replaced whole on reload, and watched for file changes
//! and SIGHUP.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::file::process_env;
use super::{DeliveryMode, EndpointError, EndpointRegistry};

/// The rules a registry must meet on this instance, beyond those of its own file.
fn check_instance_rules(
    registry: &EndpointRegistry,
    message_mode_allowed: bool,
) -> Result<(), EndpointError> {
    if message_mode_allowed {
        return Ok(());
    }
    match registry.iter().find(|e| e.mode == DeliveryMode::Message) {
        Some(endpoint) => Err(EndpointError::MessageModeWithoutPublicBaseUrl {
            ods_code: endpoint.ods_code.clone(),
        }),
        None => Ok(()),
    }
}

/// The live registry the delivery worker and the API share; replaced whole on reload, so
/// a request in flight finishes with the endpoint it started with.
pub struct Endpoints {
    current: RwLock<Arc<EndpointRegistry>>,
    source: Option<PathBuf>,
    /// False when Sprig has no `public_base_url`: a registry (at start-up or on reload)
    /// with a message-mode endpoint is then refused rather than sent messages whose
    /// URLs the practice cannot reach.
    message_mode_allowed: bool,
    /// One reload at a time, so that a slower reload of an older file cannot replace
    /// the registry a later one made.
    reloading: std::sync::Mutex<()>,
}

impl Endpoints {
    /// Shares `registry`, loaded from `source` (reloads read it again; `None`: nothing to
    /// reload). With `message_mode_allowed` false, a registry holding a message-mode
    /// endpoint is refused, now and on every reload.
    pub fn new(
        registry: EndpointRegistry,
        source: Option<PathBuf>,
        message_mode_allowed: bool,
    ) -> Result<Arc<Self>, EndpointError> {
        check_instance_rules(&registry, message_mode_allowed)?;
        Ok(Arc::new(Endpoints {
            current: RwLock::new(Arc::new(registry)),
            source,
            message_mode_allowed,
            reloading: std::sync::Mutex::new(()),
        }))
    }

    /// The registry now.
    pub fn current(&self) -> Arc<EndpointRegistry> {
        // A poisoned lock only means a writer panicked between two whole-Arc states;
        // the Arc inside is still a complete registry.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The registry file, if there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Reads the file again and, if it is valid, replaces the registry; if not, the old
    /// registry stays and the error says why. Unchanged entries keep their endpoint (and
    /// its token and connections). With no file, nothing happens.
    pub fn reload(&self) -> Result<(), EndpointError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        // A poisoned lock guards nothing broken: the registry is only replaced whole.
        let _one_at_a_time = match self.reloading.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = self.current();
        let registry = EndpointRegistry::load_reusing(source, Some(&previous), &process_env)?;
        check_instance_rules(&registry, self.message_mode_allowed)?;
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(registry);
        Ok(())
    }

    /// Reloads on SIGHUP and whenever the registry file or a key, certificate or CA file
    /// it names changes (checked every `poll`), logging each success or failure; a
    /// failed reload keeps the old registry. Stops when `shutdown` resolves.
    ///
    /// The SIGHUP handler is installed before this returns, so a SIGHUP sent afterwards
    /// cannot kill the process.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let endpoints = Arc::clone(self);
        let mut hangups = hangup_signals();
        let mut seen = endpoints.fingerprint();
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut ticks = tokio::time::interval(poll.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; the state it would see is `seen` already.
            ticks.tick().await;
            loop {
                let reason = tokio::select! {
                    () = &mut shutdown => break,
                    _ = ticks.tick() => "file change",
                    Some(()) = next_hangup(&mut hangups) => "SIGHUP",
                };
                // File reads, off the async threads.
                let reading = Arc::clone(&endpoints);
                let now = tokio::task::spawn_blocking(move || reading.fingerprint())
                    .await
                    .ok()
                    .flatten();
                if reason == "file change" && now == seen {
                    continue;
                }
                seen = now;
                let reloading = Arc::clone(&endpoints);
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => tracing::info!(
                        reason,
                        endpoints = endpoints.current().len(),
                        "endpoint registry reloaded"
                    ),
                    Ok(Err(error)) => tracing::error!(
                        reason,
                        %error,
                        "endpoint registry not reloaded; the previous one stays in use"
                    ),
                    Err(error) => {
                        tracing::error!(reason, %error, "endpoint registry reload failed")
                    }
                }
            }
        })
    }

    /// A hash of the registry file's and its referenced files' content (or the error
    /// reading each), so that a change of any is noticed; a file touched but unchanged
    /// is not a change. The files are small.
    fn fingerprint(&self) -> Option<u64> {
        let source = self.source.as_ref()?;
        let registry = self.current();
        let mut hasher = DefaultHasher::new();
        for path in std::iter::once(source).chain(registry.referenced_files.iter()) {
            path.hash(&mut hasher);
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) => e.kind().hash(&mut hasher),
            }
        }
        Some(hasher.finish())
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the endpoint registry reloads on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}
