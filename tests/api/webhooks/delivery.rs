//! Delivering events to webhooks: what a real receiver on loopback (Python's http.server,
//! verifying with the `standardwebhooks` package) gets, signed, in order, retried, and
//! what mailroom records of each attempt; endpoints disabled on 410 and after a day of
//! failures; secret rotation; replay; no redirects; TLS; the destination policy; a crash
//! mid-delivery; two instances on one PostgreSQL database; replies with control
//! characters; one account's silent endpoints against another's; connections kept alive;
//! old events pruned; jobs given back untried when their lease runs short in line.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mailroom::config::Settings;
use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::events::{self, NewEvent};
use mailroom::mail::destination::WEBHOOK_RULE_SHORT;
use mailroom::store::Db;
use mailroom::tenancy::accounts::create_account;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::receiver::{Arrival, Receiver};
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, ServerProcess, TestApp, spawn_app_with, spawn_app_with_relay};

both_engines!(
    a_real_event_arrives_signed_and_in_order,
    a_failing_endpoint_is_tried_again_with_the_same_id,
    gone_disables_the_endpoint,
    a_silent_endpoint_holds_up_no_other,
    failures_over_a_day_disable_the_endpoint,
    both_secrets_sign_for_a_day_after_a_rotation,
    a_replay_sends_the_same_id_again,
    redirects_are_not_followed,
    only_the_first_kib_of_a_reply_is_kept,
    a_self_signed_endpoint_fails_with_a_readable_error,
    loopback_names_are_refused_without_the_allow_list,
    a_killed_instance_delivers_after_restart,
    a_reply_with_control_characters_is_recorded_escaped,
    silent_endpoints_of_one_account_hold_up_no_other_account,
    kept_alive_connections_are_reused,
    an_endpoint_that_hangs_up_after_each_reply_loses_nothing,
    old_events_go_unless_a_delivery_still_needs_them,
    a_job_whose_lease_runs_short_in_line_is_given_back_untried,
    each_recipients_events_arrive_in_order,
    a_failing_endpoint_holds_only_its_concurrency,
    one_objects_backlog_hides_no_other_object,
);

const DOMAIN: &str = "acme.example";

/// An app with a relay and an active domain to send from, and a receiver; `None` when
/// the receiver cannot run (the test skips).
async fn setup(
    engine: Engine,
    configure: impl FnOnce(&mut Settings),
) -> Option<(TestApp, TestSmtp, Receiver)> {
    let receiver = Receiver::start()?;
    let (app, relay) = spawn_app_with_relay(engine, configure).await;
    app.active_domain(DOMAIN).await;
    Some((app, relay, receiver))
}

/// An app without a relay, and a receiver; `None` when the receiver cannot run.
async fn app_and_receiver(
    engine: Engine,
    configure: impl FnOnce(&mut Settings),
) -> Option<(TestApp, Receiver)> {
    let receiver = Receiver::start()?;
    let app = spawn_app_with(engine, configure).await;
    Some((app, receiver))
}

