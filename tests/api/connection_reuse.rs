//! SMTP connections kept between messages: few connections for many messages, nothing
//! lost or sent twice when a relay drops one, `421` closes one for good, PIPELINING keeps
//! each recipient's reply, and no account's mail rides another account's authenticated
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::mail::outbox::{self, Outgoing, Recipient, RecipientType, enqueue};
use mailroom::store::crypto::MasterKey;
use mailroom::types::{DomainName, EmailAddress};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::smtp::{At, Encryption, Fault, Received, TestSmtp};
use crate::helpers::{Engine, TestApp, spawn_app_with, spawn_app_with_relay};

both_engines!(
    a_hundred_messages_share_a_few_connections,
    a_relay_that_drops_connections_loses_no_message_and_gets_none_twice,
    a_421_closes_the_connection_and_the_message_comes_later,
    pipelining_keeps_each_recipients_reply,
    another_accounts_mail_never_rides_an_authenticated_connection,
);

fn address(text: &str) -> EmailAddress {
    EmailAddress::parse(text).unwrap()
}

/// An API email of `account_id` From `from` to `to`.
fn email(account_id: &str, from: &str, to: &[&str]) -> Outgoing {
    Outgoing {
        account_id: Some(account_id.to_string()),
        entity_id: None,
        kind: outbox::API_KIND,
        from: address(from),
        from_name: None,
        reply_to: Vec::new(),
        recipients: to
            .iter()
            .map(|to| Recipient {
                address: address(to),
                name: None,
                kind: RecipientType::To,
            })
            .collect(),
        subject: "Your receipt".to_string(),
        text: Some("Thank you for your order.".to_string()),
        html: None,
        attachments: Vec::new(),
        headers: Vec::new(),
        tags: BTreeMap::new(),
        scheduled_at: None,
    }
}

