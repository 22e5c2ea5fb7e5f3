//! Connection exhaustion: idle, slow and stalled clients cannot hold the HTTP server; and
//! what every answer carries, including hyper's own (oversized or malformed requests).

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Engine, ServerProcess, spawn_app, spawn_app_with, test_dir};

/// Reads until the server closes the connection (or resets it); answers what came.
async fn read_until_closed(socket: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status, headers (lowercase) and body of a raw HTTP answer.
fn parse_answer(answer: &[u8]) -> (u16, String, serde_json::Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole HTTP answer");
    let status = head[9..12].parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_exhaustion_stalled_clients_are_closed_and_the_api_still_answers() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.max_connections = 16;
        s.http_header_timeout = 1;
        s.http_idle_timeout = 1;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();

    // More clients than the cap: silent ones, ones that stop halfway through their headers,
    // and ones that send headers and then stall in the body.
    let mut stalled = Vec::new();
    for n in 0..39 {
        let mut socket = TcpStream::connect(&host).await.unwrap();
        let start: String = match n % 3 {
            0 => String::new(),
            1 => "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".into(),
            _ => format!(
                "POST /entities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na",
                app.admin.api_key
            ),
        };
        socket.write_all(start.as_bytes()).await.unwrap();
        stalled.push(socket);
    }
    // And one that keeps sending a header line now and then, never finishing: only the
    // header deadline, not the idle timeout, stops it.
    let mut dripping = TcpStream::connect(&host).await.unwrap();
    let drip = tokio::spawn(async move {
        let started = Instant::now();
        let _ = dripping
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if dripping.write_all(b"X-Drip: 1\r\n").await.is_err() {
                break;
            }
        }
        read_until_closed(&mut dripping).await;
        started.elapsed()
    });

    // A normal request is answered once the first stalled clients are let go, not never.
    let started = Instant::now();
    let answer = app
        .client
        .get(format!("{}/healthz", app.address))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the API answers while stalled clients wait");
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );

    // Every stalled client is closed by the server (the one stuck in its body after a
    // 400 for the body it never finished).
    let deadline = Duration::from_secs(10);
    for (n, mut socket) in stalled.into_iter().enumerate() {
        let closed = tokio::time::timeout(deadline, read_until_closed(&mut socket)).await;
        let answer = closed.unwrap_or_else(|_| panic!("client {n} is still open"));
        if n % 3 == 2 && !answer.is_empty() {
            assert_eq!(
                parse_answer(&answer).0,
                400,
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let dripped = tokio::time::timeout(deadline, drip)
        .await
        .expect("the dripping client is closed")
        .unwrap();
    assert!(dripped < Duration::from_secs(5), "closed after {dripped:?}");

    // And the server is whole: a keep-alive client is served again and again.
    for _ in 0..3 {
        let response = app.api(Method::GET, "/entities").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_json_errors() {
    let app = spawn_app(Engine::Sqlite).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let ask = |request: Vec<u8>| {
        let host = host.clone();
        async move {
            let mut socket = TcpStream::connect(&host).await.unwrap();
            // Written beside the reading: the server may answer before it read it all.
            let (mut reader, mut writer) = socket.split();
            let (_, answer) =
                tokio::join!(writer.write_all(&request), read_until_closed(&mut reader));
            answer
        }
    };

    // Headers over the limit (but far under hyper's default one).
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let (status, head, body) = parse_answer(&ask(big.into_bytes()).await);
    assert_eq!(status, 431, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-request-id: req_"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request");

    // Too many headers.
    let many: String = (0..150).map(|n| format!("X-H{n}: 1\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let (status, _, body) = parse_answer(&ask(many.into_bytes()).await);
    assert_eq!(status, 431);
    assert_eq!(body["error"]["code"], "headers_too_large");

    // Not HTTP at all.
    let garbage = b"GET / HTTP/1.1\r\nthis is not a header\r\n\r\n".to_vec();
    let (status, head, body) = parse_answer(&ask(garbage).await);
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "malformed_request", "{body}");

    // Headers under the limit are fine.
    let fine = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(parse_answer(&ask(fine.into_bytes()).await).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_nosniff() {
    let app = spawn_app(Engine::Sqlite).await;
    let answers = [
        reqwest::get(format!("{}/healthz", app.address))
            .await
            .unwrap(),
        reqwest::get(format!("{}/no/such/route", app.address))
            .await
            .unwrap(),
        reqwest::get(format!("{}/entities", app.address))
            .await
            .unwrap(),
        app.api(Method::GET, "/entities").send().await.unwrap(),
        reqwest::get(format!(
            "{}/v1/email-address/verify?token=nope",
            app.address
        ))
        .await
        .unwrap(),
        app.api(Method::DELETE, "/healthz").send().await.unwrap(),
    ];
    for answer in answers {
        assert_eq!(
            answer
                .headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{} {}",
            answer.status(),
            answer.url()
        );
    }
}

#[test]
fn connection_exhaustion_the_open_file_limit_is_raised_to_the_hard_limit() {
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files(&limits).map(|(_, hard)| hard))
        .unwrap_or(0);
    if hard <= 256 {
        eprintln!("skipped: the hard open file limit ({hard}) leaves nothing to raise");
        return;
    }
    let dir = test_dir();
    let url = format!("sqlite://{}", dir.path().join("mailroom.db").display());
    let server = ServerProcess::serve_after("ulimit -Sn 256", &dir, &url, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    assert_eq!(open_files(&limits), Some((hard, hard)), "{limits}");
}

/// The soft and hard "Max open files" of a `/proc/…/limits` text.
fn open_files(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}
