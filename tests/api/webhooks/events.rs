//! Each event of the account's log, fired by the real action that causes it and read back
//! through `GET /v2/events`: its payload, its `data` as the API shows the object, and
//! nothing secret in it.

use std::time::{Duration, Instant};

use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::domains::required;
use crate::helpers::smtp::TestSmtp;
use crate::helpers::{Engine, TestApp, spawn_app_with, spawn_app_with_relay, token_of};

both_engines!(
    domain_events_follow_dns_and_the_operator,
    a_sender_verified_through_its_page_and_expiries_are_announced,
    invitations_accepted_and_expired_are_announced,
    mailbox_calls_are_announced_without_their_passwords,
    each_recipient_of_an_email_has_its_events,
    an_email_whose_domain_is_suspended_before_it_goes_fails,
);

/// The account's events of type `kind`, oldest first, read with `key`.
async fn events_with(app: &TestApp, key: &str, kind: &str) -> Vec<Value> {
    let response = app
        .with_key(
            key,
            Method::GET,
            &format!("/v2/events?type={kind}&limit=200"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let page: Value = response.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

/// The admin's account's events of type `kind`, oldest first.
async fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    events_with(app, &app.admin.api_key, kind).await
}

/// Waits up to 20 s for `count` events of type `kind`; answers them.
async fn wait_for_events(app: &TestApp, kind: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = events(app, kind).await;
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{count} {kind} events expected, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole log as its raw text, for what must never be in it.
async fn raw_log(app: &TestApp) -> String {
    let response = app
        .api(Method::GET, "/v2/events?limit=200")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Asserts the payload's shape: `{id, type, created_at, account_id, entity_id?, data}`.
fn assert_payload(event: &Value, kind: &str, account_id: &str, entity_id: Option<&str>) {
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec!["account_id", "created_at", "data", "id", "type"];
    if entity_id.is_some() {
        expected.push("entity_id");
        expected.sort_unstable();
    }
    assert_eq!(keys, expected, "{event}");
    assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["account_id"], account_id, "{event}");
    if let Some(entity_id) = entity_id {
        assert_eq!(event["entity_id"], entity_id, "{event}");
    }
    let created_at = event["created_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{event}"
    );
}

/// Another account reads its own log: none of the app's account's events are in it.
async fn another_account_sees_none(app: &TestApp) {
    let other = app.other_account().await;
    let response = app
        .with_key(&other.api_key, Method::GET, "/v2/events?limit=200")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["items"], json!([]), "{page}");
}

async fn domain_events_follow_dns_and_the_operator(engine: Engine) {
    let dns = TestDns::start().await;
    let app = spawn_app_with(engine, |s| s.dns_nameservers = vec![dns.address]).await;
    let account = app.admin.account_id.clone();
    let domain = app.add_domain("customer.com").await;
    assert_eq!(events(&app, "domain.verified").await, Vec::<Value>::new());

    // Proven by DNS.
    dns.publish(&domain);
    app.verify_domain("customer.com").await;
    let shown = app.get_json("/v2/domains/customer.com").await["domain"].clone();
    let verified = events(&app, "domain.verified").await;
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_payload(&verified[0], "domain.verified", &account, None);
    assert_eq!(verified[0]["data"], shown);
    assert_eq!(verified[0]["data"]["status"], "active");

    // The proof goes: nothing within the day of grace, `domain.pending` after it.
    for record in required(&domain) {
        dns.remove(record["name"].as_str().unwrap());
    }
    app.verify_domain("customer.com").await;
    assert_eq!(events(&app, "domain.pending").await, Vec::<Value>::new());
    app.advance_clock(Duration::from_secs(25 * 3600)).await;
    app.verify_domain("customer.com").await;
    let shown = app.get_json("/v2/domains/customer.com").await["domain"].clone();
    let pending = events(&app, "domain.pending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_payload(&pending[0], "domain.pending", &account, None);
    assert_eq!(pending[0]["data"], shown);
    assert_eq!(pending[0]["data"]["status"], "pending");
    assert_eq!(required(&pending[0]["data"])[0]["status"], "not_found");

    // 72 hours without proof: `domain.failed`.
    app.advance_clock(Duration::from_secs(73 * 3600)).await;
    app.verify_domain("customer.com").await;
    let shown = app.get_json("/v2/domains/customer.com").await["domain"].clone();
    let failed = events(&app, "domain.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_payload(&failed[0], "domain.failed", &account, None);
    assert_eq!(failed[0]["data"], shown);
    assert_eq!(failed[0]["data"]["status"], "failed");

    // The operator suspends it, then activates it.
    let name = DomainName::parse("customer.com").unwrap();
    set_status_by_operator(&app.db, &app.settings, &name, None, DomainStatus::Suspended)
        .await
        .unwrap();
    let shown = app.get_json("/v2/domains/customer.com").await["domain"].clone();
    let suspended = events(&app, "domain.suspended").await;
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert_payload(&suspended[0], "domain.suspended", &account, None);
    assert_eq!(suspended[0]["data"], shown);
    assert_eq!(suspended[0]["data"]["status"], "suspended");
    set_status_by_operator(&app.db, &app.settings, &name, None, DomainStatus::Active)
        .await
        .unwrap();
    let shown = app.get_json("/v2/domains/customer.com").await["domain"].clone();
    let verified = events(&app, "domain.verified").await;
    assert_eq!(verified.len(), 2, "{verified:?}");
    assert_eq!(verified[1]["data"], shown);
    // Setting the status it has already is no change, and tells nothing.
    set_status_by_operator(&app.db, &app.settings, &name, None, DomainStatus::Active)
        .await
        .unwrap();
    assert_eq!(events(&app, "domain.verified").await.len(), 2);

    // The log tells the changes in the order they happened.
    let all: Vec<Value> = events(
        &app,
        "domain.verified,domain.pending,domain.failed,domain.suspended",
    )
    .await
    .into_iter()
    .map(|e| e["type"].clone())
    .collect();
    assert_eq!(
        all,
        [
            "domain.verified",
            "domain.pending",
            "domain.failed",
            "domain.suspended",
            "domain.verified"
        ]
    );
    another_account_sees_none(&app).await;
}

async fn app_with_relay_and_dns(engine: Engine) -> (TestApp, TestSmtp, TestDns) {
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.mail_retry_seconds = 1;
    })
    .await;
    (app, relay, dns)
}

async fn a_sender_verified_through_its_page_and_expiries_are_announced(engine: Engine) {
    let (app, relay, _dns) = app_with_relay_and_dns(engine).await;
    let account = app.admin.account_id.clone();
    let entity = app.admin.entity_id.clone();

    // An organization's address, confirmed through the page its link opens.
    let org_path = format!("/v1/organizations/{entity}/email-address");
    app.add_sender(&org_path, "billing@customer.com").await;
    let (link, code) = relay
        .verification_link_and_code("billing@customer.com", 1)
        .await;
    let page = reqwest::get(&link).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        events(&app, "sender.verified").await.is_empty(),
        "opening the page verifies nothing"
    );
    let token = token_of(&link);
    let confirmed = reqwest::Client::new()
        .post(format!("{}/v1/email-address/verify/confirm", app.address))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    let shown = app.get_json(&org_path).await;
    let verified = events(&app, "sender.verified").await;
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_payload(&verified[0], "sender.verified", &account, Some(&entity));
    assert_eq!(verified[0]["data"], shown);
    assert_eq!(verified[0]["data"]["emailVerificationStatus"], "verified");

    // The account's own address, left unverified until its link and code expire.
    app.add_sender("/v1/email-address", "news@customer.com")
        .await;
    let (expired_link, expired_code) = relay
        .verification_link_and_code("news@customer.com", 2)
        .await;
    app.advance_clock(Duration::from_secs(24 * 3600 + 60)).await;
    let expired = wait_for_events(&app, "sender.expired", 1).await;
    let shown = app.get_json("/v1/email-address").await;
    assert_payload(&expired[0], "sender.expired", &account, None);
    assert_eq!(expired[0]["data"], shown);
    assert_eq!(expired[0]["data"]["emailVerificationStatus"], "expired");
    // Announced once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events(&app, "sender.expired").await.len(), 1);

    // A new link and code expire again, and are announced again.
    let resent = app
        .api(Method::POST, "/v1/email-address/resend-verification")
        .send()
        .await
        .unwrap();
    assert_eq!(resent.status(), 200);
    let (new_link, new_code) = relay
        .verification_link_and_code("news@customer.com", 3)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&app, "sender.expired").await.len(),
        1,
        "a fresh link has not expired"
    );
    app.advance_clock(Duration::from_secs(24 * 3600 + 60)).await;
    let expired = wait_for_events(&app, "sender.expired", 2).await;
    assert_eq!(expired.len(), 2, "{expired:?}");

    let log = raw_log(&app).await;
    for secret in [
        token.as_str(),
        &token_of(&expired_link),
        &token_of(&new_link),
    ] {
        assert!(!log.contains(secret), "a link's token is in the log");
    }
    for code in [&code, &expired_code, &new_code] {
        assert!(!log.contains(code.as_str()), "a code is in the log: {log}");
    }
    another_account_sees_none(&app).await;
}

