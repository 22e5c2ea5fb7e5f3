//! The outbox (the `emails`, `email_recipients`, `email_tags`, `events` and `suppressions`
//! tables): every email — a tenant's through the API, or mailroom's own — is a row written
//! in the transaction of the change that causes it, delivered later by the worker, with a
//! status per recipient. The delivery log (never the bodies) is read from here.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::templates::Rendered;
use crate::metrics::Queue;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Engine, Timestamp, json_rows, new_id, placeholders};
use crate::types::EmailAddress;

/// The `kind` of the emails tenants send through the API.
pub const API_KIND: &str = "email";

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(value: &str) -> Option<$name> {
                match value { $($text => Some($name::$variant),)* _ => None }
            }
        }
    };
}

status_enum!(
    /// How a recipient is addressed: `bcc` never appears in the headers.
    RecipientType { To = "to", Cc = "cc", Bcc = "bcc" }
);

status_enum!(
    /// Where one recipient of an email stands.
    RecipientStatus {
        /// Waiting for its first attempt.
        Queued = "queued",
        /// Waiting for the email's `scheduled_at`.
        Scheduled = "scheduled",
        /// The recipient's server took it.
        Sent = "sent",
        /// Refused for now (`4xx`, or no connection): tried again later.
        Deferred = "deferred",
        /// Refused for good (`5xx` to this recipient): added to the suppression list.
        Bounced = "bounced",
        /// Given up: out of attempts, or the message itself refused.
        Failed = "failed",
        /// On the account's suppression list: never sent to.
        Suppressed = "suppressed",
        /// The email was cancelled before it was sent.
        Cancelled = "cancelled",
    }
);

impl RecipientStatus {
    /// Whether nothing more will happen to the recipient.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RecipientStatus::Queued | RecipientStatus::Scheduled | RecipientStatus::Deferred
        )
    }
}

status_enum!(
    /// Where an email stands as a whole.
    EmailStatus {
        /// Waiting for its `scheduled_at`; it may still be cancelled.
        Scheduled = "scheduled",
        /// Waiting for its (next) attempt.
        Queued = "queued",
        /// An attempt is under way.
        Sending = "sending",
        /// Every recipient is final, and at least one took it.
        Sent = "sent",
        /// Every recipient is final, and none took it.
        Failed = "failed",
        /// Every recipient is on the suppression list: nothing is sent.
        Suppressed = "suppressed",
        Cancelled = "cancelled",
    }
);

/// The key of an address on a suppression list: the whole address, lower-cased, so that
/// `Bob@x.test` and `bob@x.test` are one entry.
pub fn suppression_key(address: &EmailAddress) -> String {
    address.to_string().to_lowercase()
}

pub struct Recipient {
    pub address: EmailAddress,
    pub name: Option<String>,
    pub kind: RecipientType,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    /// Set for an inline part, which the HTML shows as `cid:<content_id>`.
    pub content_id: Option<String>,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

/// An email to queue.
pub struct Outgoing {
    /// The account the email is on behalf of; `None` for the operator's own mail.
    pub account_id: Option<String>,
    pub entity_id: Option<String>,
    /// [`API_KIND`] for the API's emails, else the template's kind.
    pub kind: &'static str,
    pub from: EmailAddress,
    pub from_name: Option<String>,
    pub reply_to: Vec<EmailAddress>,
    pub recipients: Vec<Recipient>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Custom headers, checked by the caller.
    pub headers: Vec<(String, String)>,
    pub tags: BTreeMap<String, String>,
    /// Sent at once when `None` or past.
    pub scheduled_at: Option<Timestamp>,
}

impl Outgoing {
    /// One of mailroom's own emails, from a template, to one address.
    pub fn rendered(
        account_id: Option<&str>,
        from: &EmailAddress,
        to: &EmailAddress,
        email: Rendered,
    ) -> Outgoing {
        Outgoing {
            account_id: account_id.map(str::to_string),
            entity_id: None,
            kind: email.kind.as_str(),
            from: from.clone(),
            from_name: None,
            reply_to: Vec::new(),
            recipients: vec![Recipient {
                address: to.clone(),
                name: None,
                kind: RecipientType::To,
            }],
            subject: email.subject,
            text: Some(email.text),
            html: Some(email.html),
            attachments: Vec::new(),
            headers: Vec::new(),
            tags: BTreeMap::new(),
            scheduled_at: None,
        }
    }
}

/// The sealed part of a queued email: it can carry one-time tokens, and it is the
/// tenant's content.
#[derive(Serialize, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

fn seal_context(id: &str) -> String {
    format!("outbox:{id}")
}

/// What `enqueue` answers: the email as queued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Queued {
    pub id: String,
    pub status: EmailStatus,
    pub recipients: Vec<QueuedRecipient>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueuedRecipient {
    pub email: String,
    #[serde(rename = "type")]
    pub kind: RecipientType,
    pub status: RecipientStatus,
}

/// What an email's events tell of it: the fields that never change once it is queued.
pub struct Described<'a> {
    pub id: &'a str,
    pub account_id: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    /// Whether it is an API email, whose events the account sees; mailroom's own mail
    /// keeps its history only.
    pub published: bool,
    pub from: &'a str,
    pub subject: &'a str,
    pub message_id: &'a str,
    /// As stored: a JSON object.
    pub tags: &'a str,
    pub created_at: Timestamp,
}

/// An email's event `email.{status}` about one recipient (`None`: the whole email), but for
/// where it is written.
struct EmailEvent {
    kind: String,
    /// A recipient's events go out in order; recipients of one email need not wait for
    /// each other.
    object_key: String,
    /// The payload the account reads; `None` for mailroom's own mail, whose events are its
    /// history only.
    data: Option<serde_json::Value>,
}

