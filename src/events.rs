//! The account's event log (the `events` table) and the webhook jobs each event makes
//! (`webhook_deliveries`): both are written in the transaction of the change an event
//! tells of, so that no change goes unannounced and no announcement tells of a change
//! that was rolled back. Delivering the jobs is the webhooks' worker's.

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Db, Engine, Timestamp, json_rows, new_id, placeholders};

/// The event types an account sees in its log and may subscribe webhooks to.
pub const TYPES: [&str; 19] = [
    "email.queued",
    "email.sent",
    "email.deferred",
    "email.bounced",
    "email.failed",
    "email.suppressed",
    "email.cancelled",
    "domain.verified",
    "domain.pending",
    "domain.failed",
    "domain.suspended",
    "domain.dkim_rotated",
    "sender.verified",
    "sender.expired",
    "invitation.accepted",
    "invitation.expired",
    "mailbox.created",
    "mailbox.deleted",
    "mailbox.password_reset",
];

/// The event `POST /v2/webhooks/{id}/test` sends to one endpoint; no one subscribes to it.
pub const TEST_TYPE: &str = "webhook.test";

/// An event to write.
pub struct NewEvent<'a> {
    pub account_id: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    /// One of `TYPES` (or `TEST_TYPE`).
    pub kind: &'a str,
    /// The object the event is about (an email's, domain's… id): one object's events are
    /// delivered to an endpoint in the order they were written.
    pub object_key: &'a str,
    /// For an email's events, which are its history too.
    pub email_id: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// The object as the API shows it at this moment: never a secret, a body or a token.
    /// `None` for history only (mailroom's own mail): neither listed nor delivered.
    pub data: Option<serde_json::Value>,
}

impl<'a> NewEvent<'a> {
    /// An event about an object that is not an email: `data` is `object` as the API shows it.
    pub fn about(
        account_id: &'a str,
        entity_id: Option<&'a str>,
        kind: &'a str,
        object_key: &'a str,
        object: &impl Serialize,
    ) -> serde_json::Result<NewEvent<'a>> {
        Ok(NewEvent {
            account_id: Some(account_id),
            entity_id,
            kind,
            object_key,
            email_id: None,
            recipient: None,
            detail: None,
            data: Some(serde_json::to_value(object)?),
        })
    }
}

/// Writes `event` on `conn`, inside the caller's transaction, with a delivery job for each
/// enabled webhook of the account subscribed to its type; answers its id.
pub async fn record(
    conn: &mut sqlx::AnyConnection,
    event: NewEvent<'_>,
    at: Timestamp,
) -> sqlx::Result<String> {
    let id = new_id("evt");
    let data = event.data.as_ref().map(serde_json::Value::to_string);
    sqlx::query(
        "INSERT INTO events (id, account_id, entity_id, email_id, recipient, type, detail, data, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(event.account_id)
    .bind(event.entity_id)
    .bind(event.email_id)
    .bind(event.recipient)
    .bind(event.kind)
    .bind(event.detail)
    .bind(&data)
    .bind(at.0)
    .execute(&mut *conn)
    .await?;
    if let (Some(account_id), Some(_)) = (event.account_id, &data) {
        let webhooks: Vec<String> = sqlx::query_scalar(
            "SELECT s.webhook_id FROM webhook_subscriptions s JOIN webhooks w ON w.id = s.webhook_id \
             WHERE s.account_id = $1 AND s.event_type = $2 AND w.enabled = 1",
        )
        .bind(account_id)
        .bind(event.kind)
        .fetch_all(&mut *conn)
        .await?;
        for webhook_id in webhooks {
            queue_delivery(conn, &webhook_id, &id, event.object_key, at).await?;
        }
    }
    Ok(id)
}

/// Writes `events` (each with its time) on `conn`, inside the caller's transaction, as
/// `record` does one by one, in a few statements whatever their number: a group of
/// changes announced at once.
pub async fn record_all(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    events: &[(NewEvent<'_>, Timestamp)],
) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = events.iter().map(|_| new_id("evt")).collect();
    let rows: Vec<serde_json::Value> = events
        .iter()
        .zip(&ids)
        .map(|((event, at), id)| {
            serde_json::json!({
                "id": id,
                "account_id": event.account_id,
                "entity_id": event.entity_id,
                "email_id": event.email_id,
                "recipient": event.recipient,
                "type": event.kind,
                "detail": event.detail,
                "data": event.data.as_ref().map(serde_json::Value::to_string),
                "at": at.0,
            })
        })
        .collect();
    let source = json_rows(
        engine,
        &[
            ("id", "TEXT"),
            ("account_id", "TEXT"),
            ("entity_id", "TEXT"),
            ("email_id", "TEXT"),
            ("recipient", "TEXT"),
            ("type", "TEXT"),
            ("detail", "TEXT"),
            ("data", "TEXT"),
            ("at", "BIGINT"),
        ],
    );
    sqlx::query(&format!(
        "INSERT INTO events (id, account_id, entity_id, email_id, recipient, type, detail, data, at) \
         SELECT v.id, v.account_id, v.entity_id, v.email_id, v.recipient, v.type, v.detail, v.data, v.at \
         FROM {source}"
    ))
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(&mut *conn)
    .await?;

    // One read of the subscriptions of every account concerned.
    let mut accounts: Vec<&str> = events
        .iter()
        .filter(|(event, _)| event.data.is_some())
        .filter_map(|(event, _)| event.account_id)
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    if accounts.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT s.account_id, s.event_type, s.webhook_id FROM webhook_subscriptions s \
         JOIN webhooks w ON w.id = s.webhook_id WHERE s.account_id IN ({}) AND w.enabled = 1",
        placeholders(1, accounts.len())
    );
    let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
    for account in &accounts {
        query = query.bind(*account);
    }
    let subscriptions = query.fetch_all(&mut *conn).await?;
    for ((event, at), id) in events.iter().zip(&ids) {
        if event.data.is_none() {
            continue;
        }
        for (account_id, event_type, webhook_id) in &subscriptions {
            if Some(account_id.as_str()) == event.account_id && event_type == event.kind {
                queue_delivery(conn, webhook_id, id, event.object_key, *at).await?;
            }
        }
    }
    Ok(())
}

/// Queues a delivery of the event `event_id` to `webhook_id`, due at once; answers its id.
pub async fn queue_delivery(
    conn: &mut sqlx::AnyConnection,
    webhook_id: &str,
    event_id: &str,
    object_key: &str,
    at: Timestamp,
) -> sqlx::Result<String> {
    let id = new_id("whd");
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, object_key, status, attempts, \
         next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)",
    )
    .bind(&id)
    .bind(webhook_id)
    .bind(event_id)
    .bind(object_key)
    .bind(at.0)
    .execute(conn)
    .await?;
    Ok(id)
}

