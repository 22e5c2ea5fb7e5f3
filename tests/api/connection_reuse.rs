//! SMTP connections kept between messages: few connections for many messages, and few
//! kept however many accounts and relays; nothing lost or sent twice when a relay drops
//! one before a message's end (and what is recorded when it drops one after); `421` closes
//! one for good; a reply out of step closes one; a kept connection that stops answering
//! costs a message nothing; PIPELINING keeps each recipient's reply, in clear and over
//! STARTTLS, and survives every fault; no account's mail rides another account's
//! authenticated connection.

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
    a_relay_that_drops_connections_before_a_messages_end_loses_none_and_gets_none_twice,
    a_connection_lost_after_a_messages_end_is_retried_and_may_deliver_it_twice,
    a_421_closes_the_connection_and_the_message_comes_later,
    a_reply_out_of_step_closes_the_connection_and_nothing_counts_as_sent,
    a_kept_connection_that_stops_answering_rset_costs_the_message_no_attempt,
    one_accounts_relays_keep_no_more_connections_than_it_may_use,
    accounts_sharing_the_system_relay_keep_no_more_connections_than_the_slots,
    pipelining_keeps_each_recipients_reply,
    pipelining_survives_a_421_or_a_drop_at_any_command,
    a_refused_sender_fails_its_email_alone_when_pipelined,
    pipelining_is_read_again_inside_starttls,
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

async fn a_relay_that_drops_connections_before_a_messages_end_loses_none_and_gets_none_twice(
    engine: Engine,
) {
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
    relay.fault(At::Message, 10, Fault::Drop);
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

/// The detail of each `email.deferred` event of an email, oldest first.
async fn deferrals(app: &TestApp, id: &str) -> Vec<String> {
    events(app, id)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "email.deferred")
        .map(|(_, detail)| detail.unwrap_or_default())
        .collect()
}

/// Waits until the relay has no more connections open than `most` (a QUIT takes a moment
/// to arrive); answers how many it has.
async fn open_connections_settle(relay: &TestSmtp, most: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay.open_connections() > most && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.open_connections()
}

async fn a_connection_lost_after_a_messages_end_is_retried_and_may_deliver_it_twice(
    engine: Engine,
) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.mail_retry_seconds = 1).await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // The relay takes the whole message, then the connection drops before its reply: the
    // message may well be in its queue. Mailroom cannot know; it tries again and says so.
    relay.fault(At::Message, 1, Fault::DropAfterEnd);
    let ids = queue(
        &app,
        vec![email(&account, "orders@shop.test", &["a@example.org"])],
    )
    .await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(30)).await;

    let found = recipients(&app, &ids[0].0).await;
    assert_eq!(found[0].1, "sent");
    assert_eq!(found[0].2, 2, "tried again");
    let deferred = deferrals(&app, &ids[0].0).await;
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert!(
        deferred[0].contains("DATA")
            && deferred[0].contains("closed the connection")
            && deferred[0].contains("the message may have been delivered"),
        "{}",
        deferred[0]
    );
    // The receiver has it twice, with the same Message-ID (by which it may drop one).
    let counted = arrivals(&relay.received());
    assert_eq!(counted.get(&ids[0].1), Some(&2), "{counted:?}");
}

async fn a_reply_out_of_step_closes_the_connection_and_nothing_counts_as_sent(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.mail_retry_seconds = 1).await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // The relay writes one line too many after the first RCPT TO, and rejects the first
    // message it gets to the end of. Read loosely, the extra `250` is taken for DATA's
    // reply, and DATA's `354` for the message's: a rejected message recorded as sent.
    relay.fault(At::Rcpt, 1, Fault::ExtraReply);
    relay.reply_next("554 5.7.1 Message rejected as spam");
    let ids = queue(
        &app,
        vec![email(&account, "orders@shop.test", &["a@example.org"])],
    )
    .await;
    wait_for_all(&app, &ids, "failed", Duration::from_secs(30)).await;

    let found = recipients(&app, &ids[0].0).await;
    assert_eq!(
        (found[0].1.as_str(), found[0].2),
        ("failed", 2),
        "{found:?}"
    );
    let deferred = deferrals(&app, &ids[0].0).await;
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert!(
        deferred[0].contains("DATA") && deferred[0].contains("unexpected reply: 250"),
        "{}",
        deferred[0]
    );
    let history = events(&app, &ids[0].0).await;
    let (kind, detail) = history.last().unwrap();
    assert_eq!(kind, "email.failed");
    assert!(detail.as_deref().unwrap().contains("554"), "{detail:?}");
    assert!(relay.received().is_empty());
    // The connection out of step was not used again.
    assert_eq!(relay.sessions(), 2);
}

