//! `GET /metrics` on its own listener: read by the Prometheus client's own parser after
//! known traffic, every counter equals what was done, and no label carries tenant data or
//! a path a stranger made up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::domains::required;
use crate::helpers::judges::{importable, judge};
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, TestApp, spawn_app, spawn_app_with, spawn_app_with_relay};

both_engines!(
    the_counters_match_the_traffic,
    the_queue_gauges_show_mail_waiting_for_the_worker,
    no_metrics_unless_asked,
);

/// The samples of a scrape, as the Prometheus client's OpenMetrics parser reads them.
struct Scrape {
    samples: Vec<Value>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; 0 when none has them.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|sample| sample["name"] == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample["labels"][*key] == *value)
            })
            .map(|sample| sample["value"].as_f64().unwrap())
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
        matching.first().copied().unwrap_or(0.0)
    }

    fn label_values(&self) -> Vec<String> {
        self.samples
            .iter()
            .flat_map(|sample| sample["labels"].as_object().unwrap().values())
            .map(|value| value.as_str().unwrap().to_string())
            .collect()
    }
}

async fn scrape(address: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let (ok, parsed) = judge("metrics_parse.py", &[], text.as_bytes());
    assert!(ok, "{text}");
    let parsed: Value = serde_json::from_str(&parsed).unwrap();
    Scrape {
        samples: parsed["samples"].as_array().unwrap().clone(),
    }
}

/// Scrapes until `done` holds (counters are added to just after what the test waits
/// for is stored), for at most 10 seconds; answers the last scrape.
async fn scrape_until(address: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(address).await;
        if done(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One DNS question over UDP, written by hand so that exactly one is asked; answers
/// the response code.
async fn ask_dns(server: SocketAddr, name: &str) -> u8 {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 16, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query, server).await.unwrap();
    let mut answer = [0u8; 4096];
    let (size, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut answer))
        .await
        .expect("the DNS server answers")
        .unwrap();
    assert!(size >= 12 && answer[..2] == [0x12, 0x34]);
    answer[3] & 0x0f
}

async fn status_of(app: &TestApp, method: Method, path: &str, with_key: bool) -> u16 {
    let request = if with_key {
        app.api(method, path)
    } else {
        app.client.request(method, format!("{}{path}", app.address))
    };
    request.send().await.unwrap().status().as_u16()
}

