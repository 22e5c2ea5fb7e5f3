//! The reads of the `emails`, `email_recipients`, `email_tags` and `events` tables the
//! API shows (never a body), and the `idempotency_keys` and `send_counts` tables.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::mail::outbox::{API_KIND, RecipientType};
use crate::store::{Db, Timestamp, placeholders};

/// An email as the API shows it: no body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Email {
    pub id: String,
    pub from: String,
    /// The display name of `from`, when one was given.
    pub from_name: Option<String>,
    pub reply_to: Vec<String>,
    pub subject: String,
    /// `scheduled`, `queued`, `sending`, `sent` (every recipient final and one sent),
    /// `failed` (none sent), `suppressed` or `cancelled`.
    pub status: String,
    pub tags: BTreeMap<String, String>,
    /// The entity the email was sent in; `null` for the account's own.
    pub entity_id: Option<String>,
    pub message_id: String,
    pub recipients: Vec<Recipient>,
    pub scheduled_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the first recipient took it.
    pub sent_at: Option<Timestamp>,
    /// What happened to it, oldest first (only on `GET /v2/emails/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
    /// Where the list goes on from (`after`); not for the API.
    #[serde(skip)]
    pub position: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recipient {
    pub email: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: RecipientType,
    /// `queued`, `scheduled`, `sent`, `deferred`, `bounced`, `failed`, `suppressed` or
    /// `cancelled`.
    pub status: String,
    pub attempts: i64,
    /// The receiving server's last reply, or why the last attempt failed.
    pub last_reply: Option<String>,
    pub sent_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    pub id: String,
    /// `queued`, `scheduled`, `sent`, `deferred`, `bounced`, `failed`, `suppressed` or
    /// `cancelled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The recipient it is about; `null` for the whole email.
    pub recipient: Option<String>,
    /// The server's reply, or the reason.
    pub detail: Option<String>,
    pub at: Timestamp,
}

const COLUMNS: &str = "e.position, e.id, e.from_address, e.from_name, e.reply_to, e.subject, \
                       e.status, e.tags, e.entity_id, e.message_id, e.scheduled_at, e.created_at, \
                       e.updated_at, e.sent_at";

impl sqlx::FromRow<'_, AnyRow> for Email {
    fn from_row(row: &AnyRow) -> sqlx::Result<Email> {
        let tags: String = row.try_get("tags")?;
        let reply_to: Option<String> = row.try_get("reply_to")?;
        let at = |name: &str| -> sqlx::Result<Option<Timestamp>> {
            Ok(row.try_get::<Option<i64>, _>(name)?.map(Timestamp))
        };
        Ok(Email {
            position: row.try_get("position")?,
            id: row.try_get("id")?,
            from: row.try_get("from_address")?,
            from_name: row.try_get("from_name")?,
            reply_to: reply_to
                .map(|r| {
                    r.split(',')
                        .map(|a| a.trim().to_string())
                        .filter(|a| !a.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            subject: row.try_get("subject")?,
            status: row.try_get("status")?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            entity_id: row.try_get("entity_id")?,
            message_id: row.try_get("message_id")?,
            recipients: Vec::new(),
            scheduled_at: at("scheduled_at")?,
            created_at: Timestamp(row.try_get("created_at")?),
            updated_at: Timestamp(row.try_get("updated_at")?),
            sent_at: at("sent_at")?,
            events: None,
        })
    }
}

fn recipient_type(value: &str) -> RecipientType {
    match value {
        "cc" => RecipientType::Cc,
        "bcc" => RecipientType::Bcc,
        _ => RecipientType::To,
    }
}

/// Whose emails a caller sees: the account's (sent through the API), or only one
/// entity's when the credential is limited to it.
pub struct Visible<'a> {
    pub account_id: &'a str,
    pub entity_id: Option<&'a str>,
}

impl Visible<'_> {
    /// The condition on `e` and its values, parameters numbered from `$1`.
    fn condition(&self) -> (String, Vec<String>) {
        let mut values = vec![self.account_id.to_string(), API_KIND.to_string()];
        let mut sql = "e.account_id = $1 AND e.kind = $2".to_string();
        if let Some(entity) = self.entity_id {
            values.push(entity.to_string());
            sql.push_str(" AND e.entity_id = $3");
        }
        (sql, values)
    }
}

