//! The sending API: `POST /v2/emails` and its batch, with what arrives at a real SMTP relay
//! on loopback; who may send as whom; idempotency; limits; reads and cancel; the walls
//! between accounts and entities.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::judges::{dkim_verifies, importable, judge};
use crate::helpers::smtp::TestSmtp;
use crate::helpers::{Engine, TestApp, error_code, spawn_app_with_relay};

both_engines!(
    every_field_arrives_at_the_relay,
    a_mail_client_reads_what_was_sent_and_dkim_verifies,
    from_must_be_a_verified_sender_or_an_active_domain,
    another_accounts_senders_and_domains_are_refused,
    entity_limited_callers_send_and_read_in_their_entity,
    one_key_sends_once,
    a_batch_queues_the_good_and_names_the_bad,
    every_field_is_validated,
    body_and_attachment_limits,
    the_sending_rate_is_limited,
    walls_between_accounts_and_roles,
    a_scheduled_email_is_cancelled_and_never_sent,
    long_lists_are_refused_before_they_are_read,
    large_bodies_are_read_a_few_at_a_time,
    held_bodies_are_limited_per_account,
);

const DOMAIN: &str = "acme.example";

async fn app(engine: Engine) -> (TestApp, TestSmtp) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.active_domain(DOMAIN).await;
    (app, relay)
}

fn minimal() -> Value {
    json!({
        "from": "billing@acme.example",
        "to": "customer@client.example",
        "subject": "Your invoice",
        "text": "Hello",
    })
}

/// Sends `body` with `key`; answers the response.
async fn send_with(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.with_key(key, Method::POST, "/v2/emails")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Sends `body` with the admin key; it must be accepted. Answers the 202 body.
async fn accepted(app: &TestApp, body: &Value) -> Value {
    let response = send_with(app, &app.admin.api_key, body).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn refused(app: &TestApp, body: &Value, status: u16) -> Value {
    error_code(send_with(app, &app.admin.api_key, body).await, status).await
}

/// Waits until every recipient of email `id` is final; answers the email.
async fn wait_until_final(app: &TestApp, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let email = app.get_json(&format!("/v2/emails/{id}")).await;
        let waiting =
            email["recipients"].as_array().unwrap().iter().any(|r| {
                ["queued", "scheduled", "deferred"].contains(&r["status"].as_str().unwrap())
            });
        if !waiting {
            return email;
        }
        assert!(std::time::Instant::now() < deadline, "not final: {email}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn emails_in_store(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE kind = 'email'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn every_field_arrives_at_the_relay(engine: Engine) {
    let (app, relay) = app(engine).await;
    let pdf: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = accepted(
        &app,
        &json!({
            "from": "Acme Billing <billing@acme.example>",
            "to": ["ann@client.example", "Bob Doe <bob@client.example>"],
            "cc": "carol@client.example",
            "bcc": ["dave@hidden.example"],
            "reply_to": "support@acme.example",
            "subject": "Invoice 42",
            "text": "Your invoice is attached.",
            "html": "<p>Your invoice is attached.</p>",
            "attachments": [{"filename": "invoice-42.pdf", "content": STANDARD.encode(&pdf),
                             "content_type": "application/pdf"}],
            "headers": {"X-Campaign": "spring-2030"},
            "tags": {"customer": "c-42", "kind": "invoice"},
        }),
    )
    .await;
    let id = sent["id"].as_str().unwrap();
    assert!(id.starts_with("em_"), "{sent}");
    assert_eq!(sent["status"], "queued");
    let recipients: Vec<(String, String, String)> = sent["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["email"].as_str().unwrap().to_string(),
                r["type"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            ("ann@client.example", "to", "queued"),
            ("bob@client.example", "to", "queued"),
            ("carol@client.example", "cc", "queued"),
            ("dave@hidden.example", "bcc", "queued"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );

    let message = relay.wait_for(1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(message.from, "billing@acme.example");
    let mut envelope = message.to.clone();
    envelope.sort();
    assert_eq!(
        envelope,
        [
            "ann@client.example",
            "bob@client.example",
            "carol@client.example",
            "dave@hidden.example"
        ]
    );
    let from = message.header("From").unwrap();
    assert!(
        from.contains("Acme Billing") && from.contains("<billing@acme.example>"),
        "{from}"
    );
    let to = message.header("To").unwrap();
    assert!(
        to.contains("ann@client.example") && to.contains("Bob Doe"),
        "{to}"
    );
    assert!(
        message
            .header("Cc")
            .unwrap()
            .contains("carol@client.example")
    );
    assert!(message.header("Bcc").is_none(), "Bcc never in the headers");
    assert!(!message.data.contains("dave@hidden.example"));
    assert!(
        message
            .header("Reply-To")
            .unwrap()
            .contains("support@acme.example")
    );
    assert_eq!(message.header("Subject").unwrap(), "Invoice 42");
    assert_eq!(message.header("X-Campaign").unwrap(), "spring-2030");
    assert!(
        message
            .header("Message-ID")
            .unwrap()
            .ends_with("@acme.example>")
    );
    assert!(message.text().contains("Your invoice is attached."));
    assert!(message.data.contains("invoice-42.pdf"));
    assert!(
        message.data.contains(&STANDARD.encode(&pdf[..45])),
        "the PDF, base64"
    );

    let email = wait_until_final(&app, id).await;
    assert_eq!(email["id"], id);
    assert_eq!(email["from"], "billing@acme.example");
    assert_eq!(email["from_name"], "Acme Billing");
    assert_eq!(email["subject"], "Invoice 42");
    assert_eq!(
        email["tags"],
        json!({"customer": "c-42", "kind": "invoice"})
    );
    assert_eq!(email["reply_to"], json!(["support@acme.example"]));
    for recipient in email["recipients"].as_array().unwrap() {
        assert_eq!(recipient["status"], "sent", "{email}");
        assert_eq!(recipient["attempts"], 1, "{email}");
        assert!(
            recipient["last_reply"].as_str().unwrap().starts_with("250"),
            "{email}"
        );
    }
    let events: Vec<&str> = email["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "queued").count(),
        4,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "sent").count(),
        4,
        "{events:?}"
    );
    for field in ["text", "html", "attachments", "body", "headers"] {
        assert!(email.get(field).is_none(), "no {field} in {email}");
    }

    // The list finds it by tag, recipient, sender and status, newest first.
    let second = accepted(&app, &minimal()).await;
    let list = app.get_json("/v2/emails").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second["id"].as_str().unwrap(), id]);
    for query in [
        "tag=customer:c-42",
        "to=Bob@Client.example",
        "from=billing@acme.example&status=sent",
    ] {
        let list = app.get_json(&format!("/v2/emails?{query}")).await;
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&id), "{query}: {list}");
        if query.starts_with("tag") {
            assert_eq!(ids, [id], "{query}");
        }
    }
    let page = app.get_json("/v2/emails?limit=1").await;
    assert_eq!(page["items"][0]["id"], second["id"]);
    let after = page["next_after"].as_i64().unwrap();
    let page = app
        .get_json(&format!("/v2/emails?limit=1&after={after}"))
        .await;
    assert_eq!(page["items"][0]["id"], id);
    let empty = app.get_json("/v2/emails?tag=customer:c-43").await;
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["next_after"], Value::Null);
}

