//! Filling the database the way mailroom would have, only faster: the verifier's pending
//! domains and their zone, a million mailboxes, a full outbox, a delivered history. The tool reads the same
//! `MAILROOM_*` settings as the server beside it, so it opens the same database.

use std::fmt::Write as _;
use std::time::Duration;

use mailroom::config::Settings;
use mailroom::mail::compose::{Address, Email, compose_email};
use mailroom::mail::outbox::{self, Outgoing};
use mailroom::mail::templates::{Kind, render};
use mailroom::store::crypto::MasterKey;
use mailroom::store::{Db, Engine, Timestamp};
use mailroom::types::EmailAddress;
use rand::RngCore;
use serde_json::json;
use sqlx::Row;

/// How long a sweep or a delivery may take before the run stops with an error.
const WAIT_AT_MOST: Duration = Duration::from_secs(600);

fn settings() -> anyhow::Result<Settings> {
    Ok(Settings::load(None, std::env::vars())?.settings)
}

pub async fn open() -> anyhow::Result<Db> {
    Db::connect(&settings()?.database_url()).await
}

fn token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `count` pending domains named `d<n>.<suffix>`, three DKIM tokens each, not yet due;
/// and a zone file for `suffix` with every record they are asked to publish.
pub async fn pending_domains(
    account: &str,
    count: i64,
    suffix: &str,
    zone_file: &std::path::Path,
) -> anyhow::Result<()> {
    let settings = settings()?;
    let db = open().await?;
    let now = Timestamp::system_now().0;
    let mut zone = format!(
        "$TTL 300\n{suffix}. IN SOA ns.{suffix}. hostmaster.{suffix}. 1 3600 600 86400 300\n\
         {suffix}. IN NS ns.{suffix}.\nns.{suffix}. IN A 127.0.0.1\n"
    );
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut tx = db.begin().await?;
        for number in chunk {
            let id = format!("dom_pending{number}");
            let name = format!("d{number}.{suffix}");
            sqlx::query(
                "INSERT INTO domains (id, account_id, name, status, created_at, status_changed_at) \
                 VALUES ($1, $2, $3, 'pending', $4, $4)",
            )
            .bind(&id)
            .bind(account)
            .bind(&name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let tokens: Vec<String> = (0..3).map(|_| token()).collect();
            for (position, token) in tokens.iter().enumerate() {
                // The verifier reads only the token; signing is not measured on these. As a
                // new domain's, the second and third are Ed25519: no key is made for them.
                sqlx::query(
                    "INSERT INTO dkim_keys (token, domain_id, position, algorithm, public_key, private_key, created_at) \
                     VALUES ($1, $2, $3, $4, '', '', $5)",
                )
                .bind(token)
                .bind(&id)
                .bind(position as i64)
                .bind(if position == 0 { "rsa" } else { "ed25519" })
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for record in mailroom::domains::records::wanted(&name, &tokens, &settings) {
                let data = match record.record_type {
                    "TXT" => format!("\"{}\"", record.value),
                    _ => format!("{}.", record.value),
                };
                writeln!(zone, "{}. IN {} {data}", record.name, record.record_type)?;
            }
        }
        tx.commit().await?;
    }
    std::fs::write(zone_file, zone)?;
    println!("{}", json!({ "domains": count }));
    Ok(())
}

fn like(suffix: &str) -> String {
    format!("%.{suffix}")
}

/// Makes the suffix's domains pending and due now, as if just added.
pub async fn make_due(suffix: &str) -> anyhow::Result<()> {
    let db = open().await?;
    let now = Timestamp::system_now().0;
    sqlx::query(
        "UPDATE domains SET status = 'pending', verified_by = NULL, verified_at = NULL, \
         status_changed_at = $1, next_check_at = $1, failed_checks = 0, lease_until = NULL, \
         last_checked_at = NULL WHERE name LIKE $2",
    )
    .bind(now)
    .bind(like(suffix))
    .execute(&db.pool)
    .await?;
    println!("{}", json!({ "due_at": now }));
    Ok(())
}

pub async fn sweep_done(suffix: &str, since: i64) -> anyhow::Result<()> {
    let db = open().await?;
    let deadline = std::time::Instant::now() + WAIT_AT_MOST;
    loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the sweep did not end within {WAIT_AT_MOST:?}"
        );
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(last_checked_at) AS checked, \
             MIN(last_checked_at) AS first, MAX(last_checked_at) AS last, \
             SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END) AS active \
             FROM domains WHERE name LIKE $1 AND created_at <= $2",
        )
        .bind(like(suffix))
        .bind(since)
        .fetch_one(&db.pool)
        .await?;
        let total: i64 = row.try_get("total")?;
        let checked: i64 = row.try_get("checked")?;
        if checked < total {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let first: i64 = row.try_get("first")?;
        let last: i64 = row.try_get("last")?;
        let active: i64 = row.try_get("active")?;
        let seconds = (last - first).max(1) as f64 / 1000.0;
        println!(
            "{}",
            json!({ "domains": total, "active": active, "seconds": seconds,
                    "rate": (total - 1) as f64 / seconds })
        );
        return Ok(());
    }
}

