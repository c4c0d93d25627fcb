//! `spawn_app()`: a real Sprig on an ephemeral port with a fresh database,
//! spoken to over real HTTP. Set `TEST_LOG=1` to see its logs.
//!
//! The backend is SQLite (a file in a temporary directory) unless
//! `TEST_BACKEND=postgres`: then each test directory gets a fresh
//! PostgreSQL database of its own on `TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`), made on first use and found again
//! when a test restarts Sprig on the same directory. `backends.rs` runs the
//! whole suite that way, so `cargo test` covers both.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use serde_json::Value;
use sprig::app::Application;
use sprig::config::Settings;
use sprig::store::Store;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every line every spawned app logs, at every level of Sprig's own code (the libraries'
/// chatter at warn), for `audit::logs_carry_ids_never_names_numbers_notes_or_tokens`.
/// One subscriber for the whole test process: the server's connection tasks run on
/// threads no per-test subscriber reaches.
pub static LOGS: LazyLock<Captured> = LazyLock::new(Captured::default);

static TRACING: LazyLock<()> = LazyLock::new(|| {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let captured = LOGS.clone();
    let capture = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || captured.clone());
    let shown = std::env::var_os("TEST_LOG")
        .is_some()
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let filter = tracing_subscriber::EnvFilter::new(
        "trace,sqlx=warn,hyper=warn,hyper_util=warn,h2=warn,rustls=warn,reqwest=warn,tower=warn,wiremock=warn,tokio=warn,runtime=warn",
    );
    let _already = tracing_subscriber::registry()
        .with(filter)
        .with(capture)
        .with(shown)
        .try_init();
});

/// A writer that keeps what it is given.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sample referral shipped in `examples/`.
pub fn sample_referral() -> Value {
    serde_json::from_str(&sample_referral_text()).expect("the sample referral is JSON")
}

/// The sample referral's text, with an identifier value of its own: each
/// call is a new referral, not a resubmission of the last one (which Sprig
/// would answer with the referral it already holds).
pub fn sample_referral_text() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/referral-servicerequest.json"
    ))
    .expect("examples/referral-servicerequest.json exists");
    let unique = format!("REF-TEST-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    assert!(
        text.contains(SAMPLE_IDENTIFIER),
        "the sample's identifier moved"
    );
    text.replace(SAMPLE_IDENTIFIER, &unique)
}

/// The business identifier value in `examples/referral-servicerequest.json`.
pub const SAMPLE_IDENTIFIER: &str = "REF-2026-000123";

/// A running gateway.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A client with no default headers.
    pub client: reqwest::Client,
    /// The SQLite file.
    pub db_path: PathBuf,
    /// The store the server uses (for inspecting and arranging state).
    pub store: Store,
    dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A gateway with default settings and a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A gateway with settings adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    spawn_app_in(dir, configure).await
}

/// A gateway using the database in `dir` (which may already hold data).
pub async fn spawn_app_in(dir: Arc<TempDir>, configure: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    // SQLite's memory as the `sprig` binary sets it up (a no-op once SQLite is in use).
    sprig::allocator::serve_sqlite();
    let db_path = dir.path().join("sprig.db");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: database_for(dir.path()).await,
        ..Settings::default()
    };
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the gateway starts");
    let address = format!("http://{}", app.local_addr());
    let store = app.store();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        address,
        // Redirects are part of what is tested (the console answers 303s): never followed.
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Shorter than the server's keep-alive timeout (5 s): a pooled connection
            // reused just as the server closes it for idleness fails with
            // `IncompleteMessage`, the race every HTTP/1.1 client must stay clear of.
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("client"),
        db_path,
        store,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// Whether this run's apps use PostgreSQL (`TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL server tests use (without a database name).
