//! Emails with several recipients: one SMTP transaction per attempt, each recipient's
//! reply on its own, the suppression list, scheduling and cancelling, bodies deleted, and a
//! worker killed in the middle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::mail::outbox::{
    self, Cancel, EmailStatus, Outgoing, Queued, Recipient, RecipientStatus, RecipientType, enqueue,
};
use mailroom::store::crypto::MasterKey;
use mailroom::store::{Db, Timestamp};
use mailroom::types::{DomainName, EmailAddress};
use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, ServerProcess, TestApp, spawn_app_with_relay};

both_engines!(
    each_recipient_gets_its_own_reply_in_one_transaction,
    scheduled_emails_wait_for_their_time_and_cancelled_ones_never_go,
    bodies_are_deleted_once_final_or_after_the_retention,
);

both_engines!(a_killed_worker_loses_no_email_and_sends_no_recipient_twice);

both_engines!(
    a_from_no_longer_the_accounts_fails_and_is_never_sent,
    one_accounts_backlog_does_not_hold_up_the_others,
    the_file_transport_shows_tenants_no_server_path,
    a_lease_outlives_the_conversation_after_a_wait_in_line,
);

fn address(text: &str) -> EmailAddress {
    EmailAddress::parse(text).unwrap()
}

/// An email of `account_id` to `recipients` (address, type).
fn email(
    account_id: Option<&str>,
    recipients: &[(&str, RecipientType)],
    scheduled_at: Option<Timestamp>,
) -> Outgoing {
    Outgoing {
        account_id: account_id.map(str::to_string),
        entity_id: None,
        kind: outbox::API_KIND,
        from: address("news@sender.test"),
        from_name: Some("Sender News".to_string()),
        reply_to: vec![address("help@sender.test")],
        recipients: recipients
            .iter()
            .map(|(to, kind)| Recipient {
                address: address(to),
                name: None,
                kind: *kind,
            })
            .collect(),
        subject: "Your invoice".to_string(),
        text: Some("The invoice is attached.".to_string()),
        html: None,
        attachments: Vec::new(),
        headers: Vec::new(),
        tags: BTreeMap::from([("kind".to_string(), "invoice".to_string())]),
        scheduled_at,
    }
}

