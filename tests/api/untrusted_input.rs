//! What tenants and peers send that must stay inert: names that look like template syntax,
//! one account's limits spent against another's, names and local parts that deceive or
//! escape, and relay replies that would write control characters into logs.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::smtp::{Encryption, Received, TestSmtp};
use crate::helpers::{
    Engine, ServerProcess, TestApp, error_code, fresh_database_url, key_in, spawn_app_with_relay,
    token_of,
};

both_engines!(
    template_injection_leaks_no_one_time_tokens,
    cross_tenant_verification_blocking_is_impossible,
    input_that_should_be_refused_names_and_local_parts,
    input_that_should_be_refused_relay_replies_in_logs,
);

/// The delivery log's newest entry of `kind`, once it has one.
async fn newest_message(app: &TestApp, kind: &str) -> Value {
    let list = app.get_json("/v2/messages").await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} message in {list}"))
        .clone()
}

/// Asserts a 422 about `param`.
async fn refused(response: reqwest::Response, param: &str) {
    let error = error_code(response, 422).await;
    assert_eq!(error["param"], param, "{error}");
}

/// The HTML part of a received message, as a reader's client sees it.
fn html_part(received: &Received) -> String {
    let text = received.text();
    let start = text.find("Content-Type: text/html").expect("an HTML part");
    text[start..].to_string()
}

async fn template_injection_leaks_no_one_time_tokens(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    // Template syntax of every kind, and markup, as an entity's name.
    let name = "{{link}} {{ code }} {% raw %}{{ link }}{% endraw %} <script>alert(1)</script>";
    let response = app
        .api(Method::POST, "/entities")
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let entity: Value = response.json().await.unwrap();
    let invited = app
        .api(Method::POST, "/entities/invitations")
        .header("x-entity-id", entity["id"].as_str().unwrap())
        .json(&json!({"email": "new@example.org", "role": "viewer", "name": "{{ link }}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invited.status(), 201, "{}", invited.text().await.unwrap());

    let email = relay.newest_to("new@example.org", 1).await;
    let link = relay.invitation_link("new@example.org", 1).await;
    let token = token_of(&link);
    let expected_subject = format!("{name} invites you to {name}");
    assert_eq!(email.header("Subject").unwrap(), expected_subject);
    let text = email.text();
    assert!(text.contains(&format!("join {name} as viewer")), "{text}");
    assert!(text.contains("Hello {{ link }},"), "{text}");
    // The link is in the text part once and in the HTML part once: nowhere else.
    assert_eq!(text.matches(&token).count(), 2, "{text}");
    let html = html_part(&email);
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );

    // The subject is stored and listed in clear: it holds no link and no token.
    let logged = newest_message(&app, "invitation").await;
    assert_eq!(logged["subject"], expected_subject.as_str());
    let listed = app.get_json("/v2/messages").await.to_string();
    assert!(!listed.contains(&token), "{listed}");
    assert!(!listed.contains("token="), "{listed}");

    // An address can hold braces too: its verification subject shows them, not the code.
    let sender = "{{link}}{{code}}@customer.com";
    app.add_sender("/v1/email-address", sender).await;
    let (link, code) = relay.verification_link_and_code(sender, 2).await;
    let logged = newest_message(&app, "sender_verification").await;
    assert_eq!(
        logged["subject"],
        format!("Confirm {sender} as a sender address").as_str()
    );
    let listed = app.get_json("/v2/messages").await.to_string();
    assert!(!listed.contains(&token_of(&link)), "{listed}");
    assert!(!listed.contains(&code), "{listed}");
}

async fn cross_tenant_verification_blocking_is_impossible(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |_| {}).await;
    let other = app.other_account().await;
    let add = |key: &str, email: &str| {
        app.with_key(key, Method::POST, "/v1/email-address")
            .json(&json!({"email": email}))
            .send()
    };
    // Account B spends its ten verification emails of the day on A's address...
    for _ in 0..10 {
        let response = add(&other.api_key, "x@example.com").await.unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let capped = add(&other.api_key, "X@example.com").await.unwrap();
    let error = error_code(capped, 429).await;
    assert_eq!(error["code"], "too_many_verifications");

    // ...and A can still start verifying it.
    let created = app.add_sender("/v1/email-address", "x@example.com").await;
    assert_eq!(created["emailVerificationStatus"], "pending");
}

async fn input_that_should_be_refused_names_and_local_parts(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.active_domain("customer.com").await;
    // A local part names a folder on the mail server: one mailbox's home must never be
    // inside another's, nor outside the domain's.
    app.create_mailbox(json!({"domain": "customer.com", "local_part": "a"}))
        .await;
    for local_part in ["a/cur", "a/..", "../b", "/b", ".", "..", "a\\b"] {
        let response = app
            .api(Method::POST, "/v2/email-accounts/create")
            .json(&json!({"domain": "customer.com", "local_part": local_part}))
            .send()
            .await
            .unwrap();
        refused(response, "local_part").await;
    }

    // Characters that reorder or hide text, in every name a person gives.
    let deceptive = [
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
        '\u{200D}', '\u{2060}', '\u{FEFF}',
    ];
    let mailbox = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "b"}))
        .await;
    let mailbox_id = mailbox["account"]["id"].as_i64().unwrap();
    for c in deceptive {
        let name = format!("invoice{c}fdp.exe");
        let entity = app
            .api(Method::POST, "/entities")
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        refused(entity, "name").await;
        let key = app
            .api(Method::POST, "/api-keys")
            .json(&json!({"name": name, "role": "viewer"}))
            .send()
            .await
            .unwrap();
        refused(key, "name").await;
        let invitation = app
            .api(Method::POST, "/entities/invitations")
            .json(&json!({"email": "jo@example.org", "role": "viewer", "name": name}))
            .send()
            .await
            .unwrap();
        refused(invitation, "name").await;
        let created = app
            .api(Method::POST, "/v2/email-accounts/create")
            .json(&json!({"domain": "customer.com", "local_part": "c", "display_name": name}))
            .send()
            .await
            .unwrap();
        refused(created, "display_name").await;
        let updated = app
            .api(Method::PUT, &format!("/v2/email-accounts/{mailbox_id}"))
            .json(&json!({"display_name": name}))
            .send()
            .await
            .unwrap();
        refused(updated, "display_name").await;
    }

    // The name a new user gives when accepting.
    app.invite("new@example.org", "viewer").await;
    let token = token_of(&relay.invitation_link("new@example.org", 1).await);
    let accepted = app
        .accept_invitation(&token, "Jo\u{202E}nimda", "a long enough password")
        .await;
    refused(accepted, "name").await;
    let accepted = app
        .accept_invitation(&token, "Jo", "a long enough password")
        .await;
    assert_eq!(accepted.status(), 200, "the refusal spent nothing");

    // Names in any script stay welcome.
    let welcome = app
        .api(Method::POST, "/entities")
        .json(&json!({"name": "Zoë Łukasz 山田 مرحبا"}))
        .send()
        .await
        .unwrap();
    assert_eq!(welcome.status(), 201);
}

