//! Delivering events to webhooks: the worker that claims due jobs, signs each payload the
//! Standard Webhooks way and POSTs it, and records every attempt.
//!
//! Each (event, endpoint) is a job in `webhook_deliveries`, claimed like the outbox's
//! emails: a lease (`next_attempt_at` of a `delivering` job is its end; an expired one is
//! due again, so a crash loses nothing) and, on PostgreSQL, `SKIP LOCKED`, so that several
//! instances never take the same job. Delivery is at least once: a receiver de-duplicates
//! on `webhook-id`, the event's id, the same on every attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use sqlx::Row;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use utoipa::ToSchema;

use super::client::{self, Reply};
use super::signature::{self, SigningKey};
use crate::config::Settings;
use crate::mail::destination::Policy;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Engine};

/// What one attempt at a delivery came to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outcome {
    /// The endpoint's HTTP status; `null` when no answer came.
    pub http_status: Option<u16>,
    pub latency_ms: i64,
    /// The first KiB of the reply's body.
    pub response: Option<String>,
    /// Why no answer came: the destination refused by policy, a timeout, a TLS failure…
    pub error: Option<String>,
}

/// How long the worker waits after attempt n (the n-th entry) before the next; past the
/// end, the delivery has failed. About three days in all, each wait ±10 %.
pub const RETRY_SCHEDULE: [Duration; 11] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The whole of one attempt: connection, TLS, request and the reply's first KiB.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claimed job stays with one instance: the attempt, then time to record it.
const LEASE_MS: i64 = 20_000;

/// Attempts under way at once on one instance, all endpoints together.
const SLOTS: usize = 64;

/// How often the worker looks for due jobs when nothing woke it.
const POLL: Duration = Duration::from_millis(500);

/// How often events past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Tries at recording an attempt (0.2 s, doubling, apart).
const RECORD_TRIES: u32 = 6;

/// How long failures must have gone on before their count disables an endpoint.
const FAILING_FOR_MS: i64 = 24 * 3_600_000;

/// Why an endpoint that answered 410 is disabled.
pub const GONE_REASON: &str = "endpoint.disabled: the endpoint answered 410 Gone";

const USER_AGENT: &str = concat!("mailroom/", env!("CARGO_PKG_VERSION"), " (webhooks)");

/// The worker: claims due deliveries and attempts each in a slot of its own, so that a
/// slow endpoint holds only its own slots (at most `webhook_concurrency` of them).
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub master_key: MasterKey,
    pub policy: Arc<Policy>,
    pub settings: Arc<Settings>,
}

/// A claimed delivery.
struct Job {
    id: String,
    webhook_id: String,
    event_id: String,
    /// This attempt's number.
    attempts: i64,
    /// The lease's end: the attempt is recorded only while the job still has it.
    lease_until: i64,
}

impl Job {
    fn from_row(row: &sqlx::any::AnyRow) -> sqlx::Result<Job> {
        Ok(Job {
            id: row.try_get("id")?,
            webhook_id: row.try_get("webhook_id")?,
            event_id: row.try_get("event_id")?,
            attempts: row.try_get("attempts")?,
            lease_until: row.try_get("next_attempt_at")?,
        })
    }
}

const RETURNING: &str = "RETURNING id, webhook_id, event_id, attempts, next_attempt_at";

