//! Delivery figures (issue 5), measured end to end: a real Sprig (in this
//! process, real HTTP, a real SQLite file) delivering to a local FHIR
//! endpoint (a small axum server, also in this process).
//!
//! 1. Latency from a stage change (the `POST /api/referrals/{id}/transitions`
//!    being sent) to the new Task version's arrival at the endpoint: p50, p99.
//! 2. Drain: 10,000 updates are made while the endpoint is down (connection
//!    refused); the endpoint comes up and the time until all are delivered
//!    gives the drain rate. Per-destination concurrency is the default (4) and
//!    16.
//! 3. Memory (VmRSS of the process) before the backlog and while the 10,000
//!    updates wait.
//!
//! 4. Intake against delivery (issue 20): 16 clients create referrals as fast
//!    as Sprig takes them for `DELIVERY_INTAKE_SECS` (20) while the endpoint
//!    is up: referrals in and Task versions out per second, the backlog, and
//!    its drain once intake stops (deployed backoff settings).
//! 5. Outage with the deployed backoff (issue 20): the backlog is made while
//!    the endpoint is down, held until `DELIVERY_OUTAGE_SECS` (60) have
//!    passed so the heads back off, and the time from the endpoint's return
//!    to the last arrival is measured.
//!
//! `cargo bench --bench delivery` (`DELIVERY_BACKLOG=N` to change the
//! backlog, `DELIVERY_ONLY=latency,drain,intake,outage` to pick).

// Tests and benches may unwrap: a failed assumption there is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use serde_json::{Value, json};
use sprig::app::Application;
use sprig::config::Settings;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Arrival times of Task versions, keyed by `Task/id/version`.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<String, Instant>>,
    count: Mutex<usize>,
    changed: Notify,
}

async fn receive(
    State(arrivals): State<Arc<Arrivals>>,
    _headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Ok(task) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let key = format!(
        "{}/{}",
        task["id"].as_str().unwrap_or_default(),
        task["meta"]["versionId"].as_str().unwrap_or_default()
    );
    arrivals
        .at
        .lock()
        .expect("lock")
        .entry(key)
        .or_insert_with(Instant::now);
    *arrivals.count.lock().expect("lock") += 1;
    arrivals.changed.notify_waiters();
    StatusCode::OK
}