async fn a_kept_connection_that_stops_answering_rset_costs_the_message_no_attempt(engine: Engine) {
    // A five-second conversation; a kept connection has five seconds (or the connect
    // timeout, when shorter) to answer RSET; a new connection and its transaction have
    // their own time after that.
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.relay_concurrency = 1;
        s.smtp_timeout = 5;
        s.smtp_connect_timeout = 10;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    relay.fault(At::Rset, 1, Fault::Stall);
    let first = queue(
        &app,
        vec![email(&account, "orders@shop.test", &["a@example.org"])],
    )
    .await;
    wait_for_all(&app, &first, "sent", Duration::from_secs(10)).await;

    let started = Instant::now();
    let second = queue(
        &app,
        vec![email(&account, "orders@shop.test", &["b@example.org"])],
    )
    .await;
    wait_for_all(&app, &second, "sent", Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(9), "took {took:?}");
    assert_eq!(recipients(&app, &second[0].0).await[0].2, 1, "one attempt");
    assert!(deferrals(&app, &second[0].0).await.is_empty());
    assert_eq!(relay.sessions(), 2, "a new connection took it");
    each_arrived_once(&relay, &[first[0].clone(), second[0].clone()]);
}

async fn one_accounts_relays_keep_no_more_connections_than_it_may_use(engine: Engine) {
    // One account, four domains, each with its own relay settings (another user at the
    // same relay): four keys, one account's share of kept connections.
    let relay = TestSmtp::start(Encryption::Plain, Some(("user0", "password-0"))).await;
    let app = spawn_app_with(engine, |s| s.relay_concurrency = 2).await;
    let (key, account) = (app.admin.api_key.clone(), app.admin.account_id.clone());
    let mut emails = Vec::new();
    for n in 0..4 {
        let (user, pass) = (format!("user{n}"), format!("password-{n}"));
        relay.add_user(&user, &pass);
        let domain = format!("shop{n}.test");
        active_domain_of(&app, &key, &account, &domain).await;
        set_relay_as(&app, &key, &domain, relay.port, (&user, &pass)).await;
        for to in readers(3) {
            emails.push(email(&account, &format!("orders@{domain}"), &[&to]));
        }
    }
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(60)).await;
    each_arrived_once(&relay, &ids);

    let users: BTreeSet<Option<String>> = relay.received().into_iter().map(|r| r.user).collect();
    assert_eq!(users.len(), 4, "each domain's mail went as its user");
    assert!(
        relay.sessions() >= 4,
        "one connection per relay setting at least"
    );
    let open = open_connections_settle(&relay, 2).await;
    assert!(open <= 2, "{open} connections kept for one account");
}

async fn accounts_sharing_the_system_relay_keep_no_more_connections_than_the_slots(engine: Engine) {
    // Twenty accounts without a relay of their own: each one's mail goes through the
    // system relay on connections of its own; the worker has 16 slots, and keeps no more.
    const ACCOUNTS: usize = 20;
    const SLOTS: usize = 16;
    let (app, relay) = spawn_app_with_relay(engine, |s| s.relay_concurrency = 4).await;
    let mut emails = Vec::new();
    for n in 0..ACCOUNTS {
        let account = app.other_account().await;
        let domain = format!("shop{n}.test");
        active_domain_of(&app, &account.api_key, &account.account_id, &domain).await;
        emails.push(email(
            &account.account_id,
            &format!("orders@{domain}"),
            &["reader@example.org"],
        ));
    }
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(60)).await;
    each_arrived_once(&relay, &ids);

    assert_eq!(
        relay.sessions(),
        ACCOUNTS,
        "each account its own connection"
    );
    let open = open_connections_settle(&relay, SLOTS).await;
    assert!(open <= SLOTS, "{open} connections kept");
    // Unused, they close soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} still open",
            relay.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pipelining_survives_a_421_or_a_drop_at_any_command(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.relay_concurrency = 1;
        s.mail_retry_seconds = 1;
    })
    .await;
    relay.offer_pipelining();
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // One email at a time, each deferred once by a fault and then sent. The counts are
    // over all connections: a step said after a 421 is not counted.
    let cases: [(At, usize, Fault, &[&str]); 5] = [
        (At::Mail, 1, Fault::Closing, &["MAIL FROM", "421"]),
        (At::Rcpt, 2, Fault::Closing, &["RCPT TO", "421"]),
        (At::Data, 3, Fault::Closing, &["DATA", "421"]),
        (
            At::Rcpt,
            6,
            Fault::Drop,
            &["RCPT TO", "closed the connection"],
        ),
        // One reply too many: DATA's turns out `250`, and nothing is sent.
        (
            At::Mail,
            9,
            Fault::ExtraReply,
            &["DATA", "unexpected reply: 250"],
        ),
    ];
    let mut all = Vec::new();
    for (n, (at, nth, fault, said)) in cases.into_iter().enumerate() {
        relay.fault(at, nth, fault);
        let to = format!("reader{n}@example.org");
        let ids = queue(&app, vec![email(&account, "orders@shop.test", &[&to])]).await;
        wait_for_all(&app, &ids, "sent", Duration::from_secs(30)).await;
        let found = recipients(&app, &ids[0].0).await;
        assert_eq!(found[0].2, 2, "{at:?} {fault:?}: {found:?}");
        let deferred = deferrals(&app, &ids[0].0).await;
        assert_eq!(deferred.len(), 1, "{at:?} {fault:?}: {deferred:?}");
        assert!(
            said.iter().all(|s| deferred[0].contains(s)),
            "{at:?} {fault:?}: {}",
            deferred[0]
        );
        all.extend(ids);
    }
    each_arrived_once(&relay, &all);
    // After a 421, only what was written with the refused command (it was pipelined)
    // reached the relay; nothing was said on such a connection after its replies.
    let after = relay.after_421();
    assert!(
        after
            .iter()
            .all(|line| line.starts_with("RCPT TO:") || line == "DATA"),
        "{after:?}"
    );
    // Every transaction came pipelined, and each fault cost its connection.
    assert_eq!(relay.pipelined(), relay.transactions());
    assert_eq!(relay.sessions(), 1 + 5);
}

