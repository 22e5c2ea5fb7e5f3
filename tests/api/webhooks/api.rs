//! The webhooks API and the event log API: what an account's admin makes, reads, changes
//! and deletes, what is refused, and what another account never sees.

use std::time::Duration;

use base64::Engine as _;
use mailroom::events::{self, NewEvent};
use mailroom::store::crypto::MasterKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::{
    Engine, TestApp, error_code, spawn_app, spawn_app_with, spawn_app_with_relay,
};

both_engines!(
    a_webhook_is_made_read_changed_and_deleted,
    the_secret_is_shown_once_and_stored_sealed,
    every_field_is_validated,
    the_destination_policy_decides_which_urls_may_be_saved,
    an_account_has_at_most_its_limit_of_webhooks,
    another_account_and_narrower_credentials_are_kept_out,
    rotating_keeps_the_previous_secret_for_a_day,
    the_event_log_is_listed_oldest_first_paged_and_filtered,
    deliveries_are_listed_and_replayed,
    a_test_event_reports_an_endpoint_that_cannot_be_reached,
    a_webhook_is_tested_once_at_a_time,
    a_webhook_is_tested_at_most_ten_times_a_minute,
    replays_of_an_event_are_one_delivery_at_a_time,
    concurrent_rotations_make_one_new_secret,
);

/// A URL that the tests' default destination policy (loopback allowed) saves, where
/// nothing listens: deliveries to it fail at once.
const NOWHERE: &str = "http://127.0.0.1:9/hooks";