async fn from_must_be_a_verified_sender_or_an_active_domain(engine: Engine) {
    let (app, relay) = app(engine).await;
    let from = |address: &str| {
        let mut body = minimal();
        body["from"] = json!(address);
        body
    };

    // Any address of an active domain.
    accepted(&app, &from("anyone@acme.example")).await;
    accepted(&app, &from("Anyone <ANYONE@Acme.Example>")).await;

    // Nothing of the account's says it may use this one.
    let error = refused(&app, &from("ceo@bank.example"), 422).await;
    assert_eq!(error["code"], "sender_not_allowed");
    assert_eq!(error["param"], "from");

    // Without a verified sender there is no default From: the system's is not the tenant's.
    let mut no_from = minimal();
    no_from.as_object_mut().unwrap().remove("from");
    let error = refused(&app, &no_from, 422).await;
    assert_eq!(error["param"], "from");

    // A pending domain: its addresses wait for it.
    app.add_domain("pending.example").await;
    let error = refused(&app, &from("news@pending.example"), 422).await;
    assert_eq!(error["code"], "domain_not_active");
    assert!(
        error["message"].as_str().unwrap().contains("pending"),
        "{error}"
    );

    // A sender address not verified yet, then verified on a domain still pending.
    app.add_sender("/v1/email-address", "me@mine.example").await;
    let (_link, code) = relay.verification_link_and_code("me@mine.example", 3).await;
    let error = refused(&app, &from("me@mine.example"), 422).await;
    assert_eq!(error["code"], "sender_not_verified");
    assert!(
        error["message"].as_str().unwrap().contains("not verified"),
        "{error}"
    );
    let verified = app
        .api(Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let error = refused(&app, &from("me@mine.example"), 422).await;
    assert_eq!(error["code"], "sender_not_verified");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("mine.example is pending"),
        "{error}"
    );

    // Once its domain is active too, it is the default From.
    set_status_by_operator(
        &app.db,
        &app.settings,
        &DomainName::parse("mine.example").unwrap(),
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    let sent = accepted(&app, &no_from).await;
    let email = app
        .get_json(&format!("/v2/emails/{}", sent["id"].as_str().unwrap()))
        .await;
    assert_eq!(email["from"], "me@mine.example");
}

async fn another_accounts_senders_and_domains_are_refused(engine: Engine) {
    let (app, relay) = app(engine).await;
    let other = app.other_account().await;
    // The other account's own active domain and fully verified sender address.
    let added = app
        .with_key(&other.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "other.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    set_status_by_operator(
        &app.db,
        &app.settings,
        &DomainName::parse("other.example").unwrap(),
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    let sender = app
        .with_key(&other.api_key, Method::POST, "/v1/email-address")
        .json(&json!({"email": "boss@other.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sender.status(), 201);
    let (_link, code) = relay
        .verification_link_and_code("boss@other.example", 1)
        .await;
    let verified = app
        .with_key(&other.api_key, Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let mut body = minimal();
    body["from"] = json!("boss@other.example");
    assert_eq!(
        send_with(&app, &other.api_key, &body).await.status(),
        202,
        "theirs to use"
    );

    for address in [
        "boss@other.example",
        "Boss <BOSS@other.example>",
        "anyone@other.example",
    ] {
        body["from"] = json!(address);
        let error = refused(&app, &body, 422).await;
        assert_eq!(error["code"], "sender_not_allowed", "{address}");
    }
    // And the other way round.
    body["from"] = json!("billing@acme.example");
    let error = error_code(send_with(&app, &other.api_key, &body).await, 422).await;
    assert_eq!(error["code"], "sender_not_allowed");
}

async fn entity_limited_callers_send_and_read_in_their_entity(engine: Engine) {
    let (app, relay) = app(engine).await;
    let second = app.create_entity("Second").await;

    // A user sends where their role allows it, in the entity they act in.
    let reader = app
        .new_user(
            &relay,
            "reader@client.example",
            "viewer",
            "a long reader password",
            1,
        )
        .await;
    let writer = app
        .new_user(
            &relay,
            "writer@client.example",
            "editor",
            "a long writer password",
            2,
        )
        .await;
    let error = error_code(send_with(&app, &reader.token, &minimal()).await, 403).await;
    assert_eq!(error["code"], "insufficient_role");
    let response = send_with(&app, &writer.token, &minimal()).await;
    assert_eq!(response.status(), 202);
    let sent: Value = response.json().await.unwrap();
    let email = app
        .get_json(&format!("/v2/emails/{}", sent["id"].as_str().unwrap()))
        .await;
    assert_eq!(email["entity_id"], app.admin.entity_id.as_str());
    let outside = app
        .with_key(&writer.token, Method::POST, "/v2/emails")
        .header("x-entity-id", &second)
        .json(&minimal())
        .send()
        .await
        .unwrap();
    error_code(outside, 404).await;
    let editor = app
        .create_key(json!({"name": "e", "role": "editor", "entity_id": second}))
        .await;
    let viewer = app
        .create_key(json!({"name": "v", "role": "viewer", "entity_id": second}))
        .await;
    let first_editor = app
        .create_key(json!({"name": "f", "role": "editor", "entity_id": app.admin.entity_id}))
        .await;

    // A viewer reads but does not send.
    let error = error_code(send_with(&app, &viewer, &minimal()).await, 403).await;
    assert_eq!(error["code"], "insufficient_role");

    let response = send_with(&app, &editor, &minimal()).await;
    assert_eq!(response.status(), 202);
    let sent: Value = response.json().await.unwrap();
    let id = sent["id"].as_str().unwrap();
    let email = app.get_json(&format!("/v2/emails/{id}")).await;
    assert_eq!(
        email["entity_id"],
        second.as_str(),
        "sent in the key's entity"
    );

    // A limited key cannot act in another entity, nor see its email.
    let elsewhere = app
        .with_key(&editor, Method::POST, "/v2/emails")
        .header("x-entity-id", &app.admin.entity_id)
        .json(&minimal())
        .send()
        .await
        .unwrap();
    error_code(elsewhere, 404).await;
    let hidden = app
        .with_key(&first_editor, Method::GET, &format!("/v2/emails/{id}"))
        .send()
        .await
        .unwrap();
    error_code(hidden, 404).await;
    let cancel = app
        .with_key(
            &first_editor,
            Method::POST,
            &format!("/v2/emails/{id}/cancel"),
        )
        .send()
        .await
        .unwrap();
    error_code(cancel, 404).await;
    let list: Value = app
        .with_key(&first_editor, Method::GET, "/v2/emails")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the first entity's own: {list}");
    assert_eq!(items[0]["entity_id"], app.admin.entity_id.as_str());

    // The entity's own viewer sees it; an account-wide key naming the entity acts in it.
    let seen = app
        .with_key(&viewer, Method::GET, &format!("/v2/emails/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    let named = app
        .api(Method::POST, "/v2/emails")
        .header("x-entity-id", &second)
        .json(&minimal())
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 202);
    let named: Value = named.json().await.unwrap();
    let email = app
        .get_json(&format!("/v2/emails/{}", named["id"].as_str().unwrap()))
        .await;
    assert_eq!(email["entity_id"], second.as_str());
    let list: Value = app
        .with_key(&viewer, Method::GET, "/v2/emails")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

async fn one_key_sends_once(engine: Engine) {
    let (app, relay) = app(engine).await;
    let send = |key: &'static str, body: Value| {
        app.api(Method::POST, "/v2/emails")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("order-1", minimal()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The same body, its keys in another order and spaced otherwise: the same request.
    let again = app
        .api(Method::POST, "/v2/emails")
        .header("Idempotency-Key", "order-1")
        .header("content-type", "application/json")
        .body(r#"{ "text": "Hello", "subject": "Your invoice", "to": "customer@client.example", "from": "billing@acme.example" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);

    let mut other = minimal();
    other["subject"] = json!("Another invoice");
    let error = error_code(send("order-1", other.clone()).await.unwrap(), 409).await;
    assert_eq!(error["code"], "idempotency_key_reused");

    // Another account's same key is its own.
    let other_account = app.other_account().await;
    let theirs = app
        .with_key(&other_account.api_key, Method::POST, "/v2/emails")
        .header("Idempotency-Key", "order-1")
        .json(&minimal())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(theirs, 422).await["code"],
        "sender_not_allowed",
        "not our answer"
    );

    // Eight at once with a new key: one email.
    let mut body = minimal();
    body["to"] = json!("eight@client.example");
    let answers = futures_join(
        (0..8)
            .map(|_| {
                let request = app
                    .api(Method::POST, "/v2/emails")
                    .header("Idempotency-Key", "burst")
                    .json(&body);
                async move {
                    let response = request.send().await.unwrap();
                    assert_eq!(response.status(), 202);
                    response.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                }
            })
            .collect(),
    )
    .await;
    assert!(answers.iter().all(|id| *id == answers[0]), "{answers:?}");
    assert_eq!(emails_in_store(&app).await, 2);
    relay.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = relay.received();
    assert_eq!(received.len(), 2, "one email per key");
    assert_eq!(
        received
            .iter()
            .filter(|r| r.to == ["eight@client.example"])
            .count(),
        1
    );

    // A key is 1 to 255 printable characters; it lasts a day.
    let error = error_code(send_key(&app, &"k".repeat(256)).await, 400).await;
    assert_eq!(error["code"], "invalid_idempotency_key");
    app.advance_clock(Duration::from_secs(25 * 3600)).await;
    let later = send("order-1", other).await.unwrap();
    assert_eq!(later.status(), 202, "an expired key is free again");
}

async fn send_key(app: &TestApp, key: &str) -> reqwest::Response {
    app.api(Method::POST, "/v2/emails")
        .header("Idempotency-Key", key)
        .json(&minimal())
        .send()
        .await
        .unwrap()
}

/// Runs futures at once on the test's runtime; answers their outputs in order.
async fn futures_join<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn a_batch_queues_the_good_and_names_the_bad(engine: Engine) {
    let (app, relay) = app(engine).await;
    let mut bad = minimal();
    bad["to"] = json!("not-an-address");
    let mut second = minimal();
    second["to"] = json!("second@client.example");
    let response = app
        .api(Method::POST, "/v2/emails/batch")
        .header("Idempotency-Key", "batch-1")
        .json(&json!({"emails": [minimal(), bad, second, {"to": "x@client.example"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    assert!(data[0]["id"].as_str().unwrap().starts_with("em_"));
    assert_eq!(data[1]["error"]["param"], "emails[1].to", "{answer}");
    assert!(data[1].get("id").is_none());
    assert!(data[2]["id"].as_str().unwrap().starts_with("em_"));
    assert_eq!(data[3]["error"]["code"], "missing_field", "{answer}");
    assert_eq!(data[3]["error"]["param"], "emails[3].subject", "{answer}");
    assert_eq!(emails_in_store(&app).await, 2);
    relay.wait_for(2, Duration::from_secs(20)).await;

    let again = app
        .api(Method::POST, "/v2/emails/batch")
        .header("Idempotency-Key", "batch-1")
        .json(&json!({"emails": [minimal(), {"to": "not-an-address"}]}))
        .send()
        .await
        .unwrap();
    error_code(again, 409).await;

    for emails in [json!([]), json!(vec![minimal(); 101])] {
        let response = app
            .api(Method::POST, "/v2/emails/batch")
            .json(&json!({"emails": emails}))
            .send()
            .await
            .unwrap();
        let error = error_code(response, 422).await;
        assert_eq!(error["param"], "emails");
    }
    assert_eq!(emails_in_store(&app).await, 2);
}

async fn every_field_is_validated(engine: Engine) {
    let (app, _relay) = app(engine).await;
    let too_many: Vec<String> = (0..51).map(|i| format!("r{i}@client.example")).collect();
    let eleven_tags: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("t{i}"), json!("v"))).collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"from": "Evil\r\nBcc: x@y.example <billing@acme.example>"}),
            "from",
        ),
        (json!({"from": "not an address"}), "from"),
        (json!({"to": "nobody"}), "to"),
        (
            json!({"to": ["ok@client.example", "bad@@client.example"]}),
            "to",
        ),
        (json!({"to": [], "cc": [], "bcc": []}), "to"),
        (json!({"to": too_many}), "to"),
        (json!({"cc": "a b@client.example"}), "cc"),
        (json!({"bcc": "x@localhost"}), "bcc"),
        (json!({"reply_to": "nope"}), "reply_to"),
        (json!({"subject": ""}), "subject"),
        (json!({"subject": "Hi\r\nBcc: x@y.example"}), "subject"),
        (json!({"subject": "a\u{202e}b"}), "subject"),
        (json!({"text": null, "html": null}), "text"),
        (json!({"text": "a\u{0}b"}), "text"),
        (
            json!({"attachments": [{"filename": "a.txt", "content": "%%%"}]}),
            "attachments[0].content",
        ),
        (
            json!({"attachments": [{"filename": "../../etc/passwd", "content": "aGk="}]}),
            "attachments[0].filename",
        ),
        (
            json!({"attachments": [{"filename": "a\nb.txt", "content": "aGk="}]}),
            "attachments[0].filename",
        ),
        (
            json!({"attachments": [{"filename": "setup.EXE", "content": "aGk="}]}),
            "attachments[0].filename",
        ),
        (
            json!({"attachments": [{"filename": "a.txt", "content": "aGk=", "content_type": "text"}]}),
            "attachments[0].content_type",
        ),
        (
            json!({"attachments": [{"filename": "a.bin", "content": "aGk=", "content_type": "application/x-msdownload"}]}),
            "attachments[0].content_type",
        ),
        (
            json!({"attachments": [{"filename": "a.png", "content": "aGk=", "content_id": "a b"}]}),
            "attachments[0].content_id",
        ),
        (json!({"headers": {"From": "x@y.example"}}), "headers"),
        (json!({"headers": {"Content-Type": "text/html"}}), "headers"),
        (json!({"headers": {"DKIM-Signature": "v=1"}}), "headers"),
        (
            json!({"headers": {"X-Ok": "a\r\nBcc: x@y.example"}}),
            "headers",
        ),
        (json!({"headers": {"Bad Name": "v"}}), "headers"),
        (json!({"tags": eleven_tags}), "tags"),
        (json!({"tags": {"bad key": "v"}}), "tags"),
        (json!({"tags": {"k": "v".repeat(257)}}), "tags"),
        (json!({"scheduled_at": "tomorrow"}), "scheduled_at"),
        (
            json!({"scheduled_at": "2999-01-01T00:00:00Z"}),
            "scheduled_at",
        ),
        (json!({"subject": 42}), "subject"),
        (json!({"unknown_field": 1}), ""),
    ];
    for (change, param) in cases {
        let mut body = minimal();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let error = refused(&app, &body, 422).await;
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{change}: {error}");
        }
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let mut missing = minimal();
    missing.as_object_mut().unwrap().remove("subject");
    let error = refused(&app, &missing, 422).await;
    assert_eq!(error["code"], "missing_field");
    let not_json = app
        .api(Method::POST, "/v2/emails")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    error_code(not_json, 400).await;
    assert_eq!(emails_in_store(&app).await, 0, "nothing refused was queued");

    // A past time is now.
    let mut past = minimal();
    past["scheduled_at"] = json!("2001-01-01T00:00:00Z");
    assert_eq!(accepted(&app, &past).await["status"], "queued");
}

async fn body_and_attachment_limits(engine: Engine) {
    let (app, _relay) = app(engine).await;
    let scheduled = || {
        let mut body = minimal();
        // Nothing needs to go out: scheduled an hour ahead.
        let at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        body["scheduled_at"] = json!(
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        body
    };
    // 9 MB decoded, 12 MB of JSON: taken here, though the rest of the API takes 64 KiB.
    let mut large = scheduled();
    large["attachments"] =
        json!([{"filename": "big.pdf", "content": STANDARD.encode(vec![7u8; 9 * 1024 * 1024])}]);
    assert_eq!(accepted(&app, &large).await["status"], "scheduled");
    let elsewhere = app
        .api(Method::POST, "/v2/suppressions")
        .json(&json!({"email": "a@client.example", "reason": "x".repeat(70 * 1024)}))
        .send()
        .await
        .unwrap();
    let error = error_code(elsewhere, 413).await;
    assert_eq!(error["code"], "payload_too_large");

    // Over 10 MB decoded in all, though each is smaller.
    let mut over = scheduled();
    let half = STANDARD.encode(vec![1u8; 5632 * 1024]);
    over["attachments"] =
        json!([{"filename": "a.pdf", "content": half}, {"filename": "b.pdf", "content": half}]);
    let error = refused(&app, &over, 422).await;
    assert_eq!(error["param"], "attachments");
    assert!(error["message"].as_str().unwrap().contains("10 MB"));

    // Over 15 MB of body.
    let mut huge = scheduled();
    huge["text"] = json!("x".repeat(16 * 1024 * 1024));
    let error = refused(&app, &huge, 413).await;
    assert_eq!(error["code"], "payload_too_large");
    assert!(
        error["message"].as_str().unwrap().contains("15 MB"),
        "{error}"
    );
    assert_eq!(emails_in_store(&app).await, 1);
}

async fn the_sending_rate_is_limited(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |s| s.send_rate_per_minute = 3).await;
    app.active_domain(DOMAIN).await;
    for _ in 0..2 {
        accepted(&app, &minimal()).await;
    }
    // A batch counts each email: two more do not fit, and are not counted.
    let batch = app
        .api(Method::POST, "/v2/emails/batch")
        .json(&json!({"emails": [minimal(), minimal()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 429);
    let retry: u64 = batch.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    error_code(batch, 429).await;
    accepted(&app, &minimal()).await;
    let response = send_with(&app, &app.admin.api_key, &minimal()).await;
    assert!(response.headers().contains_key("retry-after"));
    let error = error_code(response, 429).await;
    assert_eq!(error["code"], "send_rate_exceeded");
    assert_eq!(emails_in_store(&app).await, 3);

    // Another account has its own allowance.
    let other = app.other_account().await;
    let response = send_with(&app, &other.api_key, &minimal()).await;
    assert_eq!(
        error_code(response, 422).await["code"],
        "sender_not_allowed"
    );

    app.advance_clock(Duration::from_secs(61)).await;
    accepted(&app, &minimal()).await;
}

async fn walls_between_accounts_and_roles(engine: Engine) {
    let (app, _relay) = app(engine).await;
    let sent = accepted(&app, &minimal()).await;
    let id = sent["id"].as_str().unwrap();
    let other = app.other_account().await;
    for (method, path) in [
        (Method::GET, format!("/v2/emails/{id}")),
        (Method::POST, format!("/v2/emails/{id}/cancel")),
        (
            Method::GET,
            "/v2/emails/em_000000000000000000000000".to_string(),
        ),
    ] {
        let response = app
            .with_key(&other.api_key, method, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response, 404).await["code"],
            "resource_not_found",
            "{path}"
        );
    }
    let list: Value = app
        .with_key(&other.api_key, Method::GET, "/v2/emails")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));

    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    let error = error_code(send_with(&app, &viewer, &minimal()).await, 403).await;
    assert_eq!(error["code"], "insufficient_role");
    let batch = app
        .with_key(&viewer, Method::POST, "/v2/emails/batch")
        .json(&json!({"emails": [minimal()]}))
        .send()
        .await
        .unwrap();
    error_code(batch, 403).await;
    let cancel = app
        .with_key(&viewer, Method::POST, &format!("/v2/emails/{id}/cancel"))
        .send()
        .await
        .unwrap();
    error_code(cancel, 403).await;
    let read = app
        .with_key(&viewer, Method::GET, &format!("/v2/emails/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(emails_in_store(&app).await, 1);
}

async fn a_scheduled_email_is_cancelled_and_never_sent(engine: Engine) {
    let (app, relay) = app(engine).await;
    let mut body = minimal();
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    body["scheduled_at"] = json!(
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    body["to"] = json!(["later@client.example", "too@client.example"]);
    let sent = accepted(&app, &body).await;
    assert_eq!(sent["status"], "scheduled");
    assert!(
        sent["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "scheduled")
    );
    let id = sent["id"].as_str().unwrap();

    let cancelled = app
        .api(Method::POST, &format!("/v2/emails/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        cancelled["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "cancelled"),
        "{cancelled}"
    );
    assert!(
        cancelled["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "cancelled")
    );
    let again = app
        .api(Method::POST, &format!("/v2/emails/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(again, 409).await["code"], "not_scheduled");

    // Sent at once: nothing to cancel.
    let now = accepted(&app, &minimal()).await;
    relay.wait_for(1, Duration::from_secs(20)).await;
    let late = app
        .api(
            Method::POST,
            &format!("/v2/emails/{}/cancel", now["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    error_code(late, 409).await;

    // Its time comes and goes: it stays unsent.
    app.advance_clock(Duration::from_secs(3 * 3600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = relay.received();
    assert_eq!(received.len(), 1, "only the email sent at once");
    assert!(
        received
            .iter()
            .all(|r| !r.to.contains(&"later@client.example".to_string()))
    );
    let list = app.get_json("/v2/emails?status=cancelled").await;
    assert_eq!(list["items"][0]["id"], id);
}

/// The bytes that reach the relay, read by Python's `email` package as a mail client would
/// and verified by dkimpy through the domain's CNAME and mailroom's DNS server.
async fn a_mail_client_reads_what_was_sent_and_dkim_verifies(engine: Engine) {
    if !importable("email.policy, dkim, dns.message, nacl") {
        return;
    }
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.dns_nameservers = vec![dns.address];
    })
    .await;
    let domain = app.add_domain("zoe.example").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("zoe.example").await["status"], "active");

    let mut pdf = vec![0u8; 200_000];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut pdf);
    let png = b"\x89PNG\r\n\x1a\n not really an image".to_vec();
    let sent = accepted(
        &app,
        &json!({
            "from": "Zoë Ångström <zoe@zoe.example>",
            "to": "Jürgen Groß <juergen@client.example>",
            "cc": "cc@client.example",
            "bcc": "hidden@client.example",
            "subject": "Rechnung für März — 100 €",
            "text": "Grüße,\nZoë",
            "html": "<p>Grüße</p><img src=\"cid:logo@zoe\">",
            "attachments": [
                {"filename": "Rechnung März.pdf", "content": STANDARD.encode(&pdf),
                 "content_type": "application/pdf"},
                {"filename": "logo.png", "content": STANDARD.encode(&png),
                 "content_type": "image/png", "content_id": "logo@zoe"},
            ],
        }),
    )
    .await;
    wait_until_final(&app, sent["id"].as_str().unwrap()).await;
    let message = relay.wait_for(1, Duration::from_secs(20)).await.remove(0);

    let (ok, read) = judge("mime_read.py", &[], message.data.as_bytes());
    assert!(ok, "the MIME reader failed");
    let read: Value = serde_json::from_str(&read).unwrap();
    assert_eq!(read["defects"], json!([]), "{read}");
    assert_eq!(read["subject"], "Rechnung für März — 100 €");
    assert_eq!(
        read["from"],
        json!([{"name": "Zoë Ångström", "email": "zoe@zoe.example"}])
    );
    assert_eq!(
        read["to"],
        json!([{"name": "Jürgen Groß", "email": "juergen@client.example"}])
    );
    assert_eq!(read["cc"][0]["email"], "cc@client.example");
    for header in read["headers"].as_array().unwrap() {
        let (name, value) = (header[0].as_str().unwrap(), header[1].as_str().unwrap());
        assert!(
            !name.eq_ignore_ascii_case("bcc") && !value.contains("hidden@"),
            "{header}"
        );
    }
    let parts = read["parts"].as_array().unwrap();
    let part = |kind: &str| {
        parts
            .iter()
            .find(|p| p["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} part: {read}"))
    };
    assert_eq!(
        part("text/plain")["text"].as_str().unwrap().trim_end(),
        "Grüße,\nZoë"
    );
    assert!(
        part("text/html")["text"]
            .as_str()
            .unwrap()
            .contains("cid:logo@zoe")
    );
    let sha256 = |bytes: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let attachment = part("application/pdf");
    assert_eq!(attachment["filename"], "Rechnung März.pdf");
    assert_eq!(
        attachment["sha256"],
        sha256(&pdf),
        "the PDF arrives byte for byte"
    );
    let inline = part("image/png");
    assert_eq!(inline["content_id"], "<logo@zoe>");
    assert_eq!(inline["disposition"], "inline");
    assert_eq!(inline["sha256"], sha256(&png));

    assert!(dkim_verifies(message.data.as_bytes(), dns.address, &app));
    let forged = message.data.replacen("Rechnung", "Mahnung", 1);
    assert!(
        !dkim_verifies(forged.as_bytes(), dns.address, &app),
        "the judge judges"
    );
}

/// Sends a hand-written JSON body; answers the response.
async fn send_raw(app: &TestApp, path: &str, body: String) -> reqwest::Response {
    app.api(Method::POST, path)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn long_lists_are_refused_before_they_are_read(engine: Engine) {
    let (app, _relay) = app(engine).await;
    let started = std::time::Instant::now();

    // 200 000 distinct addresses: refused at once, and the server answers others meanwhile.
    let many: Vec<String> = (0..200_000)
        .map(|i| format!("r{i}@client.example"))
        .collect();
    let mut body = minimal();
    body["to"] = json!(many);
    let request = app.api(Method::POST, "/v2/emails").json(&body).send();
    let health = app.client.get(format!("{}/healthz", app.address)).send();
    let (response, health) = tokio::join!(request, health);
    assert_eq!(health.unwrap().status(), 200);
    let error = error_code(response.unwrap(), 422).await;
    assert_eq!(error["param"], "to", "{error}");
    assert!(error["message"].as_str().unwrap().contains("50"), "{error}");

    // 5 million empty strings (15 MB) are no more work.
    let body = format!(
        r#"{{"from":"billing@acme.example","subject":"Hi","text":"x","to":[{}""]}}"#,
        "\"\",".repeat(5_000_000 - 1)
    );
    assert!(body.len() < 15 * 1024 * 1024);
    let error = error_code(send_raw(&app, "/v2/emails", body).await, 422).await;
    assert_eq!(error["param"], "to", "{error}");

    // 30 in to and 30 in cc: over 50 together.
    let mut body = minimal();
    body["to"] = json!(many[..30]);
    body["cc"] = json!(many[30..60]);
    let error = refused(&app, &body, 422).await;
    assert_eq!(error["param"], "to");
    assert!(error["message"].as_str().unwrap().contains("60"), "{error}");

    // Every other list and map stops at its limit too.
    let mut body = minimal();
    body["attachments"] = json!(vec![json!({"filename": "a.txt", "content": "eA=="}); 1_000]);
    assert_eq!(refused(&app, &body, 422).await["param"], "attachments");
    let mut body = minimal();
    let headers: serde_json::Map<String, Value> = (0..1_000)
        .map(|i| (format!("X-H{i}"), json!("v")))
        .collect();
    body["headers"] = Value::Object(headers);
    assert_eq!(refused(&app, &body, 422).await["param"], "headers");
    let mut body = minimal();
    let tags: serde_json::Map<String, Value> =
        (0..1_000).map(|i| (format!("t{i}"), json!("v"))).collect();
    body["tags"] = Value::Object(tags);
    assert_eq!(refused(&app, &body, 422).await["param"], "tags");
    let batch = format!(r#"{{"emails":[{}{{}}]}}"#, "{},".repeat(200_000));
    let error = error_code(send_raw(&app, "/v2/emails/batch", batch).await, 422).await;
    assert_eq!(error["param"], "emails", "{error}");

    // A long list inside a batch item refuses that item only.
    let mut long = minimal();
    long["to"] = json!(many[..51]);
    let answer = app
        .api(Method::POST, "/v2/emails/batch")
        .json(&json!({"emails": [long, minimal()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer["data"][0]["error"]["param"], "emails[0].to",
        "{answer}"
    );
    assert!(answer["data"][1]["id"].is_string(), "{answer}");

    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(emails_in_store(&app).await, 1);
}

async fn large_bodies_are_read_a_few_at_a_time(engine: Engine) {
    use tokio::io::AsyncWriteExt;
    let (app, _relay) = app(engine).await;
    let host = app.address.trim_start_matches("http://").to_string();
    // Senders of 2 MB bodies that stall after their headers hold every turn. One may come
    // after a probe and be refused: while probes are accepted, one more stalls.
    let stall = || async {
        let mut socket = tokio::net::TcpStream::connect(&host).await.unwrap();
        let start = format!(
            "POST /v2/emails HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n{{\"to",
            app.admin.api_key
        );
        socket.write_all(start.as_bytes()).await.unwrap();
        socket
    };
    let mut stalled = Vec::new();
    for _ in 0..mailroom::emails::LARGE_BODIES_AT_ONCE {
        stalled.push(stall().await);
    }
    let mut large = minimal();
    large["text"] = json!("x".repeat(2 * 1024 * 1024));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let response = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = send_with(&app, &app.admin.api_key, &large).await;
        if response.status() != 202 || std::time::Instant::now() > deadline {
            break response;
        }
        stalled.push(stall().await);
    };
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{response:?}"
    );
    let error = error_code(response, 503).await;
    assert_eq!(error["code"], "busy");

    // Small emails do not wait for large ones.
    accepted(&app, &minimal()).await;
    // Once the large bodies are done (here: their senders went away), another is read.
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = send_with(&app, &app.admin.api_key, &large).await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the turn was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn held_bodies_are_limited_per_account(engine: Engine) {
    // Room for one email with a 20 KB attachment (about 36 KB sealed), not two.
    let (app, relay) = spawn_app_with_relay(engine, |s| s.held_bytes_per_account = 50_000).await;
    app.active_domain(DOMAIN).await;
    let with_attachment = |scheduled: bool| {
        let mut body = minimal();
        body["attachments"] =
            json!([{"filename": "a.pdf", "content": STANDARD.encode(vec![7u8; 20_000])}]);
        if scheduled {
            let at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            body["scheduled_at"] = json!(
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            );
        }
        body
    };
    let first = accepted(&app, &with_attachment(true)).await;
    let response = send_with(&app, &app.admin.api_key, &with_attachment(false)).await;
    assert!(response.headers().contains_key("retry-after"));
    let error = error_code(response, 429).await;
    assert_eq!(error["code"], "held_bytes_exceeded");
    assert!(
        error["message"].as_str().unwrap().contains("50000"),
        "{error}"
    );
    // A batch that would pass it is refused whole.
    let batch = app
        .api(Method::POST, "/v2/emails/batch")
        .json(&json!({"emails": [minimal(), with_attachment(false)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(batch, 429).await["code"], "held_bytes_exceeded");
    assert_eq!(emails_in_store(&app).await, 1, "nothing refused was queued");
    // Small emails still fit beside it.
    let small = accepted(&app, &minimal()).await;
    wait_until_final(&app, small["id"].as_str().unwrap()).await;

    // Another account has its own room.
    let other = app.other_account().await;
    let added = app
        .with_key(&other.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "other.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    set_status_by_operator(
        &app.db,
        &app.settings,
        &DomainName::parse("other.example").unwrap(),
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    let mut theirs = with_attachment(true);
    theirs["from"] = json!("billing@other.example");
    let theirs = send_with(&app, &other.api_key, &theirs).await;
    assert_eq!(theirs.status(), 202, "{}", theirs.text().await.unwrap());

    // Once the held body is gone (here: cancelled), there is room again; and an email
    // sent frees its room once every recipient is final.
    let id = first["id"].as_str().unwrap();
    let cancel = app
        .api(Method::POST, &format!("/v2/emails/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let sent = accepted(&app, &with_attachment(false)).await;
    wait_until_final(&app, sent["id"].as_str().unwrap()).await;
    relay.wait_for(2, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = send_with(&app, &app.admin.api_key, &with_attachment(true)).await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(
            error_code(response, 429).await["code"],
            "held_bytes_exceeded"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the room was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
