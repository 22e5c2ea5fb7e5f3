//! The delivery worker: claims due messages (one instance each), sends them through the
//! right transport, records every attempt, and retries temporary failures with backoff.

use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::Row;
use tokio::sync::watch;

use super::compose::{Parts, compose};
use super::outbox::{Body, seal_context};
use super::transport::{Failure, SmtpTarget, Transport, deliver};
use crate::http::AppState;
use crate::store::groups::run_in_groups;
use crate::store::{Engine, Timestamp};

/// Attempts before a message is given up: with the default 30 s first retry, doubling up
/// to 4 hours apart, the last comes about a day after the first.
pub const MAX_ATTEMPTS: i64 = 13;
const MAX_RETRY_DELAY_MS: i64 = 4 * 3_600_000;

struct Claimed {
    id: String,
    account_id: Option<String>,
    from: String,
    to: String,
    subject: String,
    body: String,
    message_id: String,
    attempts: i64,
    created_at: i64,
    lease_until: i64,
}

/// How long a claimed message stays with one instance: a whole conversation fits twice.
fn lease_ms(state: &AppState) -> i64 {
    (state.settings.smtp_timeout.max(1) as i64).saturating_mul(2000)
}

async fn claim_due(state: &AppState, limit: i64) -> anyhow::Result<Vec<Claimed>> {
    let lock = match state.db.engine {
        Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let due = "((status = 'queued' AND next_attempt_at <= $2) OR (status = 'sending' AND lease_until < $2))";
    let sql = format!(
        "UPDATE outbox SET status = 'sending', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
         WHERE id IN (SELECT id FROM outbox WHERE {due} ORDER BY next_attempt_at LIMIT $3 {lock}) AND {due} \
         RETURNING id, account_id, from_address, to_address, subject, body, message_id, attempts, created_at, lease_until"
    );
    let now = Timestamp::now().0;
    let rows = sqlx::query(&sql)
        .bind(now + lease_ms(state))
        .bind(now)
        .bind(limit)
        .fetch_all(&state.db.pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("id")?,
                account_id: row.try_get("account_id")?,
                from: row.try_get("from_address")?,
                to: row.try_get("to_address")?,
                subject: row.try_get("subject")?,
                body: row.try_get("body")?,
                message_id: row.try_get("message_id")?,
                attempts: row.try_get("attempts")?,
                created_at: row.try_get("created_at")?,
                lease_until: row.try_get("lease_until")?,
            })
        })
        .collect()
}

/// The transport for mail From `from_domain` of `account_id`: the domain's own relay,
/// else the system relay, else files.
pub async fn transport_for(
    state: &AppState,
    account_id: Option<&str>,
    from_domain: &str,
) -> anyhow::Result<Transport> {
    if let Some(account_id) = account_id
        && let Some(target) = crate::relays::target_for(state, account_id, from_domain).await?
    {
        return Ok(Transport::Smtp(target));
    }
    system_transport(state)
}

pub fn system_transport(state: &AppState) -> anyhow::Result<Transport> {
    let timeout = Duration::from_secs(state.settings.smtp_timeout.max(1));
    Ok(match &state.settings.smtp_url {
        Some(url) => Transport::Smtp(SmtpTarget::from_url(url.expose(), timeout)?),
        None => Transport::Files(state.settings.data_dir.join("mail")),
    })
}