async fn queue(db: &Db, master_key: &MasterKey, outgoing: Outgoing) -> Queued {
    let mut tx = db.begin().await.unwrap();
    let queued = enqueue(&mut tx, master_key, outgoing, db.now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    queued
}

async fn queue_in(app: &TestApp, outgoing: Outgoing) -> Queued {
    let master_key = MasterKey::load(&app.settings).unwrap();
    queue(&app.db, &master_key, outgoing).await
}

async fn email_status(db: &Db, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn wait_for_email(db: &Db, id: &str, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = email_status(db, id).await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is {now}, not {status}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each recipient: (address, status, attempts, last reply).
async fn recipients(db: &Db, id: &str) -> Vec<(String, String, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT address, status, attempts, last_reply FROM email_recipients \
         WHERE email_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The events of an email for `recipient`, oldest first: (type, detail).
async fn events(db: &Db, id: &str, recipient: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT type FROM events WHERE email_id = $1 AND recipient = $2 ORDER BY position",
    )
    .bind(id)
    .bind(recipient)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn body_kept(db: &Db, id: &str) -> bool {
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE id = $1 AND body IS NOT NULL AND body_deleted_at IS NULL",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    kept == 1
}

async fn each_recipient_gets_its_own_reply_in_one_transaction(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.mail_retry_seconds = 1;
        s.smtp_timeout = 5;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("sender.test").await;
    relay.refuse("gone@example.org", "550 5.1.1 No such user here");
    relay.defer_once("busy@example.org", "451 4.2.1 Mailbox busy");
    let recipients = [
        ("ok@example.org", RecipientType::To),
        ("gone@example.org", RecipientType::Cc),
        ("busy@example.org", RecipientType::Bcc),
    ];
    let queued = queue_in(&app, email(Some(&account), &recipients, None)).await;
    assert_eq!(queued.status, EmailStatus::Queued);
    assert!(queued.id.starts_with("em_"), "{}", queued.id);
    wait_for_email(&app.db, &queued.id, "sent", Duration::from_secs(30)).await;

    let found = recipients_of(&app, &queued.id).await;
    assert_eq!(found[0].1, "sent", "{found:?}");
    assert_eq!(found[1].1, "bounced", "{found:?}");
    assert!(found[1].3.as_deref().unwrap().contains("550"), "{found:?}");
    assert_eq!((found[2].1.as_str(), found[2].2), ("sent", 2), "{found:?}");
    assert_eq!(
        events(&app.db, &queued.id, "busy@example.org").await,
        ["email.queued", "email.deferred", "email.sent"]
    );
    assert_eq!(
        events(&app.db, &queued.id, "gone@example.org").await,
        ["email.queued", "email.bounced"]
    );
    // One transaction per attempt: the first with all three RCPTs, the retry with one.
    assert_eq!(relay.transactions(), 2);
    let received = relay.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].to, ["ok@example.org"]);
    assert_eq!(received[1].to, ["busy@example.org"]);
    assert_eq!(
        received[0].header("Message-ID"),
        received[1].header("Message-ID")
    );
    // The same message for everyone (signed anew at each attempt), and the Bcc recipient is
    // in none of the headers.
    let unsigned = |data: &str| data.split_once("\r\nFrom: ").unwrap().1.to_string();
    assert_eq!(unsigned(&received[0].data), unsigned(&received[1].data));
    let headers: String = received[0]
        .data
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_string();
    // (By field name: the signature's random selector and value may spell "bcc".)
    assert!(
        !headers
            .lines()
            .any(|line| line.to_ascii_lowercase().starts_with("bcc:")),
        "{headers}"
    );
    assert!(!headers.contains("busy@example.org"), "{headers}");
    assert!(
        received[0]
            .header("Cc")
            .unwrap()
            .contains("gone@example.org")
    );

    // The bounced address is on the account's suppression list, with the server's reply.
    let (reason, detail): (String, String) = sqlx::query_as(
        "SELECT reason, detail FROM suppressions WHERE account_id = $1 AND email = $2",
    )
    .bind(&account)
    .bind("gone@example.org")
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(reason, "bounce");
    assert!(detail.contains("No such user"), "{detail}");

    // The next email to it: suppressed at once, never sent to; the others go.
    let second = [
        ("Gone@example.org", RecipientType::To),
        ("ok@example.org", RecipientType::To),
    ];
    let queued = queue_in(&app, email(Some(&account), &second, None)).await;
    assert_eq!(queued.status, EmailStatus::Queued);
    assert_eq!(queued.recipients[0].status, RecipientStatus::Suppressed);
    assert_eq!(queued.recipients[1].status, RecipientStatus::Queued);
    wait_for_email(&app.db, &queued.id, "sent", Duration::from_secs(20)).await;
    let received = relay.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].to, ["ok@example.org"]);
    assert_eq!(relay.transactions(), 3, "no transaction for the suppressed");
    let found = recipients_of(&app, &queued.id).await;
    assert_eq!((found[0].1.as_str(), found[0].2), ("suppressed", 0));

    // Only suppressed recipients: nothing to send at all.
    let only = [("gone@example.org", RecipientType::Bcc)];
    let queued = queue_in(&app, email(Some(&account), &only, None)).await;
    assert_eq!(queued.status, EmailStatus::Suppressed);
    assert!(!body_kept(&app.db, &queued.id).await);

    // Another account's list is its own: the same address goes to it.
    let other = app.other_account().await;
    let queued = queue_in(&app, email(Some(&other.account_id), &only, None)).await;
    assert_eq!(queued.recipients[0].status, RecipientStatus::Queued);
}

async fn recipients_of(app: &TestApp, id: &str) -> Vec<(String, String, i64, Option<String>)> {
    recipients(&app.db, id).await
}