impl EmailEvent {
    fn of(
        email: &Described<'_>,
        recipient: Option<&str>,
        status: &str,
        reply: Option<&str>,
    ) -> EmailEvent {
        let data = email.published.then(|| {
            let tags: serde_json::Value =
                serde_json::from_str(email.tags).unwrap_or_else(|_| serde_json::json!({}));
            serde_json::json!({
                "id": email.id,
                "from": email.from,
                "subject": email.subject,
                "tags": tags,
                "entity_id": email.entity_id,
                "message_id": email.message_id,
                "created_at": email.created_at,
                "recipient": recipient.map(|address| serde_json::json!({
                    "email": address,
                    "status": status,
                    "reply": reply,
                })),
            })
        });
        EmailEvent {
            kind: format!("email.{status}"),
            object_key: match recipient {
                Some(address) => format!("{}/{address}", email.id),
                None => email.id.to_string(),
            },
            data,
        }
    }

    fn new_event<'a>(
        &'a self,
        email: &Described<'a>,
        recipient: Option<&'a str>,
        detail: Option<&'a str>,
    ) -> crate::events::NewEvent<'a> {
        crate::events::NewEvent {
            account_id: email.account_id,
            entity_id: email.entity_id,
            kind: &self.kind,
            object_key: &self.object_key,
            email_id: Some(email.id),
            recipient,
            detail,
            data: self.data.clone(),
        }
    }
}

/// Writes the event `email.{status}` about one recipient (`None`: the whole email), in the
/// caller's transaction. `detail` is for the email's history, `reply` (the server's reply
/// or the reason) for the payload the account reads.
pub async fn record_event(
    conn: &mut sqlx::AnyConnection,
    email: &Described<'_>,
    recipient: Option<&str>,
    status: &str,
    detail: Option<&str>,
    reply: Option<&str>,
    at: Timestamp,
) -> sqlx::Result<()> {
    let event = EmailEvent::of(email, recipient, status, reply);
    crate::events::record(conn, event.new_event(email, recipient, detail), at).await?;
    Ok(())
}

/// The addresses of `addresses` on the suppression list of `account_id`.
async fn suppressed(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    addresses: &[String],
) -> sqlx::Result<Vec<String>> {
    if addresses.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT email FROM suppressions WHERE account_id = $1 AND email IN ({})",
        placeholders(2, addresses.len())
    );
    let mut query = sqlx::query_scalar(&sql).bind(account_id);
    for address in addresses {
        query = query.bind(address);
    }
    query.fetch_all(conn).await
}

