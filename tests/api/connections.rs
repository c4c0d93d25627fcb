//! The connection layer with real sockets: the connection cap and its health
//! reserve, the header-read and idle timeouts, the minimum body rate, h2c.
//! Limits are configured small so each test runs in seconds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, issues, json_body, message_ids, spawn_app, spawn_app_with};

fn socket_address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(socket_address(app))
        .await
        .expect("connected")
}

/// Reads until the server closes the connection (or resets it); how long
/// that took, and what was read, or `None` if it stayed open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), received)),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// A fresh connection each time (no pooled connection to hide behind).
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// A connection with a request in progress: an upload that has sent its
/// head and the first byte of a 1,000-byte body (not idle, so never closed
/// to make room).
async fn busy(app: &TestApp) -> TcpStream {
    let mut stream = connect(app).await;
    stream
        .write_all(
            b"POST /fhir/ServiceRequest HTTP/1.1\r\nHost: sprig\r\nConnection: close\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .expect("sent");
    stream
}

#[tokio::test]
async fn busy_connections_beyond_the_cap_do_not_stop_the_probes() {
    let app = spawn_app_with(|s| {
        s.server.max_connections = 4;
        s.server.health_reserve_connections = 2;
        s.server.connection_wait_ms = 200;
        s.server.header_read_timeout_secs = 30;
        s.server.keep_alive_timeout_secs = 30;
        s.server.body_grace_secs = 30;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(busy(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Every main slot is held: a probe still answers, on the reserve.
    let started = Instant::now();
    let health = fresh_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    let ready = fresh_client()
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), 200);

    // Anything else on a reserve connection is a 503 that says when to come back.
    let refused = fresh_client()
        .get(app.url("/fhir/metadata"))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        message_ids(&json_body(refused).await),
        vec!["connection-limit"]
    );

    // With the reserve held too, a newcomer waits briefly and is closed unanswered.
    let mut reserve = vec![connect(&app).await, connect(&app).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut newcomer = connect(&app).await;
    newcomer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sprig\r\n\r\n")
        .await
        .expect("sent");
    let (took, answer) = closed_within(&mut newcomer, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A slot freed is a slot served.
    drop(idle.pop());
    drop(reserve.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = fresh_client()
        .get(app.url("/fhir/metadata"))
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), 200);
    app.stop().await;
}

/// Idle connections holding every main slot (issue 19: 600 of them made a
/// referral create wait over a second) are closed to make room for a
/// newcomer, who is served at once; connections with a request in progress
/// are kept.
#[tokio::test]
async fn idle_connections_make_room_when_the_slots_are_full() {
    let app = spawn_app_with(|s| {
        s.server.max_connections = 4;
        s.server.health_reserve_connections = 1;
        s.server.connection_wait_ms = 200;
        s.server.header_read_timeout_secs = 30;
        s.server.keep_alive_timeout_secs = 30;
        s.server.body_grace_secs = 30;
    })
    .await;
    let mut working = busy(&app).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    let started = Instant::now();
    let served = fresh_client()
        .get(app.url("/fhir/metadata"))
        .send()
        .await
        .expect("answered");
    assert_eq!(served.status(), 200, "a main slot, not the health reserve");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let mut closed = 0;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_millis(500))
            .await
            .is_some_and(|(_, answer)| answer.is_empty())
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed");
    // The upload in progress was left alone: it finishes and is answered.
    working
        .write_all(&[b' '; 999])
        .await
        .expect("the upload's connection is still open");
    let (_, answer) = closed_within(&mut working, Duration::from_secs(3))
        .await
        .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_slowloris_client_is_cut_after_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_secs = 2;
        s.server.keep_alive_timeout_secs = 1;
    })
    .await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("sent");
    let started = Instant::now();
    // A header line every 400 ms: never idle, never done.
    let mut closed_after = None;
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let line = format!("X-Slow-{n}: still coming\r\n");
        if slow.write_all(line.as_bytes()).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the connection was closed");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(4),
        "{closed_after:?}"
    );
    // Meanwhile the gateway answers others.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_connection_idle_after_an_answer_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_secs = 10;
        s.server.keep_alive_timeout_secs = 1;
    })
    .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sprig\r\n\r\n")
        .await
        .expect("sent");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("answer");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (took, rest) = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("closed before the header timeout");
    assert!(rest.is_empty());
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2500),
        "{took:?}"
    );

    // A connection that never sends anything goes the same way.
    let mut silent = connect(&app).await;
    let (took, _) = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_is_cut_with_408() {
    let app = spawn_app_with(|s| {
        s.server.min_body_bytes_per_sec = 1000;
        s.server.body_grace_secs = 1;
    })
    .await;
    for (path, content_type) in [
        ("/fhir/ServiceRequest", "application/fhir+json"),
        ("/api/referrals/x/notes", "application/json"),
    ] {
        let mut stream = connect(&app).await;
        // 2,000 bytes promised, 20 sent, then nothing.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: sprig\r\nContent-Type: {content_type}\r\nContent-Length: 2000\r\n\r\n{{\"resourceType\":\"Se"
        );
        stream.write_all(head.as_bytes()).await.expect("sent");
        let (took, answer) = closed_within(&mut stream, Duration::from_secs(5))
            .await
            .expect("answered and closed");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body-too-slow") || answer.contains("too slowly"));
        assert!(took < Duration::from_secs(3), "{took:?}");
        if path.starts_with("/api") {
            assert!(answer.contains("application/problem+json"), "{answer}");
        } else {
            assert!(answer.contains("OperationOutcome"), "{answer}");
        }
    }

    // A steady body well above the rate is read whole (a 400 for its content, not a 408).
    let response = app
        .client
        .post(app.url("/fhir/ServiceRequest"))
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\":\"ServiceRequest\"}")
        .send()
        .await
        .expect("answered");
    assert_ne!(response.status(), 408);
    let outcome = json_body(response).await;
    assert!(!issues(&outcome).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn cleartext_http2_is_refused_unless_h2c_is_on() {
    let prior_knowledge = || {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    };
    let app = spawn_app_with(|_| {}).await;
    let refused = prior_knowledge().get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    app.stop().await;

    let app = spawn_app_with(|s| s.server.h2c = true).await;
    let response = prior_knowledge()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // HTTP/1.1 still works beside it.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_up_front_on_every_route() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 1000).await;
    for (path, content_type, shape) in [
        (
            "/fhir/ServiceRequest",
            "application/fhir+json",
            "OperationOutcome",
        ),
        ("/fhir", "application/fhir+json", "OperationOutcome"),
        (
            "/api/referrals/x/notes",
            "application/json",
            "application/problem+json",
        ),
        (
            "/api/deliveries/1/retry",
            "application/json",
            "application/problem+json",
        ),
    ] {
        let mut stream = connect(&app).await;
        // 100 MiB declared, nothing sent: the answer comes at once.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: sprig\r\nContent-Type: {content_type}\r\nContent-Length: 104857600\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("sent");
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("answered at once")
            .expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains(shape), "{path}: {answer}");
    }
    app.stop().await;
}

