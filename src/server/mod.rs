//! The connection layer: accepts TCP connections (TLS on them when `[tls]` is
//! set), serves the router over HTTP/1.1 or HTTP/2 with hyper, and bounds what
//! any client that can reach the port may hold.
//!
//! - At most `server.max_connections` connections are served; a small reserve
//!   beyond them answers only `GET /healthz` and `GET /readyz` (anything else
//!   is a 503 with `Retry-After`), so probes still answer when the main slots
//!   are full. A connection beyond both waits `connection_wait_ms` for a slot
//!   and is closed if none frees; meanwhile nothing else is accepted (the
//!   kernel's backlog holds them), so open sockets stay bounded. When the
//!   main slots are full, connections idle for [`SHED_IDLE_AFTER`] or more (no
//!   request in progress) are closed to make room: held-open idle sockets
//!   cannot keep a client with a request waiting (issue 19's 600 idle
//!   connections made a referral create wait over a second).
//!   `server.health_listen` gives the probes an address of their own, served
//!   the same way with only reserve slots, on an OS thread of its own with its
//!   own single-threaded runtime: a storm of CPU-bound requests (megabyte
//!   Bundles parsed and validated) keeps the main runtime's workers busy, and
//!   probes waiting for a turn there missed their deadline (issue 19: 301 ms
//!   p99). The kernel's scheduler gives the probe thread its time slice
//!   whatever the main runtime is doing.
//! - A request head must arrive within `header_read_timeout_secs` (hyper's
//!   timer, which also runs while an HTTP/1 connection waits for its next
//!   request); a connection with no request in progress and nothing received
//!   for `keep_alive_timeout_secs` is closed; a body slower than
//!   `min_body_bytes_per_sec` is cut with 408 (`body`).
//! - Cleartext is HTTP/1.1 only unless `server.h2c` (prior knowledge); over
//!   TLS, HTTP/2 or HTTP/1.1 is chosen by ALPN, never by sniffing.
//! - Each request carries `ConnectInfo<SocketAddr>` and, after a verified
//!   client certificate, a [`PeerCertificate`].
//!
//! On shutdown nothing new is accepted, every connection is asked to finish
//! (HTTP/1 closes after its current answer, HTTP/2 sends GOAWAY), and after
//! the grace period the rest are dropped.

mod body;
mod io;
mod service;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::{ServerSettings, Settings};

pub use tls::{PeerCertificate, TlsError};

use io::{Activity, Tracked};
use service::RequestService;

/// A connection in the health reserve gets at most this long to send its
/// request and to sit idle: probes send theirs at once.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once on `server.health_listen`.
const HEALTH_LISTEN_CONNECTIONS: usize = 16;
/// When the main slots are full, a connection idle this long is closed to
/// make room for a new one (a client between keep-alive requests reconnects).
const SHED_IDLE_AFTER: Duration = Duration::from_millis(250);
/// When the main slots are full, how long a new connection waits for idle
/// ones to make room before it is offered the health reserve.
const SHED_WAIT: Duration = Duration::from_millis(150);
/// How often idle connections are asked again to make room while a new
/// connection waits.
const SHED_EVERY: Duration = Duration::from_millis(50);
/// After a connection is asked to close for being idle, how long it may take
/// to say goodbye (an HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The listener could not be set up.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What the connection layer enforces, from `[server]` (and `[tls]`).
#[derive(Debug, Clone)]
struct Limits {
    max_connections: usize,
    health_reserve: usize,
    connection_wait: Duration,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
    body_rate: Option<body::Rate>,
    h2c: bool,
    http2_max_concurrent_streams: u32,
    http2_keep_alive_interval: Option<Duration>,
    http2_keep_alive_timeout: Duration,
}

