//! The `webhooks` and `webhook_subscriptions` tables, and the reads of an endpoint's
//! deliveries the API shows.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{Attempt, Delivery, Webhook};
use crate::events::TEST_TYPE;
use crate::store::{Db, Engine, Timestamp, placeholders};

/// The context a webhook's signing secrets are sealed under.
pub fn seal_context(webhook_id: &str) -> String {
    format!("webhook:{webhook_id}")
}

const WEBHOOK_COLUMNS: &str = "id, url, description, events, enabled, disabled_reason, \
     disabled_at, previous_secret_until, created_at, updated_at";

/// A row of `webhooks`, as read at `now` (which decides whether a previous secret still
/// signs).
fn webhook_of(row: &AnyRow, now: Timestamp) -> sqlx::Result<Webhook> {
    let events: String = row.try_get("events")?;
    let events: Vec<String> =
        serde_json::from_str(&events).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let enabled: i64 = row.try_get("enabled")?;
    let previous_until: Option<i64> = row.try_get("previous_secret_until")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events,
        enabled: enabled != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: row.try_get::<Option<i64>, _>("disabled_at")?.map(Timestamp),
        previous_secret_expires_at: previous_until.filter(|&u| u > now.0).map(Timestamp),
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}

/// Makes concurrent writers of an account's webhooks take turns, so that a limit counted
/// in the transaction holds: SQLite has one writer at a time, PostgreSQL waits on the
/// account's row.
pub async fn lock_account(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    account_id: &str,
) -> sqlx::Result<()> {
    if engine == Engine::Postgres {
        sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account_id)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The account's webhooks, counted.
pub async fn count(conn: &mut sqlx::AnyConnection, account_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(conn)
        .await
}

/// A webhook to write.
pub struct NewWebhook<'a> {
    pub id: &'a str,
    pub account_id: &'a str,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub events: &'a [String],
    /// The signing secret, sealed under `seal_context(id)`.
    pub sealed_secret: &'a str,
}

/// Writes a webhook, enabled, with its subscriptions.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    webhook: &NewWebhook<'_>,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhooks (id, account_id, url, description, events, enabled, secret, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $7)",
    )
    .bind(webhook.id)
    .bind(webhook.account_id)
    .bind(webhook.url)
    .bind(webhook.description)
    .bind(events_json(webhook.events))
    .bind(webhook.sealed_secret)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    subscribe(conn, webhook.account_id, webhook.id, webhook.events).await
}

fn events_json(events: &[String]) -> String {
    serde_json::to_string(events).expect("a list of strings serializes")
}

/// Makes `events` the event types the webhook receives.
async fn subscribe(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    webhook_id: &str,
    events: &[String],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM webhook_subscriptions WHERE webhook_id = $1")
        .bind(webhook_id)
        .execute(&mut *conn)
        .await?;
    for kind in events {
        sqlx::query(
            "INSERT INTO webhook_subscriptions (account_id, event_type, webhook_id) VALUES ($1, $2, $3)",
        )
        .bind(account_id)
        .bind(kind)
        .bind(webhook_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The account's webhook `id`.
pub async fn get(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
    now: Timestamp,
) -> sqlx::Result<Option<Webhook>> {
    select(conn, account_id, id, now, "").await
}

/// The account's webhook `id`, which concurrent writers of it then wait for until the
/// transaction ends, so that what is counted or checked in it holds: PostgreSQL locks the
/// row; on SQLite the writer lock (`Db::begin`) makes them take turns already.
pub async fn get_locked(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    account_id: &str,
    id: &str,
    now: Timestamp,
) -> sqlx::Result<Option<Webhook>> {
    let lock = if engine == Engine::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    select(conn, account_id, id, now, lock).await
}

async fn select(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
    now: Timestamp,
    lock: &str,
) -> sqlx::Result<Option<Webhook>> {
    let row = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND account_id = $2{lock}"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| webhook_of(&row, now)).transpose()
}

/// Whether a test of the webhook has not had its attempt yet: a `webhook.test` delivery
/// to it (its object is the webhook) that is not final and has no attempt recorded. Its
/// later retries, if the attempt failed, do not count: they are the worker's.
pub async fn test_under_way(
    conn: &mut sqlx::AnyConnection,
    webhook_id: &str,
) -> sqlx::Result<bool> {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.webhook_id = $1 AND d.object_key = $1 AND d.status IN ('pending', 'delivering') \
         AND e.type = $2 \
         AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = d.id)",
    )
    .bind(webhook_id)
    .bind(TEST_TYPE)
    .fetch_one(conn)
    .await?;
    Ok(waiting > 0)
}

/// When each `webhook.test` event sent to the webhook after `since` was written, oldest
/// first.
pub async fn tests_since(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    webhook_id: &str,
    since: Timestamp,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT e.at FROM events e WHERE e.account_id = $1 AND e.type = $2 AND e.data IS NOT NULL \
         AND e.at > $3 AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id \
         AND d.webhook_id = $4 AND d.object_key = $4) ORDER BY e.at",
    )
    .bind(account_id)
    .bind(TEST_TYPE)
    .bind(since.0)
    .bind(webhook_id)
    .fetch_all(conn)
    .await
}