/// Writes `count` events of `kind` for the account in one transaction, as the changes
/// that cause them would, each about an object of its own (so that none waits for
/// another); answers their ids.
async fn record_events(app: &TestApp, account_id: &str, kind: &str, count: usize) -> Vec<String> {
    let mut tx = app.db.begin().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..count {
        let object = mailroom::store::new_id("obj");
        let event = NewEvent {
            account_id: Some(account_id),
            entity_id: None,
            kind,
            object_key: &object,
            email_id: None,
            recipient: None,
            detail: None,
            data: Some(json!({"id": object})),
        };
        ids.push(events::record(&mut tx, event, app.db.now()).await.unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

/// Writes one event of `kind` about each of `objects`, in this order and in one
/// transaction; answers their ids.
async fn record_about(app: &TestApp, kind: &str, objects: &[String]) -> Vec<String> {
    let mut tx = app.db.begin().await.unwrap();
    let mut ids = Vec::new();
    for object in objects {
        let event = NewEvent {
            account_id: Some(&app.admin.account_id),
            entity_id: None,
            kind,
            object_key: object,
            email_id: None,
            recipient: None,
            detail: None,
            data: Some(json!({"id": object})),
        };
        ids.push(events::record(&mut tx, event, app.db.now()).await.unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

/// The ids of the account's events `GET /v2/events` lists.
async fn listed_events(app: &TestApp) -> Vec<String> {
    let page = app.get_json("/v2/events?limit=200").await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_string())
        .collect()
}

/// Adds a webhook to `url` for `events`; answers its id and secret.
async fn add_webhook(app: &TestApp, url: &str, events: &[&str]) -> (String, String) {
    let response = app
        .api(Method::POST, "/v2/webhooks")
        .json(&json!({"url": url, "events": events}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{body}");
    (body["id"].as_str().unwrap().to_string(), secret)
}

/// Sends an email through the API; answers its id.
async fn send_email(app: &TestApp, to: &str) -> String {
    let response = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({
            "from": format!("billing@{DOMAIN}"),
            "to": to,
            "subject": "Your invoice",
            "text": "Hello",
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// `POST /v2/webhooks/{id}/test`: answers the outcome.
async fn test_delivery(app: &TestApp, webhook_id: &str) -> Value {
    let response = app
        .api(Method::POST, &format!("/v2/webhooks/{webhook_id}/test"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["outcome"].clone()
}

async fn webhook(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/v2/webhooks/{id}")).await
}

/// The webhook's deliveries, oldest first, each with its attempts.
async fn deliveries(app: &TestApp, webhook_id: &str) -> Vec<Value> {
    let list = app
        .get_json(&format!("/v2/webhooks/{webhook_id}/deliveries"))
        .await;
    let mut items = list["items"].as_array().unwrap().clone();
    items.reverse();
    items
}

/// Waits until no delivery is being attempted (each ends within its 10 s timeout).
async fn settle(db: &Db) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let delivering: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivering'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if delivering == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "a delivery is still under way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves mailroom's clock forward once no delivery is under way (a jump past a live
/// lease would hand it to a second attempt), and tells the receiver, which checks each
/// `webhook-timestamp` against mailroom's time.
async fn advance(app: &TestApp, receiver: &Receiver, ahead: &mut Duration, by: Duration) {
    settle(&app.db).await;
    app.advance_clock(by).await;
    *ahead += by;
    receiver.clock_ahead(*ahead).await;
}

/// Every arrival is signed as a Standard Webhooks receiver checks, with the only secret.
fn assert_signed(arrivals: &[Arrival]) {
    for arrival in arrivals {
        assert_eq!(arrival.verified, [0], "{:?}", arrival.errors);
        assert_eq!(arrival.method, "POST");
        assert_eq!(arrival.header("content-type"), "application/json");
        assert!(arrival.header("user-agent").starts_with("mailroom/"));
        assert_eq!(
            arrival.id(),
            arrival.json()["id"],
            "webhook-id is the event's id"
        );
    }
}

async fn a_real_event_arrives_signed_and_in_order(engine: Engine) {
    let Some((app, relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let url = receiver.url("/hook");
    let (webhook_id, secret) = add_webhook(&app, &url, &["email.queued", "email.sent"]).await;
    receiver.verify_with(&[&secret]).await;
    let mut emails = Vec::new();
    for n in 0..3 {
        emails.push(send_email(&app, &format!("customer{n}@client.example")).await);
    }
    let arrived = receiver.wait_for("/hook", 6, Duration::from_secs(30)).await;
    assert_eq!(relay.received().len(), 3);
    assert_signed(&arrived);
    for arrival in &arrived {
        let payload = arrival.json();
        let keys: HashSet<&str> = payload
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in ["id", "type", "created_at", "account_id", "data"] {
            assert!(keys.contains(key), "{key} in {payload}");
        }
        assert!(keys.is_subset(&HashSet::from([
            "id",
            "type",
            "created_at",
            "account_id",
            "entity_id",
            "data"
        ])));
        assert!(payload["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(payload["account_id"], app.admin.account_id.as_str());
        let timestamp: i64 = arrival.header("webhook-timestamp").parse().unwrap();
        assert!((timestamp as f64 - arrival.arrived).abs() < 60.0);
    }
    // Each email's events in the order they happened.
    for email in &emails {
        let kinds: Vec<String> = arrived
            .iter()
            .map(Arrival::json)
            .filter(|payload| payload["data"]["id"] == email.as_str())
            .map(|payload| payload["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["email.queued", "email.sent"], "{email}");
    }
    // What mailroom recorded.
    settle(&app.db).await;
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded.len(), 6);
    for delivery in &recorded {
        assert_eq!(delivery["status"], "succeeded", "{delivery}");
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{delivery}");
        assert_eq!(attempts[0]["http_status"], 200);
        assert_eq!(attempts[0]["response"], "ok");
    }
    let ids: HashSet<&str> = arrived.iter().map(Arrival::id).collect();
    let recorded_ids: HashSet<&str> = recorded
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, recorded_ids);
}

async fn a_failing_endpoint_is_tried_again_with_the_same_id(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let url = receiver.url("/flaky");
    let (webhook_id, secret) = add_webhook(&app, &url, &["email.queued"]).await;
    receiver.verify_with(&[&secret]).await;
    receiver
        .script(
            "/flaky",
            json!([{"status": 500, "body": "busy"}, {"status": 200}]),
        )
        .await;
    send_email(&app, "customer@client.example").await;
    receiver
        .wait_for("/flaky", 1, Duration::from_secs(20))
        .await;
    // The first retry comes 5 s (±10 %) later by mailroom's clock, not before.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_on("/flaky").await.len(), 1);
    let pending = deliveries(&app, &webhook_id).await;
    assert_eq!(pending[0]["status"], "pending", "{pending:?}");
    assert_eq!(pending[0]["attempts"][0]["http_status"], 500);
    assert_eq!(pending[0]["attempts"][0]["response"], "busy");

    let mut ahead = Duration::ZERO;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(6)).await;
    let arrived = receiver
        .wait_for("/flaky", 2, Duration::from_secs(10))
        .await;
    assert_eq!(arrived.len(), 2);
    assert_signed(&arrived);
    assert_eq!(arrived[0].id(), arrived[1].id(), "the same webhook-id");
    assert_eq!(arrived[0].body, arrived[1].body);
    settle(&app.db).await;
    let done = deliveries(&app, &webhook_id).await;
    assert_eq!(done[0]["status"], "succeeded", "{done:?}");
    let statuses: Vec<&Value> = done[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["http_status"])
        .collect();
    assert_eq!(statuses, [500, 200]);
    assert_eq!(webhook(&app, &webhook_id).await["enabled"], true);
}

async fn gone_disables_the_endpoint(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let url = receiver.url("/gone");
    let (webhook_id, _) = add_webhook(&app, &url, &["email.queued", "email.sent"]).await;
    receiver.script("/gone", json!([{"status": 410}])).await;
    send_email(&app, "customer@client.example").await;
    receiver.wait_for("/gone", 1, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let disabled = loop {
        let disabled = webhook(&app, &webhook_id).await;
        if disabled["enabled"] == false {
            break disabled;
        }
        assert!(Instant::now() < deadline, "not disabled: {disabled}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        disabled["disabled_reason"],
        "endpoint.disabled: the endpoint answered 410 Gone"
    );
    assert!(disabled["disabled_at"].is_string());
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded[0]["status"], "failed", "{recorded:?}");
    assert_eq!(recorded[0]["attempts"][0]["http_status"], 410);
    // Nothing more goes to it, now or later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ahead = Duration::ZERO;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(3600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_on("/gone").await.len(), 1);
}

async fn a_silent_endpoint_holds_up_no_other(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |s| s.webhook_concurrency = 2).await else {
        return;
    };
    let (_, _) = add_webhook(&app, &receiver.url("/hang"), &["email.queued"]).await;
    let (fast_id, secret) = add_webhook(&app, &receiver.url("/fast"), &["email.queued"]).await;
    receiver.script("/hang", json!([{"hang": true}])).await;
    receiver.verify_with(&[&secret]).await;
    let started = Instant::now();
    for n in 0..4 {
        send_email(&app, &format!("customer{n}@client.example")).await;
    }
    let fast = receiver.wait_for("/fast", 4, Duration::from_secs(8)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the other endpoint got its events at once"
    );
    assert_signed(&fast);
    settle_one(&app, &fast_id).await;
    // The silent endpoint holds two slots (its cap), not more, while it says nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(receiver.received_on("/hang").await.len(), 2);
    // Each of its attempts gives up after 10 s, recorded as such.
    let deadline = Instant::now() + Duration::from_secs(20);
    let hang_id = loop {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id \
             JOIN webhooks w ON w.id = d.webhook_id WHERE w.url LIKE '%/hang' LIMIT 1",
        )
        .fetch_optional(&app.db.pool)
        .await
        .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < deadline, "no attempt recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (error, latency): (Option<String>, i64) =
        sqlx::query_as("SELECT error, latency_ms FROM webhook_attempts WHERE delivery_id = $1")
            .bind(&hang_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(error.as_deref(), Some("no answer within 10 seconds"));
    assert!((9_500..15_000).contains(&latency), "{latency}");
}

/// Waits until the webhook `id` has nothing pending or under way.
async fn settle_one(app: &TestApp, id: &str) {
    settle_one_within(app, id, Duration::from_secs(10)).await
}

async fn settle_one_within(app: &TestApp, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 \
             AND status IN ('pending', 'delivering')",
        )
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "deliveries of {id} still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failures_over_a_day_disable_the_endpoint(engine: Engine) {
    let Some((app, _relay, receiver)) =
        setup(engine, |s| s.webhook_disable_after_failures = 3).await
    else {
        return;
    };
    let (webhook_id, _) = add_webhook(&app, &receiver.url("/down"), &["email.queued"]).await;
    receiver.script("/down", json!([{"status": 503}])).await;
    send_email(&app, "customer@client.example").await;
    receiver.wait_for("/down", 1, Duration::from_secs(20)).await;
    let mut ahead = Duration::ZERO;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(6)).await;
    receiver.wait_for("/down", 2, Duration::from_secs(10)).await;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(6 * 60)).await;
    receiver.wait_for("/down", 3, Duration::from_secs(10)).await;
    // Three failures in a row, but not for a day yet: still on.
    settle(&app.db).await;
    assert_eq!(webhook(&app, &webhook_id).await["enabled"], true);

    advance(&app, &receiver, &mut ahead, Duration::from_secs(25 * 3600)).await;
    receiver.wait_for("/down", 4, Duration::from_secs(10)).await;
    settle(&app.db).await;
    let disabled = webhook(&app, &webhook_id).await;
    assert_eq!(disabled["enabled"], false, "{disabled}");
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(reason.starts_with("endpoint.disabled: "), "{reason}");
    assert!(reason.contains("24 hours"), "{reason}");
    // The delivery waits (not failed) for the endpoint to be turned on again.
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded[0]["status"], "pending", "{recorded:?}");
    assert_eq!(recorded[0]["attempts"].as_array().unwrap().len(), 4);
    advance(&app, &receiver, &mut ahead, Duration::from_secs(11 * 3600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_on("/down").await.len(), 4);
}

async fn both_secrets_sign_for_a_day_after_a_rotation(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let (webhook_id, old) = add_webhook(&app, &receiver.url("/hook"), &["email.queued"]).await;
    let response = app
        .api(
            Method::POST,
            &format!("/v2/webhooks/{webhook_id}/rotate-secret"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    receiver.verify_with(&[&old, &new]).await;

    let outcome = test_delivery(&app, &webhook_id).await;
    assert_eq!(outcome["http_status"], 200, "{outcome}");
    let arrived = receiver.wait_for("/hook", 1, Duration::from_secs(5)).await;
    assert_eq!(arrived[0].verified, [0, 1], "{:?}", arrived[0]);
    assert_eq!(arrived[0].header("webhook-signature").split(' ').count(), 2);
    assert_eq!(arrived[0].json()["type"], "webhook.test");

    let mut ahead = Duration::ZERO;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(25 * 3600)).await;
    let outcome = test_delivery(&app, &webhook_id).await;
    assert_eq!(outcome["http_status"], 200, "{outcome}");
    let arrived = receiver.wait_for("/hook", 2, Duration::from_secs(5)).await;
    assert_eq!(
        arrived[1].verified,
        [1],
        "only the new secret: {:?}",
        arrived[1]
    );
    assert_eq!(arrived[1].header("webhook-signature").split(' ').count(), 1);
}

async fn a_replay_sends_the_same_id_again(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let (webhook_id, secret) = add_webhook(&app, &receiver.url("/hook"), &["email.queued"]).await;
    receiver.verify_with(&[&secret]).await;
    send_email(&app, "customer@client.example").await;
    receiver.wait_for("/hook", 1, Duration::from_secs(20)).await;
    settle(&app.db).await;
    let first = deliveries(&app, &webhook_id).await;
    let delivery_id = first[0]["id"].as_str().unwrap();
    let response = app
        .api(
            Method::POST,
            &format!("/v2/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let arrived = receiver.wait_for("/hook", 2, Duration::from_secs(10)).await;
    assert_signed(&arrived);
    assert_eq!(arrived[0].id(), arrived[1].id());
    assert_eq!(arrived[0].json(), arrived[1].json());
    settle(&app.db).await;
    let all = deliveries(&app, &webhook_id).await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|d| d["status"] == "succeeded"), "{all:?}");
}

async fn redirects_are_not_followed(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let (webhook_id, _) = add_webhook(&app, &receiver.url("/redirect"), &["email.queued"]).await;
    let elsewhere = receiver.url("/elsewhere");
    receiver
        .script(
            "/redirect",
            json!([{"status": 302, "headers": {"Location": elsewhere}}]),
        )
        .await;
    let outcome = test_delivery(&app, &webhook_id).await;
    assert_eq!(outcome["http_status"], 302, "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{outcome}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received_on("/redirect").await.len(), 1);
    assert!(receiver.received_on("/elsewhere").await.is_empty());
    // A failure like any other: tried again later.
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded[0]["status"], "pending", "{recorded:?}");
}

async fn only_the_first_kib_of_a_reply_is_kept(engine: Engine) {
    let Some((app, _relay, receiver)) = setup(engine, |_| {}).await else {
        return;
    };
    let (webhook_id, _) = add_webhook(&app, &receiver.url("/big"), &["email.queued"]).await;
    receiver
        .script("/big", json!([{"status": 200, "body_size": 100_000}]))
        .await;
    let outcome = test_delivery(&app, &webhook_id).await;
    assert_eq!(outcome["http_status"], 200, "{outcome}");
    assert_eq!(outcome["response"].as_str().unwrap(), "x".repeat(1024));
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded[0]["status"], "succeeded");
    assert_eq!(
        recorded[0]["attempts"][0]["response"]
            .as_str()
            .unwrap()
            .len(),
        1024
    );
}

async fn a_self_signed_endpoint_fails_with_a_readable_error(engine: Engine) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = crate::helpers::test_dir();
    let (certificate, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&certificate, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let Some(receiver) = Receiver::start_tls(&certificate, &key) else {
        return;
    };
    let app = spawn_app_with(engine, |_| {}).await;
    let url = format!("https://127.0.0.1:{}/hook", receiver.port);
    let (webhook_id, _) = add_webhook(&app, &url, &["email.queued"]).await;
    let outcome = test_delivery(&app, &webhook_id).await;
    assert!(outcome["http_status"].is_null(), "{outcome}");
    assert_eq!(
        outcome["error"],
        "TLS failed: the certificate is not trusted: it is self-signed"
    );
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(
        recorded[0]["attempts"][0]["error"], outcome["error"],
        "{recorded:?}"
    );
}

async fn loopback_names_are_refused_without_the_allow_list(engine: Engine) {
    let app = spawn_app_with(engine, |s| s.destination_allow = Vec::new()).await;
    // A name may be saved (it is checked on what it resolves to at each delivery)…
    let (webhook_id, _) = add_webhook(&app, "https://localhost:8443/hook", &["email.queued"]).await;
    // …and localhost resolves to loopback.
    let outcome = test_delivery(&app, &webhook_id).await;
    assert!(outcome["http_status"].is_null(), "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(error.contains(WEBHOOK_RULE_SHORT), "{error}");
    assert!(error.contains("localhost:8443"), "{error}");
    // A name that does not resolve reads the same: which internal names exist is not told.
    let (unknown, _) = add_webhook(
        &app,
        "https://no-such-host.invalid:8443/hook",
        &["email.queued"],
    )
    .await;
    let outcome = test_delivery(&app, &unknown).await;
    assert_eq!(
        outcome["error"].as_str().unwrap(),
        error.replace("localhost", "no-such-host.invalid")
    );
}

/// A crash mid-delivery loses nothing: the lease runs out and the next instance delivers.
async fn a_killed_instance_delivers_after_restart(engine: Engine) {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let dir = crate::helpers::test_dir();
    let database = crate::helpers::fresh_database_url(engine, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    let secret_key = "ef".repeat(32);
    let smtp_url = format!("smtp://127.0.0.1:{}?tls=none", relay.port);
    let env = [
        ("MAILROOM_SECRET_KEY", secret_key.as_str()),
        ("MAILROOM_SMTP_URL", smtp_url.as_str()),
        ("MAILROOM_DESTINATION_ALLOW", "127.0.0.0/8"),
    ];
    let mut first = ServerProcess::serve_with(&dir, &database, &env);
    let db = Db::connect(&database).await.unwrap();
    let account = create_account(&db, "Acme").await.unwrap();
    let client = reqwest::Client::new();
    let api = |method: Method, address: &str, path: &str| {
        client
            .request(method, format!("{address}{path}"))
            .bearer_auth(&account.api_key)
    };
    let response = api(Method::POST, &first.address, "/v2/domains")
        .json(&json!({"domain": DOMAIN}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let domain = DomainName::parse(DOMAIN).unwrap();
    set_status_by_operator(
        &db,
        &Settings::default(),
        &domain,
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    let response = api(Method::POST, &first.address, "/v2/webhooks")
        .json(&json!({"url": receiver.url("/hook"), "events": ["email.queued"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let webhook: Value = response.json().await.unwrap();
    receiver
        .verify_with(&[webhook["secret"].as_str().unwrap()])
        .await;
    // The first attempt never gets an answer: the process dies in the middle of it.
    receiver
        .script("/hook", json!([{"hang": true}, {"status": 200}]))
        .await;
    let response = api(Method::POST, &first.address, "/v2/emails")
        .json(&json!({
            "from": format!("billing@{DOMAIN}"),
            "to": "customer@client.example",
            "subject": "Your invoice",
            "text": "Hello",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    receiver.wait_for("/hook", 1, Duration::from_secs(20)).await;
    first.kill_hard();

    let _second = ServerProcess::serve_with(&dir, &database, &env);
    let arrived = receiver.wait_for("/hook", 2, Duration::from_secs(45)).await;
    assert_eq!(arrived[0].id(), arrived[1].id());
    assert!(arrived.iter().all(|a| a.verified == [0]), "{arrived:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM webhook_deliveries")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        if statuses == ["succeeded"] {
            break;
        }
        assert!(Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A success is kept on the delivery's row, a failure in a row of its own.
    let failures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_attempts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let success: (i64, Option<i64>) =
        sqlx::query_as("SELECT attempts, success_http_status FROM webhook_deliveries")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (failures, success),
        (0, (2, Some(200))),
        "the killed attempt left no record; the second did"
    );
}

/// Two instances on one PostgreSQL database deliver each (event, endpoint) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_deliver_each_event_once() {
    if crate::helpers::postgres_url().is_none() {
        return;
    }
    let Some((app, relay, receiver)) = setup(Engine::Postgres, |_| {}).await else {
        return;
    };
    let _second = app.another_instance().await;
    let (_, secret) = add_webhook(
        &app,
        &receiver.url("/hook"),
        &["email.queued", "email.sent"],
    )
    .await;
    let (_, other_secret) = add_webhook(
        &app,
        &receiver.url("/other"),
        &["email.queued", "email.sent"],
    )
    .await;
    receiver.verify_with(&[&secret, &other_secret]).await;
    for n in 0..10 {
        send_email(&app, &format!("customer{n}@client.example")).await;
    }
    relay.wait_for(10, Duration::from_secs(30)).await;
    let hook = receiver
        .wait_for("/hook", 20, Duration::from_secs(30))
        .await;
    let other = receiver
        .wait_for("/other", 20, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (path, arrived, secret) in [("/hook", hook, 0), ("/other", other, 1)] {
        let again = receiver.received_on(path).await;
        assert_eq!(again.len(), 20, "{path}: each event once");
        let ids: HashSet<&str> = arrived.iter().map(Arrival::id).collect();
        assert_eq!(ids.len(), 20, "{path}");
        assert!(arrived.iter().all(|a| a.verified == [secret]), "{path}");
    }
}

/// A reply's body is stored as text a user reads: its control characters (a NUL, which
/// PostgreSQL refuses in text, an escape sequence, line breaks) are spelled out. The
/// attempt is recorded, the delivery ends, and the event is not sent again; other
/// endpoints' attempts finished at the same moment are recorded with it.
async fn a_reply_with_control_characters_is_recorded_escaped(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |_| {}).await else {
        return;
    };
    let (controls_id, _) = add_webhook(&app, &receiver.url("/controls"), &["email.sent"]).await;
    let (plain_id, _) = add_webhook(&app, &receiver.url("/plain"), &["email.sent"]).await;
    receiver
        .script(
            "/controls",
            json!([{"status": 200, "body": "ok\u{0}\u{1b}[31m\r\nbye\u{7f}"}]),
        )
        .await;
    let written = record_events(&app, &app.admin.account_id, "email.sent", 3).await;
    receiver
        .wait_for("/controls", 3, Duration::from_secs(20))
        .await;
    receiver
        .wait_for("/plain", 3, Duration::from_secs(20))
        .await;
    settle(&app.db).await;
    for (webhook_id, response) in [
        (&controls_id, "ok\\0\\x1b[31m\\r\\nbye\\x7f"),
        (&plain_id, "ok"),
    ] {
        let recorded = deliveries(&app, webhook_id).await;
        assert_eq!(recorded.len(), 3, "{recorded:?}");
        for delivery in &recorded {
            assert_eq!(delivery["status"], "succeeded", "{delivery}");
            let attempts = delivery["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 1, "{delivery}");
            assert_eq!(attempts[0]["http_status"], 200, "{delivery}");
            assert_eq!(attempts[0]["response"], response, "{delivery}");
        }
        let recorded_ids: HashSet<&str> = recorded
            .iter()
            .map(|d| d["event_id"].as_str().unwrap())
            .collect();
        let written_ids: HashSet<&str> = written.iter().map(String::as_str).collect();
        assert_eq!(recorded_ids, written_ids);
    }
    // Past every lease: nothing goes out again.
    let mut ahead = Duration::ZERO;
    advance(&app, &receiver, &mut ahead, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_on("/controls").await.len(), 3);
    assert_eq!(receiver.received_on("/plain").await.len(), 3);
}

/// Jobs of the account's endpoints held by this instance (claimed, their lease live).
async fn held_by(app: &TestApp, account_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
         WHERE w.account_id = $1 AND d.status = 'delivering' AND d.next_attempt_at > $2",
    )
    .bind(account_id)
    .bind(app.db.now().0)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

/// An account whose endpoints never answer holds jobs of its own only: another account's
/// event goes out at once. With 16 turns per endpoint, each of the six silent endpoints
/// may take 256 jobs ahead, together more than all the jobs an instance holds at once;
/// only the limit on what one account holds leaves room for the other's.
async fn silent_endpoints_of_one_account_hold_up_no_other_account(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.webhook_concurrency = 16).await
    else {
        return;
    };
    let crowded = app.admin.account_id.clone();
    for n in 0..6 {
        let path = format!("/silent{n}");
        receiver.script(&path, json!([{"hang": true}])).await;
        add_webhook(&app, &receiver.url(&path), &["email.sent"]).await;
    }
    record_events(&app, &crowded, "email.sent", 200).await;
    // Until the silent endpoints hold all they may: the count stays the same a second.
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut held, mut same_since) = (0, Instant::now());
    loop {
        let now_held = held_by(&app, &crowded).await;
        if now_held != held {
            (held, same_since) = (now_held, Instant::now());
        } else if held > 0 && same_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} jobs held, still changing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held >= 100, "the silent endpoints hold {held} jobs");

    let other = app.other_account().await;
    let response = app
        .with_key(&other.api_key, Method::POST, "/v2/webhooks")
        .json(&json!({"url": receiver.url("/other"), "events": ["email.sent"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let started = Instant::now();
    let written = record_events(&app, &other.account_id, "email.sent", 1).await;
    let arrived = receiver.wait_for("/other", 1, Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(arrived[0].id(), written[0]);
    // …while the silent endpoints still held their jobs.
    let still_held = held_by(&app, &crowded).await;
    assert!(still_held >= 100, "{still_held}");
}

/// An endpoint that keeps connections alive gets its events over a few of them (at most
/// one per turn of its concurrency cap), not one connection per event.
async fn kept_alive_connections_are_reused(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.webhook_concurrency = 4).await
    else {
        return;
    };
    let (webhook_id, secret) = add_webhook(&app, &receiver.url("/keep"), &["email.sent"]).await;
    receiver.verify_with(&[&secret]).await;
    let written = record_events(&app, &app.admin.account_id, "email.sent", 20).await;
    let arrived = receiver
        .wait_for("/keep", 20, Duration::from_secs(20))
        .await;
    assert_signed(&arrived);
    let ids: HashSet<&str> = arrived.iter().map(Arrival::id).collect();
    let written_ids: HashSet<&str> = written.iter().map(String::as_str).collect();
    assert_eq!(ids, written_ids);
    let connections: HashSet<u64> = arrived.iter().map(|a| a.connection).collect();
    assert!(
        connections.len() <= 4,
        "20 events came over {} connections",
        connections.len()
    );
    settle_one(&app, &webhook_id).await;
    let recorded = deliveries(&app, &webhook_id).await;
    assert!(
        recorded.iter().all(|d| d["status"] == "succeeded"),
        "{recorded:?}"
    );
}

/// An endpoint that hangs up after each reply, without saying so in a header, makes every
/// kept connection useless: each event still arrives, in one attempt.
async fn an_endpoint_that_hangs_up_after_each_reply_loses_nothing(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.webhook_concurrency = 4).await
    else {
        return;
    };
    let (webhook_id, secret) = add_webhook(&app, &receiver.url("/close"), &["email.sent"]).await;
    receiver.verify_with(&[&secret]).await;
    receiver.script("/close", json!([{"close": true}])).await;
    let written = record_events(&app, &app.admin.account_id, "email.sent", 20).await;
    let arrived = receiver
        .wait_for("/close", 20, Duration::from_secs(20))
        .await;
    assert_signed(&arrived);
    let ids: HashSet<&str> = arrived.iter().map(Arrival::id).collect();
    let written_ids: HashSet<&str> = written.iter().map(String::as_str).collect();
    assert_eq!(ids, written_ids);
    settle_one(&app, &webhook_id).await;
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded.len(), 20);
    for delivery in &recorded {
        assert_eq!(delivery["status"], "succeeded", "{delivery}");
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "no failed attempt: {delivery}");
        assert_eq!(attempts[0]["http_status"], 200, "{delivery}");
    }
}

/// Events older than the retention go with their deliveries, except one whose delivery
/// is still being retried; a delivery waiting for a disabled endpoint keeps its event
/// only as long as the retries would have lasted (about three days) and a day more.
/// The worker prunes once a minute (real time): the test waits for it.
async fn old_events_go_unless_a_delivery_still_needs_them(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.event_retention_days = 1).await
    else {
        return;
    };
    let account = app.admin.account_id.clone();
    let (delivered_to, _) = add_webhook(&app, &receiver.url("/ok"), &["domain.verified"]).await;
    let (failing, _) = add_webhook(&app, &receiver.url("/failing"), &["sender.verified"]).await;
    let (disabled, _) = add_webhook(&app, &receiver.url("/off"), &["mailbox.created"]).await;
    receiver.script("/failing", json!([{"status": 503}])).await;
    receiver.script("/off", json!([{"status": 503}])).await;
    let mut ahead = Duration::ZERO;

    // Day 0: an event whose endpoint fails once, then is turned off.
    let waiting = record_events(&app, &account, "mailbox.created", 1).await;
    receiver.wait_for("/off", 1, Duration::from_secs(20)).await;
    settle(&app.db).await;
    let response = app
        .api(Method::PATCH, &format!("/v2/webhooks/{disabled}"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(deliveries(&app, &disabled).await[0]["status"], "pending");

    // Day 3: one event delivered, one whose endpoint keeps failing.
    advance(&app, &receiver, &mut ahead, Duration::from_secs(3 * 86_400)).await;
    let delivered = record_events(&app, &account, "domain.verified", 1).await;
    let retried = record_events(&app, &account, "sender.verified", 1).await;
    receiver.wait_for("/ok", 1, Duration::from_secs(20)).await;
    receiver
        .wait_for("/failing", 1, Duration::from_secs(20))
        .await;
    settle(&app.db).await;
    assert_eq!(
        listed_events(&app).await,
        [waiting[0].clone(), delivered[0].clone(), retried[0].clone()]
    );

    // Day 4.5: the delivered event is past the retention, the disabled endpoint's past
    // every retry and a day; the failing endpoint's delivery is still being retried.
    advance(&app, &receiver, &mut ahead, Duration::from_secs(36 * 3600)).await;
    receiver
        .wait_for("/failing", 2, Duration::from_secs(20))
        .await;
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let listed = listed_events(&app).await;
        if !listed.contains(&delivered[0]) {
            assert_eq!(listed, retried, "only the event still retried is kept");
            break;
        }
        assert!(Instant::now() < deadline, "not pruned: {listed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(deliveries(&app, &delivered_to).await.is_empty());
    assert!(deliveries(&app, &disabled).await.is_empty());
    let kept = deliveries(&app, &failing).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["event_id"], retried[0].as_str());
    assert!(
        kept[0]["status"] == "pending" || kept[0]["status"] == "delivering",
        "{kept:?}"
    );
}

/// A job claimed with others waits in its endpoint's line (one at a time here, each
/// answer taking 8 s); when its turn comes with too little of its 30 s lease left for an
/// attempt, it is given back untried and claimed again: it arrives once, and its first
/// recorded attempt is number 1.
async fn a_job_whose_lease_runs_short_in_line_is_given_back_untried(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.webhook_concurrency = 1).await
    else {
        return;
    };
    let (webhook_id, secret) = add_webhook(&app, &receiver.url("/slow"), &["email.sent"]).await;
    receiver.verify_with(&[&secret]).await;
    receiver.script("/slow", json!([{"delay": 8}])).await;
    let written = record_events(&app, &app.admin.account_id, "email.sent", 4).await;
    let arrived = receiver.wait_for("/slow", 4, Duration::from_secs(55)).await;
    // Long enough for a second attempt at a job whose lease ran out mid-attempt.
    settle_one_within(&app, &webhook_id, Duration::from_secs(20)).await;
    let arrived_again = receiver.received_on("/slow").await;
    assert_eq!(arrived_again.len(), 4, "each event once: {arrived_again:?}");
    assert_signed(&arrived);
    let ids: Vec<&str> = arrived.iter().map(Arrival::id).collect();
    let mut expected: Vec<&str> = written.iter().map(String::as_str).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    // One at a time: each answer took 8 s.
    for pair in arrived.windows(2) {
        assert!(pair[1].arrived - pair[0].arrived >= 7.5, "{arrived:?}");
    }
    let recorded = deliveries(&app, &webhook_id).await;
    assert_eq!(recorded.len(), 4);
    for delivery in &recorded {
        assert_eq!(delivery["status"], "succeeded", "{delivery}");
        let numbers: Vec<&Value> = delivery["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["number"])
            .collect();
        assert_eq!(numbers, [1], "{delivery}");
    }
}

/// The webhook's run of failures as mailroom counts it, once it has begun.
async fn wait_until_failing(app: &TestApp, webhook_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failures: i64 = sqlx::query_scalar("SELECT failures FROM webhooks WHERE id = $1")
            .bind(webhook_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if failures > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no failure counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The webhook's jobs being attempted or waiting for their turn.
async fn delivering(app: &TestApp, webhook_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'delivering'",
    )
    .bind(webhook_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

/// Each recipient's `email.queued` reaches the endpoint before its `email.sent`, even when
/// both are due at once: the endpoint here has failed once (so it is given no more jobs
/// than its four turns) and is busy with four slow answers while the email is queued and
/// sent, so that all ten jobs are due together when it is free again.
async fn each_recipients_events_arrive_in_order(engine: Engine) {
    let Some((app, relay, receiver)) = setup(engine, |s| s.webhook_concurrency = 4).await else {
        return;
    };
    let (webhook_id, secret) = add_webhook(
        &app,
        &receiver.url("/hook"),
        &["email.queued", "email.sent"],
    )
    .await;
    receiver.verify_with(&[&secret]).await;
    let slow = json!({"status": 200, "delay": 4});
    receiver
        .script(
            "/hook",
            json!([{"status": 500}, slow, slow, slow, slow, {"status": 200}]),
        )
        .await;
    let account = app.admin.account_id.clone();
    record_events(&app, &account, "email.queued", 1).await;
    receiver.wait_for("/hook", 1, Duration::from_secs(10)).await;
    wait_until_failing(&app, &webhook_id).await;
    record_events(&app, &account, "email.queued", 4).await;
    receiver.wait_for("/hook", 5, Duration::from_secs(10)).await;

    let recipients: Vec<String> = (0..5)
        .map(|n| format!("customer{n}@client.example"))
        .collect();
    let response = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({
            "from": format!("billing@{DOMAIN}"),
            "to": recipients,
            "subject": "Your invoice",
            "text": "Hello",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let email: Value = response.json().await.unwrap();
    let email_id = email["id"].as_str().unwrap();
    relay.wait_for(1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE email_id = $1 AND type = 'email.sent'",
        )
        .bind(email_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if sent == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{sent} of 5 sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let about_the_email = |arrivals: &[Arrival]| -> Vec<Arrival> {
        arrivals
            .iter()
            .filter(|a| a.json()["data"]["id"] == email_id)
            .cloned()
            .collect()
    };
    assert!(
        about_the_email(&receiver.received_on("/hook").await).is_empty(),
        "the email's events were all written while the endpoint was busy"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        let arrived = about_the_email(&receiver.received_on("/hook").await);
        if arrived.len() >= 10 {
            break arrived;
        }
        assert!(Instant::now() < deadline, "{arrived:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_signed(&arrived);
    for recipient in &recipients {
        let kinds: Vec<String> = arrived
            .iter()
            .map(Arrival::json)
            .filter(|payload| payload["data"]["recipient"]["email"] == recipient.as_str())
            .map(|payload| payload["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["email.queued", "email.sent"], "{recipient}");
    }
}

/// An endpoint that keeps failing is given only as many jobs as its concurrency cap at a
/// time: the others wait in the database, where another instance, or the endpoint's
/// recovery, finds them, instead of in this instance's line.
async fn a_failing_endpoint_holds_only_its_concurrency(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |s| s.webhook_concurrency = 4).await
    else {
        return;
    };
    let (webhook_id, _) = add_webhook(&app, &receiver.url("/down"), &["email.sent"]).await;
    receiver
        .script("/down", json!([{"status": 500, "delay": 0.2}]))
        .await;
    let account = app.admin.account_id.clone();
    record_events(&app, &account, "email.sent", 1).await;
    receiver.wait_for("/down", 1, Duration::from_secs(10)).await;
    wait_until_failing(&app, &webhook_id).await;

    record_events(&app, &account, "email.sent", 50).await;
    receiver.wait_for("/down", 5, Duration::from_secs(10)).await;
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(delivering(&app, &webhook_id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 4, "{most} jobs held by a failing endpoint");
    assert!(most > 0, "none attempted");
    // …while it was tried all along, four at a time.
    let tried = receiver.received_on("/down").await.len();
    assert!(tried >= 20, "{tried} attempts in 2 s");
}

/// 300 events about one object go one at a time, in order; 20 events about other objects,
/// written after them, do not wait behind them.
async fn one_objects_backlog_hides_no_other_object(engine: Engine) {
    let Some((app, receiver)) = app_and_receiver(engine, |_| {}).await else {
        return;
    };
    let (_, secret) = add_webhook(&app, &receiver.url("/hook"), &["email.sent"]).await;
    receiver.verify_with(&[&secret]).await;
    let one = mailroom::store::new_id("obj");
    let mut objects = vec![one.clone(); 300];
    objects.extend((0..20).map(|_| mailroom::store::new_id("obj")));
    let started = Instant::now();
    let written = record_about(&app, "email.sent", &objects).await;
    let (backlog, others) = written.split_at(300);

    let deadline = Instant::now() + Duration::from_secs(5);
    let arrived = loop {
        let arrived = receiver.received_on("/hook").await;
        let others_in = arrived
            .iter()
            .filter(|a| others.iter().any(|id| id == a.id()))
            .count();
        if others_in == others.len() {
            break arrived;
        }
        assert!(
            Instant::now() < deadline,
            "{others_in} of 20 others arrived in 5 s, after {} of the backlog",
            arrived.len() - others_in
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    let last_other = arrived
        .iter()
        .rposition(|a| others.iter().any(|id| id == a.id()))
        .unwrap();
    let backlog_before = arrived[..last_other]
        .iter()
        .filter(|a| backlog.iter().any(|id| id == a.id()))
        .count();
    assert!(
        backlog_before < 20,
        "the others came after {backlog_before} of the backlog"
    );

    let arrived = receiver
        .wait_for("/hook", 320, Duration::from_secs(90))
        .await;
    assert_signed(&arrived);
    let backlog_arrived: Vec<&str> = arrived
        .iter()
        .map(Arrival::id)
        .filter(|id| backlog.iter().any(|b| b == id))
        .collect();
    assert_eq!(backlog_arrived, backlog, "the backlog once each, in order");
}