impl Limits {
    fn from_settings(settings: &ServerSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            health_reserve: settings.health_reserve_connections,
            connection_wait: Duration::from_millis(settings.connection_wait_ms),
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(settings.keep_alive_timeout_secs),
            body_rate: (settings.min_body_bytes_per_sec > 0).then(|| body::Rate {
                bytes_per_sec: settings.min_body_bytes_per_sec,
                grace: Duration::from_secs(settings.body_grace_secs),
            }),
            h2c: settings.h2c,
            http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
            http2_keep_alive_interval: (settings.http2_keep_alive_interval_secs > 0)
                .then(|| Duration::from_secs(settings.http2_keep_alive_interval_secs)),
            http2_keep_alive_timeout: Duration::from_secs(settings.http2_keep_alive_timeout_secs),
        }
    }
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
    /// `server.health_listen`: probes only, plain HTTP. A std listener: it is
    /// registered with the probe thread's runtime, not the main one (whose
    /// busy workers would otherwise have to notice its connections).
    health_listener: Option<std::net::TcpListener>,
    limits: Limits,
    tls: Option<Arc<tls::Tls>>,
}

impl Server {
    /// Loads the TLS material (if configured) and binds `settings.listen`.
    pub async fn bind(settings: &Settings) -> Result<Self, ServerError> {
        let tls = if settings.tls.enabled() {
            let tls_settings = settings.tls.clone();
            // File reads, off the async threads.
            let loaded = tokio::task::spawn_blocking(move || tls::Tls::load(tls_settings))
                .await
                .map_err(|e| TlsError::Internal(e.to_string()))??;
            Some(Arc::new(loaded))
        } else {
            None
        };
        let bind_error = |source| ServerError::Bind {
            address: settings.listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(bind_error)?;
        let address = listener.local_addr().map_err(bind_error)?;
        let health_listener = match settings.server.health_listen {
            Some(health) => {
                let health_error = |source| ServerError::Bind {
                    address: health,
                    source,
                };
                // Binding a socket does not block: no need for the blocking pool.
                let listener = std::net::TcpListener::bind(health).map_err(health_error)?;
                listener.set_nonblocking(true).map_err(health_error)?;
                Some(listener)
            }
            None => None,
        };
        Ok(Self {
            listener,
            address,
            health_listener,
            limits: Limits::from_settings(&settings.server),
            tls,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The probes' own address (`server.health_listen`), when there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Whether connections are served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `router` until `shutdown` completes, then lets connections
    /// finish their requests for up to `grace` and drops the rest.
    pub async fn serve<F>(self, router: Router, shutdown: F, grace: Duration)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
        // Every connection task holds a sender; when all are gone, all are done.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let shared = Arc::new(Shared {
            router,
            main: Arc::new(Semaphore::new(self.limits.max_connections)),
            reserve: Arc::new(Semaphore::new(self.limits.health_reserve)),
            limits: self.limits,
            tls: self.tls,
            make_room: Some(watch::channel(()).0),
        });
        let watcher = shared
            .tls
            .as_ref()
            .map(|tls| Arc::clone(tls).spawn_watcher(phase_rx.clone()));
        let health = self.health_listener.map(|listener| {
            // Every connection here is a reserve one: probes only, short timeouts.
            let probes = Arc::new(Shared {
                router: shared.router.clone(),
                main: Arc::new(Semaphore::new(0)),
                reserve: Arc::new(Semaphore::new(HEALTH_LISTEN_CONNECTIONS)),
                limits: Limits {
                    h2c: false,
                    ..shared.limits.clone()
                },
                tls: None,
                // Short timeouts only, and no main slots to make room in.
                make_room: None,
            });
            spawn_probe_thread(listener, probes, phase_rx.clone(), done_tx.clone())
        });
        accept_loop(
            self.listener,
            Arc::clone(&shared),
            shutdown,
            phase_rx.clone(),
            done_tx.clone(),
        )
        .await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = phase_tx.send(Phase::Draining);
        if let Some(Some(health)) = health {
            let _ = health.await;
        }
        drop(done_tx);
        if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "requests still running after the shutdown grace period; stopping anyway"
            );
            let _ = phase_tx.send(Phase::Stop);
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
    }
}