/// A page of the account's webhooks, oldest first, after the webhook `after`; `None` when
/// `after` is not one of them.
pub async fn page(
    db: &Db,
    account_id: &str,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Option<Vec<Webhook>>> {
    let (after_created, after_id) = match after {
        None => (i64::MIN, String::new()),
        Some(id) => {
            let created: Option<i64> = sqlx::query_scalar(
                "SELECT created_at FROM webhooks WHERE id = $1 AND account_id = $2",
            )
            .bind(id)
            .bind(account_id)
            .fetch_optional(&db.pool)
            .await?;
            match created {
                Some(created) => (created, id.to_string()),
                None => return Ok(None),
            }
        }
    };
    let rows = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE account_id = $1 \
         AND (created_at > $2 OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT $4"
    ))
    .bind(account_id)
    .bind(after_created)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let now = db.now();
    rows.iter()
        .map(|row| webhook_of(row, now))
        .collect::<sqlx::Result<_>>()
        .map(Some)
}

/// What a `PATCH` changes; `None` leaves a field as it is.
pub struct Changes<'a> {
    pub url: Option<&'a str>,
    pub events: Option<&'a [String]>,
    pub enabled: Option<bool>,
    pub description: Option<Option<&'a str>>,
}

/// Applies `changes` to the account's webhook `id`; false when it has none such.
/// Enabling clears the failure count and why mailroom had turned it off.
pub async fn update(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
    changes: &Changes<'_>,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE webhooks SET url = COALESCE($3, url), events = COALESCE($4, events), \
         description = CASE WHEN $5 = 1 THEN $6 ELSE description END, updated_at = $7 \
         WHERE id = $1 AND account_id = $2",
    )
    .bind(id)
    .bind(account_id)
    .bind(changes.url)
    .bind(changes.events.map(events_json))
    .bind(i64::from(changes.description.is_some()))
    .bind(changes.description.flatten())
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    match changes.enabled {
        Some(true) => {
            sqlx::query(
                "UPDATE webhooks SET enabled = 1, failures = 0, failing_since = NULL, \
                 disabled_at = NULL, disabled_reason = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        Some(false) => {
            // Turned off by the account: no reason of mailroom's to show.
            sqlx::query(
                "UPDATE webhooks SET enabled = 0, disabled_at = CASE WHEN enabled = 1 THEN $2 \
                 ELSE disabled_at END, disabled_reason = CASE WHEN enabled = 1 THEN NULL \
                 ELSE disabled_reason END WHERE id = $1",
            )
            .bind(id)
            .bind(now.0)
            .execute(&mut *conn)
            .await?;
        }
        None => {}
    }
    if let Some(events) = changes.events {
        subscribe(conn, account_id, id, events).await?;
    }
    Ok(true)
}

/// Deletes the account's webhook `id` with its subscriptions and deliveries; false when
/// it has none such.
pub async fn delete(db: &Db, account_id: &str, id: &str) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND account_id = $2")
        .bind(id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected() > 0)
}

/// Replaces the signing secret: the current one becomes the previous, which keeps signing
/// until `previous_until`. False when the account has no such webhook, or when its
/// previous secret still signs (a rotation must not cut that one's overlap short).
pub async fn rotate_secret(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
    sealed_secret: &str,
    previous_until: Timestamp,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let rotated = sqlx::query(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $3, secret = $4, \
         updated_at = $5 WHERE id = $1 AND account_id = $2 \
         AND (previous_secret_until IS NULL OR previous_secret_until <= $5)",
    )
    .bind(id)
    .bind(account_id)
    .bind(previous_until.0)
    .bind(sealed_secret)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(rotated.rows_affected() > 0)
}

const DELIVERY_COLUMNS: &str = "d.position, d.id, d.event_id, e.type AS event_type, d.status, \
     d.attempts, d.next_attempt_at, d.created_at, d.updated_at, d.success_http_status, \
     d.success_latency_ms, d.success_response";

impl sqlx::FromRow<'_, AnyRow> for Delivery {
    fn from_row(row: &AnyRow) -> sqlx::Result<Delivery> {
        let status: String = row.try_get("status")?;
        let final_status = matches!(status.as_str(), "succeeded" | "failed");
        let next: Option<i64> = row.try_get("next_attempt_at")?;
        let updated_at = Timestamp(row.try_get("updated_at")?);
        // The successful attempt is kept on the delivery's row; the others are added from
        // their own rows (`add_attempts`).
        let success = row
            .try_get::<Option<i64>, _>("success_http_status")?
            .map(|http_status| -> sqlx::Result<Attempt> {
                Ok(Attempt {
                    number: row.try_get("attempts")?,
                    at: updated_at,
                    http_status: Some(http_status),
                    latency_ms: row
                        .try_get::<Option<i64>, _>("success_latency_ms")?
                        .unwrap_or(0),
                    response: row.try_get("success_response")?,
                    error: None,
                })
            })
            .transpose()?;
        Ok(Delivery {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            status,
            attempts: success.into_iter().collect(),
            next_attempt_at: next.filter(|_| !final_status).map(Timestamp),
            created_at: Timestamp(row.try_get("created_at")?),
            updated_at,
            position: row.try_get("position")?,
        })
    }
}

