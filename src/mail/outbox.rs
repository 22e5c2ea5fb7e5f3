//! The outbox (the `outbox` and `delivery_attempts` tables): every email is a row written
//! in the transaction of the change that causes it, delivered later by the worker. The
//! delivery log (never the bodies) is read from here.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::templates::Rendered;
use crate::metrics::Queue;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Engine, Timestamp, new_id, placeholders};
use crate::types::EmailAddress;

/// An email to queue.
pub struct Outgoing<'a> {
    /// The account the email is on behalf of; `None` for the operator's own mail.
    pub account_id: Option<&'a str>,
    pub from: &'a EmailAddress,
    pub to: &'a EmailAddress,
    pub email: Rendered,
}

/// The sealed part of a queued email: it can carry one-time tokens.
#[derive(Serialize, Deserialize)]
pub struct Body {
    pub text: String,
    pub html: String,
}

fn seal_context(id: &str) -> String {
    format!("outbox:{id}")
}

/// Queues an email on `conn`, inside the caller's transaction; answers its id. Wake the
/// worker after the commit so that it sends the email at once.
pub async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    master_key: &MasterKey,
    outgoing: Outgoing<'_>,
    now: Timestamp,
) -> anyhow::Result<String> {
    let id = new_id("msg");
    let message_id = format!("<{}@{}>", &id[4..], outgoing.from.domain());
    let body = serde_json::to_vec(&Body {
        text: outgoing.email.text,
        html: outgoing.email.html,
    })?;
    sqlx::query(
        "INSERT INTO outbox (id, account_id, kind, from_address, to_address, subject, body, message_id, \
         status, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9, $9, $9)",
    )
    .bind(&id)
    .bind(outgoing.account_id)
    .bind(outgoing.email.kind.as_str())
    .bind(outgoing.from.to_string())
    .bind(outgoing.to.to_string())
    .bind(&outgoing.email.subject)
    .bind(master_key.seal(&body, &seal_context(&id)))
    .bind(&message_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for its (next) attempt.
    Queued,
    /// An attempt is under way.
    Sending,
    Sent,
    /// Refused for good, or out of attempts.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
        }
    }

    fn parse(value: &str) -> sqlx::Result<MessageStatus> {
        Ok(match value {
            "queued" => MessageStatus::Queued,
            "sending" => MessageStatus::Sending,
            "sent" => MessageStatus::Sent,
            "failed" => MessageStatus::Failed,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown message status {other}").into(),
                ));
            }
        })
    }
}

/// A message in the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageLog {
    pub id: String,
    /// What caused the email, such as `sender_verification` or `invitation`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub status: MessageStatus,
    pub attempts: i64,
    /// The reason of the last failed attempt, in the server's words.
    pub last_error: Option<String>,
    /// The `Message-ID` header, the same on every attempt.
    pub message_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub next_attempt_at: Option<Timestamp>,
    pub sent_at: Option<Timestamp>,
}

const LOG_COLUMNS: &str = "id, kind, from_address, to_address, subject, status, attempts, last_error, \
                           message_id, created_at, updated_at, next_attempt_at, sent_at";

impl sqlx::FromRow<'_, AnyRow> for MessageLog {
    fn from_row(row: &AnyRow) -> sqlx::Result<MessageLog> {
        let status = MessageStatus::parse(&row.try_get::<String, _>("status")?)?;
        let next_attempt_at = match status {
            MessageStatus::Queued => row.try_get::<Option<i64>, _>("next_attempt_at")?,
            _ => None,
        };
        Ok(MessageLog {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            from: row.try_get("from_address")?,
            to: row.try_get("to_address")?,
            subject: row.try_get("subject")?,
            status,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            message_id: row.try_get("message_id")?,
            created_at: Timestamp(row.try_get("created_at")?),
            updated_at: Timestamp(row.try_get("updated_at")?),
            next_attempt_at: next_attempt_at.map(Timestamp),
            sent_at: row.try_get::<Option<i64>, _>("sent_at")?.map(Timestamp),
        })
    }
}