/// `domains` active domains `s<n>.scale.test` with `mailboxes` mailboxes spread over them
/// (mailbox n on domain n mod `domains`), all with one password hash.
pub async fn mailboxes(account: &str, domains: i64, mailboxes: i64) -> anyhow::Result<()> {
    let db = open().await?;
    let now = Timestamp::system_now().0;
    let numbers = match db.engine {
        Engine::Sqlite => {
            "(WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) SELECT i FROM n)"
        }
        Engine::Postgres => "(SELECT generate_series($1::BIGINT, $2::BIGINT) AS i)",
    };
    sqlx::query(&format!(
        "INSERT INTO domains (id, account_id, name, status, verified_by, created_at, status_changed_at, verified_at) \
         SELECT 'dom_scale' || i, $3, 's' || i || '.scale.test', 'active', 'operator', $4, $4, $4 FROM {numbers} n"
    ))
    .bind(0i64)
    .bind(domains - 1)
    .bind(account)
    .bind(now)
    .execute(&db.pool)
    .await?;
    let hash = mailroom::store::passwords::hash(
        "a scale password",
        mailroom::store::passwords::Priority::Authenticated,
    )
    .await?;
    const CHUNK: i64 = 100_000;
    for start in (0..mailboxes).step_by(CHUNK as usize) {
        let end = (start + CHUNK).min(mailboxes) - 1;
        sqlx::query(&format!(
            "INSERT INTO mailboxes (account_id, domain_id, local_part, address, display_name, password_hash, \
             status, is_default, created_at, updated_at) \
             SELECT $3, 'dom_scale' || (i % $4), 'user' || i, 'user' || i || '@s' || (i % $4) || '.scale.test', \
             'User ' || i, $5, 'active', 0, $6, $6 FROM {numbers} n"
        ))
        .bind(start)
        .bind(end)
        .bind(account)
        .bind(domains)
        .bind(&hash)
        .bind(now)
        .execute(&db.pool)
        .await?;
        eprintln!("{} mailboxes", end + 1);
    }
    if db.engine == Engine::Postgres {
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }
    println!("{}", json!({ "domains": domains, "mailboxes": mailboxes }));
    Ok(())
}