async fn input_that_should_be_refused_relay_replies_in_logs(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    // A reply that would clear a terminal, end a line early and cut a C string.
    relay.reply_next("554 5.7.1 refused\u{1b}[2J\u{1b}]0;owned\u{7}\0nul\rforged line");
    let smtp = format!("smtp://127.0.0.1:{}?tls=none", relay.port);
    let server = ServerProcess::serve_with(
        &dir,
        &database,
        &[
            ("MAILROOM_SMTP_URL", smtp.as_str()),
            ("MAILROOM_SMTP_TIMEOUT", "3"),
        ],
    );
    let key = key_in(&server.stdout()).unwrap();
    let client = reqwest::Client::new();
    let invited = client
        .post(format!("{}/entities/invitations", server.address))
        .bearer_auth(&key)
        .json(&json!({"email": "new@example.org", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invited.status(), 201);

    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let list: Value = client
            .get(format!("{}/v2/messages", server.address))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let message = list["items"][0].clone();
        if message["status"] == "failed" {
            break message;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let escaped = "refused\\x1b[2J\\x1b]0;owned\\x07\\0nul\\rforged line";
    let last_error = failed["last_error"].as_str().unwrap();
    assert!(last_error.contains(escaped), "{last_error:?}");
    assert!(!last_error.chars().any(char::is_control), "{last_error:?}");

    let log_path = dir.path().join("serve.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read(&log_path).unwrap();
        if String::from_utf8_lossy(&log).contains("delivery failed for good") {
            break log;
        }
        assert!(Instant::now() < deadline, "no failure logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&log);
    let line = text
        .lines()
        .find(|l| l.contains("delivery failed for good"))
        .unwrap();
    assert!(line.contains(escaped), "{line}");
    for raw in [0x1b_u8, 0x07, 0x00, b'\r'] {
        assert!(!log.contains(&raw), "a raw {raw:#04x} in the log:\n{text}");
    }
}