/// Serves the probes' own listener on a new OS thread with a single-threaded
/// runtime of its own, until the server stops serving; the receiver hears
/// when that thread is done. `None` (logged) if the thread or its runtime
/// cannot be made: the probes' address then accepts nothing, which a load
/// balancer sees as down, as it should.
fn spawn_probe_thread(
    listener: std::net::TcpListener,
    probes: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (finished, finished_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sprig-probes".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the probes' runtime: server.health_listen is not served");
                    return;
                }
            };
            runtime.block_on(async move {
                // Registered with this thread's runtime, so only it polls the socket.
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "cannot serve server.health_listen");
                        return;
                    }
                };
                let mut stopping = phase.clone();
                let stop = async move {
                    let _ = stopping.wait_for(|phase| *phase != Phase::Serving).await;
                };
                accept_loop(listener, probes, stop, phase, done).await;
            });
            // Probes in flight end with the runtime: each is a few bytes, and
            // the server is stopping.
            drop(runtime);
            let _ = finished.send(());
        });
    match spawned {
        Ok(_) => Some(finished_rx),
        Err(error) => {
            tracing::error!(%error, "cannot start the probes' thread: server.health_listen is not served");
            None
        }
    }
}

/// Accepts connections on `listener` until `stop` completes, each into a
/// slot of `shared` (or closed when none frees in time).
async fn accept_loop<S>(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: S,
    phase: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
) where
    S: Future<Output = ()> + Send,
{
    let mut refused = Refusals::default();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::error!(%error, "cannot accept connections; retrying in 1 s");
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let room = match shared.try_slot() {
            Some(slot) => Some(slot),
            None => {
                tokio::select! {
                    () = &mut stop => break,
                    slot = shared.make_room() => slot,
                }
            }
        };
        let slot = match room.or_else(|| shared.try_reserve()) {
            Some(slot) => slot,
            None => {
                let waited = tokio::select! {
                    () = &mut stop => break,
                    slot = shared.wait_for_slot() => slot,
                };
                match waited {
                    Some(slot) => slot,
                    None => {
                        refused.note(shared.limits.max_connections);
                        continue;
                    }
                }
            }
        };
        let connection = Connection {
            // Reserve connections have their own short timeouts.
            make_room: shared
                .make_room
                .as_ref()
                .filter(|_| !slot.health_only())
                .map(watch::Sender::subscribe),
            shared: Arc::clone(&shared),
            peer,
            slot,
            phase: phase.clone(),
            _done: done.clone(),
        };
        tokio::spawn(connection.run(stream));
    }
}

/// Connections closed for want of a slot, logged at most once per
/// [`REFUSAL_LOG_INTERVAL`] so an attack cannot flood the log.
#[derive(Default)]
struct Refusals {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

/// The shortest time between two "connection limit reached" lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Refusals {
    fn note(&mut self, max_connections: usize) {
        self.since_logged += 1;
        if self
            .logged_at
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            max_connections,
            closed = self.since_logged,
            "connection limit reached; new connections were closed unserved"
        );
        self.since_logged = 0;
        self.logged_at = Some(std::time::Instant::now());
    }
}

/// Where the server is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish the request in progress, then close.
    Draining,
    /// Close now.
    Stop,
}

/// What every connection shares.
struct Shared {
    router: Router,
    limits: Limits,
    tls: Option<Arc<tls::Tls>>,
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    /// Signalled when the main slots are full: connections idle for
    /// [`SHED_IDLE_AFTER`] close. `None` where there are no main slots.
    make_room: Option<watch::Sender<()>>,
}

