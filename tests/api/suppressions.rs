//! The suppression list: kept per account, changed by the account, and obeyed by sending.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::{Engine, error_code, spawn_app_with_relay};

both_engines!(
    a_suppressed_address_is_never_sent_to,
    the_list_is_paged_and_validated,
    another_accounts_list_is_walled_off,
    the_list_is_capped_but_keeps_every_bounce,
);

async fn a_suppressed_address_is_never_sent_to(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.active_domain("acme.example").await;
    let added = app
        .api(Method::POST, "/v2/suppressions")
        .json(&json!({"email": "Gone@Client.example", "reason": "asked to stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["email"], "gone@client.example");
    assert_eq!(added["reason"], "manual");
    assert_eq!(added["detail"], "asked to stop");

    let sent = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({"from": "news@acme.example", "to": ["gone@client.example", "here@client.example"],
                      "subject": "News", "text": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let sent: Value = sent.json().await.unwrap();
    let statuses: Vec<(&str, &str)> = sent["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["email"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("gone@client.example", "suppressed"),
            ("here@client.example", "queued")
        ]
    );
    let message = relay.wait_for(1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(message.to, ["here@client.example"]);

    // Removed, it is sent to again.
    let removed = app
        .api(Method::DELETE, "/v2/suppressions/GONE@client.example")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let again = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({"from": "news@acme.example", "to": "gone@client.example", "subject": "News", "text": "Hi"}))
        .send()
        .await
        .unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["recipients"][0]["status"], "queued");
    let removed = app
        .api(Method::DELETE, "/v2/suppressions/gone@client.example")
        .send()
        .await
        .unwrap();
    error_code(removed, 404).await;
}

async fn the_list_is_paged_and_validated(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |_| {}).await;
    for address in ["c@x.example", "a@x.example", "b@x.example"] {
        let response = app
            .api(Method::POST, "/v2/suppressions")
            .json(&json!({"email": address}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let duplicate = app
        .api(Method::POST, "/v2/suppressions")
        .json(&json!({"email": "A@x.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(duplicate, 409).await["code"],
        "already_suppressed"
    );
    for body in [
        json!({"email": "not an address"}),
        json!({"email": "a@x.example", "reason": "a\u{1b}[31m"}),
        json!({"email": "a@x.example", "reason": "r".repeat(300)}),
    ] {
        let response = app
            .api(Method::POST, "/v2/suppressions")
            .json(&body)
            .send()
            .await
            .unwrap();
        error_code(response, 422).await;
    }

    let first = app.get_json("/v2/suppressions?limit=2").await;
    let emails: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@x.example", "b@x.example"]);
    let after = first["next_after"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/v2/suppressions?limit=2&after={after}"))
        .await;
    assert_eq!(rest["items"][0]["email"], "c@x.example");
    assert_eq!(rest["next_after"], Value::Null);
    let response = app
        .api(Method::GET, "/v2/suppressions?limit=0")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 422).await["param"], "limit");
}

async fn another_accounts_list_is_walled_off(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |_| {}).await;
    let added = app
        .api(Method::POST, "/v2/suppressions")
        .json(&json!({"email": "mine@x.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let other = app.other_account().await;
    let removed = app
        .with_key(
            &other.api_key,
            Method::DELETE,
            "/v2/suppressions/mine@x.example",
        )
        .send()
        .await
        .unwrap();
    error_code(removed, 404).await;
    let list: Value = app
        .with_key(&other.api_key, Method::GET, "/v2/suppressions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    // Their own entry for the same address is theirs alone.
    let theirs = app
        .with_key(&other.api_key, Method::POST, "/v2/suppressions")
        .json(&json!({"email": "mine@x.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 201);
    assert_eq!(
        app.get_json("/v2/suppressions").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The list is the account's: a key limited to an entity, or a viewer, may not change it.
    let limited = app
        .create_key(json!({"name": "l", "role": "admin", "entity_id": app.admin.entity_id}))
        .await;
    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    for key in [&limited, &viewer] {
        let response = app
            .with_key(key, Method::DELETE, "/v2/suppressions/mine@x.example")
            .send()
            .await
            .unwrap();
        error_code(response, 403).await;
    }
    let read = app
        .with_key(&viewer, Method::GET, "/v2/suppressions")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        app.get_json("/v2/suppressions").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn the_list_is_capped_but_keeps_every_bounce(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.suppressions_per_account = 2).await;
    app.active_domain("acme.example").await;
    let add = |email: &'static str| {
        app.api(Method::POST, "/v2/suppressions")
            .json(&json!({"email": email}))
            .send()
    };
    assert_eq!(add("a@client.example").await.unwrap().status(), 201);
    assert_eq!(add("b@client.example").await.unwrap().status(), 201);
    let error = error_code(add("c@client.example").await.unwrap(), 409).await;
    assert_eq!(error["code"], "suppression_limit_reached");
    assert!(error["message"].as_str().unwrap().contains('2'), "{error}");

    // A bounce past the cap is still kept: losing it would send to a dead address again.
    relay.refuse("gone@client.example", "550 5.1.1 No such user here");
    let send = || {
        app.api(Method::POST, "/v2/emails")
            .json(
                &json!({"from": "news@acme.example", "to": "gone@client.example",
                          "subject": "News", "text": "Hello"}),
            )
            .send()
    };
    let sent: Value = send().await.unwrap().json().await.unwrap();
    let id = sent["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let email = app.get_json(&format!("/v2/emails/{id}")).await;
        if email["recipients"][0]["status"] == "bounced" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not bounced: {email}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = app.get_json("/v2/suppressions").await;
    let listed: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "a@client.example",
            "b@client.example",
            "gone@client.example"
        ]
    );
    let again: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["recipients"][0]["status"], "suppressed");

    // Over the cap, manual adds wait until the list is back under it.
    for email in ["a@client.example", "b@client.example"] {
        let removed = app
            .api(Method::DELETE, &format!("/v2/suppressions/{email}"))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 200);
    }
    assert_eq!(add("c@client.example").await.unwrap().status(), 201);
    error_code(add("d@client.example").await.unwrap(), 409).await;

    // Another account has its own room.
    let other = app.other_account().await;
    let theirs = app
        .with_key(&other.api_key, Method::POST, "/v2/suppressions")
        .json(&json!({"email": "d@client.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 201);
}