/// One email with its recipients and events; `None` when the caller may not see it.
pub async fn get(db: &Db, visible: &Visible<'_>, id: &str) -> sqlx::Result<Option<Email>> {
    let (condition, values) = visible.condition();
    let sql = format!(
        "SELECT {COLUMNS} FROM emails e WHERE {condition} AND e.id = ${}",
        values.len() + 1
    );
    let mut query = sqlx::query_as::<_, Email>(&sql);
    for value in &values {
        query = query.bind(value);
    }
    let Some(mut email) = query.bind(id).fetch_optional(&db.pool).await? else {
        return Ok(None);
    };
    attach_recipients(db, std::slice::from_mut(&mut email)).await?;
    let events = sqlx::query(
        "SELECT id, type, recipient, detail, at FROM events WHERE email_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|row| {
        Ok(Event {
            id: row.try_get("id")?,
            kind: {
                let kind: String = row.try_get("type")?;
                kind.strip_prefix("email.").unwrap_or(&kind).to_string()
            },
            recipient: row.try_get("recipient")?,
            detail: row.try_get("detail")?,
            at: Timestamp(row.try_get("at")?),
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    email.events = Some(events);
    Ok(Some(email))
}

/// Fills in the recipients of `emails`, in the order they were given.
async fn attach_recipients(db: &Db, emails: &mut [Email]) -> sqlx::Result<()> {
    if emails.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT email_id, address, name, type, status, attempts, last_reply, sent_at \
         FROM email_recipients WHERE email_id IN ({}) ORDER BY email_id, position",
        placeholders(1, emails.len())
    );
    let mut query = sqlx::query(&sql);
    for email in emails.iter() {
        query = query.bind(&email.id);
    }
    for row in query.fetch_all(&db.pool).await? {
        let email_id: String = row.try_get("email_id")?;
        let kind: String = row.try_get("type")?;
        let recipient = Recipient {
            email: row.try_get("address")?,
            name: row.try_get("name")?,
            kind: recipient_type(&kind),
            status: row.try_get("status")?,
            attempts: row.try_get("attempts")?,
            last_reply: row.try_get("last_reply")?,
            sent_at: row.try_get::<Option<i64>, _>("sent_at")?.map(Timestamp),
        };
        if let Some(email) = emails.iter_mut().find(|e| e.id == email_id) {
            email.recipients.push(recipient);
        }
    }
    Ok(())
}

/// What a list is narrowed to.
#[derive(Default)]
pub struct Filter {
    /// A recipient's status.
    pub status: Option<String>,
    pub tag: Option<(String, String)>,
    /// A recipient's address, as `EmailAddress` shows it.
    pub to: Option<String>,
    pub from: Option<String>,
    /// Only emails older than this position.
    pub before: Option<i64>,
}

/// A page of emails, newest first.
pub async fn page(
    db: &Db,
    visible: &Visible<'_>,
    filter: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<Email>> {
    let (mut condition, mut values) = visible.condition();
    let mut add = |sql: &str, bound: Vec<String>, values: &mut Vec<String>| {
        let mut sql = sql.to_string();
        for (i, value) in bound.into_iter().enumerate() {
            values.push(value);
            sql = sql.replace(&format!("${{{i}}}"), &format!("${}", values.len()));
        }
        condition.push_str(" AND ");
        condition.push_str(&sql);
    };
    if let Some(status) = &filter.status {
        add(
            "EXISTS (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND r.status = ${0})",
            vec![status.clone()],
            &mut values,
        );
    }
    if let Some((name, value)) = &filter.tag {
        add(
            "EXISTS (SELECT 1 FROM email_tags t WHERE t.email_id = e.id AND t.account_id = e.account_id \
             AND t.name = ${0} AND t.value = ${1})",
            vec![name.clone(), value.clone()],
            &mut values,
        );
    }
    if let Some(to) = &filter.to {
        add(
            "EXISTS (SELECT 1 FROM email_recipients r WHERE r.email_id = e.id AND LOWER(r.address) = LOWER(${0}))",
            vec![to.clone()],
            &mut values,
        );
    }
    if let Some(from) = &filter.from {
        add(
            "LOWER(e.from_address) = LOWER(${0})",
            vec![from.clone()],
            &mut values,
        );
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM emails e WHERE {condition}{} ORDER BY e.position DESC LIMIT ${}",
        match filter.before {
            Some(_) => format!(" AND e.position < ${}", values.len() + 1),
            None => String::new(),
        },
        values.len() + 1 + usize::from(filter.before.is_some())
    );
    let mut query = sqlx::query_as::<_, Email>(&sql);
    for value in &values {
        query = query.bind(value);
    }
    if let Some(before) = filter.before {
        query = query.bind(before);
    }
    let mut emails = query.bind(limit).fetch_all(&db.pool).await?;
    attach_recipients(db, &mut emails).await?;
    Ok(emails)
}

/// A stored answer to an `Idempotency-Key`.
pub struct StoredAnswer {
    pub request_hash: String,
    pub status: u16,
    pub response: String,
}

/// The unexpired answer stored for the account's `key`.
pub async fn find_answer(
    db: &Db,
    account_id: &str,
    key: &str,
    now: Timestamp,
) -> sqlx::Result<Option<StoredAnswer>> {
    let row = sqlx::query(
        "SELECT request_hash, status, response FROM idempotency_keys \
         WHERE account_id = $1 AND idem_key = $2 AND expires_at > $3",
    )
    .bind(account_id)
    .bind(key)
    .bind(now.0)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| {
        Ok(StoredAnswer {
            request_hash: row.try_get("request_hash")?,
            status: row.try_get::<i64, _>("status")? as u16,
            response: row.try_get("response")?,
        })
    })
    .transpose()
}

/// Stores the answer of the account's `key` inside the transaction that queues the email:
/// a concurrent twin fails on the primary key once this one commits. An expired answer
/// of the same key is replaced.
pub async fn store_answer(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    key: &str,
    answer: &StoredAnswer,
    now: Timestamp,
    expires_at: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE account_id = $1 AND idem_key = $2 AND expires_at <= $3",
    )
    .bind(account_id)
    .bind(key)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (account_id, idem_key, request_hash, status, response, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(account_id)
    .bind(key)
    .bind(&answer.request_hash)
    .bind(i64::from(answer.status))
    .bind(&answer.response)
    .bind(now.0)
    .bind(expires_at.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes expired answers and past minutes' send counts.
pub async fn prune(db: &Db, now: Timestamp, minute: i64) -> sqlx::Result<()> {
    db.write_alone(sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1").bind(now.0))
        .await?;
    db.write_alone(sqlx::query("DELETE FROM send_counts WHERE minute < $1").bind(minute - 1))
        .await?;
    Ok(())
}

/// Counts `emails` more sends of the account in `minute`; answers the minute's total,
/// these included. One statement, so that concurrent requests each see the others.
pub async fn count_sends(db: &Db, account_id: &str, minute: i64, emails: i64) -> sqlx::Result<i64> {
    let mut write = db.lone_write().await?;
    let sent = sqlx::query_scalar(
        "INSERT INTO send_counts (account_id, minute, sent) VALUES ($1, $2, $3) \
         ON CONFLICT (account_id, minute) DO UPDATE SET sent = send_counts.sent + excluded.sent \
         RETURNING sent",
    )
    .bind(account_id)
    .bind(minute)
    .bind(emails)
    .fetch_one(&mut *write)
    .await?;
    write.done().await?;
    Ok(sent)
}

/// Takes back sends that were refused.
pub async fn uncount_sends(
    db: &Db,
    account_id: &str,
    minute: i64,
    emails: i64,
) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query(
            "UPDATE send_counts SET sent = sent - $3 WHERE account_id = $1 AND minute = $2",
        )
        .bind(account_id)
        .bind(minute)
        .bind(emails),
    )
    .await?;
    Ok(())
}

/// Bytes of sealed bodies the account's emails hold now (kept by the database as bodies
/// are written and deleted).
pub async fn held_bytes(conn: &mut sqlx::AnyConnection, account_id: &str) -> sqlx::Result<i64> {
    let held: Option<i64> =
        sqlx::query_scalar("SELECT bytes FROM held_bodies WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(conn)
            .await?;
    Ok(held.unwrap_or(0))
}