async fn scheduled_emails_wait_for_their_time_and_cancelled_ones_never_go(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.mail_retry_seconds = 1).await;
    let account = app.admin.account_id.clone();
    app.active_domain("sender.test").await;
    let later = Timestamp(app.db.now().0 + 3_600_000);
    let to = [("later@example.org", RecipientType::To)];
    let kept = queue_in(&app, email(Some(&account), &to, Some(later))).await;
    let cancelled = queue_in(&app, email(Some(&account), &to, Some(later))).await;
    assert_eq!(kept.status, EmailStatus::Scheduled);
    assert_eq!(kept.recipients[0].status, RecipientStatus::Scheduled);

    // Another account cannot cancel it; its own can, once.
    let other = app.other_account().await;
    let mut conn = app.db.pool.acquire().await.unwrap();
    let now = app.db.now();
    let refused = outbox::cancel(&mut conn, &other.account_id, &cancelled.id, now).await;
    assert_eq!(refused.unwrap(), Cancel::NotFound);
    let done = outbox::cancel(&mut conn, &account, &cancelled.id, now).await;
    assert_eq!(done.unwrap(), Cancel::Cancelled);
    let again = outbox::cancel(&mut conn, &account, &cancelled.id, now).await;
    assert_eq!(again.unwrap(), Cancel::NotScheduled(EmailStatus::Cancelled));
    drop(conn);
    assert!(!body_kept(&app.db, &cancelled.id).await);
    assert_eq!(
        events(&app.db, &cancelled.id, "later@example.org").await,
        ["email.queued", "email.cancelled"]
    );

    // Nothing goes before its time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(relay.received().is_empty());
    assert_eq!(email_status(&app.db, &kept.id).await, "scheduled");

    // At its time it goes; the cancelled one never does.
    app.advance_clock(Duration::from_secs(3_601)).await;
    wait_for_email(&app.db, &kept.id, "sent", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay.received().len(), 1);
    assert_eq!(email_status(&app.db, &cancelled.id).await, "cancelled");
    let found = recipients_of(&app, &cancelled.id).await;
    assert_eq!(found[0].1, "cancelled");
    let mut conn = app.db.pool.acquire().await.unwrap();
    let late = outbox::cancel(&mut conn, &account, &kept.id, app.db.now()).await;
    assert_eq!(late.unwrap(), Cancel::NotScheduled(EmailStatus::Sent));
}