async fn attempt(state: &AppState, message: &Claimed) -> (String, Result<String, Failure>) {
    let body: Body = match state
        .master_key
        .open(&message.body, &seal_context(&message.id))
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(body) => body,
        Err(error) => {
            return (
                "none".into(),
                Err(Failure::Permanent(format!(
                    "cannot open the message: {error}"
                ))),
            );
        }
    };
    let from_domain = message
        .from
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let transport = match transport_for(state, message.account_id.as_deref(), &from_domain).await {
        Ok(transport) => transport,
        Err(error) => {
            return (
                "none".into(),
                Err(Failure::Temporary(format!("no transport: {error:#}"))),
            );
        }
    };
    let parts = Parts {
        from: &message.from,
        to: &message.to,
        subject: &message.subject,
        text: &body.text,
        html: &body.html,
        message_id: &message.message_id,
        date: message.created_at,
    };
    let composed = match compose(&state.db, &state.master_key, parts).await {
        Ok(composed) => composed,
        Err(error) => {
            return (
                transport.describe(),
                Err(Failure::Temporary(format!(
                    "cannot build the message: {error:#}"
                ))),
            );
        }
    };
    let result = deliver(
        &transport,
        &message.message_id,
        &composed.envelope,
        &composed.bytes,
    )
    .await;
    (transport.describe(), result)
}

/// Exponential backoff with ±20% jitter, so that retries of many messages spread out.
fn retry_delay_ms(base_ms: i64, attempts: i64) -> i64 {
    let delay = base_ms
        .saturating_mul(1 << (attempts - 1).clamp(0, 20))
        .min(MAX_RETRY_DELAY_MS.max(base_ms));
    let jitter = rand::rng().random_range(0.8..1.2);
    (delay as f64 * jitter) as i64
}

/// Records the outcome of each attempt, all in one transaction.
async fn record(
    state: &AppState,
    attempts: &[(Claimed, String, Result<String, Failure>)],
) -> anyhow::Result<()> {
    let now = Timestamp::now().0;
    let mut tx = state.db.begin().await?;
    let mut recorded = Vec::with_capacity(attempts.len());
    for (message, transport, result) in attempts {
        let (outcome, detail) = match result {
            Ok(reply) => ("sent", reply.clone()),
            Err(Failure::Temporary(error)) => ("temporary", error.clone()),
            Err(Failure::Permanent(error)) => ("permanent", error.clone()),
        };
        let (status, next_attempt_at, sent_at, last_error) = match result {
            Ok(_) => ("sent", None, Some(now), None),
            Err(Failure::Temporary(error)) if message.attempts < MAX_ATTEMPTS => {
                let base = (state.settings.mail_retry_seconds.max(1) as i64).saturating_mul(1000);
                (
                    "queued",
                    Some(now + retry_delay_ms(base, message.attempts)),
                    None,
                    Some(error.clone()),
                )
            }
            Err(Failure::Temporary(error) | Failure::Permanent(error)) => {
                ("failed", None, None, Some(error.clone()))
            }
        };
        // Only while the lease is still ours: past it, another instance owns the message.
        let updated = sqlx::query(
            "UPDATE outbox SET status = $2, next_attempt_at = $3, sent_at = $4, last_error = $5, \
             lease_until = NULL, updated_at = $6 WHERE id = $1 AND lease_until = $7",
        )
        .bind(&message.id)
        .bind(status)
        .bind(next_attempt_at)
        .bind(sent_at)
        .bind(&last_error)
        .bind(now)
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
        .bind(now)
        .bind(transport)
        .bind(outcome)
        .bind(&detail)
        .execute(&mut *tx)
        .await?;
        recorded.push((message, transport, status, detail));
    }
    tx.commit().await?;
    for (message, transport, status, detail) in recorded {
        match status {
            "sent" => tracing::info!(message = %message.id, to = %message.to, transport, "sent"),
            "queued" => {
                tracing::warn!(message = %message.id, attempt = message.attempts, transport, error = %detail, "delivery failed; will retry")
            }
            _ => {
                tracing::error!(message = %message.id, attempt = message.attempts, transport, error = %detail, "delivery failed for good")
            }
        }
    }
    Ok(())
}

