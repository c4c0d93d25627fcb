//! One reloadable configuration file, held live: [`Reloadable`] shares the value loaded
//! from a file (an `Arc`, replaced whole on reload, so work in flight finishes with the
//! value it started with), reloads it on SIGHUP and whenever the file, or a file it names,
//! changes, and keeps the old value when the new file is bad, logging why (the loaders'
//! errors say `file:line:column`). The client registry (`identity::clients`) and the
//! endpoint registry (`delivery::endpoints`) are each one of these.
//!
//! Invariants: the value is only ever replaced whole, by one reload at a time; a failed
//! reload changes nothing; a file touched but unchanged is not a change (content hashes).

use std::collections::hash_map::DefaultHasher;
use std::fmt::Display;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// What a reloadable file's value tells its holder.
pub trait ReloadableFile: Send + Sync + 'static {
    /// The files besides the main one whose change is a change (keys, certificates).
    fn referenced_files(&self) -> &[PathBuf];
    /// How many entries it holds, for the log.
    fn entries(&self) -> usize;
    /// Adds anything else whose change must be noticed (none by default).
    fn fingerprint(&self, _hasher: &mut DefaultHasher) {}
}

/// Reads the file again, given the value it replaces (to reuse what did not change).
type Loader<T, E> = Box<dyn Fn(&Path, &T) -> Result<T, E> + Send + Sync>;

/// A value loaded from a file, shared and reloaded whole.
pub struct Reloadable<T, E> {
    /// What the log calls it: `client registry`, `endpoint registry`.
    what: &'static str,
    current: RwLock<Arc<T>>,
    source: Option<PathBuf>,
    load: Loader<T, E>,
    /// One reload at a time, so a slower reload of an older file cannot replace the value
    /// a later one made.
    reloading: Mutex<()>,
}

impl<T, E> std::fmt::Debug for Reloadable<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("what", &self.what)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl<T: ReloadableFile, E: Display + Send + 'static> Reloadable<T, E> {
    /// Shares `value`, loaded from `source` (reloads call `load` on it again; `None`:
    /// nothing to reload).
    pub fn new(
        what: &'static str,
        value: T,
        source: Option<PathBuf>,
        load: impl Fn(&Path, &T) -> Result<T, E> + Send + Sync + 'static,
    ) -> Self {
        Reloadable {
            what,
            current: RwLock::new(Arc::new(value)),
            source,
            load: Box::new(load),
            reloading: Mutex::new(()),
        }
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock only means a writer panicked between two whole-Arc states; the
        // Arc inside is still a complete value.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The file, if there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Reads the file again and, if it loads, replaces the value; if not, the old value
    /// stays and the error says why. With no file, nothing happens.
    pub fn reload(&self) -> Result<(), E> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let _one_at_a_time = match self.reloading.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = self.current();
        let value = (self.load)(source, &previous)?;
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(value);
        Ok(())
    }

    /// Reloads on SIGHUP and whenever the file or a file it names changes (checked every
    /// `poll`), logging each success or failure; a failed reload keeps the old value.
    /// Stops when `shutdown` resolves. The SIGHUP handler is installed before this
    /// returns, so a SIGHUP sent afterwards cannot kill the process.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let held = Arc::clone(self);
        let mut hangups = hangup_signals(self.what);
        let mut seen = held.fingerprint();
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut ticks = tokio::time::interval(poll.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; the state it would see is `seen` already.
            ticks.tick().await;
            let what = held.what;
            loop {
                let reason = tokio::select! {
                    () = &mut shutdown => break,
                    _ = ticks.tick() => "file change",
                    Some(()) = next_hangup(&mut hangups) => "SIGHUP",
                };
                // File reads, off the async threads.
                let reading = Arc::clone(&held);
                let now = tokio::task::spawn_blocking(move || reading.fingerprint())
                    .await
                    .ok()
                    .flatten();
                if reason == "file change" && now == seen {
                    continue;
                }
                seen = now;
                let reloading = Arc::clone(&held);
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => tracing::info!(
                        reason,
                        entries = held.current().entries(),
                        "{what} reloaded"
                    ),
                    Ok(Err(error)) => tracing::error!(
                        reason,
                        %error,
                        "{what} not reloaded; the previous one stays in use"
                    ),
                    Err(error) => tracing::error!(reason, %error, "{what} reload failed"),
                }
            }
        })
    }

    /// A hash of the file's and its referenced files' content (or the error reading
    /// each), and of what the value adds, so a change of any is noticed; a file touched
    /// but unchanged is not a change. The files are small. `None` without a file.
    pub fn fingerprint(&self) -> Option<u64> {
        let source = self.source.as_ref()?;
        let value = self.current();
        let mut hasher = DefaultHasher::new();
        for path in std::iter::once(source).chain(value.referenced_files().iter()) {
            path.hash(&mut hasher);
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) => e.kind().hash(&mut hasher),
            }
        }
        value.fingerprint(&mut hasher);
        Some(hasher.finish())
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals(what: &str) -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the {what} reloads on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals(_what: &str) -> Hangups {
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