/// Queues `emails` in one transaction; answers (id, Message-ID) of each.
async fn queue(app: &TestApp, emails: Vec<Outgoing>) -> Vec<(String, String)> {
    let master_key = MasterKey::load(&app.settings).unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let mut queued = Vec::new();
    for outgoing in emails {
        let email = enqueue(&mut tx, &master_key, outgoing, app.db.now())
            .await
            .unwrap();
        queued.push(email.id);
    }
    tx.commit().await.unwrap();
    let mut ids = Vec::new();
    for id in queued {
        let message_id: String = sqlx::query_scalar("SELECT message_id FROM emails WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        ids.push((id, message_id));
    }
    ids
}

async fn status(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// Waits until each email of `ids` is `wanted`.
async fn wait_for_all(app: &TestApp, ids: &[(String, String)], wanted: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    for (id, _) in ids {
        loop {
            let now = status(app, id).await;
            if now == wanted {
                break;
            }
            assert!(Instant::now() < deadline, "{id} is {now}, not {wanted}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each recipient of an email: (address, status, attempts).
async fn recipients(app: &TestApp, id: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT address, status, attempts FROM email_recipients WHERE email_id = $1 \
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// The events of an email, oldest first: (type, detail).
async fn events(app: &TestApp, id: &str) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT type, detail FROM events WHERE email_id = $1 ORDER BY position")
        .bind(id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

/// How many messages the relay received with each Message-ID.
fn arrivals(received: &[Received]) -> BTreeMap<String, usize> {
    let mut counted = BTreeMap::new();
    for message in received {
        let id = message.header("Message-ID").expect("a Message-ID");
        *counted.entry(id).or_default() += 1;
    }
    counted
}

/// Every email of `ids` arrived exactly once, and nothing else did.
fn each_arrived_once(relay: &TestSmtp, ids: &[(String, String)]) {
    let counted = arrivals(&relay.received());
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let expected: BTreeSet<&str> = ids.iter().map(|(_, m)| m.as_str()).collect();
    let arrived: BTreeSet<&str> = counted.keys().map(String::as_str).collect();
    assert_eq!(arrived, expected);
}

fn readers(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| format!("reader{n}@example.org"))
        .collect()
}

async fn a_hundred_messages_share_a_few_connections(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.relay_concurrency = 4).await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    let emails = readers(100)
        .iter()
        .map(|to| email(&account, "orders@shop.test", &[to]))
        .collect();
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(60)).await;

    each_arrived_once(&relay, &ids);
    assert_eq!(relay.transactions(), 100);
    // At most one connection per delivery the account may have at once, each greeted once.
    let (sessions, hellos) = (relay.sessions(), relay.hellos().len());
    assert!(sessions <= 4, "{sessions} connections for 100 messages");
    assert_eq!(hellos, sessions, "one EHLO per connection");
    // The relay offers no PIPELINING: nothing came pipelined.
    assert_eq!(relay.pipelined(), 0);
}

async fn a_relay_that_drops_connections_loses_no_message_and_gets_none_twice(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.relay_concurrency = 4;
        s.mail_retry_seconds = 1;
        s.smtp_timeout = 5;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // Dropped after a recipient is named, in the middle of a message, and right after a
    // MAIL FROM: each attempt fails and is tried again. Dropped instead of answering the
    // RSET that begins a reuse: nothing of a message was said yet, so a new connection
    // takes it at once.
    relay.fault(At::Rcpt, 3, Fault::Drop);
    relay.fault(At::Data, 10, Fault::Drop);
    relay.fault(At::Mail, 40, Fault::Drop);
    relay.fault(At::Rset, 20, Fault::Drop);
    let emails = readers(100)
        .iter()
        .map(|to| email(&account, "orders@shop.test", &[to]))
        .collect();
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(60)).await;

    each_arrived_once(&relay, &ids);
    let mut retried = Vec::new();
    for (id, _) in &ids {
        let found = recipients(&app, id).await;
        if found[0].2 > 1 {
            retried.push(found);
        }
    }
    assert_eq!(
        retried.len(),
        3,
        "one attempt lost per fault but RSET's: {retried:?}"
    );
    assert!(retried.iter().all(|r| r[0].2 == 2), "{retried:?}");
    // Each fault cost a connection; the rest of the mail shared a few.
    let sessions = relay.sessions();
    assert!(sessions <= 4 + 4, "{sessions} connections");
}

async fn a_421_closes_the_connection_and_the_message_comes_later(engine: Engine) {
    // One delivery at a time for the account: one connection at a time, in order.
    let (app, relay) = spawn_app_with_relay(engine, |s| s.relay_concurrency = 1).await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // The relay is closing when the first kept connection is reset, and again at the
    // fourth message's MAIL FROM; it says `421` to anything said after.
    relay.fault(At::Rset, 1, Fault::Closing);
    relay.fault(At::Mail, 4, Fault::Closing);
    let emails = readers(5)
        .iter()
        .map(|to| email(&account, "orders@shop.test", &[to]))
        .collect();
    let ids = queue(&app, emails).await;

    // Four go; the fourth's attempt is deferred with the server's reply.
    let deadline = Instant::now() + Duration::from_secs(30);
    let deferred = loop {
        let mut deferred = Vec::new();
        for (id, _) in &ids {
            if recipients(&app, id).await[0].1 == "deferred" {
                deferred.push(id.clone());
            }
        }
        if relay.received().len() == 4 && deferred.len() == 1 {
            break deferred.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "{deferred:?}, {:?}",
            relay.received().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let history = events(&app, &deferred).await;
    let (kind, detail) = history.last().unwrap();
    assert_eq!(kind, "email.deferred");
    let detail = detail.as_deref().unwrap();
    assert!(
        detail.contains("MAIL FROM") && detail.contains("421"),
        "{detail}"
    );

    // Later, it goes.
    app.advance_clock(Duration::from_secs(120)).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(30)).await;
    each_arrived_once(&relay, &ids);
    assert_eq!(recipients(&app, &deferred).await[0].2, 2);
    let mut attempts = 0;
    for (id, _) in &ids {
        attempts += recipients(&app, id).await[0].2;
    }
    assert_eq!(attempts, 6, "the refused RSET cost no attempt");
    // Nothing was said on a connection after its 421 but QUIT; each 421 cost one, and
    // the retry took the connection opened after it.
    assert_eq!(relay.after_421(), Vec::<String>::new());
    assert_eq!(relay.sessions(), 3);
}

async fn pipelining_keeps_each_recipients_reply(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.mail_retry_seconds = 1).await;
    relay.offer_pipelining();
    relay.refuse("gone@example.org", "550 5.1.1 No such user here");
    relay.refuse("nobody@example.org", "550 5.1.1 No such user here");
    relay.defer_once("busy@example.org", "451 4.2.1 Mailbox busy");
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    let from = "orders@shop.test";
    let to = [
        "first@example.org",
        "gone@example.org",
        "busy@example.org",
        "last@example.org",
    ];
    let mixed = queue(&app, vec![email(&account, from, &to)]).await;
    wait_for_all(&app, &mixed, "sent", Duration::from_secs(30)).await;
    let found = recipients(&app, &mixed[0].0).await;
    let shown: Vec<(&str, &str, i64)> = found
        .iter()
        .map(|(a, s, n)| (a.as_str(), s.as_str(), *n))
        .collect();
    assert_eq!(
        shown,
        [
            ("first@example.org", "sent", 1),
            ("gone@example.org", "bounced", 1),
            ("busy@example.org", "sent", 2),
            ("last@example.org", "sent", 1),
        ]
    );
    let received = relay.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].to, ["first@example.org", "last@example.org"]);
    assert_eq!(received[1].to, ["busy@example.org"]);

    // Every recipient refused: the pipelined DATA is refused, no message goes, and the
    // connection serves the next email.
    let refused = queue(&app, vec![email(&account, from, &["nobody@example.org"])]).await;
    wait_for_all(&app, &refused, "failed", Duration::from_secs(30)).await;
    assert_eq!(recipients(&app, &refused[0].0).await[0].1, "bounced");
    let next = queue(&app, vec![email(&account, from, &["next@example.org"])]).await;
    wait_for_all(&app, &next, "sent", Duration::from_secs(30)).await;
    let received = relay.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].to, ["next@example.org"]);

    // Each transaction's MAIL FROM, RCPT TOs and DATA came in one read, all on one
    // connection.
    assert_eq!(relay.transactions(), 4);
    assert_eq!(relay.pipelined(), 4);
    assert_eq!(relay.sessions(), 1);
}