/// A page of the account's delivery log, newest first.
pub async fn list(
    db: &Db,
    account_id: &str,
    status: Option<MessageStatus>,
    (limit, offset): (i64, i64),
) -> sqlx::Result<Vec<MessageLog>> {
    sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM outbox WHERE account_id = $1 AND ($2 IS NULL OR status = $2) \
         ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
    ))
    .bind(account_id)
    .bind(status.map(MessageStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
}

pub async fn get(db: &Db, id: &str, account_id: &str) -> sqlx::Result<Option<MessageLog>> {
    sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM outbox WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await
}

/// A message the worker holds the lease on.
pub struct Claimed {
    pub id: String,
    pub account_id: Option<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    sealed_body: String,
    pub message_id: String,
    /// This attempt's number, from 1.
    pub attempts: i64,
    pub created_at: i64,
    lease_until: i64,
}

impl Claimed {
    pub fn open_body(&self, master_key: &MasterKey) -> anyhow::Result<Body> {
        let bytes = master_key.open(&self.sealed_body, &seal_context(&self.id))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Takes the lease on up to `limit` due messages (queued and due, or sending with an
/// expired lease) for this instance alone, of none of the accounts `skip` (whose mail has
/// enough waiting for their relays already).
pub async fn claim_due(
    db: &Db,
    limit: i64,
    lease_ms: i64,
    skip: &[String],
) -> sqlx::Result<Vec<Claimed>> {
    let lock = match db.engine {
        Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let due = "((status = 'queued' AND next_attempt_at <= $2) OR (status = 'sending' AND lease_until < $2))";
    let others = match skip.len() {
        0 => String::new(),
        n => format!(
            "AND (account_id IS NULL OR account_id NOT IN ({}))",
            placeholders(4, n)
        ),
    };
    let sql = format!(
        "UPDATE outbox SET status = 'sending', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
         WHERE id IN (SELECT id FROM outbox WHERE {due} {others} ORDER BY next_attempt_at LIMIT $3 {lock}) \
         AND {due} \
         RETURNING id, account_id, from_address, to_address, subject, body, message_id, attempts, created_at, lease_until"
    );
    let now = db.now().0;
    let mut query = sqlx::query(&sql).bind(now + lease_ms).bind(now).bind(limit);
    for account in skip {
        query = query.bind(account);
    }
    let rows = query.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("id")?,
                account_id: row.try_get("account_id")?,
                from: row.try_get("from_address")?,
                to: row.try_get("to_address")?,
                subject: row.try_get("subject")?,
                sealed_body: row.try_get("body")?,
                message_id: row.try_get("message_id")?,
                attempts: row.try_get("attempts")?,
                created_at: row.try_get("created_at")?,
                lease_until: row.try_get("lease_until")?,
            })
        })
        .collect()
}

impl Claimed {
    /// The lease's end, in milliseconds since the epoch.
    pub fn lease_until(&self) -> i64 {
        self.lease_until
    }
}

/// Gives a claimed message back untried, as if it had never been claimed: it waited for a
/// delivery slot, not for a retry. It is due again at `due_at`.
pub async fn release(db: &Db, message: &Claimed, due_at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET status = 'queued', attempts = attempts - 1, lease_until = NULL, \
         next_attempt_at = $2, updated_at = $3 WHERE id = $1 AND lease_until = $4",
    )
    .bind(&message.id)
    .bind(due_at)
    .bind(db.now().0)
    .bind(message.lease_until)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Extends the lease on a message that waited for a slot, so that no other instance takes
/// it while it is sent; false when the lease is another's by now.
pub async fn renew(db: &Db, message: &mut Claimed, lease_until: i64) -> sqlx::Result<bool> {
    let renewed = sqlx::query(
        "UPDATE outbox SET lease_until = $2 WHERE id = $1 AND status = 'sending' AND lease_until = $3",
    )
    .bind(&message.id)
    .bind(lease_until)
    .bind(message.lease_until)
    .execute(&db.pool)
    .await?;
    if renewed.rows_affected() == 0 {
        return Ok(false);
    }
    message.lease_until = lease_until;
    Ok(true)
}

/// How an attempt ended, as the delivery log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Temporary,
    Permanent,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Temporary => "temporary",
            Outcome::Permanent => "permanent",
        }
    }
}