/// An event as the log lists it and a webhook receives it.
#[derive(Debug, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: Timestamp,
    pub account_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    pub data: Box<RawValue>,
    /// Where the log goes on from; not part of the payload.
    #[serde(skip)]
    pub position: i64,
}

impl sqlx::FromRow<'_, AnyRow> for Event {
    fn from_row(row: &AnyRow) -> sqlx::Result<Event> {
        let data: String = row.try_get("data")?;
        Ok(Event {
            id: row.try_get("id")?,
            kind: row.try_get("type")?,
            created_at: Timestamp(row.try_get("at")?),
            account_id: row.try_get("account_id")?,
            entity_id: row.try_get("entity_id")?,
            data: RawValue::from_string(data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            position: row.try_get("position")?,
        })
    }
}

const COLUMNS: &str = "position, id, type, at, account_id, entity_id, data";

/// Which events of an account a list shows.
pub struct Filter<'a> {
    pub account_id: &'a str,
    /// Only these types (all when empty).
    pub types: &'a [String],
    /// Only events after this one (its id).
    pub after: Option<&'a str>,
    pub limit: i64,
}

/// The account's events, oldest first; `None` when `after` is not one of its events.
pub async fn list(db: &Db, filter: &Filter<'_>) -> sqlx::Result<Option<Vec<Event>>> {
    let after = match filter.after {
        None => 0,
        Some(id) => {
            let position: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM events WHERE id = $1 AND account_id = $2 AND data IS NOT NULL",
            )
            .bind(id)
            .bind(filter.account_id)
            .fetch_optional(&db.pool)
            .await?;
            match position {
                Some(position) => position,
                None => return Ok(None),
            }
        }
    };
    let mut sql = format!(
        "SELECT {COLUMNS} FROM events WHERE account_id = $1 AND data IS NOT NULL AND position > $2"
    );
    if !filter.types.is_empty() {
        sql.push_str(&format!(
            " AND type IN ({})",
            placeholders(4, filter.types.len())
        ));
    }
    sql.push_str(" ORDER BY position LIMIT $3");
    let mut query = sqlx::query_as(&sql)
        .bind(filter.account_id)
        .bind(after)
        .bind(filter.limit);
    for kind in filter.types {
        query = query.bind(kind);
    }
    query.fetch_all(&db.pool).await.map(Some)
}

/// One event with a payload (history-only events have none).
pub async fn get(conn: &mut sqlx::AnyConnection, id: &str) -> sqlx::Result<Option<Event>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE id = $1 AND data IS NOT NULL AND account_id IS NOT NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Deletes events older than `retention_ms`, except those a webhook is still trying to
/// deliver (since `delivering_since`: a job older than every retry, say one waiting for a
/// disabled endpoint, keeps nothing), `batch` at a time so that no statement holds the
/// database long; their deliveries go with them. Answers how many went.
pub async fn prune(
    db: &Db,
    retention_ms: i64,
    delivering_since: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    let now = db.now().0;
    let mut pruned = 0;
    loop {
        let deleted = db.write_alone(sqlx::query(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id \
             AND d.status IN ('pending', 'delivering') AND d.created_at >= $2) LIMIT $3)",
        )
        .bind(now.saturating_sub(retention_ms))
        .bind(now.saturating_sub(delivering_since))
        .bind(batch)
        )
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < u64::try_from(batch).unwrap_or(0) {
            return Ok(pruned);
        }
    }
}