async fn bodies_are_deleted_once_final_or_after_the_retention(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.mail_retry_seconds = 1;
        s.body_retention_hours = 72;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("sender.test").await;
    relay.refuse("slow@example.org", "451 4.2.1 Try much later");
    let sent = queue_in(
        &app,
        email(
            Some(&account),
            &[("fine@example.org", RecipientType::To)],
            None,
        ),
    )
    .await;
    let waiting = queue_in(
        &app,
        email(
            Some(&account),
            &[("slow@example.org", RecipientType::To)],
            None,
        ),
    )
    .await;
    wait_for_email(&app.db, &sent.id, "sent", Duration::from_secs(20)).await;
    assert!(!body_kept(&app.db, &sent.id).await, "final: the body goes");

    // Deferred again and again: the body stays until the retention runs out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while recipients_of(&app, &waiting.id).await[0].2 < 2 {
        assert!(Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(email_status(&app.db, &waiting.id).await, "queued");
    assert!(body_kept(&app.db, &waiting.id).await);
    app.advance_clock(Duration::from_secs(73 * 3600)).await;
    wait_for_email(&app.db, &waiting.id, "failed", Duration::from_secs(30)).await;
    assert!(!body_kept(&app.db, &waiting.id).await);
    let found = recipients_of(&app, &waiting.id).await;
    assert_eq!(found[0].1, "failed");
    assert!(
        found[0].3.as_deref().unwrap().contains("retention"),
        "{found:?}"
    );

    // Statuses and events stay.
    let kinds = events(&app.db, &sent.id, "fine@example.org").await;
    assert_eq!(kinds, ["email.queued", "email.sent"]);
    let kinds = events(&app.db, &waiting.id, "slow@example.org").await;
    assert_eq!(kinds.first().map(String::as_str), Some("email.queued"));
    assert_eq!(kinds.last().map(String::as_str), Some("email.failed"));
    assert!(kinds.iter().filter(|k| *k == "email.deferred").count() >= 2);
}

async fn a_killed_worker_loses_no_email_and_sends_no_recipient_twice(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = crate::helpers::fresh_database_url(engine, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    relay.defer_once("second@example.org", "451 4.2.1 Mailbox busy");
    let secret_key = "cd".repeat(32);
    let smtp_url = format!("smtp://127.0.0.1:{}?tls=none", relay.port);
    let env = [
        ("MAILROOM_SECRET_KEY", secret_key.as_str()),
        ("MAILROOM_SMTP_URL", smtp_url.as_str()),
        ("MAILROOM_SMTP_TIMEOUT", "3"),
        ("MAILROOM_SMTP_CONNECT_TIMEOUT", "2"),
        ("MAILROOM_MAIL_RETRY_SECONDS", "1"),
    ];
    let mut first = ServerProcess::serve_with(&dir, &database, &env);
    let db = Db::connect(&database).await.unwrap();
    let master_key = MasterKey::from_hex(&secret_key).unwrap();
    let to = [
        ("first@example.org", RecipientType::To),
        ("second@example.org", RecipientType::To),
        ("third@example.org", RecipientType::Cc),
    ];
    // Mailroom's own mail: no account's From to check.
    let own = Outgoing {
        kind: "invitation",
        ..email(None, &to, None)
    };
    let queued = queue(&db, &master_key, own).await;

    // The first attempt reaches two of three; the retry for the third hangs at DATA when
    // the process dies.
    let received = relay.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received[0].to, ["first@example.org", "third@example.org"]);
    relay.stall(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.data_started() < 2 {
        assert!(Instant::now() < deadline, "the retry never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_hard();
    relay.stall(false);

    let _second = ServerProcess::serve_with(&dir, &database, &env);
    wait_for_email(&db, &queued.id, "sent", Duration::from_secs(30)).await;
    let received = relay.received();
    let mut delivered: Vec<String> = received.iter().flat_map(|r| r.to.clone()).collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "first@example.org",
            "second@example.org",
            "third@example.org"
        ],
        "each recipient exactly once"
    );
    let found = recipients(&db, &queued.id).await;
    assert!(found.iter().all(|r| r.1 == "sent"), "{found:?}");
    assert!(!body_kept(&db, &queued.id).await);
}

both_engines!(the_old_outbox_and_its_history_move_into_emails);

/// The migrations after the one that makes the emails outbox.
fn migrations_after_emails(engine: Engine) -> [&'static str; 4] {
    macro_rules! files {
        ($engine:literal) => {
            [
                include_str!(concat!(
                    "../../migrations/",
                    $engine,
                    "/0011_idempotency.sql"
                )),
                include_str!(concat!(
                    "../../migrations/",
                    $engine,
                    "/0012_held_bodies.sql"
                )),
                include_str!(concat!("../../migrations/", $engine, "/0013_webhooks.sql")),
                include_str!(concat!(
                    "../../migrations/",
                    $engine,
                    "/0014_dkim_rotation.sql"
                )),
            ]
        };
    }
    match engine {
        Engine::Sqlite => files!("sqlite"),
        Engine::Postgres => files!("postgres"),
    }
}

/// Each migration up to the one that makes the emails outbox, as the old schema had it.
fn migrations_before_emails(engine: Engine) -> [&'static str; 9] {
    macro_rules! files {
        ($engine:literal) => {
            [
                include_str!(concat!("../../migrations/", $engine, "/0001_tenancy.sql")),
                include_str!(concat!("../../migrations/", $engine, "/0002_domains.sql")),
                include_str!(concat!("../../migrations/", $engine, "/0003_mail.sql")),
                include_str!(concat!("../../migrations/", $engine, "/0004_mailboxes.sql")),
                include_str!(concat!("../../migrations/", $engine, "/0005_senders.sql")),
                include_str!(concat!(
                    "../../migrations/",
                    $engine,
                    "/0006_invitations.sql"
                )),
                include_str!(concat!("../../migrations/", $engine, "/0007_identity.sql")),
                include_str!(concat!(
                    "../../migrations/",
                    $engine,
                    "/0008_senders_limit.sql"
                )),
                include_str!(concat!("../../migrations/", $engine, "/0009_maildirs.sql")),
            ]
        };
    }
    match engine {
        Engine::Sqlite => files!("sqlite"),
        Engine::Postgres => files!("postgres"),
    }
}

async fn the_old_outbox_and_its_history_move_into_emails(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = crate::helpers::fresh_database_url(engine, &dir).await;
    let db = Db::connect(&database).await.unwrap();
    for sql in migrations_before_emails(engine) {
        sqlx::raw_sql(sql).execute(&db.pool).await.unwrap();
    }
    sqlx::raw_sql(
        "INSERT INTO accounts (id, name, created_at) VALUES ('acc_old', 'Old', 1);
         INSERT INTO outbox (id, account_id, kind, from_address, to_address, subject, body, message_id,
           status, attempts, next_attempt_at, lease_until, last_error, created_at, updated_at, sent_at) VALUES
           ('msg_sent', 'acc_old', 'invitation', 'a@old.test', 'x@example.org', 'Hello', 'sealed-1',
            '<sent@old.test>', 'sent', 2, NULL, NULL, NULL, 100, 300, 300),
           ('msg_waiting', 'acc_old', 'sender_verification', 'a@old.test', 'y@example.org', 'Verify',
            'sealed-2', '<waiting@old.test>', 'queued', 1, 5000, NULL, '451 busy', 200, 400, NULL),
           ('msg_failed', NULL, 'password_reset', 'noreply@old.test', 'z@example.org', 'Reset',
            'sealed-3', '<failed@old.test>', 'failed', 1, NULL, NULL, '550 no such user', 300, 500, NULL);
         INSERT INTO delivery_attempts (message_id, attempt, at, transport, outcome, detail) VALUES
           ('msg_sent', 1, 150, 'smtp://relay:25', 'temporary', '451 busy'),
           ('msg_sent', 2, 300, 'smtp://relay:25', 'sent', '250 ok'),
           ('msg_waiting', 1, 400, 'smtp://relay:25', 'temporary', '451 busy'),
           ('msg_failed', 1, 500, 'smtp://relay:25', 'permanent', '550 no such user');
         INSERT INTO domains (id, account_id, name, status, created_at, status_changed_at) VALUES
           ('dom_old', 'acc_old', 'old.test', 'active', 10, 10);
         INSERT INTO dkim_keys (token, domain_id, position, public_key, private_key, created_at) VALUES
           ('t0', 'dom_old', 0, 'p0', 's0', 10), ('t1', 'dom_old', 1, 'p1', 's1', 10),
           ('t2', 'dom_old', 2, 'p2', 's2', 10);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let emails = match engine {
        Engine::Sqlite => include_str!("../../migrations/sqlite/0010_emails.sql"),
        Engine::Postgres => include_str!("../../migrations/postgres/0010_emails.sql"),
    };
    sqlx::raw_sql(emails).execute(&db.pool).await.unwrap();
    for sql in migrations_after_emails(engine) {
        sqlx::raw_sql(sql).execute(&db.pool).await.unwrap();
    }

    // The first of an old domain's three RSA keys signed, and signs on since it was made;
    // the other two stand by.
    let keys: Vec<(i64, String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT position, algorithm, signing_since, retire_at FROM dkim_keys ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        [
            (0, "rsa".into(), Some(10), None),
            (1, "rsa".into(), None, None),
            (2, "rsa".into(), None, None)
        ]
    );

    // Every email, newest last by position, with its status, body and attempts.
    type Row = (String, String, Option<String>, i64, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, status, body, attempts, next_attempt_at FROM emails ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "msg_sent".into(),
                "sent".into(),
                Some("sealed-1".into()),
                2,
                None
            ),
            (
                "msg_waiting".into(),
                "queued".into(),
                Some("sealed-2".into()),
                1,
                Some(5000)
            ),
            (
                "msg_failed".into(),
                "failed".into(),
                Some("sealed-3".into()),
                1,
                None
            ),
        ]
    );
    for (id, to, status, attempts) in [
        ("msg_sent", "x@example.org", "sent", 2),
        ("msg_waiting", "y@example.org", "deferred", 1),
        ("msg_failed", "z@example.org", "failed", 1),
    ] {
        let found = recipients(&db, id).await;
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0.as_str(), found[0].1.as_str()), (to, status));
        assert_eq!(found[0].2, attempts);
    }
    // The attempts became events, after the `queued` one; mailroom's own mail keeps them as
    // history only, out of the account's event log.
    assert_eq!(
        events(&db, "msg_sent", "x@example.org").await,
        ["email.queued", "email.deferred", "email.sent"]
    );
    assert_eq!(
        events(&db, "msg_waiting", "y@example.org").await,
        ["email.queued", "email.deferred"]
    );
    assert_eq!(
        events(&db, "msg_failed", "z@example.org").await,
        ["email.queued", "email.failed"]
    );
    let published: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE data IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(published, 0);
    let old: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE id LIKE 'evt\\_%' ESCAPE '\\' AND LENGTH(id) = 28",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(old, 7, "an evt_ id for each");
}