/// Takes the lease on up to `limit` due jobs for this instance alone: at most `cap` under
/// way per endpoint (those of other claims counted), and none while an earlier job about
/// the same object waits for its first attempt or is being attempted, so that one
/// object's events arrive in order while the endpoint answers; an earlier job that failed
/// and waits for its retry does not hold the later ones back.
async fn claim_due(db: &Db, cap: i64, limit: i64) -> sqlx::Result<Vec<Job>> {
    let lock = match db.engine {
        Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let earlier_waits = "EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = d.webhook_id \
         AND e.object_key = d.object_key AND e.position < d.position \
         AND ((e.status = 'delivering' AND e.next_attempt_at > $1) OR (e.status = 'pending' AND e.attempts = 0)))";
    let under_way = "(SELECT COUNT(*) FROM webhook_deliveries f WHERE f.webhook_id = due.webhook_id \
         AND f.status = 'delivering' AND f.next_attempt_at > $1)";
    let in_turn = format!(
        "SELECT id FROM (SELECT d.id, d.webhook_id, d.next_attempt_at, d.position, \
         ROW_NUMBER() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.position) AS turn \
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.status IN ('pending', 'delivering') AND d.next_attempt_at <= $1 AND w.enabled = 1 \
         AND NOT {earlier_waits}) AS due \
         WHERE due.turn + {under_way} <= $3 ORDER BY due.turn, due.next_attempt_at, due.position LIMIT $4"
    );
    // The `due` condition again in the UPDATE: another instance may have claimed a job
    // since the subquery read it.
    let sql = format!(
        "UPDATE webhook_deliveries SET status = 'delivering', attempts = attempts + 1, \
         next_attempt_at = $2, updated_at = $1 \
         WHERE id IN (SELECT id FROM webhook_deliveries WHERE id IN ({in_turn}) {lock}) \
         AND status IN ('pending', 'delivering') AND next_attempt_at <= $1 {RETURNING}"
    );
    let now = db.now().0;
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(now + LEASE_MS)
        .bind(cap)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(Job::from_row).collect()
}

/// Takes the lease on the job `id`, due or not, whatever the cap and order (a test, a
/// replay): `None` when it is final or another attempt has it.
async fn claim_one(db: &Db, id: &str) -> sqlx::Result<Option<Job>> {
    let now = db.now().0;
    let row = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET status = 'delivering', attempts = attempts + 1, \
         next_attempt_at = $2, updated_at = $1 WHERE id = $3 \
         AND (status = 'pending' OR (status = 'delivering' AND next_attempt_at <= $1)) {RETURNING}"
    ))
    .bind(now)
    .bind(now + LEASE_MS)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(Job::from_row).transpose()
}

/// What an attempt leaves the delivery and its endpoint as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// A 2xx: delivered; the endpoint's run of failures ends.
    Succeeded,
    /// 410: the delivery fails and the endpoint is disabled.
    Gone,
    /// Another try at this time.
    Retry(i64),
    /// Out of tries.
    Failed,
    /// Nothing to deliver (the event is gone): final, and no fault of the endpoint's.
    Dropped,
}

/// When attempt `number` failed at `now`: the next try, or `Failed` past the schedule.
fn after_failure(number: i64, now: i64) -> Verdict {
    let wait = usize::try_from(number - 1)
        .ok()
        .and_then(|index| RETRY_SCHEDULE.get(index));
    match wait {
        Some(wait) => {
            let ms = wait.as_millis() as f64 * rand::rng().random_range(0.9..=1.1);
            Verdict::Retry(now + ms as i64)
        }
        None => Verdict::Failed,
    }
}