async fn a_refused_sender_fails_its_email_alone_when_pipelined(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.relay_concurrency = 1).await;
    relay.offer_pipelining();
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    // MAIL FROM refused: the pipelined RCPT TOs and DATA get `503`s, which count for
    // nothing — each recipient fails with the sender's refusal.
    relay.fault(At::Mail, 1, Fault::Reply("550 5.7.1 Sender refused"));
    let to = ["a@example.org", "b@example.org"];
    let refused = queue(&app, vec![email(&account, "orders@shop.test", &to)]).await;
    wait_for_all(&app, &refused, "failed", Duration::from_secs(30)).await;
    for (address, _, attempts) in recipients(&app, &refused[0].0).await {
        assert_eq!(attempts, 1, "{address}");
    }
    let history = events(&app, &refused[0].0).await;
    let failures: Vec<&str> = history
        .iter()
        .filter(|(kind, _)| kind != "email.queued")
        .filter_map(|(_, detail)| detail.as_deref())
        .collect();
    assert_eq!(failures.len(), 2, "{history:?}");
    for detail in failures {
        assert!(
            detail.contains("MAIL FROM") && detail.contains("550") && !detail.contains("503"),
            "{detail}"
        );
    }

    // The connection serves the next email.
    let next = queue(
        &app,
        vec![email(&account, "orders@shop.test", &["c@example.org"])],
    )
    .await;
    wait_for_all(&app, &next, "sent", Duration::from_secs(30)).await;
    each_arrived_once(&relay, &next);
    assert_eq!(relay.sessions(), 1);
    assert_eq!(relay.pipelined(), 1);
}

async fn pipelining_is_read_again_inside_starttls(engine: Engine) {
    let relay = TestSmtp::start(Encryption::StartTls, None).await;
    relay.offer_pipelining();
    let app = spawn_app_with(engine, |s| {
        s.smtp_url = Some(mailroom::config::Secret::new(format!(
            "smtp://127.0.0.1:{}?verify=false",
            relay.port
        )));
        s.relay_concurrency = 1;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("shop.test").await;
    let emails = readers(3)
        .iter()
        .map(|to| email(&account, "orders@shop.test", &[to]))
        .collect();
    let ids = queue(&app, emails).await;
    wait_for_all(&app, &ids, "sent", Duration::from_secs(30)).await;
    each_arrived_once(&relay, &ids);

    assert!(relay.received().iter().all(|r| r.tls), "all over TLS");
    // Asked once more inside TLS (what was said before STARTTLS does not count), and
    // every transaction pipelined, on one connection.
    assert_eq!(relay.sessions(), 1);
    assert_eq!(
        relay.hellos().len(),
        3,
        "EHLO, EHLO after STARTTLS, EHLO asked again"
    );
    assert_eq!(relay.pipelined(), 3);
}