/// Which deliveries of a webhook a list shows.
pub struct DeliveryFilter<'a> {
    pub webhook_id: &'a str,
    pub status: Option<&'a str>,
    /// Only deliveries older than this one (its id).
    pub after: Option<&'a str>,
    pub limit: i64,
}

/// A page of a webhook's deliveries, newest first, with their attempts; `None` when
/// `after` is not one of its deliveries.
pub async fn deliveries(
    db: &Db,
    filter: &DeliveryFilter<'_>,
) -> sqlx::Result<Option<Vec<Delivery>>> {
    let before = match filter.after {
        None => i64::MAX,
        Some(id) => {
            let position: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2",
            )
            .bind(id)
            .bind(filter.webhook_id)
            .fetch_optional(&db.pool)
            .await?;
            match position {
                Some(position) => position,
                None => return Ok(None),
            }
        }
    };
    let mut sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.webhook_id = $1 AND d.position < $2"
    );
    if filter.status.is_some() {
        sql.push_str(" AND d.status = $4");
    }
    sql.push_str(" ORDER BY d.position DESC LIMIT $3");
    let mut query = sqlx::query_as::<_, Delivery>(&sql)
        .bind(filter.webhook_id)
        .bind(before)
        .bind(filter.limit);
    if let Some(status) = filter.status {
        query = query.bind(status);
    }
    let mut deliveries = query.fetch_all(&db.pool).await?;
    add_attempts(db, &mut deliveries).await?;
    Ok(Some(deliveries))
}

/// Fills in each delivery's attempts from their rows, first to last.
async fn add_attempts(db: &Db, deliveries: &mut [Delivery]) -> sqlx::Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT delivery_id, number, at, http_status, latency_ms, response, error \
         FROM webhook_attempts WHERE delivery_id IN ({}) ORDER BY number",
        placeholders(1, deliveries.len())
    );
    let mut query = sqlx::query(&sql);
    for delivery in deliveries.iter() {
        query = query.bind(&delivery.id);
    }
    for row in query.fetch_all(&db.pool).await? {
        let delivery_id: String = row.try_get("delivery_id")?;
        let attempt = Attempt {
            number: row.try_get("number")?,
            at: Timestamp(row.try_get("at")?),
            http_status: row.try_get("http_status")?,
            latency_ms: row.try_get("latency_ms")?,
            response: row.try_get("response")?,
            error: row.try_get("error")?,
        };
        if let Some(delivery) = deliveries.iter_mut().find(|d| d.id == delivery_id) {
            delivery.attempts.push(attempt);
        }
    }
    for delivery in deliveries {
        delivery.attempts.sort_by_key(|attempt| attempt.number);
    }
    Ok(())
}

/// One delivery of a webhook, with its attempts.
pub async fn delivery(db: &Db, webhook_id: &str, id: &str) -> sqlx::Result<Option<Delivery>> {
    let found = sqlx::query_as::<_, Delivery>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.webhook_id = $1 AND d.id = $2"
    ))
    .bind(webhook_id)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    let mut found = [found];
    add_attempts(db, &mut found).await?;
    let [found] = found;
    Ok(Some(found))
}

/// The delivery of the event `event_id` to the webhook that is not final yet (the oldest,
/// should there be more), made due at once if it waits for a later try.
pub async fn hurry_in_flight(
    conn: &mut sqlx::AnyConnection,
    webhook_id: &str,
    event_id: &str,
    now: Timestamp,
) -> sqlx::Result<Option<String>> {
    let in_flight: Option<String> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE webhook_id = $1 AND event_id = $2 \
         AND status IN ('pending', 'delivering') ORDER BY position LIMIT 1",
    )
    .bind(webhook_id)
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = &in_flight {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = $2, updated_at = $2 \
             WHERE id = $1 AND status = 'pending' AND next_attempt_at > $2",
        )
        .bind(id)
        .bind(now.0)
        .execute(conn)
        .await?;
    }
    Ok(in_flight)
}

/// The event and object a delivery of a webhook carries, to deliver it again.
pub async fn delivered_event(
    conn: &mut sqlx::AnyConnection,
    webhook_id: &str,
    id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT event_id, object_key FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2",
    )
    .bind(webhook_id)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| Ok((row.try_get("event_id")?, row.try_get("object_key")?)))
        .transpose()
}