/// What is sent: where, and the signed request.
struct Prepared {
    url: url::Url,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// Why nothing was sent.
enum NotSent {
    /// The event is no longer kept.
    NoEvent,
    /// Something else, worth another try (a database error, a secret that does not open).
    Error(String),
}

/// Reads the event and the endpoint, and signs the payload with its secrets.
async fn prepare(db: &Db, master_key: &MasterKey, job: &Job) -> Result<Prepared, NotSent> {
    let error = |e: anyhow::Error| NotSent::Error(format!("{e:#}"));
    let mut conn = db.pool.acquire().await.map_err(|e| error(e.into()))?;
    let event = crate::events::get(&mut conn, &job.event_id)
        .await
        .map_err(|e| error(e.into()))?
        .ok_or(NotSent::NoEvent)?;
    let body = serde_json::to_vec(&event).map_err(|e| error(e.into()))?;
    let row = sqlx::query(
        "SELECT url, secret, previous_secret, previous_secret_until FROM webhooks WHERE id = $1",
    )
    .bind(&job.webhook_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| error(e.into()))?;
    drop(conn);
    let read = move || -> anyhow::Result<Prepared> {
        let url: String = row.try_get("url")?;
        let url = url::Url::parse(&url).context("the webhook's URL cannot be read")?;
        let now = db.now();
        let context = super::store::seal_context(&job.webhook_id);
        let open = |sealed: &str| -> anyhow::Result<SigningKey> {
            let secret = master_key
                .open(sealed, &context)
                .context("cannot open the webhook's signing secret")?;
            let secret = String::from_utf8(secret).context("the signing secret is not text")?;
            SigningKey::parse(&secret).map_err(anyhow::Error::msg)
        };
        let mut keys = vec![open(&row.try_get::<String, _>("secret")?)?];
        let previous: Option<String> = row.try_get("previous_secret")?;
        let until: Option<i64> = row.try_get("previous_secret_until")?;
        if let (Some(previous), Some(until)) = (previous, until)
            && until > now.0
        {
            keys.push(open(&previous)?);
        }
        let timestamp = now.0.div_euclid(1000);
        let signature = signature::header(&keys, &event.id, timestamp, &body);
        let headers = vec![
            ("content-type", "application/json".to_string()),
            ("user-agent", USER_AGENT.to_string()),
            ("webhook-id", event.id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        Ok(Prepared { url, headers, body })
    };
    read().map_err(error)
}

/// Makes one attempt at `job`: answers what came of it and what that makes of the job.
async fn attempt(
    db: &Db,
    master_key: &MasterKey,
    policy: &Policy,
    job: &Job,
) -> (Outcome, Verdict) {
    let failed = |error: String| Outcome {
        http_status: None,
        latency_ms: 0,
        response: None,
        error: Some(error),
    };
    let prepared = match prepare(db, master_key, job).await {
        Ok(prepared) => prepared,
        Err(NotSent::NoEvent) => {
            let outcome = failed("not sent: the event is no longer kept".to_string());
            return (outcome, Verdict::Dropped);
        }
        Err(NotSent::Error(error)) => {
            tracing::warn!(delivery = %job.id, %error, "cannot prepare a webhook delivery");
            let outcome = failed(format!("not sent: {error}"));
            return (outcome, after_failure(job.attempts, db.now().0));
        }
    };
    let started = Instant::now();
    let sent = tokio::time::timeout(
        TIMEOUT,
        client::post(&prepared.url, policy, &prepared.headers, prepared.body),
    )
    .await;
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let now = db.now().0;
    let (outcome, verdict) = match sent {
        Ok(Ok(Reply { status, body })) => {
            let verdict = match status {
                200..=299 => Verdict::Succeeded,
                410 => Verdict::Gone,
                _ => after_failure(job.attempts, now),
            };
            let error = (300..400)
                .contains(&status)
                .then(|| format!("the endpoint answered {status}: redirects are not followed"));
            let outcome = Outcome {
                http_status: Some(status),
                latency_ms,
                response: (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned()),
                error,
            };
            (outcome, verdict)
        }
        Ok(Err(error)) => {
            let outcome = Outcome {
                latency_ms,
                ..failed(error)
            };
            (outcome, after_failure(job.attempts, now))
        }
        Err(_) => {
            let error = format!("no answer within {} seconds", TIMEOUT.as_secs());
            let outcome = Outcome {
                latency_ms,
                ..failed(error)
            };
            (outcome, after_failure(job.attempts, now))
        }
    };
    (outcome, verdict)
}

/// Records an attempt in one transaction, if the job's lease is still this attempt's: the
/// attempt, the job's new status, and the endpoint's run of failures — disabling it on a
/// 410, or when `disable_after` failures (0: never) have gone on for a day. Answers
/// whether it was recorded.
async fn record(
    db: &Db,
    job: &Job,
    outcome: &Outcome,
    verdict: Verdict,
    disable_after: u64,
) -> sqlx::Result<bool> {
    let now = db.now().0;
    let (status, next) = match verdict {
        Verdict::Succeeded => ("succeeded", None),
        Verdict::Retry(at) => ("pending", Some(at)),
        Verdict::Gone | Verdict::Failed | Verdict::Dropped => ("failed", None),
    };
    let mut tx = db.begin().await?;
    let ours = sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, next_attempt_at = $3, updated_at = $4 \
         WHERE id = $1 AND status = 'delivering' AND next_attempt_at = $5",
    )
    .bind(&job.id)
    .bind(status)
    .bind(next)
    .bind(now)
    .bind(job.lease_until)
    .execute(&mut *tx)
    .await?;
    if ours.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, number, at, http_status, latency_ms, response, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&job.id)
    .bind(job.attempts)
    .bind(now)
    .bind(outcome.http_status.map(i64::from))
    .bind(outcome.latency_ms)
    .bind(&outcome.response)
    .bind(&outcome.error)
    .execute(&mut *tx)
    .await?;
    match verdict {
        Verdict::Dropped => {}
        Verdict::Succeeded => {
            sqlx::query("UPDATE webhooks SET failures = 0, failing_since = NULL WHERE id = $1")
                .bind(&job.webhook_id)
                .execute(&mut *tx)
                .await?;
        }
        Verdict::Gone | Verdict::Retry(_) | Verdict::Failed => {
            sqlx::query(
                "UPDATE webhooks SET failures = failures + 1, failing_since = COALESCE(failing_since, $2) \
                 WHERE id = $1",
            )
            .bind(&job.webhook_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // When the endpoint goes off: at once on a 410; else after `disable_after`
            // failures, the first a day ago or more. (reason, failures, failing since)
            let rule = match verdict {
                Verdict::Gone => Some((GONE_REASON.to_string(), 0, i64::MAX)),
                _ if disable_after > 0 => Some((
                    format!(
                        "endpoint.disabled: {disable_after} or more deliveries in a row failed over 24 hours"
                    ),
                    i64::try_from(disable_after).unwrap_or(i64::MAX),
                    now - FAILING_FOR_MS,
                )),
                _ => None,
            };
            if let Some((reason, threshold, since)) = rule {
                let disabled = sqlx::query(
                    "UPDATE webhooks SET enabled = 0, disabled_at = $2, disabled_reason = $3, updated_at = $2 \
                     WHERE id = $1 AND enabled = 1 AND failures >= $4 AND failing_since <= $5",
                )
                .bind(&job.webhook_id)
                .bind(now)
                .bind(&reason)
                .bind(threshold)
                .bind(since)
                .execute(&mut *tx)
                .await?;
                if disabled.rows_affected() > 0 {
                    tracing::warn!(webhook = %job.webhook_id, %reason, "webhook disabled");
                }
            }
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// `record`, tried again a few times on a database error: an attempt not recorded is made
/// again once its lease runs out.
async fn record_retrying(
    db: &Db,
    job: &Job,
    outcome: &Outcome,
    verdict: Verdict,
    disable_after: u64,
) -> sqlx::Result<bool> {
    let mut pause = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        match record(db, job, outcome, verdict, disable_after).await {
            Err(error) if tries < RECORD_TRIES => {
                tracing::warn!(delivery = %job.id, %error, tries, "cannot record a webhook attempt; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
            recorded => return recorded,
        }
    }
}

fn log_attempt(job: &Job, outcome: &Outcome, verdict: Verdict) {
    let (delivery, webhook, attempt) = (&job.id, &job.webhook_id, job.attempts);
    let status = outcome.http_status;
    let error = outcome.error.as_deref().unwrap_or("");
    match verdict {
        Verdict::Succeeded => {
            tracing::info!(%delivery, %webhook, attempt, ?status, latency_ms = outcome.latency_ms, "webhook delivered")
        }
        Verdict::Retry(_) => {
            tracing::warn!(%delivery, %webhook, attempt, ?status, error, "webhook delivery failed; will retry")
        }
        _ => {
            tracing::warn!(%delivery, %webhook, attempt, ?status, error, "webhook delivery failed for good")
        }
    }
}

/// Attempts the delivery `delivery_id` at once, records the attempt as the worker does,
/// and answers what came of it (`POST /v2/webhooks/{id}/test`). When the worker is
/// attempting it already, answers what its attempt came to. (A run of failures disables
/// an endpoint on the worker's attempts only; a 410 does on any.)
pub async fn deliver_now(
    db: &Db,
    master_key: &MasterKey,
    policy: &Policy,
    delivery_id: &str,
) -> anyhow::Result<Outcome> {
    if let Some(job) = claim_one(db, delivery_id).await? {
        let (outcome, verdict) = attempt(db, master_key, policy, &job).await;
        log_attempt(&job, &outcome, verdict);
        if !record_retrying(db, &job, &outcome, verdict, 0).await? {
            tracing::warn!(delivery = %job.id, "lease lost before the attempt was recorded");
        }
        return Ok(outcome);
    }
    // Final already, or the worker has it: its attempt, once recorded.
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS as u64 + 5_000);
    loop {
        let row =
            sqlx::query("SELECT status, next_attempt_at FROM webhook_deliveries WHERE id = $1")
                .bind(delivery_id)
                .fetch_optional(&db.pool)
                .await?
                .with_context(|| format!("no delivery {delivery_id}"))?;
        let status: String = row.try_get("status")?;
        let lease: Option<i64> = row.try_get("next_attempt_at")?;
        let under_way = status == "delivering" && lease.is_some_and(|lease| lease > db.now().0);
        if !under_way {
            return last_outcome(db, delivery_id).await;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the delivery {delivery_id} is still being attempted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The latest recorded attempt of a delivery.
async fn last_outcome(db: &Db, delivery_id: &str) -> anyhow::Result<Outcome> {
    let row = sqlx::query(
        "SELECT http_status, latency_ms, response, error FROM webhook_attempts \
         WHERE delivery_id = $1 ORDER BY number DESC LIMIT 1",
    )
    .bind(delivery_id)
    .fetch_optional(&db.pool)
    .await?
    .with_context(|| format!("the delivery {delivery_id} has no attempt recorded"))?;
    let status: Option<i64> = row.try_get("http_status")?;
    Ok(Outcome {
        http_status: status.and_then(|status| u16::try_from(status).ok()),
        latency_ms: row.try_get("latency_ms")?,
        response: row.try_get("response")?,
        error: row.try_get("error")?,
    })
}

impl Worker {
    /// Runs until `stop` changes; the attempts under way then finish and are recorded.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(SLOTS));
        let room = Arc::new(Notify::new());
        let mut last_prune: Option<Instant> = None;
        tracing::info!("webhook worker started");
        while !*stop.borrow() {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.prune().await;
                last_prune = Some(Instant::now());
            }
            let free = slots.available_permits();
            let mut full = false;
            if free > 0 {
                let cap =
                    i64::try_from(self.settings.webhook_concurrency.max(1)).unwrap_or(i64::MAX);
                match claim_due(&self.db, cap, free as i64).await {
                    Ok(jobs) => {
                        full = jobs.len() == free;
                        for job in jobs {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                // Not possible: only this loop takes slots. Its lease
                                // runs out and it is claimed again.
                                continue;
                            };
                            tokio::spawn(self.clone().work(job, slot, room.clone()));
                        }
                    }
                    Err(error) => tracing::error!(%error, "webhook worker cannot claim deliveries"),
                }
            }
            if full {
                // More may be due at once.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = room.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = slots.acquire_many(SLOTS as u32).await;
        tracing::info!("webhook worker stopped");
    }

    async fn work(self, job: Job, slot: OwnedSemaphorePermit, room: Arc<Notify>) {
        let (outcome, verdict) = attempt(&self.db, &self.master_key, &self.policy, &job).await;
        log_attempt(&job, &outcome, verdict);
        let disable_after = self.settings.webhook_disable_after_failures;
        match record_retrying(&self.db, &job, &outcome, verdict, disable_after).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery = %job.id, "lease lost before the attempt was recorded")
            }
            Err(error) => {
                tracing::error!(delivery = %job.id, %error, "cannot record a webhook attempt")
            }
        }
        drop(slot);
        room.notify_one();
    }

    /// Deletes the events past their retention (none a webhook is still delivering).
    async fn prune(&self) {
        let retention_ms = i64::try_from(self.settings.event_retention_days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000);
        match crate::events::prune(&self.db, retention_ms).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "events past their retention deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_stop() {
        let now = 1_000_000;
        for (index, wait) in RETRY_SCHEDULE.iter().enumerate() {
            let Verdict::Retry(at) = after_failure(index as i64 + 1, now) else {
                panic!("attempt {} is retried", index + 1);
            };
            let wait = wait.as_millis() as i64;
            assert!(
                at - now >= wait * 9 / 10 && at - now <= wait * 11 / 10,
                "{index}"
            );
        }
        assert_eq!(after_failure(12, now), Verdict::Failed);
        let total: Duration = RETRY_SCHEDULE.iter().sum();
        assert!(total > Duration::from_secs(60 * 3600) && total < Duration::from_secs(80 * 3600));
    }
}
