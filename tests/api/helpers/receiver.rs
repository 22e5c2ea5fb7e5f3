//! A webhook receiver on loopback written with another stack (tests/judges/webhook_receiver.py,
//! Python's http.server), which verifies every request with the `standardwebhooks` package
//! and records what arrived.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::judges::importable;

pub struct Receiver {
    child: Child,
    pub port: u16,
    client: reqwest::Client,
}

/// A request as the receiver recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Arrival {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
    /// The indices of the configured secrets that verify the request.
    pub verified: Vec<usize>,
    /// Why the other secrets do not.
    pub errors: Vec<String>,
    /// Seconds since the Unix epoch, by this machine's clock.
    pub arrived: f64,
    /// The connection it came on, numbered from 1 as the receiver accepted them: a
    /// connection kept alive carries several requests.
    pub connection: u64,
}

impl Arrival {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// The `webhook-id` header: the event's id.
    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }
}

impl Receiver {
    /// A plain-HTTP receiver; `None` (the test skips) when Python cannot import
    /// `standardwebhooks`, unless `MAILROOM_TEST_REQUIRE_EXTERNAL=1` makes that a failure.
    pub fn start() -> Option<Receiver> {
        Self::spawn(&[])
    }

    /// An https receiver presenting the certificate and key of these PEM files.
    pub fn start_tls(certificate: &Path, key: &Path) -> Option<Receiver> {
        Self::spawn(&[certificate, key])
    }

    fn spawn(args: &[&Path]) -> Option<Receiver> {
        if !importable("standardwebhooks") {
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/judges/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Some(Receiver {
            child,
            port,
            client: reqwest::Client::new(),
        })
    }

    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn control(&self, what: &str, body: Value) {
        let response = self
            .client
            .put(self.url(&format!("/__receiver/{what}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "receiver control {what}");
    }

    /// The secrets every request is verified with (`Arrival::verified` holds indices).
    pub async fn verify_with(&self, secrets: &[&str]) {
        self.control("secrets", json!(secrets)).await;
    }

    /// Answers to give on `path`, one per request, the last repeated.
    pub async fn script(&self, path: &str, answers: Value) {
        self.control("script", json!({"path": path, "answers": answers}))
            .await;
    }

    /// How far mailroom's clock is ahead of this machine's, for the timestamp check.
    pub async fn clock_ahead(&self, by: Duration) {
        self.control("clock", json!({"ahead_seconds": by.as_secs_f64()}))
            .await;
    }

    pub async fn received(&self) -> Vec<Arrival> {
        self.client
            .get(self.url("/__receiver/received"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What arrived on `path`.
    pub async fn received_on(&self, path: &str) -> Vec<Arrival> {
        let mut arrivals = self.received().await;
        arrivals.retain(|arrival| arrival.path == path);
        arrivals
    }

    /// Waits until `count` requests arrived on `path` (within `limit`); answers them all.
    pub async fn wait_for(&self, path: &str, count: usize, limit: Duration) -> Vec<Arrival> {
        let deadline = Instant::now() + limit;
        loop {
            let arrived = self.received_on(path).await;
            if arrived.len() >= count {
                return arrived;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} requests arrived on {path}",
                arrived.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