#[tokio::test]
async fn chunked_framing_that_can_never_be_valid_is_a_400() {
    let app = spawn_app().await;
    for framing in [
        // Not a hexadecimal size.
        "zz\r\n{}\r\n0\r\n\r\n",
        // A size beyond 64 bits.
        "1FFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
        // Data longer than its size says.
        "2\r\n{\"resourceType\"}\r\n0\r\n\r\n",
    ] {
        let mut stream = connect(&app).await;
        let request = format!(
            "POST /fhir/ServiceRequest HTTP/1.1\r\nHost: sprig\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n{framing}"
        );
        stream.write_all(request.as_bytes()).await.expect("sent");
        let (_, answer) = closed_within(&mut stream, Duration::from_secs(5))
            .await
            .expect("answered and closed");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing:?}: {answer}");
        assert!(answer.contains("OperationOutcome"), "{answer}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_probes_own_address_answers_while_the_main_one_is_flooded() {
    // A free port for the probes.
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let app = spawn_app_with(|s| {
        s.server.max_connections = 2;
        s.server.health_reserve_connections = 0;
        s.server.connection_wait_ms = 500;
        s.server.header_read_timeout_secs = 30;
        s.server.keep_alive_timeout_secs = 30;
        s.server.health_listen = Some(format!("127.0.0.1:{health_port}").parse().unwrap());
    })
    .await;
    // Every slot held, and a queue of newcomers behind them.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probes = format!("http://127.0.0.1:{health_port}");
    let started = Instant::now();
    let health = fresh_client()
        .get(format!("{probes}/healthz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let ready = fresh_client()
        .get(format!("{probes}/readyz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), 200);
    // Nothing else is served there.
    let other = fresh_client()
        .get(format!("{probes}/fhir/metadata"))
        .send()
        .await
        .expect("answered");
    assert_eq!(other.status(), 503);
    drop(held);
    app.stop().await;
}

/// Sends `GET path` on a new blocking connection to `address` (from a
/// thread of its own); the status line and how long the answer took.
fn probe_from_a_thread(address: String, path: &'static str) -> (String, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(address).expect("connected");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: sprig\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("sent");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, started.elapsed())
}

#[tokio::test]
async fn the_probes_own_address_answers_while_every_main_worker_is_busy() {
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let app = spawn_app_with(|s| {
        s.server.health_listen = Some(format!("127.0.0.1:{health_port}").parse().unwrap());
    })
    .await;
    let address = format!("127.0.0.1:{health_port}");
    // Served at all (and the server has started its accept loops).
    let (status, _) = tokio::task::spawn_blocking({
        let address = address.clone();
        move || probe_from_a_thread(address, "/healthz")
    })
    .await
    .expect("probe");
    assert!(status.contains(" 200 "), "{status}");

    // The test's runtime is the server's (one thread): block it as a
    // CPU-bound parse of a megabyte Bundle blocks a worker, and probe from
    // another thread meanwhile.
    let probe = std::thread::spawn(move || probe_from_a_thread(address, "/healthz"));
    std::thread::sleep(Duration::from_secs(3));
    let (status, took) = probe.join().expect("probe thread");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        took < Duration::from_secs(1),
        "the probe waited for the main runtime: {took:?}"
    );
    app.stop().await;
}
