//! The live registry: a `crate::reload::Reloadable` (shared, replaced whole on reload,
//! watched for file changes and SIGHUP), with this instance's rules checked on every load.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::reload::{Reloadable, ReloadableFile};

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
/// a request in flight finishes with the endpoint it started with (`crate::reload`).
pub struct Endpoints {
    file: Arc<Reloadable<EndpointRegistry, EndpointError>>,
}

impl ReloadableFile for EndpointRegistry {
    fn referenced_files(&self) -> &[PathBuf] {
        &self.referenced_files
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

impl Endpoints {
    /// Shares `registry`, loaded from `source` (reloads read it again; `None`: nothing to
    /// reload). With `message_mode_allowed` false, a registry holding a message-mode
    /// endpoint is refused, now and on every reload (the old one then stays).
    pub fn new(
        registry: EndpointRegistry,
        source: Option<PathBuf>,
        message_mode_allowed: bool,
    ) -> Result<Arc<Self>, EndpointError> {
        check_instance_rules(&registry, message_mode_allowed)?;
        // Unchanged entries keep their endpoint (and its token and connections).
        let load = move |path: &Path, previous: &EndpointRegistry| {
            let registry = EndpointRegistry::load_reusing(path, Some(previous), &process_env)?;
            check_instance_rules(&registry, message_mode_allowed)?;
            Ok(registry)
        };
        Ok(Arc::new(Endpoints {
            file: Arc::new(Reloadable::new("endpoint registry", registry, source, load)),
        }))
    }

    /// The registry now.
    pub fn current(&self) -> Arc<EndpointRegistry> {
        self.file.current()
    }

    /// The registry file, if there is one.
    pub fn source(&self) -> Option<&Path> {
        self.file.source()
    }

    /// Reads the file again and, if it is valid, replaces the registry; if not, the old
    /// registry stays and the error says why. Unchanged entries keep their endpoint (and
    /// its token and connections). With no file, nothing happens.
    pub fn reload(&self) -> Result<(), EndpointError> {
        self.file.reload()
    }

    /// Reloads on SIGHUP and whenever the registry file or a key, certificate or CA file
    /// it names changes (checked every `poll`), logging each success or failure; a
    /// failed reload keeps the old registry. Stops when `shutdown` resolves. The SIGHUP
    /// handler is installed before this returns.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.file.spawn_watcher(poll, shutdown)
    }
}