/// One attempt to record, and what it leaves the message as.
pub struct Attempt<'a> {
    pub message: &'a Claimed,
    pub transport: &'a str,
    pub outcome: Outcome,
    /// The relay's reply, or why it failed.
    pub detail: &'a str,
    pub status: MessageStatus,
    pub next_attempt_at: Option<i64>,
}

/// Records attempts in one transaction; answers those that were still this instance's
/// (past its lease, another instance owns a message).
pub async fn record<'a>(
    db: &Db,
    attempts: &'a [Attempt<'a>],
    now: Timestamp,
) -> sqlx::Result<Vec<&'a Attempt<'a>>> {
    let mut tx = db.begin().await?;
    let mut recorded = Vec::with_capacity(attempts.len());
    for attempt in attempts {
        let message = attempt.message;
        let sent_at = (attempt.status == MessageStatus::Sent).then_some(now.0);
        let last_error = (attempt.outcome != Outcome::Sent).then_some(attempt.detail);
        let updated = sqlx::query(
            "UPDATE outbox SET status = $2, next_attempt_at = $3, sent_at = $4, last_error = $5, \
             lease_until = NULL, updated_at = $6 WHERE id = $1 AND lease_until = $7",
        )
        .bind(&message.id)
        .bind(attempt.status.as_str())
        .bind(attempt.next_attempt_at)
        .bind(sent_at)
        .bind(last_error)
        .bind(now.0)
        .bind(message.lease_until)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tracing::warn!(message = %message.id, "lease lost before the attempt was recorded");
            continue;
        }
        sqlx::query(
            "INSERT INTO delivery_attempts (message_id, attempt, at, transport, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&message.id)
        .bind(message.attempts)
        .bind(now.0)
        .bind(attempt.transport)
        .bind(attempt.outcome.as_str())
        .bind(attempt.detail)
        .execute(&mut *tx)
        .await?;
        recorded.push(attempt);
    }
    tx.commit().await?;
    Ok(recorded)
}

/// How the outbox stands: messages waiting, how overdue the oldest is, failures lately.
pub struct Depth {
    pub waiting: i64,
    pub oldest_due: Option<i64>,
    pub failed_last_hour: i64,
}

pub async fn depth(db: &Db) -> sqlx::Result<Depth> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS depth, MIN(next_attempt_at) AS oldest FROM outbox WHERE status IN ('queued', 'sending')",
    )
    .fetch_one(&db.pool)
    .await?;
    let failed_last_hour = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE status = 'failed' AND updated_at > $1",
    )
    .bind(db.now().0 - 3_600_000)
    .fetch_one(&db.pool)
    .await?;
    Ok(Depth {
        waiting: row.try_get("depth")?,
        oldest_due: row.try_get("oldest")?,
        failed_last_hour,
    })
}

/// The outbox at a scrape, in one query on the `outbox_due` index: messages waiting,
/// those due now (queued and due, or left sending by an instance whose lease ran out,
/// as `claim_due` takes them), and since when the oldest of those has been due.
pub async fn queue(db: &Db) -> sqlx::Result<Queue> {
    let now = db.now().0;
    let row = sqlx::query(
        "SELECT COUNT(*) AS queued, \
         COALESCE(SUM(CASE WHEN (status = 'queued' AND next_attempt_at <= $1) \
           OR (status = 'sending' AND lease_until < $1) THEN 1 ELSE 0 END), 0) AS due, \
         MIN(CASE WHEN status = 'queued' AND next_attempt_at <= $1 THEN next_attempt_at \
           WHEN status = 'sending' AND lease_until < $1 THEN lease_until END) AS due_since \
         FROM outbox WHERE status IN ('queued', 'sending')",
    )
    .bind(now)
    .fetch_one(&db.pool)
    .await?;
    let due_since: Option<i64> = row.try_get("due_since")?;
    let due_ms = due_since.map_or(0, |since| (now - since).max(0));
    Ok(Queue {
        queued: row.try_get("queued")?,
        due: row.try_get("due")?,
        oldest_due_age: std::time::Duration::from_millis(due_ms as u64),
    })
}