/// An API email of `account_id` From `from` to `to`.
fn email_from(account_id: &str, from: &str, to: &str, scheduled_at: Option<Timestamp>) -> Outgoing {
    Outgoing {
        from: address(from),
        reply_to: Vec::new(),
        ..email(Some(account_id), &[(to, RecipientType::To)], scheduled_at)
    }
}

/// Activates `domain` in `account_id` as the operator would.
async fn activate(app: &TestApp, domain: &str, account_id: &str, status: DomainStatus) {
    set_status_by_operator(
        &app.db,
        &app.settings,
        &DomainName::parse(domain).unwrap(),
        Some(account_id),
        status,
    )
    .await
    .unwrap();
}

async fn a_from_no_longer_the_accounts_fails_and_is_never_sent(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| s.mail_retry_seconds = 1).await;
    let account = app.admin.account_id.clone();
    app.active_domain("victim.test").await;
    app.active_domain("paused.test").await;
    app.active_domain("fine.test").await;
    let later = Timestamp(app.db.now().0 + 3_600_000);
    let taken = email_from(&account, "ceo@victim.test", "a@example.org", Some(later));
    let taken = queue_in(&app, taken).await;
    let paused = email_from(&account, "news@paused.test", "b@example.org", Some(later));
    let paused = queue_in(&app, paused).await;
    let fine = email_from(&account, "news@fine.test", "c@example.org", Some(later));
    let fine = queue_in(&app, fine).await;

    // The account deletes victim.test and another account takes and activates it; the
    // operator suspends paused.test.
    let deleted = app
        .api(Method::DELETE, "/v2/domains/victim.test")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let other = app.other_account().await;
    let added = app
        .with_key(&other.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "victim.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    activate(&app, "victim.test", &other.account_id, DomainStatus::Active).await;
    activate(&app, "paused.test", &account, DomainStatus::Suspended).await;

    app.advance_clock(Duration::from_secs(3_601)).await;
    wait_for_email(&app.db, &fine.id, "sent", Duration::from_secs(20)).await;
    wait_for_email(&app.db, &taken.id, "failed", Duration::from_secs(20)).await;
    wait_for_email(&app.db, &paused.id, "failed", Duration::from_secs(20)).await;
    for (id, to, from) in [
        (&taken.id, "a@example.org", "ceo@victim.test"),
        (&paused.id, "b@example.org", "news@paused.test"),
    ] {
        let found = recipients_of(&app, id).await;
        assert_eq!(found[0].1, "failed", "{found:?}");
        let reason = found[0].3.as_deref().unwrap();
        assert!(
            reason.contains(from) && reason.contains("no longer"),
            "{reason}"
        );
        assert_eq!(
            events(&app.db, id, to).await,
            ["email.queued", "email.failed"]
        );
    }
    let received = relay.received();
    assert_eq!(received.len(), 1, "only the allowed one goes");
    assert_eq!(received[0].to, ["c@example.org"]);
}