async fn the_counters_match_the_traffic(engine: Engine) {
    if !importable("prometheus_client") {
        return;
    }
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // A temporary failure stays queued for the whole test.
        s.mail_retry_seconds = 3600;
        s.smtp_timeout = 10;
    })
    .await;
    let metrics = app.metrics_address.expect("the metrics listener runs");
    let public = app.address.trim_start_matches("http://").to_string();
    assert_ne!(metrics.to_string(), public);

    // Requests with known statuses, on routes with and without parameters.
    for _ in 0..3 {
        assert_eq!(status_of(&app, Method::GET, "/entities", true).await, 200);
    }
    assert_eq!(status_of(&app, Method::GET, "/entities", false).await, 401);
    let missing = "/v2/domains/absent-tenant.example";
    assert_eq!(status_of(&app, Method::GET, missing, true).await, 404);
    // Paths and methods a stranger makes up: one series, whatever they are.
    let made_up: Vec<String> = (0..5)
        .map(|_| format!("/{}/probe", mailroom::store::new_id("stranger")))
        .collect();
    for path in &made_up {
        assert_eq!(status_of(&app, Method::GET, path, false).await, 404);
    }
    let brew = Method::from_bytes(b"BREW").unwrap();
    assert_eq!(status_of(&app, brew, &made_up[0], false).await, 404);
    // Never on the API's port.
    assert_eq!(status_of(&app, Method::GET, "/metrics", false).await, 404);

    // Two domain checks: one proven, one disproven.
    let proven = app.add_domain("metrics-proven.example").await;
    dns.publish(&proven);
    let checked = app.verify_domain("metrics-proven.example").await;
    assert_eq!(checked["status"], "active", "{checked}");
    app.add_domain("metrics-unproven.example").await;
    let checked = app.verify_domain("metrics-unproven.example").await;
    assert_eq!(checked["status"], "pending", "{checked}");

    // Deliveries: one sent, one to retry, one refused for good.
    let sent = app
        .queue("alice@metrics-sender.example", "bob@example.org")
        .await;
    app.wait_for_status(&sent, "sent", Duration::from_secs(20))
        .await;
    relay.reply_next("451 4.3.0 Mailbox busy, try later");
    let retried = app
        .queue("alice@metrics-sender.example", "carol@example.org")
        .await;
    app.wait_for_message(&retried, Duration::from_secs(20), |message| {
        message["status"] == "queued" && message["attempts"] == 1
    })
    .await;
    relay.reply_next("550 5.1.1 No such user here");
    let refused = app
        .queue("alice@metrics-sender.example", "dave@example.org")
        .await;
    app.wait_for_status(&refused, "failed", Duration::from_secs(20))
        .await;

    // Questions to mailroom's DNS server: a published key, a name it lacks, and one
    // outside its zone.
    let server = app.dns_address.expect("mailroom's DNS server runs");
    let key_name = required(&proven)[0]["value"].as_str().unwrap().to_string();
    // A whole key is too long for a plain 512-byte UDP answer: that one comes truncated.
    assert_eq!(ask_dns(server, &key_name).await, 0);
    assert_eq!(ask_dns(server, "dkim.mailroom.test").await, 0);
    assert_eq!(ask_dns(server, "nothing-here.dkim.mailroom.test").await, 3);
    assert_eq!(ask_dns(server, "metrics-proven.example").await, 5);

    let scraped = scrape_until(metrics, |s| {
        s.value("mailroom_deliveries_total", &[("outcome", "failed")]) >= 1.0
    })
    .await;
    let requests = "mailroom_http_requests_total";
    let count = |route: &str, method: &str, status: &str| {
        scraped.value(
            requests,
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(count("/entities", "GET", "200"), 3.0);
    assert_eq!(count("/entities", "GET", "401"), 1.0);
    assert_eq!(count("/v2/domains/{domain}", "GET", "404"), 1.0);
    assert_eq!(
        count("unmatched", "GET", "404"),
        6.0,
        "5 made up, and /metrics"
    );
    assert_eq!(count("unmatched", "other", "404"), 1.0);
    assert_eq!(count("/v2/domains", "POST", "201"), 2.0);
    assert_eq!(count("/v2/domains/{domain}/verify", "POST", "200"), 2.0);
    let latency = "mailroom_http_request_duration_seconds";
    let entities = [("route", "/entities"), ("method", "GET")];
    assert_eq!(scraped.value(&format!("{latency}_count"), &entities), 4.0);
    let all = [("route", "/entities"), ("method", "GET"), ("le", "+Inf")];
    assert_eq!(scraped.value(&format!("{latency}_bucket"), &all), 4.0);
    assert!(scraped.value(&format!("{latency}_sum"), &entities) > 0.0);

    let deliveries = "mailroom_deliveries_total";
    assert_eq!(scraped.value(deliveries, &[("outcome", "sent")]), 1.0);
    assert_eq!(scraped.value(deliveries, &[("outcome", "retry")]), 1.0);
    assert_eq!(scraped.value(deliveries, &[("outcome", "failed")]), 1.0);

    let checks = "mailroom_domain_checks_total";
    assert_eq!(scraped.value(checks, &[("outcome", "proven")]), 1.0);
    assert_eq!(scraped.value(checks, &[("outcome", "disproven")]), 1.0);
    assert_eq!(scraped.value(checks, &[("outcome", "inconclusive")]), 0.0);

    let questions = "mailroom_dns_queries_total";
    assert_eq!(scraped.value(questions, &[("rcode", "noerror")]), 1.0);
    assert_eq!(scraped.value(questions, &[("rcode", "truncated")]), 1.0);
    assert_eq!(scraped.value(questions, &[("rcode", "nxdomain")]), 1.0);
    assert_eq!(scraped.value(questions, &[("rcode", "refused")]), 1.0);

    // The message waiting for its retry, which is not due for an hour.
    assert_eq!(scraped.value("mailroom_outbox_queued", &[]), 1.0);
    assert_eq!(scraped.value("mailroom_outbox_due", &[]), 0.0);
    assert_eq!(
        scraped.value("mailroom_outbox_oldest_due_age_seconds", &[]),
        0.0
    );

    // No label holds a tenant's names, addresses, ids or a stranger's path.
    let account = app.admin.account_id.clone();
    let key_token = key_name.split('.').next().unwrap().to_string();
    let mut private = vec![
        "metrics-proven".to_string(),
        "metrics-unproven".to_string(),
        "absent-tenant".to_string(),
        "metrics-sender".to_string(),
        "example.org".to_string(),
        "stranger".to_string(),
        "probe".to_string(),
        "brew".to_string(),
        account,
        key_token,
    ];
    private.extend(made_up);
    for value in scraped.label_values() {
        for secret in &private {
            assert!(
                !value.to_lowercase().contains(&secret.to_lowercase()),
                "a label holds {secret}: {value}"
            );
        }
    }

    // The metrics listener serves that one page, to GET only.
    let client = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/metrics/x"),
        (Method::GET, "/entities"),
        (Method::POST, "/metrics"),
    ] {
        let response = client
            .request(method.clone(), format!("http://{metrics}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
    }
}

async fn the_queue_gauges_show_mail_waiting_for_the_worker(engine: Engine) {
    if !importable("prometheus_client") {
        return;
    }
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    // A relay that never answers DATA holds every one of the worker's 16 slots.
    relay.stall(true);
    let app = spawn_app_with(engine, |s| {
        s.smtp_url = Some(mailroom::config::Secret::new(format!(
            "smtp://127.0.0.1:{}?tls=none",
            relay.port
        )));
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // Long enough that no lease runs out while the clock moves on.
        s.smtp_timeout = 600;
    })
    .await;
    let metrics = app.metrics_address.expect("the metrics listener runs");
    let empty = scrape(metrics).await;
    assert_eq!(empty.value("mailroom_outbox_queued", &[]), 0.0);
    assert_eq!(empty.value("mailroom_outbox_due", &[]), 0.0);

    // Mailroom's own mail: no account's share caps it.
    for n in 0..17 {
        app.queue(&app.settings.mail_from, &format!("reader{n}@example.org"))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.data_started() < 16 {
        assert!(Instant::now() < deadline, "{}", relay.data_started());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The one without a slot is back in the queue within a second or so of its claim,
    // due 2 seconds later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(metrics).await.value("mailroom_outbox_queued", &[]) < 17.0
        || !given_back(&app).await
    {
        assert!(Instant::now() < deadline, "the 17th was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.advance_clock(Duration::from_secs(90)).await;

    let scraped = scrape(metrics).await;
    assert_eq!(scraped.value("mailroom_outbox_queued", &[]), 17.0);
    assert_eq!(scraped.value("mailroom_outbox_due", &[]), 1.0, "one waits");
    let age = scraped.value("mailroom_outbox_oldest_due_age_seconds", &[]);
    // Due since it was queued, or since it was handed back for want of a slot (due 2
    // seconds later then).
    assert!((87.0..150.0).contains(&age), "{age}");
    assert_eq!(scraped.value("mailroom_deliveries_total", &[]), 0.0);
}

/// Whether an email waits in the queue, not leased to the worker.
async fn given_back(app: &TestApp) -> bool {
    let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'queued'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    waiting == 1
}

async fn no_metrics_unless_asked(engine: Engine) {
    let app = spawn_app(engine).await;
    assert!(app.metrics_address.is_none());
    assert_eq!(status_of(&app, Method::GET, "/metrics", false).await, 404);
    assert_eq!(status_of(&app, Method::GET, "/metrics", true).await, 404);
}