/// A connection's place: a main slot, or one of the health reserve.
enum Slot {
    Main(#[allow(dead_code)] OwnedSemaphorePermit),
    HealthOnly(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl Slot {
    fn health_only(&self) -> bool {
        matches!(self, Slot::HealthOnly(_))
    }
}

impl Shared {
    /// A main slot, if one is free now (without waiting).
    fn try_slot(&self) -> Option<Slot> {
        Arc::clone(&self.main)
            .try_acquire_owned()
            .ok()
            .map(Slot::Main)
    }

    /// A health-reserve slot, if one is free now.
    fn try_reserve(&self) -> Option<Slot> {
        Arc::clone(&self.reserve)
            .try_acquire_owned()
            .ok()
            .map(Slot::HealthOnly)
    }

    /// The main slots are full: asks idle connections to close, again every
    /// [`SHED_EVERY`], and waits up to [`SHED_WAIT`] for a main slot to free.
    async fn make_room(&self) -> Option<Slot> {
        let make_room = self.make_room.as_ref()?;
        let waited = tokio::time::timeout(SHED_WAIT, async {
            loop {
                make_room.send_replace(());
                tokio::select! {
                    permit = Arc::clone(&self.main).acquire_owned() => return permit.ok(),
                    () = tokio::time::sleep(SHED_EVERY) => {}
                }
            }
        })
        .await;
        waited.ok().flatten().map(Slot::Main)
    }

    /// The first slot to free within `connection_wait`, if any.
    async fn wait_for_slot(&self) -> Option<Slot> {
        let main = Arc::clone(&self.main);
        let reserve = Arc::clone(&self.reserve);
        let either = async move {
            tokio::select! {
                biased;
                permit = main.acquire_owned() => permit.ok().map(Slot::Main),
                permit = reserve.acquire_owned() => permit.ok().map(Slot::HealthOnly),
            }
        };
        tokio::time::timeout(self.limits.connection_wait, either)
            .await
            .ok()
            .flatten()
    }

    /// The HTTP builder for one connection.
    fn builder(&self, protocol: Protocol, health_only: bool) -> auto::Builder<TokioExecutor> {
        let limits = &self.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let header_timeout = if health_only {
            limits.header_read_timeout.min(RESERVE_TIMEOUT)
        } else {
            limits.header_read_timeout
        };
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(!health_only);
        let http2 = &mut builder.http2();
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(if health_only {
                1
            } else {
                limits.http2_max_concurrent_streams
            })
            .max_pending_accept_reset_streams(20)
            .max_header_list_size(64 * 1024);
        if let Some(interval) = limits.http2_keep_alive_interval {
            http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(limits.http2_keep_alive_timeout);
        }
        match protocol {
            Protocol::Http1 => builder.http1_only(),
            Protocol::Http2 => builder.http2_only(),
            Protocol::Sniff => builder,
        }
    }
}

/// How a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// HTTP/2 if the connection opens with its preface, else HTTP/1 (h2c).
    Sniff,
}

/// One accepted connection, until it closes.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Slot,
    phase: watch::Receiver<Phase>,
    /// Changes when the main slots are full ([`Shared::make_room`]).
    make_room: Option<watch::Receiver<()>>,
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let stream = Tracked::new(stream, Arc::clone(&activity));
        let health_only = self.slot.health_only();
        match self.shared.tls.clone() {
            None => {
                let protocol = if self.shared.limits.h2c {
                    Protocol::Sniff
                } else {
                    Protocol::Http1
                };
                activity.count_reads(protocol != Protocol::Http2);
                let facts = service::Facts {
                    peer: self.peer,
                    peer_certificate: None,
                    health_only,
                    tls: false,
                };
                self.drive(TokioIo::new(stream), protocol, facts, activity)
                    .await;
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                // The handshake is bounded like a request head.
                let limit = self.shared.limits.header_read_timeout;
                let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                };
                let session = stream.get_ref().1;
                let protocol = match session.alpn_protocol() {
                    Some(b"h2") => Protocol::Http2,
                    _ => Protocol::Http1,
                };
                let peer_certificate = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|der| PeerCertificate::from_der(der))
                    .map(Arc::new);
                if let Some(certificate) = &peer_certificate {
                    tracing::debug!(
                        peer = %self.peer,
                        subject = %certificate.subject,
                        dns_names = ?certificate.dns_names,
                        "client certificate verified"
                    );
                }
                activity.count_reads(protocol == Protocol::Http1);
                let facts = service::Facts {
                    peer: self.peer,
                    peer_certificate,
                    health_only,
                    tls: true,
                };
                self.drive(TokioIo::new(stream), protocol, facts, activity)
                    .await;
            }
        }
    }

    /// Serves HTTP on `io` until the client closes, the connection idles out
    /// or the server stops.
    async fn drive<I>(
        mut self,
        io: I,
        protocol: Protocol,
        facts: service::Facts,
        activity: Arc<Activity>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let health_only = facts.health_only;
        let builder = self.shared.builder(protocol, health_only);
        let service = RequestService::new(
            self.shared.router.clone(),
            Arc::new(facts),
            Arc::clone(&activity),
            self.shared.limits.body_rate,
        );
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let idle_limit = if health_only {
            self.shared.limits.keep_alive_timeout.min(RESERVE_TIMEOUT)
        } else {
            self.shared.limits.keep_alive_timeout
        };
        let mut checks = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(50)));
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        let mut drop_at: Option<tokio::time::Instant> = None;
        if *self.phase.borrow_and_update() != Phase::Serving {
            connection.as_mut().graceful_shutdown();
            closing = true;
        }
        let mut make_room = self.make_room.take();
        loop {
            let deadline = async {
                match drop_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let asked_for_room = async {
                match make_room.as_mut() {
                    Some(receiver) => receiver.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    break;
                }
                changed = self.phase.changed() => {
                    let phase = if changed.is_ok() { *self.phase.borrow_and_update() } else { Phase::Stop };
                    match phase {
                        Phase::Serving => {}
                        Phase::Draining => {
                            if !closing {
                                connection.as_mut().graceful_shutdown();
                                closing = true;
                            }
                        }
                        Phase::Stop => break,
                    }
                }
                _ = checks.tick(), if !closing => {
                    if activity.idle_for() >= idle_limit {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        drop_at = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
                asked = asked_for_room, if !closing => {
                    if !asked {
                        make_room = None;
                    } else if activity.idle_for() >= SHED_IDLE_AFTER {
                        tracing::debug!(peer = %self.peer, "closing an idle connection to make room");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        drop_at = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
                () = deadline => break,
            }
        }
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::Extension;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::*;
    use crate::config::ClientAuth;

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate of `ca` (PEM certificate, PEM key).
    fn issue(
        ca: &Ca,
        dn: &[(DnType, &str)],
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        for (kind, value) in dn {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("written");
        path
    }

    /// What a handler sees of the connection.
    async fn whoami(
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        certificate: Option<Extension<PeerCertificate>>,
    ) -> String {
        match certificate {
            Some(Extension(c)) => {
                format!("{} {} [{}]", peer.ip(), c.subject, c.dns_names.join(","))
            }
            None => format!("{} none", peer.ip()),
        }
    }

    #[tokio::test]
    async fn a_verified_client_certificate_reaches_the_handler() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::TempDir::new().expect("dir");
        let server_ca = ca("Server CA");
        let clients_ca = ca("Clients CA");
        let (cert, key) = issue(
            &server_ca,
            &[(DnType::CommonName, "sprig")],
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..Settings::default()
        };
        settings.tls.cert_file = Some(write(dir.path(), "server.crt", &cert));
        settings.tls.key_file = Some(write(dir.path(), "server.key", &key));
        settings.tls.client_ca_file = Some(write(dir.path(), "clients.crt", &clients_ca.pem));
        settings.tls.client_auth = Some(ClientAuth::Optional);
        let server = Server::bind(&settings).await.expect("bound");
        let port = server.local_addr().port();
        let router = Router::new().route("/whoami", get(whoami));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(
            router,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));

        let (client_cert, client_key) = issue(
            &clients_ca,
            &[
                (DnType::CommonName, "GP system"),
                (DnType::OrganizationName, "Practice A81001"),
            ],
            &["gp-system.example", "gp.example"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let roots = reqwest::Certificate::from_pem_bundle(server_ca.pem.as_bytes()).expect("roots");
        let url = format!("https://localhost:{port}/whoami");
        let with_certificate = reqwest::Client::builder()
            .tls_certs_only(roots.clone())
            .identity(
                reqwest::Identity::from_pem(format!("{client_cert}{client_key}").as_bytes())
                    .expect("identity"),
            )
            .build()
            .expect("client");
        let seen = with_certificate
            .get(&url)
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        assert_eq!(
            seen,
            "127.0.0.1 CN=GP system, O=Practice A81001 [gp-system.example,gp.example]"
        );
        let without = reqwest::Client::builder()
            .tls_certs_only(roots)
            .build()
            .expect("client");
        let seen = without
            .get(&url)
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        assert_eq!(seen, "127.0.0.1 none");

        let _ = stop.send(());
        serving.await.expect("stopped");
    }
}