/// Sets `domain`'s relay in the account of `key`.
async fn set_relay_as(app: &TestApp, key: &str, domain: &str, port: u16, user: (&str, &str)) {
    crate::helpers::record_secret(user.1);
    let body = json!({
        "provider": "smtp", "description": "Shared relay", "from": "",
        "options": {
            "host": "127.0.0.1", "port": port, "secure": false, "debug": false,
            "tls": {"rejectUnauthorized": false},
            "auth": {"user": user.0, "pass": user.1}
        }
    });
    let response = app
        .with_key(
            key,
            Method::POST,
            &format!("/api/v2/email/settings?domain={domain}"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// Adds `domain` to the account of `key` and activates it there.
async fn active_domain_of(app: &TestApp, key: &str, account_id: &str, domain: &str) {
    let added = app
        .with_key(key, Method::POST, "/v2/domains")
        .json(&json!({"domain": domain}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let _: Value = added.json().await.unwrap();
    set_status_by_operator(
        &app.db,
        &app.settings,
        &DomainName::parse(domain).unwrap(),
        Some(account_id),
        DomainStatus::Active,
    )
    .await
    .unwrap();
}

async fn another_accounts_mail_never_rides_an_authenticated_connection(engine: Engine) {
    let alice = ("alice-relay", "alice-relay-password");
    let bob = ("bob-relay", "bob-relay-password");
    let relay = TestSmtp::start(Encryption::Plain, Some(alice)).await;
    relay.add_user(bob.0, bob.1);
    let app = spawn_app_with(engine, |_| {}).await;
    let first = (app.admin.api_key.clone(), app.admin.account_id.clone());
    let other = app.other_account().await;
    let second = (other.api_key.clone(), other.account_id.clone());
    active_domain_of(&app, &first.0, &first.1, "alice.test").await;
    set_relay_as(&app, &first.0, "alice.test", relay.port, alice).await;
    active_domain_of(&app, &second.0, &second.1, "bob.test").await;
    set_relay_as(&app, &second.0, "bob.test", relay.port, bob).await;
    // The second account knows the first's relay password too: still its own connections.
    active_domain_of(&app, &second.0, &second.1, "copy.test").await;
    set_relay_as(&app, &second.0, "copy.test", relay.port, alice).await;

    let mut emails = Vec::new();
    for to in readers(10) {
        emails.push(email(&first.1, "news@alice.test", &[&to]));
        emails.push(email(&second.1, "news@bob.test", &[&to]));
        emails.push(email(&second.1, "news@copy.test", &[&to]));
    }
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(60)).await;
    each_arrived_once(&relay, &ids);

    let received = relay.received();
    let sessions_of = |from: &str, user: &str| -> BTreeSet<usize> {
        let carried: Vec<&Received> = received.iter().filter(|r| r.from == from).collect();
        assert_eq!(carried.len(), 10, "{from}");
        assert!(
            carried.iter().all(|r| r.user.as_deref() == Some(user)),
            "{from} went as another user"
        );
        carried.iter().map(|r| r.session).collect()
    };
    let first_sessions = sessions_of("news@alice.test", alice.0);
    let bob_sessions = sessions_of("news@bob.test", bob.0);
    let copy_sessions = sessions_of("news@copy.test", alice.0);
    assert!(first_sessions.is_disjoint(&bob_sessions));
    assert!(
        first_sessions.is_disjoint(&copy_sessions),
        "the second account's mail rode the first's connection: {first_sessions:?} {copy_sessions:?}"
    );
    assert!(bob_sessions.is_disjoint(&copy_sessions));
    // Each connection authenticated once, and there were few.
    let attempts = relay.auth_attempts();
    assert_eq!(attempts.len(), relay.sessions());
    assert!(
        relay.sessions() <= 3 * 4,
        "{} connections",
        relay.sessions()
    );
}