pub fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The `database` setting for an app on `dir`: its SQLite file, or on
/// PostgreSQL the database named in `dir/postgres-database`, created (empty)
/// the first time (byte-order collation; `backends::text_orders_byte_by_byte_…` runs on
/// a linguistic one).
pub async fn database_for(dir: &std::path::Path) -> String {
    if !on_postgres() {
        return dir.join("sprig.db").display().to_string();
    }
    let marker = dir.join("postgres-database");
    let name = match std::fs::read_to_string(&marker) {
        Ok(name) => name,
        Err(_) => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            let name = format!(
                "sprig_t_{stamp}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
                "{}/postgres",
                postgres_server()
            ))
            .await
            .expect("PostgreSQL at TEST_POSTGRES (run .ci/run, which starts it)");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C' ENCODING 'UTF8'"
            )))
            .execute(&mut admin)
            .await
            .expect("create the test database");
            std::fs::write(&marker, &name).expect("remember the database");
            name
        }
    };
    format!("{}/{name}", postgres_server())
}

impl TestApp {
    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The directory holding the database, to restart on it.
    pub fn dir(&self) -> Arc<TempDir> {
        Arc::clone(&self.dir)
    }

    /// A separate connection pool on the gateway's database (either
    /// backend), to check what was really written.
    pub async fn db_pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let database = database_for(self.dir.path()).await;
        let url = if on_postgres() {
            database
        } else {
            format!("sqlite:{}", self.db_path.display())
        };
        sqlx::AnyPool::connect(&url)
            .await
            .expect("open the database")
    }

    /// How many resource versions the database holds.
    pub async fn stored_version_count(&self) -> i64 {
        self.row_count("resource_versions").await
    }

    /// How many rows `table` holds (a table name the test gives, never input).
    pub async fn row_count(&self, table: &str) -> i64 {
        let (count,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&self.db_pool().await)
                .await
                .expect("count");
        count
    }

    /// Checks every stored version of a ServiceRequest, Task and Observation has exactly
    /// one Provenance whose `target` is that version (issue 17), and returns how many
    /// versions there are. Plain SQL and text, so it runs on either backend.
    pub async fn assert_every_version_has_its_provenance(&self) -> usize {
        let pool = self.db_pool().await;
        let versions: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT resource_type, id, version_id FROM resource_versions \
             WHERE resource_type IN ('ServiceRequest', 'Task', 'Observation')",
        )
        .fetch_all(&pool)
        .await
        .expect("versions");
        let mut expected: Vec<String> = versions
            .iter()
            .map(|(t, id, v)| format!("{t}/{id}/_history/{v}"))
            .collect();
        let provenance: Vec<(String,)> = sqlx::query_as(
            "SELECT resource FROM resource_versions WHERE resource_type = 'Provenance'",
        )
        .fetch_all(&pool)
        .await
        .expect("provenance");
        let mut targets: Vec<String> = provenance
            .iter()
            .flat_map(|(json,)| {
                let resource: serde_json::Value = serde_json::from_str(json).expect("JSON");
                resource["target"]
                    .as_array()
                    .expect("target")
                    .iter()
                    .map(|t| t["reference"].as_str().expect("reference").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        expected.sort();
        targets.sort();
        assert_eq!(targets, expected, "one Provenance per version");
        expected.len()
    }

    /// POSTs `body` to `/fhir/ServiceRequest` as FHIR JSON.
    pub async fn post_referral(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Signals shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server gracefully and waits until it has closed the database.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request body sent chunk by chunk as the test pushes them into the
/// returned sender (dropping it ends the body), to hold a request in flight.
pub fn streamed_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// Reads a response body as JSON.
pub async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Asserts `outcome` is an OperationOutcome and returns its issues.
pub fn issues(outcome: &Value) -> Vec<Value> {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"].as_array().cloned().unwrap_or_default()
}

/// The `expression`s of every issue.
pub fn expressions(outcome: &Value) -> Vec<String> {
    issues(outcome)
        .iter()
        .filter_map(|i| i["expression"][0].as_str().map(str::to_owned))
        .collect()
}

/// The Sprig message ids of every issue.
pub fn message_ids(outcome: &Value) -> Vec<String> {
    issues(outcome)
        .iter()
        .filter_map(|i| {
            i["details"]["coding"][0]["code"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A copy of `resource` without `id` and `meta`, for comparing what was
/// sent with what was stored.
pub fn without_server_fields(resource: &Value) -> Value {
    let mut copy = resource.clone();
    if let Some(map) = copy.as_object_mut() {
        map.shift_remove("id");
        map.shift_remove("meta");
    }
    copy
}