async fn invitations_accepted_and_expired_are_announced(engine: Engine) {
    let (app, relay, _dns) = app_with_relay_and_dns(engine).await;
    let account = app.admin.account_id.clone();
    let entity = app.admin.entity_id.clone();

    let invited = app.invite("jo@client.example", "editor").await;
    let id = invited["id"].as_str().unwrap();
    let link = relay.invitation_link("jo@client.example", 1).await;
    let token = token_of(&link);
    let password = "a long password for jo";
    let accepted = app.accept_invitation(&token, "Jo", password).await;
    assert_eq!(accepted.status(), 200);
    let accepted: Value = accepted.json().await.unwrap();
    let shown = app.get_json(&format!("/entities/invitations/{id}")).await;
    let events_accepted = events(&app, "invitation.accepted").await;
    assert_eq!(events_accepted.len(), 1, "{events_accepted:?}");
    assert_payload(
        &events_accepted[0],
        "invitation.accepted",
        &account,
        Some(&entity),
    );
    assert_eq!(events_accepted[0]["data"], shown);
    assert_eq!(events_accepted[0]["data"]["status"], "accepted");

    // One left pending past its day.
    let late = app
        .api(Method::POST, "/entities/invitations")
        .json(&json!({"email": "late@client.example", "role": "viewer", "expires_in_days": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 201);
    let late: Value = late.json().await.unwrap();
    let late_id = late["id"].as_str().unwrap();
    let late_link = relay.invitation_link("late@client.example", 2).await;
    app.advance_clock(Duration::from_secs(24 * 3600 + 60)).await;
    // Sweeps of other instances race the app's own: one of them announces it.
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let db = app.db.clone();
            tokio::spawn(async move {
                mailroom::invitations::store::announce_expired(&db)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut announced = 0;
    for sweep in sweeps {
        announced += sweep.await.unwrap();
    }
    assert!(announced <= 1, "{announced} sweeps announced one expiry");
    let expired = wait_for_events(&app, "invitation.expired", 1).await;
    let shown = app
        .get_json(&format!("/entities/invitations/{late_id}"))
        .await;
    assert_payload(&expired[0], "invitation.expired", &account, Some(&entity));
    assert_eq!(expired[0]["data"], shown);
    assert_eq!(expired[0]["data"]["status"], "expired");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&app, "invitation.expired").await.len(),
        1,
        "announced once; the accepted invitation never expires"
    );

    let log = raw_log(&app).await;
    for secret in [
        token.as_str(),
        &token_of(&late_link),
        password,
        accepted["access_token"].as_str().unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret is in the log: {log}");
    }
    another_account_sees_none(&app).await;
}

async fn mailbox_calls_are_announced_without_their_passwords(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let account = app.admin.account_id.clone();
    app.active_domain("acme.example").await;

    let created = app
        .create_mailbox(json!({"domain": "acme.example", "local_part": "alice", "user_id": "u-1"}))
        .await;
    let id = created["account"]["id"].as_i64().unwrap();
    let path = format!("/v2/email-accounts/{id}");
    let shown = app.get_json(&path).await["account"].clone();
    let events_created = events(&app, "mailbox.created").await;
    assert_eq!(events_created.len(), 1, "{events_created:?}");
    assert_payload(&events_created[0], "mailbox.created", &account, None);
    assert_eq!(events_created[0]["data"], shown);

    let reset = app
        .api(Method::POST, &format!("{path}/password/reset"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    let reset: Value = reset.json().await.unwrap();
    crate::helpers::record_secret(reset["password"].as_str().unwrap());
    let shown = app.get_json(&path).await["account"].clone();
    let events_reset = events(&app, "mailbox.password_reset").await;
    assert_eq!(events_reset.len(), 1, "{events_reset:?}");
    assert_payload(&events_reset[0], "mailbox.password_reset", &account, None);
    assert_eq!(events_reset[0]["data"], shown);

    let deleted = app
        .api(Method::POST, "/v2/email-accounts/delete")
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let events_deleted = events(&app, "mailbox.deleted").await;
    assert_eq!(events_deleted.len(), 1, "{events_deleted:?}");
    assert_payload(&events_deleted[0], "mailbox.deleted", &account, None);
    assert_eq!(
        events_deleted[0]["data"], shown,
        "the mailbox as it was when deleted"
    );

    let log = raw_log(&app).await;
    for secret in [
        created["password"].as_str().unwrap(),
        reset["password"].as_str().unwrap(),
    ] {
        assert!(!log.contains(secret), "a password is in the log: {log}");
    }
    assert!(
        !log.contains("ARGON2"),
        "a password hash is in the log: {log}"
    );
    another_account_sees_none(&app).await;
}

/// The events of email `id` to `recipient`, by type, oldest first.
fn of_recipient(all: &[Value], id: &str, recipient: &str) -> Vec<String> {
    all.iter()
        .filter(|e| e["data"]["id"] == id && e["data"]["recipient"]["email"] == recipient)
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

const EMAIL_TYPES: &str = "email.queued,email.sent,email.deferred,email.bounced,email.failed,email.suppressed,email.cancelled";

async fn each_recipient_of_an_email_has_its_events(engine: Engine) {
    let (app, relay, _dns) = app_with_relay_and_dns(engine).await;
    let account = app.admin.account_id.clone();
    app.active_domain("acme.example").await;
    relay.refuse("gone@client.example", "550 5.1.1 No such user here");
    relay.defer_once("busy@client.example", "451 4.2.1 Mailbox busy");
    let tags = json!({"customer": "c-42", "kind": "invoice"});
    let sent = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({
            "from": "billing@acme.example",
            "to": ["ok@client.example", "gone@client.example", "busy@client.example"],
            "subject": "Invoice 42",
            "text": "The body, never in an event",
            "tags": tags,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "{}", sent.text().await.unwrap());
    let sent: Value = sent.json().await.unwrap();
    let id = sent["id"].as_str().unwrap().to_string();

    // Every recipient final: ok and busy sent (busy after a deferral), gone bounced.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = events(&app, EMAIL_TYPES).await;
        if of_recipient(&all, &id, "busy@client.example")
            .last()
            .map(String::as_str)
            == Some("email.sent")
            && of_recipient(&all, &id, "gone@client.example").len() == 2
            && of_recipient(&all, &id, "ok@client.example").len() == 2
        {
            break all;
        }
        assert!(Instant::now() < deadline, "not final: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        of_recipient(&all, &id, "ok@client.example"),
        ["email.queued", "email.sent"]
    );
    assert_eq!(
        of_recipient(&all, &id, "gone@client.example"),
        ["email.queued", "email.bounced"]
    );
    assert_eq!(
        of_recipient(&all, &id, "busy@client.example"),
        ["email.queued", "email.deferred", "email.sent"]
    );
    let shown = app.get_json(&format!("/v2/emails/{id}")).await;
    for event in all.iter().filter(|e| e["data"]["id"] == id.as_str()) {
        assert_payload(event, event["type"].as_str().unwrap(), &account, None);
        for field in ["id", "from", "subject", "tags", "message_id", "created_at"] {
            assert_eq!(event["data"][field], shown[field], "{field}: {event}");
        }
        assert_eq!(event["data"]["tags"], tags);
    }
    let reply = |kind: &str, recipient: &str| {
        all.iter()
            .find(|e| e["type"] == kind && e["data"]["recipient"]["email"] == recipient)
            .unwrap()["data"]["recipient"]["reply"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(reply("email.sent", "ok@client.example").starts_with("250"));
    assert!(reply("email.bounced", "gone@client.example").contains("550"));
    assert!(reply("email.deferred", "busy@client.example").contains("451"));
    // The type filter keeps to the types asked.
    let bounced = events(&app, "email.bounced").await;
    assert_eq!(bounced.len(), 1, "{bounced:?}");

    // The bounced address is suppressed now.
    let again = app
        .api(Method::POST, "/v2/emails")
        .json(
            &json!({"from": "billing@acme.example", "to": "gone@client.example",
                      "subject": "Again", "text": "Hello"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    let suppressed = events(&app, "email.suppressed").await;
    assert_eq!(suppressed.len(), 1, "{suppressed:?}");
    assert_eq!(suppressed[0]["data"]["id"], again["id"]);
    assert_eq!(
        suppressed[0]["data"]["recipient"]["email"],
        "gone@client.example"
    );

    // A scheduled email, cancelled.
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let scheduled = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({"from": "billing@acme.example", "to": "later@client.example",
                      "subject": "Later", "text": "Hello",
                      "scheduled_at": at.format(&time::format_description::well_known::Rfc3339).unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(scheduled.status(), 202);
    let scheduled: Value = scheduled.json().await.unwrap();
    let scheduled_id = scheduled["id"].as_str().unwrap();
    let cancelled = app
        .api(Method::POST, &format!("/v2/emails/{scheduled_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled = events(&app, "email.cancelled").await;
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["data"]["id"], scheduled_id);
    assert_eq!(cancelled[0]["data"]["recipient"]["status"], "cancelled");

    let log = raw_log(&app).await;
    assert!(!log.contains("never in an event"), "a body is in the log");
    assert_eq!(
        relay.received().len(),
        2,
        "ok, then busy after its deferral"
    );
    another_account_sees_none(&app).await;
}

/// An email scheduled from a domain the operator suspends before its time fails when its
/// time comes (its From is no longer the account's to send as): `email.failed` for its
/// recipient, with the reason as its reply, and nothing reaches the relay.
async fn an_email_whose_domain_is_suspended_before_it_goes_fails(engine: Engine) {
    let (app, relay, _dns) = app_with_relay_and_dns(engine).await;
    let account = app.admin.account_id.clone();
    app.active_domain("acme.example").await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let tags = json!({"customer": "c-7"});
    let sent = app
        .api(Method::POST, "/v2/emails")
        .json(&json!({"from": "billing@acme.example", "to": "jo@client.example",
                      "subject": "Invoice 7", "text": "Hello", "tags": tags,
                      "scheduled_at": at.format(&time::format_description::well_known::Rfc3339).unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "{}", sent.text().await.unwrap());
    let sent: Value = sent.json().await.unwrap();
    let id = sent["id"].as_str().unwrap().to_string();

    let name = DomainName::parse("acme.example").unwrap();
    set_status_by_operator(&app.db, &app.settings, &name, None, DomainStatus::Suspended)
        .await
        .unwrap();
    assert!(events(&app, "email.failed").await.is_empty());
    app.advance_clock(Duration::from_secs(3600 + 60)).await;
    let failed = wait_for_events(&app, "email.failed", 1).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let event = &failed[0];
    assert_payload(event, "email.failed", &account, None);
    let shown = app.get_json(&format!("/v2/emails/{id}")).await;
    assert_eq!(shown["status"], "failed", "{shown}");
    for field in ["id", "from", "subject", "tags", "message_id", "created_at"] {
        assert_eq!(event["data"][field], shown[field], "{field}: {event}");
    }
    let recipient = &event["data"]["recipient"];
    assert_eq!(recipient["email"], "jo@client.example", "{event}");
    assert_eq!(recipient["status"], "failed", "{event}");
    let reply = recipient["reply"].as_str().unwrap();
    assert!(
        reply.contains("billing@acme.example") && reply.contains("no longer"),
        "{reply}"
    );
    assert_eq!(
        shown["recipients"][0]["last_reply"].as_str(),
        Some(reply),
        "the reply the email shows: {shown}"
    );
    let all = events(&app, EMAIL_TYPES).await;
    assert_eq!(
        of_recipient(&all, &id, "jo@client.example"),
        ["email.queued", "email.failed"]
    );
    assert!(relay.received().is_empty(), "nothing was sent");
    another_account_sees_none(&app).await;
}