async fn log_queue(state: &AppState) -> anyhow::Result<()> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS depth, MIN(next_attempt_at) AS oldest FROM outbox WHERE status IN ('queued', 'sending')",
    )
    .fetch_one(&state.db.pool)
    .await?;
    let depth: i64 = row.try_get("depth")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let hour_ago = Timestamp::now().0 - 3_600_000;
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE status = 'failed' AND updated_at > $1",
    )
    .bind(hour_ago)
    .fetch_one(&state.db.pool)
    .await?;
    let overdue_secs = oldest.map_or(0, |due| ((Timestamp::now().0 - due) / 1000).max(0));
    tracing::info!(
        queue_depth = depth,
        oldest_due_overdue_secs = overdue_secs,
        failed_last_hour = failed,
        "outbox"
    );
    Ok(())
}

/// Runs until `stop` changes; wakes at once when `AppState::wake_outbox` is called.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    const BATCH: i64 = 32;
    const CONCURRENCY: usize = 16;
    const METRICS_EVERY: Duration = Duration::from_secs(60);
    let mut last_metrics = Instant::now() - METRICS_EVERY;
    tracing::info!("delivery worker started");
    while !*stop.borrow() {
        if last_metrics.elapsed() >= METRICS_EVERY {
            if let Err(error) = log_queue(&state).await {
                tracing::warn!(%error, "cannot read the outbox");
            }
            last_metrics = Instant::now();
        }
        let claimed = match claim_due(&state, BATCH).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "delivery worker cannot claim messages");
                Vec::new()
            }
        };
        let full_batch = claimed.len() as i64 == BATCH;
        let send = |message: Claimed| {
            let state = state.clone();
            async move {
                let (transport, result) = attempt(&state, &message).await;
                (message, transport, result)
            }
        };
        let save = |attempts: Vec<_>| {
            let state = state.clone();
            async move {
                if let Err(error) = record(&state, &attempts).await {
                    tracing::error!(%error, messages = attempts.len(), "cannot record delivery attempts");
                }
            }
        };
        run_in_groups(claimed, CONCURRENCY, send, save).await;
        if !full_batch {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = state.outbox_wakeup.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
    tracing::info!("delivery worker stopped");
}

/// `send-test-email`: one message straight through the system transport.
pub async fn send_test_email(
    state: &AppState,
    to: &super::EmailAddress,
) -> anyhow::Result<(String, Result<String, Failure>)> {
    let from = super::EmailAddress::parse(&state.settings.mail_from)
        .map_err(|e| anyhow::anyhow!("MAILROOM_MAIL_FROM: {e}"))?;
    let sent_at = Timestamp::now();
    let email = super::templates::render(
        super::templates::Kind::Test,
        &[
            ("from", &from.to_string()),
            ("to", &to.to_string()),
            ("sent_at", &sent_at.rfc3339()),
        ],
    );
    let message_id = format!("<{}@{}>", &crate::store::new_id("msg")[4..], from.domain());
    let composed = compose(
        &state.db,
        &state.master_key,
        Parts {
            from: &from.to_string(),
            to: &to.to_string(),
            subject: &email.subject,
            text: &email.text,
            html: &email.html,
            message_id: &message_id,
            date: sent_at.0,
        },
    )
    .await?;
    let transport = system_transport(state)?;
    let result = deliver(&transport, &message_id, &composed.envelope, &composed.bytes).await;
    Ok((transport.describe(), result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_and_a_ceiling() {
        let base = 30_000;
        let first = retry_delay_ms(base, 1);
        assert!((24_000..=36_000).contains(&first), "{first}");
        let fifth = retry_delay_ms(base, 5);
        assert!((384_000..=576_000).contains(&fifth), "{fifth}");
        let late = retry_delay_ms(base, 12);
        assert!(late <= (MAX_RETRY_DELAY_MS as f64 * 1.2) as i64, "{late}");
        let total: i64 = (1..MAX_ATTEMPTS)
            .map(|n| base.saturating_mul(1 << (n - 1)).min(MAX_RETRY_DELAY_MS))
            .sum();
        assert!(
            (12 * 3_600_000..36 * 3_600_000).contains(&total),
            "about a day: {total}"
        );
    }
}