async fn one_accounts_backlog_does_not_hold_up_the_others(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.smtp_timeout = 30;
        s.relay_concurrency = 4;
    })
    .await;
    let master_key = MasterKey::load(&app.settings).unwrap();
    app.active_domain("bulk.test").await;
    let other = app.other_account().await;
    let added = app
        .with_key(&other.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "quiet.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    activate(&app, "quiet.test", &other.account_id, DomainStatus::Active).await;

    // One account's 200 emails, each taking the system relay 8 s to accept.
    relay.slow_for("news@bulk.test", Duration::from_secs(8));
    let mut tx = app.db.begin().await.unwrap();
    for n in 0..200 {
        let to = format!("reader{n}@example.org");
        let bulk = email_from(&app.admin.account_id, "news@bulk.test", &to, None);
        enqueue(&mut tx, &master_key, bulk, app.db.now())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // Its first emails are on their way before the others' come.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.data_started() == 0 {
        assert!(Instant::now() < deadline, "the backlog never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let quiet = email_from(
        &other.account_id,
        "hello@quiet.test",
        "one@example.org",
        None,
    );
    let quiet = queue_in(&app, quiet).await;
    let invitation = Outgoing {
        kind: "invitation",
        from: address(&app.settings.mail_from),
        reply_to: Vec::new(),
        ..email(None, &[("invited@example.org", RecipientType::To)], None)
    };
    let invitation = queue_in(&app, invitation).await;
    wait_for_email(&app.db, &quiet.id, "sent", Duration::from_secs(5)).await;
    wait_for_email(&app.db, &invitation.id, "sent", Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The backlog had at most its share of the relay meanwhile.
    let bulk_sending = relay.data_started() - relay.received().len();
    assert!(bulk_sending <= 4, "{bulk_sending} of the account's at once");
}

async fn the_file_transport_shows_tenants_no_server_path(engine: Engine) {
    let app = crate::helpers::spawn_app(engine).await;
    app.active_domain("sender.test").await;
    let to = [("someone@example.org", RecipientType::To)];
    let queued = queue_in(&app, email(Some(&app.admin.account_id), &to, None)).await;
    wait_for_email(&app.db, &queued.id, "sent", Duration::from_secs(20)).await;
    let reply = recipients_of(&app, &queued.id).await[0].3.clone().unwrap();
    assert!(
        reply.starts_with("written to ") && reply.ends_with(".eml"),
        "{reply}"
    );
    assert!(!reply.contains('/'), "{reply}");
    let shown = app.get_json(&format!("/v2/emails/{}", queued.id)).await;
    let data_dir = app.settings.data_dir.display().to_string();
    assert!(!shown.to_string().contains(&data_dir), "{shown}");
}

async fn a_lease_outlives_the_conversation_after_a_wait_in_line(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.smtp_timeout = 10;
        s.relay_concurrency = 1;
    })
    .await;
    let account = app.admin.account_id.clone();
    app.active_domain("sender.test").await;
    // Each conversation takes 8 s of the 10 s allowed; the second email waits for the
    // first in its account's line, with its lease running.
    relay.slow_for("news@sender.test", Duration::from_secs(8));
    let first = email_from(&account, "news@sender.test", "one@example.org", None);
    let second = email_from(&account, "news@sender.test", "two@example.org", None);
    let mut tx = app.db.begin().await.unwrap();
    let master_key = MasterKey::load(&app.settings).unwrap();
    let first = enqueue(&mut tx, &master_key, first, app.db.now())
        .await
        .unwrap();
    let second = enqueue(&mut tx, &master_key, second, app.db.now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.data_started() < 2 {
        assert!(Instant::now() < deadline, "the second email never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time goes on while the second conversation runs: its lease, taken when it was
    // claimed, would end before the conversation does.
    app.advance_clock(Duration::from_secs(9)).await;
    wait_for_email(&app.db, &first.id, "sent", Duration::from_secs(20)).await;
    wait_for_email(&app.db, &second.id, "sent", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut delivered: Vec<String> = relay.received().iter().flat_map(|r| r.to.clone()).collect();
    delivered.sort();
    assert_eq!(
        delivered,
        ["one@example.org", "two@example.org"],
        "each once"
    );
    assert_eq!(relay.data_started(), 2, "no second conversation");
}