/// Queues an email on `conn`, inside the caller's transaction. Recipients on the account's
/// suppression list are `suppressed` at once and never sent to. Wake the worker after the
/// commit so that it sends the email at once.
pub async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    master_key: &MasterKey,
    outgoing: Outgoing,
    now: Timestamp,
) -> anyhow::Result<Queued> {
    anyhow::ensure!(
        !outgoing.recipients.is_empty(),
        "an email needs a recipient"
    );
    anyhow::ensure!(
        outgoing.text.is_some() || outgoing.html.is_some(),
        "an email needs a text or an HTML body"
    );
    let id = new_id("em");
    let message_id = format!("<{}@{}>", &id[3..], outgoing.from.domain());
    let scheduled_at = outgoing.scheduled_at.filter(|at| at.0 > now.0);
    let keys: Vec<String> = outgoing
        .recipients
        .iter()
        .map(|r| suppression_key(&r.address))
        .collect();
    let suppressed = match &outgoing.account_id {
        Some(account_id) => suppressed(conn, account_id, &keys).await?,
        None => Vec::new(),
    };
    let waiting = match scheduled_at {
        Some(_) => RecipientStatus::Scheduled,
        None => RecipientStatus::Queued,
    };
    let statuses: Vec<RecipientStatus> = keys
        .iter()
        .map(|key| match suppressed.contains(key) {
            true => RecipientStatus::Suppressed,
            false => waiting,
        })
        .collect();
    let status = if statuses.iter().all(|s| *s == RecipientStatus::Suppressed) {
        EmailStatus::Suppressed
    } else if scheduled_at.is_some() {
        EmailStatus::Scheduled
    } else {
        EmailStatus::Queued
    };
    let body = serde_json::to_vec(&Body {
        text: outgoing.text,
        html: outgoing.html,
        attachments: outgoing.attachments,
        headers: outgoing.headers,
    })?;
    let sealed =
        (status != EmailStatus::Suppressed).then(|| master_key.seal(&body, &seal_context(&id)));
    let body_deleted_at = sealed.is_none().then_some(now.0);
    let reply_to = (!outgoing.reply_to.is_empty()).then(|| {
        let all: Vec<String> = outgoing.reply_to.iter().map(ToString::to_string).collect();
        all.join(", ")
    });
    let next_attempt_at = match status {
        EmailStatus::Suppressed => None,
        _ => Some(scheduled_at.unwrap_or(now).0),
    };
    let account_id = outgoing.account_id.as_deref();
    let tags = serde_json::to_string(&outgoing.tags)?;
    let from = outgoing.from.to_string();
    let described = Described {
        id: &id,
        account_id,
        entity_id: outgoing.entity_id.as_deref(),
        published: outgoing.kind == API_KIND,
        from: &from,
        subject: &outgoing.subject,
        message_id: &message_id,
        tags: &tags,
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO emails (id, account_id, entity_id, kind, from_address, from_name, reply_to, subject, \
         body, body_deleted_at, message_id, tags, status, scheduled_at, attempts, next_attempt_at, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16, $16)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(outgoing.entity_id.as_deref())
    .bind(outgoing.kind)
    .bind(&from)
    .bind(outgoing.from_name.as_deref())
    .bind(reply_to)
    .bind(&outgoing.subject)
    .bind(sealed)
    .bind(body_deleted_at)
    .bind(&message_id)
    .bind(&tags)
    .bind(status.as_str())
    .bind(scheduled_at.map(|at| at.0))
    .bind(next_attempt_at)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    for (name, value) in &outgoing.tags {
        sqlx::query(
            "INSERT INTO email_tags (email_id, account_id, name, value) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(account_id)
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    let mut recipients = Vec::with_capacity(outgoing.recipients.len());
    for (position, (recipient, status)) in outgoing.recipients.iter().zip(&statuses).enumerate() {
        let address = recipient.address.to_string();
        sqlx::query(
            "INSERT INTO email_recipients (email_id, position, address, name, type, status, attempts, \
             next_attempt_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8)",
        )
        .bind(&id)
        .bind(position as i64)
        .bind(&address)
        .bind(recipient.name.as_deref())
        .bind(recipient.kind.as_str())
        .bind(status.as_str())
        .bind(next_attempt_at.filter(|_| *status != RecipientStatus::Suppressed))
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
        let (event, detail) = match status {
            RecipientStatus::Suppressed => {
                ("suppressed", Some("on the suppression list".to_string()))
            }
            _ => (
                "queued",
                scheduled_at.map(|at| format!("scheduled for {}", at.rfc3339())),
            ),
        };
        let reply = (*status == RecipientStatus::Suppressed).then_some("on the suppression list");
        record_event(
            conn,
            &described,
            Some(&address),
            event,
            detail.as_deref(),
            reply,
            now,
        )
        .await?;
        recipients.push(QueuedRecipient {
            email: address,
            kind: recipient.kind,
            status: *status,
        });
    }
    Ok(Queued {
        id,
        status,
        recipients,
    })
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    /// No such email in the account.
    NotFound,
    /// The email is not (or no longer) waiting for its time: it stands as said.
    NotScheduled(EmailStatus),
}

/// Cancels a scheduled email of `account_id` that no worker has taken yet, in the caller's
/// transaction; its body goes at once.
pub async fn cancel(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
    now: Timestamp,
) -> anyhow::Result<Cancel> {
    let cancelled = sqlx::query(
        "UPDATE emails SET status = 'cancelled', body = NULL, body_deleted_at = $3, next_attempt_at = NULL, \
         updated_at = $3 WHERE id = $1 AND account_id = $2 AND status = 'scheduled'",
    )
    .bind(id)
    .bind(account_id)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    if cancelled.rows_affected() == 0 {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM emails WHERE id = $1 AND account_id = $2")
                .bind(id)
                .bind(account_id)
                .fetch_optional(&mut *conn)
                .await?;
        return Ok(match status.as_deref().and_then(EmailStatus::parse) {
            Some(status) => Cancel::NotScheduled(status),
            None => Cancel::NotFound,
        });
    }
    let addresses: Vec<String> = sqlx::query_scalar(
        "SELECT address FROM email_recipients WHERE email_id = $1 AND status = 'scheduled' ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE email_recipients SET status = 'cancelled', next_attempt_at = NULL, updated_at = $2 \
         WHERE email_id = $1 AND status = 'scheduled'",
    )
    .bind(id)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT entity_id, kind, from_address, subject, message_id, tags, created_at FROM emails WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let (entity_id, kind): (Option<String>, String) =
        (row.try_get("entity_id")?, row.try_get("kind")?);
    let (from, subject): (String, String) = (row.try_get("from_address")?, row.try_get("subject")?);
    let (message_id, tags): (String, String) = (row.try_get("message_id")?, row.try_get("tags")?);
    let described = Described {
        id,
        account_id: Some(account_id),
        entity_id: entity_id.as_deref(),
        published: kind == API_KIND,
        from: &from,
        subject: &subject,
        message_id: &message_id,
        tags: &tags,
        created_at: Timestamp(row.try_get("created_at")?),
    };
    for address in &addresses {
        record_event(
            conn,
            &described,
            Some(address),
            "cancelled",
            None,
            None,
            now,
        )
        .await?;
    }
    Ok(Cancel::Cancelled)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for its (next) attempt, or for its scheduled time.
    Queued,
    /// An attempt is under way.
    Sending,
    /// Sent to at least one recipient, and nothing more to do.
    Sent,
    /// Refused for good, out of attempts, suppressed or cancelled.
    Failed,
}

impl MessageStatus {
    /// The email statuses each message status shows.
    fn email_statuses(self) -> &'static [&'static str] {
        match self {
            MessageStatus::Queued => &["queued", "scheduled"],
            MessageStatus::Sending => &["sending"],
            MessageStatus::Sent => &["sent"],
            MessageStatus::Failed => &["failed", "suppressed", "cancelled"],
        }
    }

    fn of(status: EmailStatus) -> MessageStatus {
        match status {
            EmailStatus::Queued | EmailStatus::Scheduled => MessageStatus::Queued,
            EmailStatus::Sending => MessageStatus::Sending,
            EmailStatus::Sent => MessageStatus::Sent,
            EmailStatus::Failed | EmailStatus::Suppressed | EmailStatus::Cancelled => {
                MessageStatus::Failed
            }
        }
    }
}

/// A message in the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageLog {
    pub id: String,
    /// What caused the email, such as `sender_verification`, `invitation`, or `email`
    /// (sent through `/v2/emails`).
    pub kind: String,
    pub from: String,
    /// The first recipient.
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

const LOG_COLUMNS: &str = "e.id, e.kind, e.from_address, \
    (SELECT r.address FROM email_recipients r WHERE r.email_id = e.id ORDER BY r.position LIMIT 1) AS to_address, \
    e.subject, e.status, e.attempts, e.last_error, e.message_id, e.created_at, e.updated_at, \
    e.next_attempt_at, e.sent_at";

fn decode_error(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {value}").into())
}

impl sqlx::FromRow<'_, AnyRow> for MessageLog {
    fn from_row(row: &AnyRow) -> sqlx::Result<MessageLog> {
        let text: String = row.try_get("status")?;
        let email_status =
            EmailStatus::parse(&text).ok_or_else(|| decode_error("status", &text))?;
        let status = MessageStatus::of(email_status);
        let next_attempt_at = match status {
            MessageStatus::Queued => row.try_get::<Option<i64>, _>("next_attempt_at")?,
            _ => None,
        };
        Ok(MessageLog {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            from: row.try_get("from_address")?,
            to: row
                .try_get::<Option<String>, _>("to_address")?
                .unwrap_or_default(),
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
    let statuses = status.map_or(&[][..], MessageStatus::email_statuses);
    let filter = match statuses.len() {
        0 => String::new(),
        n => format!("AND e.status IN ({})", placeholders(4, n)),
    };
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM emails e WHERE e.account_id = $1 {filter} \
         ORDER BY e.position DESC LIMIT $2 OFFSET $3"
    );
    let mut query = sqlx::query_as(&sql)
        .bind(account_id)
        .bind(limit)
        .bind(offset);
    for status in statuses {
        query = query.bind(*status);
    }
    query.fetch_all(&db.pool).await
}

pub async fn get(db: &Db, id: &str, account_id: &str) -> sqlx::Result<Option<MessageLog>> {
    sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM emails e WHERE e.id = $1 AND e.account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await
}

/// A recipient the worker tries in this attempt.
#[derive(Debug, Clone)]
pub struct Pending {
    pub position: i64,
    pub address: String,
    pub name: Option<String>,
    pub kind: RecipientType,
    /// This recipient's attempt number, from 1.
    pub attempts: i64,
}

/// An email the worker holds the lease on, with every recipient it is to try now.
pub struct Claimed {
    pub id: String,
    pub account_id: Option<String>,
    pub entity_id: Option<String>,
    /// [`API_KIND`] for the API's emails, else the template's kind.
    pub kind: String,
    pub from: String,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub message_id: String,
    /// As stored: a JSON object.
    pub tags: String,
    /// This attempt's number, from 1, of the email as a whole.
    pub attempts: i64,
    pub created_at: i64,
    lease_until: i64,
    /// The sealed body when it is small, read with the claim; a larger one is read only
    /// when the email's turn comes.
    small_body: Option<String>,
    /// Recipients due now (queued, scheduled and due, or deferred and due).
    pub pending: Vec<Pending>,
    /// Every recipient, for the headers (`bcc` ones left out there by the composer).
    pub recipients: Vec<Pending>,
}

impl Claimed {
    /// The body (a large one read only now: a claimed email may wait for a slot, and a
    /// body may be megabytes), or why there is none to send.
    pub async fn open_body(&mut self, db: &Db, master_key: &MasterKey) -> anyhow::Result<Body> {
        let sealed: Option<String> = match self.small_body.take() {
            Some(sealed) => Some(sealed),
            None => sqlx::query_scalar("SELECT body FROM emails WHERE id = $1")
                .bind(&self.id)
                .fetch_optional(&db.pool)
                .await?
                .flatten(),
        };
        let Some(sealed) = sealed else {
            anyhow::bail!("the body was deleted after the retention period");
        };
        let bytes = master_key.open(&sealed, &seal_context(&self.id))?;
        drop(sealed);
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub fn described(&self) -> Described<'_> {
        Described {
            id: &self.id,
            account_id: self.account_id.as_deref(),
            entity_id: self.entity_id.as_deref(),
            published: self.kind == API_KIND,
            from: &self.from,
            subject: &self.subject,
            message_id: &self.message_id,
            tags: &self.tags,
            created_at: Timestamp(self.created_at),
        }
    }

    /// The lease's end, in milliseconds since the epoch.
    pub fn lease_until(&self) -> i64 {
        self.lease_until
    }

    /// The first `to` recipient, for the logs.
    pub fn first_recipient(&self) -> &str {
        self.recipients
            .first()
            .map_or("", |recipient| recipient.address.as_str())
    }
}

/// The largest sealed body (in bytes) read with its email's claim; a claim holds a few
/// dozen emails, and larger bodies are read one at a time as each is sent.
const SMALL_BODY: usize = 64 * 1024;

/// What the worker claims.
pub struct Claim<'a> {
    pub limit: i64,
    pub lease_ms: i64,
    /// A body kept longer is deleted: such an email cannot be sent any more.
    pub retention_ms: i64,
    /// At most this many of one account's emails (mailroom's own without an account aside):
    /// an account's mail beyond what its slots can start soon stays in the queue.
    pub per_account: i64,
    /// Accounts whose mail has enough waiting for their slots already.
    pub skip: &'a [String],
    /// Whether tenants' API emails may be claimed too, or mailroom's own mail only.
    pub tenants: bool,
}

/// Takes the lease on up to `limit` due emails (queued or scheduled and due, or sending
/// with an expired lease) for this instance alone, of none of the accounts `skip` and at
/// most `per_account` of any other. Each account's first due email comes before any
/// account's second, so that one account's backlog does not hold up the others' mail. A
/// body past its retention goes in the same statement.
///
/// The emails are read lane by lane (`emails_own_lanes` and `emails_api_lanes`: each
/// account's own mail and its API emails, in the order they fall due), at most `limit`
/// from the head of each, so that a claim costs the same whatever the delivered history
/// and however deep one account's backlog. A lane's sending emails are due by their lease,
/// and their `next_attempt_at` is the time they fell due, before they were claimed.
pub async fn claim_due(db: &Db, claim: &Claim<'_>) -> sqlx::Result<Vec<Claimed>> {
    let Claim {
        limit,
        lease_ms,
        retention_ms,
        per_account,
        skip,
        tenants,
    } = *claim;
    let due = "((status IN ('queued', 'scheduled') AND next_attempt_at <= $2) \
               OR (status = 'sending' AND lease_until < $2))";
    let others = match skip.len() {
        0 => String::new(),
        n => format!("AND l.account NOT IN ({})", placeholders(6, n)),
    };
    // Each lane's name and the condition of its index, which the query repeats so that the
    // index is used.
    let own = format!("kind <> '{API_KIND}'");
    let api = format!("kind = '{API_KIND}'");
    let lanes = match tenants {
        true => vec![("own_lanes", own), ("api_lanes", api)],
        false => vec![("own_lanes", own)],
    };
    let waiting = "status IN ('scheduled', 'queued', 'sending')";
    // The lanes with waiting mail, one index seek each: the next lane after the last.
    let lane_names = lanes
        .iter()
        .map(|(name, kind)| {
            let next = |after: &str| {
                format!(
                    "SELECT COALESCE(account_id, '') FROM emails WHERE {waiting} AND {kind} {after} \
                     ORDER BY COALESCE(account_id, '') LIMIT 1"
                )
            };
            format!(
                "{name}(account) AS (SELECT ({first}) UNION ALL \
                 SELECT ({then}) FROM {name} l WHERE l.account IS NOT NULL)",
                first = next(""),
                then = next("AND COALESCE(account_id, '') > l.account"),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The first due emails of each lane. PostgreSQL reads them by LATERAL; SQLite by a
    // CROSS JOIN, which keeps the lanes as the outer loop.
    let heads = lanes
        .iter()
        .map(|(name, kind)| {
            let first_due = |columns: &str| {
                format!(
                    "SELECT {columns} FROM emails x WHERE x.{waiting} AND x.{kind} \
                     AND COALESCE(x.account_id, '') = l.account AND x.next_attempt_at <= $2 \
                     AND (x.status <> 'sending' OR x.lease_until < $2) \
                     ORDER BY x.next_attempt_at LIMIT $3"
                )
            };
            let read = match db.engine {
                Engine::Postgres => format!(
                    "CROSS JOIN LATERAL ({}) d WHERE TRUE",
                    first_due("x.id, x.next_attempt_at")
                ),
                Engine::Sqlite => {
                    format!("CROSS JOIN emails d WHERE d.id IN ({})", first_due("x.id"))
                }
            };
            format!(
                "SELECT d.id, l.account, d.next_attempt_at FROM {name} l {read} \
                 AND l.account IS NOT NULL {others}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let in_turn = format!(
        "SELECT id FROM (SELECT id, account, next_attempt_at, \
         ROW_NUMBER() OVER (PARTITION BY account ORDER BY next_attempt_at) AS turn \
         FROM ({heads}) AS heads) AS due WHERE turn <= $5 OR account = '' \
         ORDER BY turn, next_attempt_at LIMIT $3"
    );
    // On PostgreSQL the chosen emails are locked (another instance skips them) and taken
    // as an array, read once: as a semi-join, a table without statistics yet (a fresh one,
    // or one just filled, until autovacuum analyses it) had the whole choice made again for
    // each email, hundreds of milliseconds per claim.
    let chosen = match db.engine {
        Engine::Postgres => {
            format!(
                "= ANY (ARRAY(SELECT id FROM emails WHERE id IN ({in_turn}) FOR UPDATE SKIP LOCKED))"
            )
        }
        Engine::Sqlite => format!("IN ({in_turn})"),
    };
    let expired = "body IS NOT NULL AND COALESCE(scheduled_at, created_at) < $4";
    let lease = format!(
        "UPDATE emails SET status = 'sending', lease_until = $1, attempts = attempts + 1, updated_at = $2, \
         body_deleted_at = CASE WHEN {expired} THEN $2 ELSE body_deleted_at END, \
         body = CASE WHEN {expired} THEN NULL ELSE body END"
    );
    let now = db.now().0;
    let lease_until = now + lease_ms;
    let bind_choice = |sql| {
        let mut query = sqlx::query_scalar::<_, String>(sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .bind(now.saturating_sub(retention_ms))
            .bind(per_account);
        for account in skip {
            query = query.bind(account);
        }
        query
    };
    // The claimed emails come back as one JSON value, and so do their recipients: on
    // SQLite each row would be a hand-off between the connection's thread and this one.
    let (emails, mut recipients) = match db.engine {
        Engine::Postgres => {
            let sql = format!(
                "WITH RECURSIVE {lane_names}, \
                 e AS ({lease} WHERE id {chosen} AND {due} RETURNING {}) \
                 SELECT {} FROM e",
                claimed_columns(),
                claimed_json(Engine::Postgres)
            );
            let emails = parse_claimed(&bind_choice(&sql).fetch_one(&db.pool).await?)?;
            let recipients =
                recipients_of(&mut *db.pool.acquire().await?, db.engine, &emails).await?;
            (emails, recipients)
        }
        // No `UPDATE … RETURNING` inside a query here: the emails are picked, leased and
        // read back in one transaction, which holds the write lock throughout and reads
        // pages the writing connection has cached.
        Engine::Sqlite => {
            let mut tx = db.begin().await?;
            let picked = bind_choice(&format!(
                "WITH RECURSIVE {lane_names} \
                 SELECT COALESCE(json_group_array(id), '[]') FROM ({in_turn}) AS picked"
            ))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "{lease} WHERE id IN (SELECT value FROM json_each($5)) AND {due}"
            ))
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .bind(now.saturating_sub(retention_ms))
            .bind(&picked)
            .execute(&mut *tx)
            .await?;
            let emails: String = sqlx::query_scalar(&format!(
                "SELECT {} FROM (SELECT {} FROM emails \
                 WHERE id IN (SELECT value FROM json_each($1)) AND status = 'sending' \
                 AND lease_until = $2) AS e",
                claimed_json(Engine::Sqlite),
                claimed_columns()
            ))
            .bind(&picked)
            .bind(lease_until)
            .fetch_one(&mut *tx)
            .await?;
            let emails = parse_claimed(&emails)?;
            let recipients = recipients_of(&mut tx, db.engine, &emails).await?;
            tx.commit().await?;
            (emails, recipients)
        }
    };
    Ok(emails
        .into_iter()
        .map(|row| {
            let recipients = recipients.remove(&row.id).unwrap_or_default();
            let pending = recipients
                .iter()
                .filter(|(_, status, next)| {
                    !status.is_final() && next.is_none_or(|next| next <= now)
                })
                .map(|(recipient, _, _)| recipient.clone())
                .collect();
            Claimed {
                id: row.id,
                account_id: row.account_id,
                entity_id: row.entity_id,
                kind: row.kind,
                from: row.from_address,
                from_name: row.from_name,
                reply_to: row.reply_to,
                subject: row.subject,
                message_id: row.message_id,
                tags: row.tags,
                attempts: row.attempts,
                created_at: row.created_at,
                lease_until,
                small_body: row.small_body,
                pending,
                recipients: recipients.into_iter().map(|(r, _, _)| r).collect(),
            }
        })
        .collect())
}

/// The columns of a claimed email that the worker reads (`small_body`: the body, when it
/// is small enough to come with the claim).
fn claimed_columns() -> String {
    format!(
        "id, account_id, entity_id, kind, from_address, from_name, reply_to, subject, \
         message_id, tags, attempts, created_at, next_attempt_at, \
         CASE WHEN OCTET_LENGTH(body) <= {SMALL_BODY} THEN body END AS small_body"
    )
}

/// The claimed emails of `e` (with [`claimed_columns`]) as one JSON array, in the order
/// they fell due.
fn claimed_json(engine: Engine) -> String {
    let (object, array) = match engine {
        Engine::Sqlite => ("json_object", "json_group_array"),
        Engine::Postgres => ("json_build_object", "json_agg"),
    };
    format!(
        "COALESCE(CAST({array}({object}('id', e.id, 'account_id', e.account_id, \
         'entity_id', e.entity_id, 'kind', e.kind, 'from_address', e.from_address, \
         'from_name', e.from_name, 'reply_to', e.reply_to, 'subject', e.subject, \
         'message_id', e.message_id, 'tags', e.tags, 'attempts', e.attempts, \
         'created_at', e.created_at, 'small_body', e.small_body) \
         ORDER BY e.next_attempt_at, e.id) AS TEXT), '[]')"
    )
}

#[derive(Deserialize)]
struct ClaimedRow {
    id: String,
    account_id: Option<String>,
    entity_id: Option<String>,
    kind: String,
    from_address: String,
    from_name: Option<String>,
    reply_to: Option<String>,
    subject: String,
    message_id: String,
    tags: String,
    attempts: i64,
    created_at: i64,
    small_body: Option<String>,
}

fn parse_claimed(json: &str) -> sqlx::Result<Vec<ClaimedRow>> {
    serde_json::from_str(json).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// Whether the From of an API email is still the account's to send as, by the rule the API
/// applies when it accepts one: its domain is active in the account, or it is a verified
/// sender address (on an active domain) of the account or of the email's entity. A domain
/// deleted, suspended or since activated by another account no longer lets it go.
pub async fn from_still_allowed(db: &Db, email: &Claimed) -> sqlx::Result<bool> {
    let Some(account_id) = &email.account_id else {
        return Ok(false);
    };
    let domain = email.from.rsplit('@').next().unwrap_or_default();
    let allowed = sqlx::query(
        "SELECT 1 FROM domains WHERE account_id = $1 AND LOWER(name) = LOWER($2) AND status = 'active' \
         UNION ALL \
         SELECT 1 FROM sender_addresses s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND d.account_id = $1 AND LOWER(s.email) = LOWER($3) \
         AND s.verified_at IS NOT NULL AND d.status = 'active' \
         AND ($4 = '' OR s.entity_id IS NULL OR s.entity_id = $4) \
         LIMIT 1",
    )
    .bind(account_id)
    .bind(domain)
    .bind(&email.from)
    .bind(email.entity_id.as_deref().unwrap_or_default())
    .fetch_optional(&db.pool)
    .await?;
    Ok(allowed.is_some())
}

/// The recipients of the emails `ids`, in order, read as one JSON value: on SQLite each
/// row would be a hand-off between the connection's thread and this one.
async fn recipients_of(
    connection: &mut sqlx::AnyConnection,
    engine: Engine,
    emails: &[ClaimedRow],
) -> sqlx::Result<HashMap<String, Vec<(Pending, RecipientStatus, Option<i64>)>>> {
    #[derive(serde::Deserialize)]
    struct Row {
        email_id: String,
        position: i64,
        address: String,
        name: Option<String>,
        #[serde(rename = "type")]
        kind: String,
        status: String,
        attempts: i64,
        next_attempt_at: Option<i64>,
    }
    let mut recipients: HashMap<String, Vec<_>> = HashMap::new();
    if emails.is_empty() {
        return Ok(recipients);
    }
    let (object, array) = match engine {
        Engine::Sqlite => ("json_object", "json_group_array"),
        Engine::Postgres => ("json_build_object", "json_agg"),
    };
    let wanted = json_rows(engine, &[("id", "TEXT")]);
    let json: String = sqlx::query_scalar(&format!(
        "SELECT COALESCE(CAST({array}({object}('email_id', r.email_id, 'position', r.position, \
         'address', r.address, 'name', r.name, 'type', r.type, 'status', r.status, \
         'attempts', r.attempts, 'next_attempt_at', r.next_attempt_at) \
         ORDER BY r.email_id, r.position) AS TEXT), '[]') \
         FROM email_recipients r WHERE r.email_id IN (SELECT v.id FROM {wanted})"
    ))
    .bind(
        serde_json::Value::from_iter(emails.iter().map(|e| serde_json::json!({"id": e.id})))
            .to_string(),
    )
    .fetch_one(connection)
    .await?;
    let rows: Vec<Row> =
        serde_json::from_str(&json).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    for row in rows {
        let recipient = (
            Pending {
                position: row.position,
                address: row.address,
                name: row.name,
                kind: RecipientType::parse(&row.kind)
                    .ok_or_else(|| decode_error("type", &row.kind))?,
                attempts: row.attempts + 1,
            },
            RecipientStatus::parse(&row.status)
                .ok_or_else(|| decode_error("status", &row.status))?,
            row.next_attempt_at,
        );
        recipients.entry(row.email_id).or_default().push(recipient);
    }
    Ok(recipients)
}

/// Gives a claimed email back untried, as if it had never been claimed: it waited for a
/// delivery slot, not for a retry. It is due again at `due_at`.
pub async fn release(db: &Db, email: &Claimed, due_at: i64) -> sqlx::Result<()> {
    let query = sqlx::query(
        "UPDATE emails SET status = 'queued', attempts = attempts - 1, lease_until = NULL, \
         next_attempt_at = $2, updated_at = $3 WHERE id = $1 AND lease_until = $4",
    )
    .bind(&email.id)
    .bind(due_at)
    .bind(db.now().0)
    .bind(email.lease_until);
    db.write_alone(query).await?;
    Ok(())
}

/// Extends the lease on an email that waited for a slot, so that no other instance takes
/// it while it is sent; false when the lease is another's by now.
pub async fn renew(db: &Db, email: &mut Claimed, lease_until: i64) -> sqlx::Result<bool> {
    let query = sqlx::query(
        "UPDATE emails SET lease_until = $2 WHERE id = $1 AND status = 'sending' AND lease_until = $3",
    )
    .bind(&email.id)
    .bind(lease_until)
    .bind(email.lease_until);
    let renewed = db.write_alone(query).await?;
    if renewed.rows_affected() == 0 {
        return Ok(false);
    }
    email.lease_until = lease_until;
    Ok(true)
}

/// What one recipient's attempt leaves it as.
pub struct RecipientAttempt<'a> {
    pub recipient: &'a Pending,
    pub status: RecipientStatus,
    /// The server's reply, or why it failed.
    pub detail: &'a str,
    pub next_attempt_at: Option<i64>,
}

/// One attempt at an email to record: each of its tried recipients' outcomes.
pub struct Attempt<'a> {
    pub email: &'a Claimed,
    pub transport: &'a str,
    pub recipients: Vec<RecipientAttempt<'a>>,
}

/// Records attempts in one transaction: each recipient's status and event, bounced
/// addresses on the account's suppression list, and the email's status; the body goes
/// once every recipient is final. Answers those that were still this instance's (past its
/// lease, another instance owns an email).
///
/// A few statements for the whole group, whatever its size, each reading its rows from one
/// JSON parameter: on SQLite every statement is a round trip to the connection's thread
/// made while this process's other writers wait.
pub async fn record<'a>(
    db: &Db,
    attempts: &'a [Attempt<'a>],
    now: Timestamp,
) -> sqlx::Result<Vec<&'a Attempt<'a>>> {
    // An email may be in a group twice when its first outcome waited past its lease and
    // this instance claimed and sent it again: only the latest lease can still be ours.
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for attempt in attempts {
        let lease = latest.entry(&attempt.email.id).or_insert(i64::MIN);
        *lease = (*lease).max(attempt.email.lease_until);
    }
    let (candidates, stale): (Vec<&Attempt>, Vec<&Attempt>) = attempts
        .iter()
        .partition(|attempt| latest[attempt.email.id.as_str()] == attempt.email.lease_until);
    let mut tx = db.begin().await?;
    // Still ours? The lease is taken back when the status is set, at the end: one write of
    // each email's row. Until then the rows are locked (on SQLite, the whole database):
    // another instance cannot claim them in between.
    let leases: Vec<serde_json::Value> = candidates
        .iter()
        .map(|attempt| serde_json::json!({"id": attempt.email.id, "lease_until": attempt.email.lease_until}))
        .collect();
    let source = json_rows(db.engine, &[("id", "TEXT"), ("lease_until", "BIGINT")]);
    let lock = match db.engine {
        Engine::Postgres => " FOR UPDATE OF e",
        Engine::Sqlite => "",
    };
    let ours: HashSet<String> = sqlx::query_scalar(&format!(
        "SELECT e.id FROM {source} JOIN emails e ON e.id = v.id \
         WHERE e.lease_until = v.lease_until AND e.status = 'sending'{lock}"
    ))
    .bind(serde_json::Value::Array(leases).to_string())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let (recorded, lost): (Vec<&Attempt>, Vec<&Attempt>) = candidates
        .into_iter()
        .partition(|attempt| ours.contains(&attempt.email.id));
    for attempt in lost.iter().chain(&stale) {
        tracing::warn!(email = %attempt.email.id, "lease lost before the attempt was recorded");
    }
    if recorded.is_empty() {
        tx.commit().await?;
        return Ok(recorded);
    }

    let mut outcomes: Vec<(&Attempt, &RecipientAttempt)> = Vec::new();
    for attempt in &recorded {
        outcomes.extend(attempt.recipients.iter().map(|outcome| (*attempt, outcome)));
    }
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(attempt, outcome)| {
            serde_json::json!({
                "email_id": attempt.email.id,
                "position": outcome.recipient.position,
                "status": outcome.status.as_str(),
                "attempts": outcome.recipient.attempts,
                "reply": outcome.detail,
                "next_attempt_at": outcome.next_attempt_at,
                "sent_at": (outcome.status == RecipientStatus::Sent).then_some(now.0),
            })
        })
        .collect();
    let source = json_rows(
        db.engine,
        &[
            ("email_id", "TEXT"),
            ("position", "BIGINT"),
            ("status", "TEXT"),
            ("attempts", "BIGINT"),
            ("reply", "TEXT"),
            ("next_attempt_at", "BIGINT"),
            ("sent_at", "BIGINT"),
        ],
    );
    sqlx::query(&format!(
        "UPDATE email_recipients SET status = v.status, attempts = v.attempts, last_reply = v.reply, \
         next_attempt_at = v.next_attempt_at, updated_at = $2, \
         sent_at = COALESCE(email_recipients.sent_at, v.sent_at) FROM {source} \
         WHERE email_recipients.email_id = v.email_id AND email_recipients.position = v.position"
    ))
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(now.0)
    .execute(&mut *tx)
    .await?;

    // Each recipient's event, in the order of the attempts.
    let written: Vec<(Described, EmailEvent, String)> = outcomes
        .iter()
        .map(|(attempt, outcome)| {
            let email = attempt.email.described();
            let status = outcome.status.as_str();
            let address = Some(outcome.recipient.address.as_str());
            let event = EmailEvent::of(&email, address, status, Some(outcome.detail));
            (
                email,
                event,
                format!("{}: {}", attempt.transport, outcome.detail),
            )
        })
        .collect();
    let events: Vec<(crate::events::NewEvent, Timestamp)> = written
        .iter()
        .zip(&outcomes)
        .map(|((email, event, detail), (_, outcome))| {
            let address = Some(outcome.recipient.address.as_str());
            (event.new_event(email, address, Some(detail)), now)
        })
        .collect();
    crate::events::record_all(&mut tx, db.engine, &events).await?;

    // Bounces are rare: one statement each.
    for (attempt, outcome) in &outcomes {
        if outcome.status == RecipientStatus::Bounced
            && let Some(account_id) = &attempt.email.account_id
            && let Ok(address) = EmailAddress::parse(&outcome.recipient.address)
        {
            sqlx::query(
                "INSERT INTO suppressions (account_id, email, reason, detail, created_at) \
                 VALUES ($1, $2, 'bounce', $3, $4) ON CONFLICT (account_id, email) DO NOTHING",
            )
            .bind(account_id)
            .bind(suppression_key(&address))
            .bind(outcome.detail)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
    }
    settle(&mut tx, db.engine, &recorded, now).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Sets each email's status from its recipients': waiting again until the next due one,
/// or final (and its body deleted); takes its lease back.
async fn settle(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    recorded: &[&Attempt<'_>],
    now: Timestamp,
) -> sqlx::Result<()> {
    let sql = format!(
        "SELECT email_id, status, next_attempt_at FROM email_recipients WHERE email_id IN ({})",
        placeholders(1, recorded.len())
    );
    let query = recorded.iter().fold(sqlx::query(&sql), |query, attempt| {
        query.bind(&attempt.email.id)
    });
    // Per email: whether any recipient was sent, and the next due time of those not final.
    let mut standing: BTreeMap<String, (bool, Option<i64>)> = BTreeMap::new();
    for row in query.fetch_all(&mut *conn).await? {
        let status: String = row.try_get("status")?;
        let status =
            RecipientStatus::parse(&status).ok_or_else(|| decode_error("status", &status))?;
        let entry = standing.entry(row.try_get("email_id")?).or_default();
        entry.0 |= status == RecipientStatus::Sent;
        if !status.is_final() {
            let at: Option<i64> = row.try_get("next_attempt_at")?;
            let at = at.unwrap_or(now.0);
            entry.1 = Some(entry.1.map_or(at, |next: i64| next.min(at)));
        }
    }
    let rows: Vec<serde_json::Value> = recorded
        .iter()
        .map(|attempt| {
            let (any_sent, next) = standing.get(&attempt.email.id).copied().unwrap_or_default();
            let status = match (next, any_sent) {
                (Some(_), _) => EmailStatus::Queued,
                (None, true) => EmailStatus::Sent,
                (None, false) => EmailStatus::Failed,
            };
            let last_error = attempt
                .recipients
                .iter()
                .rev()
                .find(|outcome| outcome.status != RecipientStatus::Sent)
                .map(|outcome| outcome.detail);
            serde_json::json!({
                "id": attempt.email.id,
                "status": status.as_str(),
                "next_attempt_at": next,
                "last_error": last_error,
                "sent_at": any_sent.then_some(now.0),
                "final": i64::from(next.is_none()),
            })
        })
        .collect();
    let source = json_rows(
        engine,
        &[
            ("id", "TEXT"),
            ("status", "TEXT"),
            ("next_attempt_at", "BIGINT"),
            ("last_error", "TEXT"),
            ("sent_at", "BIGINT"),
            ("final", "BIGINT"),
        ],
    );
    // The lease is taken back; a final email's body goes.
    sqlx::query(&format!(
        "UPDATE emails SET status = v.status, next_attempt_at = v.next_attempt_at, \
         lease_until = NULL, updated_at = $2, \
         last_error = COALESCE(v.last_error, emails.last_error), \
         sent_at = COALESCE(emails.sent_at, v.sent_at), \
         body = CASE WHEN v.final = 1 THEN NULL ELSE emails.body END, \
         body_deleted_at = CASE WHEN v.final = 1 THEN $2 ELSE emails.body_deleted_at END \
         FROM {source} WHERE emails.id = v.id"
    ))
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the bodies kept longer than `retention_ms` (from the email's scheduled time, so
/// that a far scheduled email keeps its body until then) and those of final emails;
/// answers how many went.
pub async fn delete_old_bodies(db: &Db, retention_ms: i64) -> sqlx::Result<u64> {
    let now = db.now().0;
    let deleted = db.write_alone(sqlx::query(
        "UPDATE emails SET body = NULL, body_deleted_at = $1 WHERE body IS NOT NULL AND \
         (status IN ('sent', 'failed', 'suppressed', 'cancelled') OR COALESCE(scheduled_at, created_at) < $2)",
    )
    .bind(now)
    .bind(now.saturating_sub(retention_ms))
    )
    .await?;
    Ok(deleted.rows_affected())
}

/// How the outbox stands: emails waiting, how overdue the oldest is, failures lately.
pub struct Depth {
    pub waiting: i64,
    pub oldest_due: Option<i64>,
    pub failed_last_hour: i64,
}

pub async fn depth(db: &Db) -> sqlx::Result<Depth> {
    // The first `status IN` is the condition of the `emails_due` index, said so that it is
    // read instead of every email.
    let row = sqlx::query(
        "SELECT COUNT(*) AS depth, MIN(next_attempt_at) AS oldest FROM emails \
         WHERE status IN ('scheduled', 'queued', 'sending') AND status IN ('queued', 'sending')",
    )
    .fetch_one(&db.pool)
    .await?;
    let failed_last_hour = sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE status = 'failed' AND updated_at > $1",
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

/// The outbox at a scrape, in one query on the `emails_due` index: emails waiting (not
/// those scheduled for later), those due now (queued or scheduled and due, or left sending
/// by an instance whose lease ran out, as `claim_due` takes them), and since when the
/// oldest of those has been due.
pub async fn queue(db: &Db) -> sqlx::Result<Queue> {
    let now = db.now().0;
    let row = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN status IN ('queued', 'sending') OR next_attempt_at <= $1 \
           THEN 1 ELSE 0 END), 0) AS queued, \
         COALESCE(SUM(CASE WHEN (status IN ('queued', 'scheduled') AND next_attempt_at <= $1) \
           OR (status = 'sending' AND lease_until < $1) THEN 1 ELSE 0 END), 0) AS due, \
         MIN(CASE WHEN status IN ('queued', 'scheduled') AND next_attempt_at <= $1 THEN next_attempt_at \
           WHEN status = 'sending' AND lease_until < $1 THEN lease_until END) AS due_since \
         FROM emails WHERE status IN ('scheduled', 'queued', 'sending')",
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