async fn start_receiver(listener: TcpListener, arrivals: Arc<Arrivals>) {
    let app = Router::new()
        .route("/fhir/Task/{id}", put(receive))
        .with_state(arrivals);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

struct Gateway {
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

async fn start_gateway(receiver: SocketAddr, max_in_flight: usize) -> Gateway {
    start_gateway_with(receiver, max_in_flight, true).await
}

/// `fast_retries`: backoff from 200 ms to at most 1 s (a returning endpoint
/// is noticed within a second whatever Sprig does); otherwise the defaults
/// (1 s doubling to 15 minutes), as deployed.
async fn start_gateway_with(
    receiver: SocketAddr,
    max_in_flight: usize,
    fast_retries: bool,
) -> Gateway {
    let dir = TempDir::new().expect("temporary directory");
    let registry = dir.path().join("endpoints.toml");
    std::fs::write(
        &registry,
        format!(
            "[[endpoint]]\nods_code = \"K83999\"\nbase_url = \"http://{receiver}/fhir\"\nmode = \"rest\"\nauth = {{ type = \"none\" }}\nmax_in_flight = {max_in_flight}\n"
        ),
    )
    .expect("registry");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: dir.path().join("sprig.db").display().to_string(),
        ..Settings::default()
    };
    settings.delivery.endpoints = Some(registry);
    if fast_retries {
        settings.delivery.max_backoff_secs = 1;
        settings.delivery.initial_backoff_ms = 200;
    }
    settings.log.level = "warn".into();
    let app = Application::build(settings).await.expect("Sprig starts");
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Gateway {
        base,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

fn referral_text(n: usize, run: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/referral-servicerequest.json"
    ))
    .expect("example");
    text.replace("REF-2026-000123", &format!("BENCH-{run}-{n}"))
}

/// Creates a referral; returns (referral id, Task id).
async fn refer(gateway: &Gateway, n: usize, run: &str) -> (String, String) {
    let created: Value = gateway
        .client
        .post(format!("{}/fhir/ServiceRequest", gateway.base))
        .header("content-type", "application/fhir+json")
        .body(referral_text(n, run))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    let record: Value = gateway
        .client
        .get(format!("{}/api/referrals/{id}", gateway.base))
        .send()
        .await
        .expect("record")
        .json()
        .await
        .expect("JSON");
    (id, record["task_id"].as_str().expect("task").to_owned())
}

async fn transition(gateway: &Gateway, id: &str, to: &str) {
    let response = gateway
        .client
        .post(format!("{}/api/referrals/{id}/transitions", gateway.base))
        .json(&json!({"to": to}))
        .send()
        .await
        .expect("transition");
    assert_eq!(response.status(), 200);
}

async fn wait_for(arrivals: &Arrivals, count: usize, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        let notified = arrivals.changed.notified();
        if *arrivals.count.lock().expect("lock") >= count {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn latency(samples: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let receiver = listener.local_addr().expect("address");
    let arrivals = Arc::new(Arrivals::default());
    start_receiver(listener, Arc::clone(&arrivals)).await;
    let gateway = start_gateway(receiver, 4).await;
    let mut referrals = Vec::new();
    for n in 0..samples {
        referrals.push(refer(&gateway, n, "latency").await);
    }
    assert!(wait_for(&arrivals, samples, Duration::from_secs(60)).await);
    let mut latencies = Vec::new();
    for (id, task) in &referrals {
        let sent = Instant::now();
        transition(&gateway, id, "accepted").await;
        let key = format!("{task}/2");
        let started = Instant::now();
        let arrived = loop {
            let notified = arrivals.changed.notified();
            if let Some(at) = arrivals.at.lock().expect("lock").get(&key).copied() {
                break at;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "not delivered");
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        };
        latencies.push(arrived.saturating_duration_since(sent));
    }
    latencies.sort();
    println!(
        "latency, stage change sent -> Task version received ({samples} changes, one at a time): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
}

async fn drain(backlog: usize, max_in_flight: usize) {
    // Reserve a port, then leave it closed: the endpoint is down.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver = reserved.local_addr().expect("address");
    drop(reserved);
    let gateway = start_gateway(receiver, max_in_flight).await;
    let rss_before = rss_mib();
    // Five updates per referral: received, accepted, contacted, plan agreed, in support.
    let referrals = backlog.div_ceil(5);
    let made = Instant::now();
    for n in 0..referrals {
        let (id, _task) = refer(&gateway, n, &format!("drain{max_in_flight}")).await;
        for stage in ["accepted", "contacted", "plan-agreed", "in-support"] {
            transition(&gateway, &id, stage).await;
        }
    }
    let total = referrals * 5;
    let making = made.elapsed();
    let queue: Value = gateway
        .client
        .get(format!("{}/api/endpoints", gateway.base))
        .send()
        .await
        .expect("endpoints")
        .json()
        .await
        .expect("JSON");
    let waiting = queue["endpoints"][0]["pending"].as_i64().unwrap_or(-1);
    let rss_waiting = rss_mib();

    let listener = TcpListener::bind(receiver).await.expect("the port again");
    let arrivals = Arc::new(Arrivals::default());
    let up = Instant::now();
    start_receiver(listener, Arc::clone(&arrivals)).await;
    let done = wait_for(&arrivals, total, Duration::from_secs(600)).await;
    let draining = up.elapsed();
    let received = *arrivals.count.lock().expect("lock");
    println!(
        "drain, max_in_flight {max_in_flight}: {waiting} updates waiting (made in {:.1} s); endpoint up -> {received} received in {:.2} s = {:.0} updates/s{}",
        making.as_secs_f64(),
        draining.as_secs_f64(),
        received as f64 / draining.as_secs_f64(),
        if done { "" } else { " (INCOMPLETE)" }
    );
    println!(
        "memory (VmRSS, whole bench process incl. client and receiver): {rss_before:.1} MiB before the backlog, {rss_waiting:.1} MiB with {waiting} updates waiting"
    );
}

/// Creates a referral without reading anything back (intake at full speed);
/// false when Sprig answered 503 (its writer busy past the wait: the sender
/// would retry).
async fn post_referral(gateway: &Gateway, n: usize, run: &str) -> bool {
    let response = gateway
        .client
        .post(format!("{}/fhir/ServiceRequest", gateway.base))
        .header("content-type", "application/fhir+json")
        .body(referral_text(n, run))
        .send()
        .await
        .expect("create");
    match response.status().as_u16() {
        201 => true,
        503 => false,
        other => panic!("creating a referral answered {other}"),
    }
}

/// Intake against delivery: `clients` concurrent senders create referrals
/// for `secs` seconds while the endpoint is up; every second, how many were
/// created and delivered (one Task version each), and the backlog; then how
/// long the backlog takes to drain once intake stops.
async fn intake(secs: u64, clients: usize, max_in_flight: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let receiver = listener.local_addr().expect("address");
    let arrivals = Arc::new(Arrivals::default());
    start_receiver(listener, Arc::clone(&arrivals)).await;
    let gateway = Arc::new(start_gateway_with(receiver, max_in_flight, false).await);
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for client in 0..clients {
        let (gateway, created, busy, stop) = (
            Arc::clone(&gateway),
            Arc::clone(&created),
            Arc::clone(&busy),
            Arc::clone(&stop),
        );
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if post_referral(&gateway, n, &format!("intake{max_in_flight}-{client}")).await {
                    created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut max_backlog = 0usize;
    for second in 1..=secs {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let made = created.load(std::sync::atomic::Ordering::Relaxed);
        let received = *arrivals.count.lock().expect("lock");
        max_backlog = max_backlog.max(made.saturating_sub(received));
        samples.push(format!("{made}/{received}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }
    let intake_time = started.elapsed();
    let made = created.load(std::sync::atomic::Ordering::Relaxed);
    let received_at_stop = *arrivals.count.lock().expect("lock");
    let done = wait_for(&arrivals, made, Duration::from_secs(600)).await;
    let drain_time = started.elapsed() - intake_time;
    println!(
        "intake, max_in_flight {max_in_flight}, {clients} clients for {secs} s: {made} referrals = {:.0}/s in; {received_at_stop} delivered meanwhile = {:.0}/s out; largest backlog {max_backlog}; the {} left drained in {:.2} s{}",
        made as f64 / intake_time.as_secs_f64(),
        received_at_stop as f64 / intake_time.as_secs_f64(),
        made.saturating_sub(received_at_stop),
        drain_time.as_secs_f64(),
        if done { "" } else { " (INCOMPLETE)" }
    );
    println!(
        "  created/delivered at each second: {}; {} creates answered 503 (writer busy)",
        samples.join(" "),
        busy.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A practice down for a while with the deployed backoff (1 s doubling to
/// 15 minutes): `backlog` updates wait, each referral's head backing off on
/// its own; then the endpoint returns and the time to receive them all is
/// measured.
async fn outage(backlog: usize, outage_secs: u64) {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver = reserved.local_addr().expect("address");
    drop(reserved);
    let gateway = start_gateway_with(receiver, 4, false).await;
    let referrals = backlog.div_ceil(5);
    let down = Instant::now();
    for n in 0..referrals {
        let (id, _task) = refer(&gateway, n, "outage").await;
        for stage in ["accepted", "contacted", "plan-agreed", "in-support"] {
            transition(&gateway, &id, stage).await;
        }
    }
    let total = referrals * 5;
    let making = down.elapsed();
    if let Some(rest) = Duration::from_secs(outage_secs).checked_sub(making) {
        tokio::time::sleep(rest).await;
    }
    let listener = TcpListener::bind(receiver).await.expect("the port again");
    let arrivals = Arc::new(Arrivals::default());
    let up = Instant::now();
    start_receiver(listener, Arc::clone(&arrivals)).await;
    let first = wait_for(&arrivals, 1, Duration::from_secs(900)).await;
    let first_after = up.elapsed();
    let done = wait_for(&arrivals, total, Duration::from_secs(900)).await;
    let draining = up.elapsed();
    let received = *arrivals.count.lock().expect("lock");
    println!(
        "outage, deployed backoff: {total} updates of {referrals} referrals waited {:.0} s (made in {:.1} s); endpoint up -> first received after {:.2} s{}, all {received} after {:.2} s = {:.0} updates/s{}",
        down.elapsed().as_secs_f64() - draining.as_secs_f64(),
        making.as_secs_f64(),
        first_after.as_secs_f64(),
        if first { "" } else { " (NONE)" },
        draining.as_secs_f64(),
        received as f64 / draining.as_secs_f64(),
        if done { "" } else { " (INCOMPLETE)" }
    );
}

/// The allocator the `sprig` binary uses (`sprig::allocator`), so that the
/// figures are the binary's.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backlog: usize = std::env::var("DELIVERY_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let outage_secs: u64 = std::env::var("DELIVERY_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let intake_secs: u64 = std::env::var("DELIVERY_INTAKE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let only = std::env::var("DELIVERY_ONLY").unwrap_or_default();
    let runs = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    runtime.block_on(async {
        if runs("latency") {
            latency(200).await;
        }
        if runs("drain") {
            drain(backlog, 4).await;
            drain(backlog, 16).await;
        }
        if runs("intake") {
            intake(intake_secs, 16, 4).await;
            intake(intake_secs, 16, 16).await;
        }
        if runs("outage") {
            outage(backlog, outage_secs).await;
        }
    });
}
