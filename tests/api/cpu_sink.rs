//! CPU sink: every new domain costs three RSA-2048 keys, so an account has a domain limit
//! and key generation runs in a bounded pool that answers 503 with `Retry-After` when full.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, TestApp, error_code, spawn_app_with, spawn_app_with_relay};

both_engines!(cpu_sink_an_account_cannot_add_domains_past_its_limit);

async fn add(app: &TestApp, key: &str, domain: &str) -> reqwest::Response {
    app.with_key(key, Method::POST, "/v2/domains")
        .json(&json!({"domain": domain}))
        .send()
        .await
        .unwrap()
}

async fn cpu_sink_an_account_cannot_add_domains_past_its_limit(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |s| s.max_domains_per_account = 2).await;
    let key = app.admin.api_key.clone();
    app.add_domain("one.example").await;
    app.add_domain("two.example").await;

    let refused = error_code(add(&app, &key, "three.example").await, 409).await;
    assert_eq!(refused["code"], "domain_limit_reached", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains('2'),
        "{refused}"
    );
    // Nor through a sender address, which registers its domain when new.
    let sender = app
        .api(Method::POST, "/v1/email-address")
        .json(&json!({"email": "billing@three.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(sender, 409).await["code"],
        "domain_limit_reached"
    );
    let listed = app.get_json("/v2/domains").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    // The limit is the account's: another account adds its own.
    let other = app.other_account().await;
    assert_eq!(
        add(&app, &other.api_key, "three.example").await.status(),
        201
    );

    // Deleting a domain makes room for another.
    let deleted = app
        .api(Method::DELETE, "/v2/domains/two.example")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(add(&app, &key, "three.example").await.status(), 201);

    // Concurrent adds cannot pass the limit together.
    let app = spawn_app_with(engine, |s| {
        s.max_domains_per_account = 3;
        s.keygen_queue = 100;
    })
    .await;
    let names = (0..6).map(|n| format!("d{n}.example"));
    let mut statuses: Vec<u16> = add_at_once(&app, &app.admin.api_key, names)
        .await
        .iter()
        .map(|(_, response, _)| response.status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 409, 409, 409]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_sink_key_generation_is_bounded_and_a_full_pool_answers_503() {
    // No room to wait: whatever a key thread is not free for at once is refused.
    let app = spawn_app_with(Engine::Sqlite, |s| s.keygen_queue = 0).await;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burst = cores + 8;
    let names = (0..burst).map(|n| format!("burst{n}.example"));
    let mut refused = Vec::new();
    for (name, response, took) in add_at_once(&app, &app.admin.api_key, names).await {
        match response.status().as_u16() {
            201 => {}
            503 => {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=10).contains(&retry_after), "{retry_after}");
                assert_eq!(error_code(response, 503).await["code"], "busy");
                // Refused at once, not after waiting for the keys of others.
                assert!(took < Duration::from_secs(2), "refused after {took:?}");
                refused.push((name, retry_after));
            }
            status => panic!("{status}: {}", response.text().await.unwrap()),
        }
    }
    // At most one domain's keys per core are made at once, and none may wait: of a
    // burst larger than the cores, some are refused.
    assert!(!refused.is_empty(), "a burst past the pool is refused");

    // A client that comes back after Retry-After gets its domain.
    for (name, retry_after) in refused {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep(Duration::from_secs(retry_after)).await;
            let response = add(&app, &app.admin.api_key, &name).await;
            match response.status().as_u16() {
                201 => break,
                503 if Instant::now() < deadline => continue,
                status => panic!("{status}: {}", response.text().await.unwrap()),
            }
        }
    }
    let listed = app.get_json("/v2/domains?limit=100").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), burst);
}

/// Adds the domains `names` with `key` all at once: each answer, and how long it took.
async fn add_at_once(
    app: &TestApp,
    key: &str,
    names: impl Iterator<Item = String>,
) -> Vec<(String, reqwest::Response, Duration)> {
    let tasks: Vec<_> = names
        .map(|name| {
            let request = app
                .with_key(key, Method::POST, "/v2/domains")
                .json(&json!({"domain": name}));
            tokio::spawn(async move {
                let started = Instant::now();
                let response = request.send().await.unwrap();
                (name, response, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}