async fn create(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.with_key(key, Method::POST, "/v2/webhooks")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Makes a webhook with the admin key; answers it, secret included.
async fn webhook(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let response = create(
        app,
        &app.admin.api_key,
        json!({"url": url, "events": events}),
    )
    .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Writes an event of the admin's account as the change that causes it would.
async fn record(app: &TestApp, account_id: &str, kind: &str, object: &str) -> String {
    let mut tx = app.db.begin().await.unwrap();
    let id = events::record(
        &mut tx,
        NewEvent {
            account_id: Some(account_id),
            entity_id: None,
            kind,
            object_key: object,
            email_id: None,
            recipient: None,
            detail: None,
            data: Some(json!({"id": object})),
        },
        app.db.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

fn millis(text: &Value) -> i64 {
    let moment = time::OffsetDateTime::parse(
        text.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (moment.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn a_webhook_is_made_read_changed_and_deleted(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = create(
        &app,
        &app.admin.api_key,
        json!({"url": "https://hooks.example.com/mailroom", "events": ["email.sent", "email.bounced", "email.sent"],
               "description": "  Billing  "}),
    )
    .await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("wh_") && id.len() == 27, "{id}");
    assert_eq!(made["url"], "https://hooks.example.com/mailroom");
    assert_eq!(made["events"], json!(["email.sent", "email.bounced"]));
    assert_eq!(made["description"], "Billing");
    assert_eq!(made["enabled"], true);
    assert_eq!(made["disabled_reason"], Value::Null);
    assert_eq!(made["disabled_at"], Value::Null);
    assert_eq!(made["previous_secret_expires_at"], Value::Null);
    assert_eq!(made["created_at"], made["updated_at"]);

    let read = app.get_json(&format!("/v2/webhooks/{id}")).await;
    let mut expected = made.clone();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(read, expected);
    let list = app.get_json("/v2/webhooks").await;
    assert_eq!(list["items"], json!([expected]));
    assert_eq!(list["next_after"], Value::Null);

    // Changed: a new URL, other events, no description; turned off and on.
    let path = format!("/v2/webhooks/{id}");
    let changed = app
        .api(Method::PATCH, &path)
        .json(
            &json!({"url": "https://other.example.com:8443/in", "events": ["domain.verified"],
                      "description": null, "enabled": false}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["url"], "https://other.example.com:8443/in");
    assert_eq!(changed["events"], json!(["domain.verified"]));
    assert_eq!(changed["description"], Value::Null);
    assert_eq!(changed["enabled"], false);
    assert!(changed["disabled_at"].is_string());
    // Turned off by the account: no reason of mailroom's.
    assert_eq!(changed["disabled_reason"], Value::Null);
    assert_eq!(app.get_json(&path).await, changed);

    // A disabled endpoint receives nothing; re-enabled, it does again.
    record(&app, &app.admin.account_id, "domain.verified", "dom_1").await;
    let deliveries = app.get_json(&format!("{path}/deliveries")).await;
    assert_eq!(deliveries["items"], json!([]));

    // Mailroom turned it off after failures: turning it on clears why.
    sqlx::query(
        "UPDATE webhooks SET failures = 50, failing_since = 1, disabled_reason = $1 WHERE id = $2",
    )
    .bind("endpoint.disabled: 50 failures in a row")
    .bind(&id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        app.get_json(&path).await["disabled_reason"],
        "endpoint.disabled: 50 failures in a row"
    );
    let enabled = app
        .api(Method::PATCH, &path)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.status(), 200);
    let enabled: Value = enabled.json().await.unwrap();
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["disabled_at"], Value::Null);
    assert_eq!(enabled["url"], "https://other.example.com:8443/in");
    let (failures, failing_since): (i64, Option<i64>) =
        sqlx::query_as("SELECT failures, failing_since FROM webhooks WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((failures, failing_since), (0, None));

    // Its subscriptions follow its events: only domain.verified makes a delivery now.
    record(&app, &app.admin.account_id, "email.sent", "em_1").await;
    let event = record(&app, &app.admin.account_id, "domain.verified", "dom_1").await;
    let deliveries = app.get_json(&format!("{path}/deliveries")).await;
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event_id"], event.as_str());

    let deleted = app.api(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    error_code(app.api(Method::GET, &path).send().await.unwrap(), 404).await;
    error_code(app.api(Method::DELETE, &path).send().await.unwrap(), 404).await;
    assert_eq!(app.get_json("/v2/webhooks").await["items"], json!([]));
    // Nothing is queued for it any more.
    record(&app, &app.admin.account_id, "domain.verified", "dom_1").await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

async fn the_secret_is_shown_once_and_stored_sealed(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, "https://hooks.example.com/", &["email.sent"]).await;
    let secret = made["secret"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap();
    // The Standard Webhooks form: whsec_ and 32 random bytes in base64.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 32);
    let another = webhook(&app, "https://hooks.example.com/", &["email.sent"]).await;
    assert_ne!(another["secret"], made["secret"]);

    // Never shown again.
    let read = app.get_json(&format!("/v2/webhooks/{id}")).await;
    assert!(read.get("secret").is_none());
    let list = app.get_json("/v2/webhooks").await;
    assert!(!list.to_string().contains("whsec_"));
    let patched = app
        .api(Method::PATCH, &format!("/v2/webhooks/{id}"))
        .json(&json!({"description": "x"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!patched.contains("whsec_"), "{patched}");

    // Stored sealed: no row holds it, and it opens with the master key only.
    let (stored, previous): (String, Option<String>) =
        sqlx::query_as("SELECT secret, previous_secret FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(!stored.contains(&secret) && !stored.contains("whsec_"));
    assert_eq!(previous, None);
    let key = MasterKey::load(&app.settings).unwrap();
    assert_eq!(
        key.open(&stored, &mailroom::webhooks::store::seal_context(id))
            .unwrap(),
        secret.as_bytes()
    );
    if engine == Engine::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&app.db.pool)
            .await
            .unwrap();
        for entry in std::fs::read_dir(app.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                let found = data
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes());
                assert!(!found, "the secret is in {} in clear", path.display());
            }
        }
    }
}

async fn every_field_is_validated(engine: Engine) {
    let app = spawn_app(engine).await;
    let long_url = format!("https://hooks.example.com/{}", "a".repeat(2030));
    let cases = [
        (
            json!({"url": "hooks.example.com/x", "events": ["email.sent"]}),
            "url",
        ),
        (json!({"url": "/hooks", "events": ["email.sent"]}), "url"),
        (
            json!({"url": "ftp://hooks.example.com/", "events": ["email.sent"]}),
            "url",
        ),
        (json!({"url": "https://", "events": ["email.sent"]}), "url"),
        (
            json!({"url": "https://user:pass@hooks.example.com/", "events": ["email.sent"]}),
            "url",
        ),
        (
            json!({"url": "https://token@hooks.example.com/", "events": ["email.sent"]}),
            "url",
        ),
        (
            json!({"url": "https://hooks.example.com/#part", "events": ["email.sent"]}),
            "url",
        ),
        (
            json!({"url": "https://hooks.example.com/a b", "events": ["email.sent"]}),
            "url",
        ),
        (json!({"url": long_url, "events": ["email.sent"]}), "url"),
        (json!({"url": 5, "events": ["email.sent"]}), "url"),
        (json!({"events": ["email.sent"]}), "url"),
        (
            json!({"url": "https://hooks.example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["email.opened"]}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["webhook.test"]}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": "email.sent"}),
            "events",
        ),
        (json!({"url": "https://hooks.example.com/"}), "events"),
        (
            json!({"url": "https://hooks.example.com/", "events": ["email.sent"], "description": "d".repeat(257)}),
            "description",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["email.sent"], "description": "a\u{1b}[31mred"}),
            "description",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["email.sent"], "description": "evil\u{202e}txt"}),
            "description",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["email.sent"], "secret": "mine"}),
            "secret",
        ),
    ];
    for (body, param) in &cases {
        let response = create(&app, &app.admin.api_key, body.clone()).await;
        let error = error_code(response, 422).await;
        assert_eq!(error["param"], *param, "{body}: {error}");
    }
    // At the limits, it is fine.
    let exact = format!("https://hooks.example.com/{}", "a".repeat(2048 - 26));
    assert_eq!(exact.len(), 2048);
    let made = create(
        &app,
        &app.admin.api_key,
        json!({"url": exact, "events": ["email.sent"], "description": "d".repeat(256)}),
    )
    .await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    assert_eq!(
        app.get_json("/v2/webhooks").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A change is held to the same rules, and a refused change changes nothing.
    let path = format!("/v2/webhooks/{}", made["id"].as_str().unwrap());
    for (body, param) in [
        (json!({"url": "https://u:p@hooks.example.com/"}), "url"),
        (json!({"url": "mailto:someone@example.com"}), "url"),
        (json!({"events": []}), "events"),
        (json!({"events": ["email.sent", "nope"]}), "events"),
        (json!({"description": "x".repeat(300)}), "description"),
        (json!({"enabled": "yes"}), "enabled"),
        (json!({"id": "wh_000000000000000000000000"}), "id"),
    ] {
        let response = app
            .api(Method::PATCH, &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = error_code(response, 422).await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    let read = app.get_json(&path).await;
    assert_eq!(read["url"], made["url"]);
    assert_eq!(read["events"], json!(["email.sent"]));
    assert_eq!(read["updated_at"], made["updated_at"]);

    // Lists check their paging.
    for query in ["limit=0", "limit=201", "limit=x", "after=wh_unknown"] {
        let response = app
            .api(Method::GET, &format!("/v2/webhooks?{query}"))
            .send()
            .await
            .unwrap();
        error_code(response, 422).await;
    }
}

async fn the_destination_policy_decides_which_urls_may_be_saved(engine: Engine) {
    // No ranges allowed: only public addresses over https on 443 or 8443.
    let app = spawn_app_with(engine, |s| s.destination_allow = Vec::new()).await;
    for url in [
        "http://127.0.0.1/",
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://192.168.1.10:8443/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fd00::1]/",
        "https://2130706433/",
        "https://0177.0.0.1/",
        "https://0x7f.0.0.1/",
        "https://127.1/",
        "https://0/",
        "http://hooks.example.com/",
        "http://93.184.216.34/",
        "https://hooks.example.com:8080/",
        "https://93.184.216.34:22/",
    ] {
        let response = create(
            &app,
            &app.admin.api_key,
            json!({"url": url, "events": ["email.sent"]}),
        )
        .await;
        let error = error_code(response, 422).await;
        assert_eq!(error["param"], "url", "{url}");
    }
    for url in [
        "https://hooks.example.com/",
        "https://hooks.example.com:8443/x",
        "https://93.184.216.34/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/",
    ] {
        let response = create(
            &app,
            &app.admin.api_key,
            json!({"url": url, "events": ["email.sent"]}),
        )
        .await;
        assert_eq!(response.status(), 201, "{url}");
    }
    // A change cannot move an endpoint where it could not be made.
    let made = webhook(&app, "https://hooks.example.com/", &["email.sent"]).await;
    let response = app
        .api(
            Method::PATCH,
            &format!("/v2/webhooks/{}", made["id"].as_str().unwrap()),
        )
        .json(&json!({"url": "https://2130706433/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 422).await["param"], "url");

    // With loopback allowed, it may be reached in any scheme and on any port; an address
    // is stored in its plain form.
    let app = spawn_app_with(engine, |s| {
        s.destination_allow = vec!["127.0.0.0/8".to_string()]
    })
    .await;
    for (url, stored) in [
        ("http://127.0.0.1:9999/in", "http://127.0.0.1:9999/in"),
        ("http://2130706433/", "http://127.0.0.1/"),
        ("HTTPS://0177.0.0.1:8080/a", "https://127.0.0.1:8080/a"),
        (
            "http://hooks.example.com:81/",
            "http://hooks.example.com:81/",
        ),
    ] {
        let made = webhook(&app, url, &["email.sent"]).await;
        assert_eq!(made["url"], stored);
    }
    for url in ["http://10.0.0.1/", "https://[::1]/"] {
        let response = create(
            &app,
            &app.admin.api_key,
            json!({"url": url, "events": ["email.sent"]}),
        )
        .await;
        assert_eq!(error_code(response, 422).await["param"], "url", "{url}");
    }
}

async fn an_account_has_at_most_its_limit_of_webhooks(engine: Engine) {
    let app = spawn_app_with(engine, |s| s.webhooks_per_account = 2).await;
    let first = webhook(&app, NOWHERE, &["email.sent"]).await;
    webhook(&app, NOWHERE, &["email.sent"]).await;
    let third = create(
        &app,
        &app.admin.api_key,
        json!({"url": NOWHERE, "events": ["email.sent"]}),
    )
    .await;
    assert_eq!(
        error_code(third, 409).await["code"],
        "webhook_limit_reached"
    );
    // Another account has its own allowance.
    let other = app.other_account().await;
    let theirs = create(
        &app,
        &other.api_key,
        json!({"url": NOWHERE, "events": ["email.sent"]}),
    )
    .await;
    assert_eq!(theirs.status(), 201);
    // Deleting one makes room.
    let deleted = app
        .api(
            Method::DELETE,
            &format!("/v2/webhooks/{}", first["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    webhook(&app, NOWHERE, &["email.sent"]).await;
    let list = app.get_json("/v2/webhooks?limit=1").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let next = list["next_after"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/v2/webhooks?limit=1&after={next}"))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_ne!(rest["items"][0]["id"], list["items"][0]["id"]);
    let end = app
        .get_json(&format!(
            "/v2/webhooks?limit=1&after={}",
            rest["next_after"].as_str().unwrap()
        ))
        .await;
    assert_eq!(end["items"], json!([]));
    assert_eq!(end["next_after"], Value::Null);
}

async fn another_account_and_narrower_credentials_are_kept_out(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let made = webhook(&app, NOWHERE, &["email.sent"]).await;
    let id = made["id"].as_str().unwrap().to_string();
    let event = record(&app, &app.admin.account_id, "email.sent", "em_1").await;
    let deliveries = app.get_json(&format!("/v2/webhooks/{id}/deliveries")).await;
    let delivery = deliveries["items"][0]["id"].as_str().unwrap().to_string();
    let routes = [
        (Method::GET, format!("/v2/webhooks/{id}"), None),
        (
            Method::PATCH,
            format!("/v2/webhooks/{id}"),
            Some(json!({"enabled": false})),
        ),
        (
            Method::POST,
            format!("/v2/webhooks/{id}/rotate-secret"),
            None,
        ),
        (Method::POST, format!("/v2/webhooks/{id}/test"), None),
        (Method::GET, format!("/v2/webhooks/{id}/deliveries"), None),
        (
            Method::POST,
            format!("/v2/webhooks/{id}/deliveries/{delivery}/replay"),
            None,
        ),
        (Method::DELETE, format!("/v2/webhooks/{id}"), None),
    ];
    let send = |key: &str, method: &Method, path: &str, body: &Option<Value>| {
        let request = app.with_key(key, method.clone(), path);
        match body {
            Some(body) => request.json(body),
            None => request,
        }
        .send()
    };

    // Another account: nothing of the first is there.
    let other = app.other_account().await;
    for (method, path, body) in &routes {
        let response = send(&other.api_key, method, path, body).await.unwrap();
        error_code(response, 404).await;
    }
    let list: Value = send(&other.api_key, &Method::GET, "/v2/webhooks", &None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    let theirs: Value = send(&other.api_key, &Method::GET, "/v2/events", &None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["items"], json!([]));
    let response = send(
        &other.api_key,
        &Method::GET,
        &format!("/v2/events?after={event}"),
        &None,
    )
    .await
    .unwrap();
    assert_eq!(error_code(response, 422).await["param"], "after");
    // Their own webhook with the same events gets none of the first account's.
    let theirs = create(
        &app,
        &other.api_key,
        json!({"url": NOWHERE, "events": ["email.sent"]}),
    )
    .await;
    let theirs: Value = theirs.json().await.unwrap();
    record(&app, &app.admin.account_id, "email.sent", "em_2").await;
    let their_deliveries: Value = send(
        &other.api_key,
        &Method::GET,
        &format!("/v2/webhooks/{}/deliveries", theirs["id"].as_str().unwrap()),
        &None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(their_deliveries["items"], json!([]));
    // Nor may they reach the first account's delivery through their own webhook.
    let response = send(
        &other.api_key,
        &Method::POST,
        &format!(
            "/v2/webhooks/{}/deliveries/{delivery}/replay",
            theirs["id"].as_str().unwrap()
        ),
        &None,
    )
    .await
    .unwrap();
    error_code(response, 404).await;

    // Webhooks are the account's, managed by its admins: a key limited to an entity (even
    // an admin's), a user (who acts in entities), an editor's or a viewer's key may not.
    let limited = app
        .create_key(json!({"name": "l", "role": "admin", "entity_id": app.admin.entity_id}))
        .await;
    let editor = app.create_key(json!({"name": "e", "role": "editor"})).await;
    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    let user = app
        .new_user(&relay, "jo@client.example", "admin", "a long password 1", 1)
        .await;
    let mut everything = routes.to_vec();
    everything.extend([
        (Method::GET, "/v2/webhooks".to_string(), None),
        (
            Method::POST,
            "/v2/webhooks".to_string(),
            Some(json!({"url": NOWHERE, "events": ["email.sent"]})),
        ),
        (Method::GET, "/v2/events".to_string(), None),
    ]);
    for key in [&limited, &editor, &viewer, &user.token] {
        for (method, path, body) in &everything {
            let response = send(key, method, path, body).await.unwrap();
            assert_eq!(response.status(), 403, "{method} {path}");
        }
    }
    // All the while the webhook stayed as it was.
    let read = app.get_json(&format!("/v2/webhooks/{id}")).await;
    assert_eq!(read["enabled"], true);
    assert_eq!(read["previous_secret_expires_at"], Value::Null);
}

async fn rotating_keeps_the_previous_secret_for_a_day(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, NOWHERE, &["email.sent"]).await;
    let id = made["id"].as_str().unwrap();
    let first = made["secret"].as_str().unwrap();
    let rotated = app
        .api(Method::POST, &format!("/v2/webhooks/{id}/rotate-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let second = rotated["secret"].as_str().unwrap();
    assert!(second.starts_with("whsec_"));
    assert_ne!(second, first);
    assert_eq!(rotated["id"], id);
    let expires = &rotated["previous_secret_expires_at"];
    assert_eq!(
        millis(expires) - millis(&rotated["updated_at"]),
        24 * 3600 * 1000
    );
    let read = app.get_json(&format!("/v2/webhooks/{id}")).await;
    assert_eq!(read["previous_secret_expires_at"], *expires);
    assert!(read.get("secret").is_none());

    // Rotating again within the day would end the first one's overlap at once: refused,
    // saying until when, and how a leaked secret is dropped at once instead.
    let again = app
        .api(Method::POST, &format!("/v2/webhooks/{id}/rotate-secret"))
        .send()
        .await
        .unwrap();
    let refused = error_code(again, 409).await;
    assert_eq!(refused["code"], "rotation_in_progress");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains(expires.as_str().unwrap()), "{message}");
    assert!(message.contains("delete the webhook"), "{message}");
    assert_eq!(app.get_json(&format!("/v2/webhooks/{id}")).await, read);

    // Both are kept, sealed: the new one signs, the old one beside it.
    let key = MasterKey::load(&app.settings).unwrap();
    let context = mailroom::webhooks::store::seal_context(id);
    let (current, previous): (String, String) =
        sqlx::query_as("SELECT secret, previous_secret FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(key.open(&current, &context).unwrap(), second.as_bytes());
    assert_eq!(key.open(&previous, &context).unwrap(), first.as_bytes());

    // A day later only the new one signs.
    app.advance_clock(Duration::from_secs(24 * 3600 + 1)).await;
    let read = app.get_json(&format!("/v2/webhooks/{id}")).await;
    assert_eq!(read["previous_secret_expires_at"], Value::Null);
    // Rotating again retires the first for good: the second is now the previous.
    let third: Value = app
        .api(Method::POST, &format!("/v2/webhooks/{id}/rotate-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(third["secret"], rotated["secret"]);
    let previous: String = sqlx::query_scalar("SELECT previous_secret FROM webhooks WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(key.open(&previous, &context).unwrap(), second.as_bytes());
    error_code(
        app.api(
            Method::POST,
            "/v2/webhooks/wh_000000000000000000000000/rotate-secret",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

async fn the_event_log_is_listed_oldest_first_paged_and_filtered(engine: Engine) {
    let app = spawn_app(engine).await;
    let account = app.admin.account_id.clone();
    let mut written = Vec::new();
    for (kind, object) in [
        ("email.sent", "em_1"),
        ("domain.verified", "dom_1"),
        ("email.bounced", "em_2"),
        ("email.sent", "em_3"),
        ("mailbox.created", "1"),
    ] {
        written.push((record(&app, &account, kind, object).await, kind));
    }
    // Another account's event, and an event that is history only, are not listed.
    let other = app.other_account().await;
    record(&app, &other.account_id, "email.sent", "em_9").await;
    let mut tx = app.db.begin().await.unwrap();
    events::record(
        &mut tx,
        NewEvent {
            account_id: Some(&account),
            entity_id: None,
            kind: "email.sent",
            object_key: "em_x",
            email_id: None,
            recipient: None,
            detail: None,
            data: None,
        },
        app.db.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = app.get_json("/v2/events").await;
    let expected: Vec<String> = written.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids(&all), expected);
    assert_eq!(all["limit"], 50);
    assert_eq!(all["next_after"], Value::Null);
    // Each is the payload webhooks receive.
    let first = &all["items"][0];
    assert!(first["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(first["type"], "email.sent");
    assert_eq!(first["account_id"], account.as_str());
    assert_eq!(first["data"], json!({"id": "em_1"}));
    assert!(first["created_at"].is_string());
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{first}");

    // Paged with `after`.
    let page = app.get_json("/v2/events?limit=2").await;
    assert_eq!(ids(&page), expected[..2]);
    let next = page["next_after"].as_str().unwrap();
    assert_eq!(next, expected[1]);
    let page = app
        .get_json(&format!("/v2/events?limit=2&after={next}"))
        .await;
    assert_eq!(ids(&page), expected[2..4]);
    let page = app
        .get_json(&format!(
            "/v2/events?limit=2&after={}",
            page["next_after"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&page), expected[4..]);
    assert_eq!(page["next_after"], Value::Null);

    // Filtered by type: one, repeated, or comma-separated.
    let sent = app.get_json("/v2/events?type=email.sent").await;
    assert_eq!(ids(&sent), [expected[0].clone(), expected[3].clone()]);
    let of = |kinds: &[&str]| -> Vec<String> {
        written
            .iter()
            .filter(|(_, kind)| kinds.contains(kind))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let repeated = app
        .get_json("/v2/events?type=email.sent&type=mailbox.created")
        .await;
    assert_eq!(ids(&repeated), of(&["email.sent", "mailbox.created"]));
    let commas = app
        .get_json("/v2/events?type=email.bounced,domain.verified")
        .await;
    assert_eq!(ids(&commas), of(&["email.bounced", "domain.verified"]));
    let after = app
        .get_json(&format!("/v2/events?type=email.sent&after={}", expected[0]))
        .await;
    assert_eq!(ids(&after), [expected[3].clone()]);
    let none = app.get_json("/v2/events?type=webhook.test").await;
    assert_eq!(ids(&none), Vec::<String>::new());

    for (query, param) in [
        ("type=email.opened", "type"),
        ("type=email.sent,nope", "type"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("after=evt_000000000000000000000000", "after"),
    ] {
        let response = app
            .api(Method::GET, &format!("/v2/events?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 422).await["param"], param, "{query}");
    }
}

async fn deliveries_are_listed_and_replayed(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, NOWHERE, &["email.sent", "domain.verified"]).await;
    let id = made["id"].as_str().unwrap().to_string();
    let first = record(&app, &app.admin.account_id, "email.sent", "em_1").await;
    let second = record(&app, &app.admin.account_id, "domain.verified", "dom_1").await;
    let path = format!("/v2/webhooks/{id}/deliveries");
    let list = app.get_json(&path).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    // Newest first.
    assert_eq!(items[0]["event_id"], second.as_str());
    assert_eq!(items[0]["event_type"], "domain.verified");
    assert_eq!(items[1]["event_id"], first.as_str());
    assert_eq!(items[1]["event_type"], "email.sent");
    for item in items {
        assert!(item["id"].as_str().unwrap().starts_with("whd_"));
        let status = item["status"].as_str().unwrap();
        assert!(
            ["pending", "delivering", "succeeded", "failed"].contains(&status),
            "{item}"
        );
        assert!(item["attempts"].is_array());
        assert!(item["created_at"].is_string() && item["updated_at"].is_string());
    }
    let older = app
        .get_json(&format!(
            "{path}?limit=1&after={}",
            items[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(older["items"][0]["event_id"], first.as_str());
    let page = app.get_json(&format!("{path}?limit=1")).await;
    assert_eq!(page["next_after"], items[0]["id"]);

    // A delivery out of attempts, as the worker leaves one, is shown in full.
    let delivery = mailroom::store::new_id("whd");
    let at = app.db.now().0;
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, object_key, status, attempts, \
         next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, 'em_1', 'failed', 2, $4, $4, $4)",
    )
    .bind(&delivery)
    .bind(&id)
    .bind(&first)
    .bind(at)
    .execute(&app.db.pool)
    .await
    .unwrap();
    for (number, status, response, error) in [
        (1_i64, Some(500_i64), Some("oops"), None),
        (2, None, None, Some("connection refused")),
    ] {
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, number, at, http_status, latency_ms, response, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&delivery)
        .bind(number)
        .bind(at)
        .bind(status)
        .bind(12_i64)
        .bind(response)
        .bind(error)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
    let failed = app.get_json(&format!("{path}?status=failed")).await;
    let failed = &failed["items"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    let shown = &failed[0];
    assert_eq!(shown["id"], delivery.as_str());
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["next_attempt_at"], Value::Null);
    let attempts = &shown["attempts"];
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(attempts[0]["latency_ms"], 12);
    assert_eq!(attempts[0]["response"], "oops");
    assert_eq!(attempts[0]["error"], Value::Null);
    assert_eq!(attempts[1]["number"], 2);
    assert_eq!(attempts[1]["http_status"], Value::Null);
    assert_eq!(attempts[1]["error"], "connection refused");

    // Replayed while the event's first delivery is still being tried: that one is
    // answered, and no other is queued.
    let replayed = app
        .api(Method::POST, &format!("{path}/{delivery}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 202);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["id"], items[1]["id"]);
    assert_eq!(replayed["event_id"], first.as_str());
    assert_eq!(replayed["event_type"], "email.sent");
    let list = app.get_json(&path).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    for query in [
        "status=lost",
        "limit=0",
        "after=whd_000000000000000000000000",
    ] {
        let response = app
            .api(Method::GET, &format!("{path}?{query}"))
            .send()
            .await
            .unwrap();
        error_code(response, 422).await;
    }
    for replay in [
        format!("{path}/whd_000000000000000000000000/replay"),
        format!("/v2/webhooks/wh_000000000000000000000000/deliveries/{delivery}/replay"),
    ] {
        error_code(app.api(Method::POST, &replay).send().await.unwrap(), 404).await;
    }
    // Another webhook of the same account does not replay this one's deliveries.
    let sibling = webhook(&app, NOWHERE, &["email.sent"]).await;
    let response = app
        .api(
            Method::POST,
            &format!(
                "/v2/webhooks/{}/deliveries/{delivery}/replay",
                sibling["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    error_code(response, 404).await;
}

async fn a_test_event_reports_an_endpoint_that_cannot_be_reached(engine: Engine) {
    // No ranges allowed: a name may be saved, but what it resolves to is checked at each
    // delivery, and loopback is refused there.
    let app = spawn_app_with(engine, |s| s.destination_allow = Vec::new()).await;
    let made = webhook(&app, "https://localhost/hooks", &["email.sent"]).await;
    let id = made["id"].as_str().unwrap();
    // Even a disabled endpoint can be tried before it is turned on again.
    let disabled = app
        .api(Method::PATCH, &format!("/v2/webhooks/{id}"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let tested = app
        .api(Method::POST, &format!("/v2/webhooks/{id}/test"))
        .send()
        .await
        .unwrap();
    assert_eq!(tested.status(), 200);
    let tested: Value = tested.json().await.unwrap();
    assert_eq!(tested["outcome"]["http_status"], Value::Null, "{tested}");
    assert!(!tested["outcome"]["error"].as_str().unwrap().is_empty());
    let event_id = tested["event_id"].as_str().unwrap();
    // The test event is in the log, and the delivery in the webhook's list.
    let log = app.get_json("/v2/events?type=webhook.test").await;
    assert_eq!(log["items"][0]["id"], event_id);
    assert_eq!(log["items"][0]["data"]["webhook_id"], id);
    let deliveries = app.get_json(&format!("/v2/webhooks/{id}/deliveries")).await;
    assert_eq!(deliveries["items"][0]["id"], tested["delivery_id"]);
    assert_eq!(deliveries["items"][0]["event_type"], "webhook.test");
    assert!(
        !deliveries["items"][0]["attempts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// An HTTP endpoint on loopback that holds every request until `release` is called, then
/// answers 200; it counts the requests that reached it.
struct HoldingEndpoint {
    url: String,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HoldingEndpoint {
    async fn start() -> HoldingEndpoint {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = arrived.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let mut released = released.clone();
                tokio::spawn(async move {
                    // The request's head and body, then the wait.
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(read) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        request.extend_from_slice(&chunk[..read]);
                        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|line| line.strip_prefix("content-length:"))
                                .and_then(|n| n.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|released| *released).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        HoldingEndpoint {
            url,
            arrived,
            release,
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Sends `count` requests at once; each answer, status and JSON body, comes on the channel
/// as it arrives (a request with no answer within `limit` comes as status 0).
fn at_once(
    count: usize,
    limit: Duration,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> tokio::sync::mpsc::UnboundedReceiver<(u16, Value)> {
    let (answers, answered) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..count {
        let sent = request().timeout(limit).send();
        let answers = answers.clone();
        tokio::spawn(async move {
            let answer = match sent.await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (status, response.json().await.unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            };
            let _ = answers.send(answer);
        });
    }
    answered
}

async fn a_webhook_is_tested_once_at_a_time(engine: Engine) {
    let app = spawn_app(engine).await;
    let endpoint = HoldingEndpoint::start().await;
    let made = webhook(&app, &endpoint.url, &["email.sent"]).await;
    let id = made["id"].as_str().unwrap().to_string();
    let path = format!("/v2/webhooks/{id}/test");
    // Twenty at once: one goes to the endpoint and waits there; the others are refused
    // at once, without touching it.
    let mut answered = at_once(20, Duration::from_secs(8), || app.api(Method::POST, &path));
    for _ in 0..19 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(8), answered.recv())
            .await
            .expect("refused at once")
            .unwrap();
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "test_in_progress", "{body}");
    }
    // The one let through may still be on its way to the endpoint.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while endpoint.arrived() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoint.arrived(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.arrived(), 1);
    // Once it has answered, that test's answer comes back, and the next may go.
    endpoint.release.send(true).unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(8), answered.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["http_status"], 200, "{body}");
    let next = app.api(Method::POST, &path).send().await.unwrap();
    assert_eq!(next.status(), 200);
    let next: Value = next.json().await.unwrap();
    assert_eq!(next["outcome"]["http_status"], 200, "{next}");
    assert_eq!(endpoint.arrived(), 2);
    // Only the tests that went were written.
    let log = app.get_json("/v2/events?type=webhook.test").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 2, "{log}");
}

async fn a_webhook_is_tested_at_most_ten_times_a_minute(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, NOWHERE, &["email.sent"]).await;
    let path = format!("/v2/webhooks/{}/test", made["id"].as_str().unwrap());
    for _ in 0..10 {
        let tested = app.api(Method::POST, &path).send().await.unwrap();
        assert_eq!(tested.status(), 200);
    }
    let refused = app.api(Method::POST, &path).send().await.unwrap();
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(error_code(refused, 429).await["code"], "rate_limited");
    // Refused before anything was written or sent.
    let log = app.get_json("/v2/events?type=webhook.test").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 10);
    // Another webhook has its own allowance.
    let other = webhook(&app, NOWHERE, &["email.sent"]).await;
    let tested = app
        .api(
            Method::POST,
            &format!("/v2/webhooks/{}/test", other["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(tested.status(), 200);
    // When Retry-After says, the next goes.
    app.advance_clock(Duration::from_secs(wait)).await;
    let tested = app.api(Method::POST, &path).send().await.unwrap();
    assert_eq!(tested.status(), 200);
}

/// The ids of the deliveries `count` replays of `event` answered, each a 202.
async fn replayed_ids(
    mut answered: tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>,
    count: usize,
    event: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let (status, body) = answered.recv().await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["event_id"], event);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn replays_of_an_event_are_one_delivery_at_a_time(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, NOWHERE, &["email.sent"]).await;
    let id = made["id"].as_str().unwrap().to_string();
    let event = record(&app, &app.admin.account_id, "email.sent", "em_1").await;
    let path = format!("/v2/webhooks/{id}/deliveries");
    let first = app.get_json(&path).await["items"][0].clone();
    let first_id = first["id"].as_str().unwrap().to_string();
    let replay = format!("{path}/{first_id}/replay");
    let replays_at_once = |count| {
        at_once(count, Duration::from_secs(10), || {
            app.api(Method::POST, &replay)
        })
    };
    // The first delivery fails and waits for its next try: replays answer it (due again
    // at once) and queue nothing.
    let ids = replayed_ids(replays_at_once(30), 30, &event).await;
    assert!(ids.iter().all(|replayed| *replayed == first_id), "{ids:?}");
    let list = app.get_json(&path).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // Once it is final (out of attempts, as the worker leaves it), a replay queues a new
    // delivery of the event, and only one, however many come at once.
    sqlx::query("UPDATE webhook_deliveries SET status = 'failed' WHERE id = $1")
        .bind(&first_id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let ids = replayed_ids(replays_at_once(30), 30, &event).await;
    assert_ne!(ids[0], first_id);
    assert!(ids.iter().all(|replayed| *replayed == ids[0]), "{ids:?}");
    let list = app.get_json(&path).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["id"], ids[0].as_str());
    assert_eq!(items[0]["event_id"], event.as_str());
}

async fn concurrent_rotations_make_one_new_secret(engine: Engine) {
    let app = spawn_app(engine).await;
    let made = webhook(&app, NOWHERE, &["email.sent"]).await;
    let id = made["id"].as_str().unwrap().to_string();
    let path = format!("/v2/webhooks/{id}/rotate-secret");
    let mut answered = at_once(10, Duration::from_secs(10), || app.api(Method::POST, &path));
    let mut rotated = Vec::new();
    for _ in 0..10 {
        let (status, body) = answered.recv().await.unwrap();
        match status {
            200 => rotated.push(body),
            409 => assert_eq!(body["error"]["code"], "rotation_in_progress", "{body}"),
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    // The first secret is the previous one, beside the one answered.
    let key = MasterKey::load(&app.settings).unwrap();
    let context = mailroom::webhooks::store::seal_context(&id);
    let (current, previous): (String, String) =
        sqlx::query_as("SELECT secret, previous_secret FROM webhooks WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        key.open(&current, &context).unwrap(),
        rotated[0]["secret"].as_str().unwrap().as_bytes()
    );
    assert_eq!(
        key.open(&previous, &context).unwrap(),
        made["secret"].as_str().unwrap().as_bytes()
    );
}