/// `count` emails delivered in the past, as the outbox leaves them: sent, body deleted,
/// their recipient sent, their `email.queued` and `email.sent` events. Half are the
/// account's API emails, half mailroom's own mail (`test`, no account). Written a hundred
/// thousand at a time by INSERT … SELECT, which takes seconds where the worker took hours.
pub async fn history(account: &str, count: i64) -> anyhow::Result<()> {
    let db = open().await?;
    // A month ago, a millisecond apart: older than anything a run queues.
    let start = Timestamp::system_now().0 - 30 * 86_400_000;
    let numbers = match db.engine {
        Engine::Sqlite => {
            "(WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) SELECT i FROM n)"
        }
        Engine::Postgres => "(SELECT generate_series($1::BIGINT, $2::BIGINT) AS i)",
    };
    let api = "i % 2 = 0";
    let statements = [
        format!(
            "INSERT INTO emails (id, account_id, kind, from_address, subject, body_deleted_at, message_id, \
             tags, status, attempts, created_at, updated_at, sent_at) \
             SELECT 'em_history' || i, CASE WHEN {api} THEN $3 END, CASE WHEN {api} THEN 'email' ELSE 'test' END, \
             'noreply@bench.test', 'Delivered long ago', $4 + i, '<history' || i || '@bench.test>', '{{}}', \
             'sent', 1, $4 + i, $4 + i, $4 + i FROM {numbers} n"
        ),
        format!(
            "INSERT INTO email_recipients (email_id, position, address, type, status, attempts, last_reply, \
             updated_at, sent_at) \
             SELECT 'em_history' || i, 0, 'someone@example.net', 'to', 'sent', 1, '250 2.0.0 Ok: queued', \
             $4 + i, $4 + i FROM {numbers} n"
        ),
        format!(
            "INSERT INTO events (id, account_id, email_id, recipient, type, detail, data, at) \
             SELECT 'evt_history' || i || kind.suffix, CASE WHEN {api} THEN $3 END, 'em_history' || i, \
             'someone@example.net', kind.type, kind.detail, \
             CASE WHEN {api} THEN '{{\"id\":\"em_history' || i || '\"}}' END, $4 + i \
             FROM {numbers} n CROSS JOIN (SELECT 'q' AS suffix, 'email.queued' AS type, NULL AS detail \
             UNION ALL SELECT 's', 'email.sent', 'smtp: 250 2.0.0 Ok: queued') kind"
        ),
    ];
    const CHUNK: i64 = 100_000;
    for first in (0..count).step_by(CHUNK as usize) {
        let last = (first + CHUNK).min(count) - 1;
        let mut tx = db.begin().await?;
        for statement in &statements {
            sqlx::query(statement)
                .bind(first)
                .bind(last)
                .bind(account)
                .bind(start)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        eprintln!("{} delivered emails", last + 1);
    }
    if db.engine == Engine::Postgres {
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }
    println!("{}", json!({ "delivered": count }));
    Ok(())
}

/// Queues `count` test emails from `from` (an active domain's address: they are signed),
/// all in one transaction: the server sees them at once and never waits for this process's
/// writes while it delivers (on SQLite two processes' writers take turns only through the
/// busy handler, which sleeps).
pub async fn enqueue(from: &str, to: &str, count: usize) -> anyhow::Result<()> {
    let settings = settings()?;
    let db = open().await?;
    let master_key = MasterKey::load(&settings)?;
    let from = EmailAddress::parse(from).map_err(|e| anyhow::anyhow!("{e}"))?;
    let to = EmailAddress::parse(to).map_err(|e| anyhow::anyhow!("{e}"))?;
    let queued_at = db.now().0;
    let email = || {
        render(
            Kind::Test,
            &[
                ("sent_at", "2026-11-21T12:00:00Z"),
                ("from", &from.to_string()),
                ("to", &to.to_string()),
            ],
            &[],
        )
    };
    let mut tx = db.begin().await?;
    for _ in 0..count {
        let outgoing = Outgoing::rendered(None, &from, &to, email()?);
        outbox::enqueue(&mut tx, &master_key, outgoing, db.now()).await?;
    }
    tx.commit().await?;
    let sample = email()?;
    let (from_text, to_text) = (from.to_string(), to.to_string());
    let to_list = [Address {
        name: None,
        email: &to_text,
    }];
    let parts = Email {
        from: Address {
            name: None,
            email: &from_text,
        },
        to: &to_list,
        cc: &[],
        reply_to: &[],
        subject: &sample.subject,
        text: Some(&sample.text),
        html: Some(&sample.html),
        attachments: &[],
        headers: &[],
        message_id: "<sample@bench.test>",
        date: queued_at,
    };
    let keys: Vec<_> =
        mailroom::domains::dkim::signing_keys(&db, &master_key, None, from.domain(), true)
            .await?
            .into_iter()
            .map(|key| mailroom::mail::port::SigningKey {
                selector: key.selector,
                algorithm: key.algorithm,
                private_der: key.private_der,
            })
            .collect();
    let composed = compose_email(&parts, &keys)?;
    let signed = String::from_utf8_lossy(&composed).contains("DKIM-Signature:");
    println!(
        "{}",
        json!({ "queued": count, "queued_at": queued_at, "bytes": composed.len(), "signed": signed })
    );
    Ok(())
}

/// Waits until nothing queued since `since` is left; prints the rate between the first
/// and the last delivery, and the percentiles of the time from accept (`created_at`) to
/// the relay's 250 (the recipient's `sent_at`).
pub async fn delivery_done(since: i64) -> anyhow::Result<()> {
    let db = open().await?;
    let failed_attempts = || {
        sqlx::query_scalar::<_, i64>(
            // By the events' time (an index), not by their emails': this is asked every
            // 200 ms during a run, which must not read the delivered history each time.
            "SELECT COUNT(*) FROM events \
             WHERE at >= $1 AND type IN ('email.deferred', 'email.bounced', 'email.failed')",
        )
        .bind(since)
        .fetch_one(&db.pool)
    };
    let deadline = std::time::Instant::now() + WAIT_AT_MOST;
    loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the outbox was not delivered within {WAIT_AT_MOST:?}"
        );
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM emails WHERE status IN ('scheduled', 'queued', 'sending') \
             AND created_at >= $1",
        )
        .bind(since)
        .fetch_one(&db.pool)
        .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            failed_attempts().await? == 0,
            "a delivery failed; see the server's log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT e.created_at, r.sent_at FROM email_recipients r JOIN emails e ON e.id = r.email_id \
         WHERE e.created_at >= $1 AND r.status = 'sent' ORDER BY r.sent_at",
    )
    .bind(since)
    .fetch_all(&db.pool)
    .await?;
    anyhow::ensure!(!delivered.is_empty(), "nothing was delivered");
    let sent = delivered.len() as i64;
    let first = delivered[0].1;
    let last = delivered[delivered.len() - 1].1;
    let mut latencies: Vec<i64> = delivered
        .iter()
        .map(|(accepted, sent)| sent - accepted)
        .collect();
    latencies.sort_unstable();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let other = failed_attempts().await?;
    let seconds = (last - first).max(1) as f64 / 1000.0;
    println!(
        "{}",
        json!({ "sent": sent, "failed_attempts": other, "seconds": seconds,
                "rate": (sent - 1) as f64 / seconds,
                "p50_ms": percentile(50), "p99_ms": percentile(99) })
    );
    Ok(())
}
