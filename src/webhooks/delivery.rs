//! Delivering events to webhooks: the worker that claims due jobs, signs each payload the
//! Standard Webhooks way and POSTs it, and records every attempt.
//!
//! Each (event, endpoint) is a job in `webhook_deliveries`, claimed like the outbox's
//! emails: a lease (`next_attempt_at` of a `delivering` job is its end; an expired one is
//! due again, so a crash loses nothing) and, on PostgreSQL, `SKIP LOCKED`, so that several
//! instances never take the same job. Delivery is at least once: a receiver de-duplicates
//! on `webhook-id`, the event's id, the same on every attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::Row;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::client::{self, Connections, Reply};
use super::model::Outcome;
use super::signature::{self, SigningKey};
use crate::config::Settings;
use crate::events::Event;
use crate::mail::destination::Policy;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Engine, Timestamp, json_rows, placeholders};
use crate::types::text::escape_controls;

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

/// How long a claimed job stays with one instance: its wait in its endpoint's line, the
/// attempt, then time to record it. A job whose lease would run out during its attempt is
/// given back instead.
const LEASE_MS: i64 = 30_000;

/// Jobs one instance holds at once, waiting in their endpoints' lines or being attempted.
const SLOTS: usize = 1024;

/// Jobs claimed ahead per endpoint, as a multiple of its concurrency cap: an endpoint that
/// answers at once always has its next jobs at hand, without waiting for the database.
const AHEAD: i64 = 64;

/// Jobs one account's endpoints may hold at once on all instances together, well below
/// `SLOTS`: endpoints that never answer cannot take the slots of other accounts' jobs.
const ACCOUNT_HELD: i64 = 256;

/// Jobs one claim takes at most (each holds its event's payload until it is sent).
const CLAIM_AT_MOST: usize = 256;

/// How often the worker looks for due jobs when nothing woke it.
const POLL: Duration = Duration::from_millis(500);

/// How soon after a claim that found nothing the next may be made, however often the
/// worker is woken.
const EMPTY_CLAIM_GAP: Duration = Duration::from_millis(50);

/// How often events past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Tries at recording an attempt (0.2 s, doubling, apart).
const RECORD_TRIES: u32 = 6;

/// Tries at recording a group of attempts together before each is tried alone.
const GROUP_TRIES: u32 = 3;

/// How long failures must have gone on before their count disables an endpoint.
const FAILING_FOR_MS: i64 = 24 * 3_600_000;

/// Why an endpoint that answered 410 is disabled.
pub const GONE_REASON: &str = "endpoint.disabled: the endpoint answered 410 Gone";

const USER_AGENT: &str = concat!("mailroom/", env!("CARGO_PKG_VERSION"), " (webhooks)");

/// The worker: claims due deliveries ahead and lines them up per endpoint, at most
/// `webhook_concurrency` attempts of an endpoint at once, so that a slow endpoint holds up
/// only its own.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub master_key: MasterKey,
    pub policy: Arc<Policy>,
    pub settings: Arc<Settings>,
    /// Rung when deliveries may have become due.
    pub wakeup: Arc<Notify>,
}

/// A claimed delivery, with the event it delivers.
struct Job {
    id: String,
    webhook_id: String,
    /// This attempt's number.
    attempts: i64,
    /// The lease's end: the attempt is recorded only while the job still has it.
    lease_until: i64,
    /// `None` when the event is no longer kept.
    event: Option<Event>,
}

/// A job as a claim reads it: one JSON array for the whole claim, so that the rows do not
/// cross from the database one by one (on SQLite, each row is a hand-off between threads).
#[derive(Deserialize)]
struct ClaimedJob {
    id: String,
    webhook_id: String,
    attempts: i64,
    event: Option<ClaimedEvent>,
}

#[derive(Deserialize)]
struct ClaimedEvent {
    position: i64,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    at: i64,
    account_id: String,
    entity_id: Option<String>,
    data: Box<RawValue>,
}

/// The claimed jobs of `d` (with their events as `e`) as one JSON array, in the order they
/// were queued.
fn claimed_json(engine: Engine) -> String {
    let (object, data, array) = match engine {
        Engine::Sqlite => ("json_object", "json(e.data)", "json_group_array"),
        Engine::Postgres => ("json_build_object", "CAST(e.data AS json)", "json_agg"),
    };
    let event = format!(
        "CASE WHEN e.data IS NOT NULL AND e.account_id IS NOT NULL THEN {object}('position', e.position, \
         'id', e.id, 'type', e.type, 'at', e.at, 'account_id', e.account_id, 'entity_id', e.entity_id, \
         'data', {data}) END"
    );
    format!(
        "COALESCE(CAST({array}({object}('id', d.id, 'webhook_id', d.webhook_id, 'attempts', d.attempts, \
         'event', {event}) ORDER BY d.position) AS TEXT), '[]')"
    )
}

/// PostgreSQL: `lease`, an `UPDATE` of `webhook_deliveries`, with the jobs it leased read
/// back with their events, as one JSON value.
fn read_back(lease: &str) -> String {
    format!(
        "WITH d AS ({lease} RETURNING id, webhook_id, event_id, attempts, position) \
         SELECT {} FROM d LEFT JOIN events e ON e.id = d.event_id",
        claimed_json(Engine::Postgres)
    )
}

/// SQLite: the jobs of `ids` (a JSON array) that the lease ending at `lease_until` holds,
/// with their events, as one JSON value.
async fn read_leased(
    tx: &mut sqlx::AnyConnection,
    ids: &str,
    lease_until: i64,
) -> sqlx::Result<String> {
    sqlx::query_scalar(&format!(
        "SELECT {} FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id \
         WHERE d.id IN (SELECT value FROM json_each($1)) AND d.status = 'delivering' \
         AND d.next_attempt_at = $2",
        claimed_json(Engine::Sqlite)
    ))
    .bind(ids)
    .bind(lease_until)
    .fetch_one(tx)
    .await
}

fn parse_claimed(json: &str, lease_until: i64) -> sqlx::Result<Vec<Job>> {
    let claimed: Vec<ClaimedJob> =
        serde_json::from_str(json).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    Ok(claimed
        .into_iter()
        .map(|job| Job {
            id: job.id,
            webhook_id: job.webhook_id,
            attempts: job.attempts,
            lease_until,
            event: job.event.map(|event| Event {
                id: event.id,
                kind: event.kind,
                created_at: Timestamp(event.at),
                account_id: event.account_id,
                entity_id: event.entity_id,
                data: event.data,
                position: event.position,
            }),
        })
        .collect())
}

/// Takes the lease on up to `limit` due jobs for this instance alone: at most `cap` ×
/// `AHEAD` held per endpoint — only `cap` for an endpoint that is failing, whose jobs
/// would only wait — and `ACCOUNT_HELD` per account (those of other claims counted), and
/// none while an earlier job about the same object waits for its first attempt or is being
/// attempted, so that one object's events arrive in order while the endpoint answers; an
/// earlier job that failed and waits for its retry does not hold the later ones back.
/// Each enabled endpoint's first due jobs are read from its own index, so a long backlog
/// at one endpoint costs the others nothing; each account's first job comes before any
/// account's second, so that one account's endpoints cannot take every slot.
async fn claim_due(db: &Db, cap: i64, limit: i64) -> sqlx::Result<Vec<Job>> {
    // Each enabled endpoint's first due jobs, endpoint by endpoint, none behind an earlier
    // job about the same object that is being attempted (its lease run out or not: after
    // a crash it goes first) or not attempted yet. The engines differ in how a join reads
    // them so: PostgreSQL by LATERAL, SQLite by a CROSS JOIN, which keeps the endpoints as
    // the outer loop. The `status IN (…)` terms repeat the partial indexes' conditions, so
    // that they are used.
    let first_due = "x.webhook_id = w.id AND x.status IN ('pending', 'delivering') \
         AND x.next_attempt_at <= $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e \
         WHERE e.webhook_id = x.webhook_id AND e.object_key = x.object_key \
         AND e.status IN ('pending', 'delivering') AND e.position < x.position \
         AND (e.status = 'delivering' OR e.attempts = 0)) \
         ORDER BY x.next_attempt_at, x.position LIMIT $2";
    let (deliveries, picked) = match db.engine {
        Engine::Postgres => (
            format!(
                "CROSS JOIN LATERAL (SELECT x.id, x.webhook_id, x.next_attempt_at, x.position \
                 FROM webhook_deliveries x WHERE {first_due}) d"
            ),
            String::from("TRUE"),
        ),
        Engine::Sqlite => (
            String::from("CROSS JOIN webhook_deliveries d"),
            format!("d.id IN (SELECT x.id FROM webhook_deliveries x WHERE {first_due})"),
        ),
    };
    let in_turn = format!(
        "WITH held AS (SELECT webhook_id, COUNT(*) AS busy FROM webhook_deliveries \
           WHERE status = 'delivering' AND next_attempt_at > $1 GROUP BY webhook_id), \
         account_held AS (SELECT w.account_id, SUM(h.busy) AS busy FROM held h \
           JOIN webhooks w ON w.id = h.webhook_id GROUP BY w.account_id) \
         SELECT id FROM (SELECT due.*, ROW_NUMBER() OVER (PARTITION BY due.account_id \
           ORDER BY due.turn, due.next_attempt_at, due.position) AS account_turn \
         FROM (SELECT d.id, d.next_attempt_at, d.position, w.account_id, w.failures, \
           COALESCE(h.busy, 0) AS busy, COALESCE(a.busy, 0) AS account_busy, \
           ROW_NUMBER() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.position) AS turn \
           FROM webhooks w {deliveries} \
           LEFT JOIN held h ON h.webhook_id = w.id LEFT JOIN account_held a ON a.account_id = w.account_id \
           WHERE {picked} AND w.enabled = 1) AS due \
         WHERE due.turn + due.busy <= CASE WHEN due.failures > 0 THEN $5 ELSE $2 END) AS fair \
         WHERE fair.account_turn + fair.account_busy <= $4 \
         ORDER BY fair.account_turn, fair.next_attempt_at, fair.position LIMIT $3"
    );
    let now = db.now().0;
    let lease_until = now + LEASE_MS;
    let ahead = cap.saturating_mul(AHEAD);
    // The `due` condition again in the UPDATE: another instance may have claimed a job
    // since the subquery read it.
    let set = |lease_until: &str| {
        format!(
            "SET status = 'delivering', attempts = attempts + 1, next_attempt_at = {lease_until}, updated_at = $1"
        )
    };
    let still_due = "status IN ('pending', 'delivering') AND next_attempt_at <= $1";
    let json: String = match db.engine {
        Engine::Postgres => {
            let lease = format!(
                "UPDATE webhook_deliveries {} WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE id IN ({in_turn}) FOR UPDATE SKIP LOCKED) AND {still_due}",
                set("$6")
            );
            sqlx::query_scalar(&read_back(&lease))
                .bind(now)
                .bind(ahead)
                .bind(limit)
                .bind(ACCOUNT_HELD)
                .bind(cap)
                .bind(lease_until)
                .fetch_one(&db.pool)
                .await?
        }
        // No `UPDATE … RETURNING` inside a query here: the jobs are picked, leased and read
        // in one transaction, which holds the write lock throughout. (Picked and read in
        // one query, they take twice as long.)
        Engine::Sqlite => {
            let mut tx = db.begin().await?;
            let picked: String = sqlx::query_scalar(&format!(
                "SELECT COALESCE(json_group_array(id), '[]') FROM ({in_turn}) AS picked"
            ))
            .bind(now)
            .bind(ahead)
            .bind(limit)
            .bind(ACCOUNT_HELD)
            .bind(cap)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "UPDATE webhook_deliveries {} WHERE id IN (SELECT value FROM json_each($2)) AND {still_due}",
                set("$3")
            ))
            .bind(now)
            .bind(&picked)
            .bind(lease_until)
            .execute(&mut *tx)
            .await?;
            let json = read_leased(&mut tx, &picked, lease_until).await?;
            tx.commit().await?;
            json
        }
    };
    parse_claimed(&json, lease_until)
}

/// Takes the lease on the job `id` if it was never attempted (or its attempt's lease ran
/// out), whatever the cap and order (a test): `None` when it is final, has been attempted,
/// or another attempt has it.
async fn claim_one(db: &Db, id: &str) -> sqlx::Result<Option<Job>> {
    let now = db.now().0;
    let lease_until = now + LEASE_MS;
    let lease = "UPDATE webhook_deliveries SET status = 'delivering', attempts = attempts + 1, \
         next_attempt_at = $2, updated_at = $1 WHERE id = $3 \
         AND ((status = 'pending' AND attempts = 0) OR (status = 'delivering' AND next_attempt_at <= $1))";
    // Leased and read in one transaction: a read that fails leaves no lease behind.
    let mut tx = db.begin().await?;
    let json: String = match db.engine {
        Engine::Postgres => {
            sqlx::query_scalar(&read_back(lease))
                .bind(now)
                .bind(lease_until)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
        }
        Engine::Sqlite => {
            sqlx::query(lease)
                .bind(now)
                .bind(lease_until)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            read_leased(&mut tx, &serde_json::json!([id]).to_string(), lease_until).await?
        }
    };
    let job = parse_claimed(&json, lease_until)?.pop();
    tx.commit().await?;
    Ok(job)
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
    /// Another try at this time, after a fault of mailroom's own (the database, a secret
    /// that does not open): not held against the endpoint.
    Postponed(i64),
    /// Out of tries.
    Failed,
    /// Nothing to deliver (the event is gone): final, and no fault of the endpoint's.
    Dropped,
    /// Not tried: it waited in its endpoint's line until too little of its lease was left.
    /// It is due again at once, as if never claimed.
    Untried,
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

/// The endpoints `jobs` go to, each once.
fn endpoints_of<'a>(jobs: impl Iterator<Item = &'a Job>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = jobs.map(|job| job.webhook_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Reads the endpoints of `jobs` (one query for them all), and signs each payload with its
/// endpoint's secrets.
async fn prepare_all(
    db: &Db,
    master_key: &MasterKey,
    jobs: Vec<Job>,
) -> Vec<(Job, Result<Prepared, NotSent>)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let webhook_ids = endpoints_of(jobs.iter());
    let sql = format!(
        "SELECT id, url, secret, previous_secret, previous_secret_until FROM webhooks WHERE id IN ({})",
        placeholders(1, webhook_ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in &webhook_ids {
        query = query.bind(*id);
    }
    let webhooks = match query.fetch_all(&db.pool).await {
        Ok(webhooks) => webhooks,
        Err(error) => {
            tracing::warn!(%error, "cannot read webhook deliveries");
            let error = format!("not sent: {error}");
            return jobs
                .into_iter()
                .map(|job| (job, Err(NotSent::Error(error.clone()))))
                .collect();
        }
    };
    let mut keys = HashMap::new();
    for row in &webhooks {
        let id: String = row.try_get("id").unwrap_or_default();
        keys.insert(id.clone(), endpoint(row, master_key, db.now().0, &id));
    }
    let timestamp = db.now().0.div_euclid(1000);
    jobs.into_iter()
        .map(|job| {
            let prepared = match (&job.event, keys.get(&job.webhook_id)) {
                (None, _) => Err(NotSent::NoEvent),
                (_, None) => Err(NotSent::Error("the webhook is gone".to_string())),
                (_, Some(Err(error))) => Err(NotSent::Error(error.clone())),
                (Some(event), Some(Ok((url, keys)))) => match serde_json::to_vec(event) {
                    Ok(body) => {
                        let signature = signature::header(keys, &event.id, timestamp, &body);
                        let headers = vec![
                            ("content-type", "application/json".to_string()),
                            ("user-agent", USER_AGENT.to_string()),
                            ("webhook-id", event.id.clone()),
                            ("webhook-timestamp", timestamp.to_string()),
                            ("webhook-signature", signature),
                        ];
                        Ok(Prepared {
                            url: url.clone(),
                            headers,
                            body,
                        })
                    }
                    Err(error) => Err(NotSent::Error(error.to_string())),
                },
            };
            (job, prepared)
        })
        .collect()
}

/// An endpoint's URL and signing keys: its secret's, and the previous secret's while it
/// still signs after a rotation.
fn endpoint(
    row: &sqlx::any::AnyRow,
    master_key: &MasterKey,
    now: i64,
    webhook_id: &str,
) -> Result<(url::Url, Vec<SigningKey>), String> {
    let read = || -> anyhow::Result<(url::Url, Vec<SigningKey>)> {
        let url: String = row.try_get("url")?;
        let url = url::Url::parse(&url).context("the webhook's URL cannot be read")?;
        let context = super::store::seal_context(webhook_id);
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
            && until > now
        {
            keys.push(open(&previous)?);
        }
        Ok((url, keys))
    };
    read().map_err(|error| format!("{error:#}"))
}

/// Makes one attempt at `job` (on a kept connection when `connections` has one): answers
/// what came of it and what that makes of the job.
async fn attempt(
    db: &Db,
    policy: &Policy,
    connections: Option<&Connections>,
    job: &Job,
    prepared: Result<Prepared, NotSent>,
) -> (Outcome, Verdict) {
    let failed = |error: String| Outcome {
        http_status: None,
        latency_ms: 0,
        response: None,
        error: Some(error),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(NotSent::NoEvent) => {
            let outcome = failed("not sent: the event is no longer kept".to_string());
            return (outcome, Verdict::Dropped);
        }
        Err(NotSent::Error(error)) => {
            tracing::warn!(delivery = %job.id, %error, "cannot prepare a webhook delivery");
            let outcome = failed("not sent: mailroom could not prepare it".to_string());
            let verdict = match after_failure(job.attempts, db.now().0) {
                Verdict::Retry(at) => Verdict::Postponed(at),
                other => other,
            };
            return (outcome, verdict);
        }
    };
    let started = Instant::now();
    let key = format!("{} {}", job.webhook_id, prepared.url);
    let kept = connections.map(|connections| (connections, key.as_str()));
    let sent = tokio::time::timeout(
        TIMEOUT,
        client::post(
            &prepared.url,
            policy,
            &prepared.headers,
            prepared.body,
            kept,
        ),
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
                // Stored and shown as text: no NUL (PostgreSQL refuses it) nor other controls.
                response: (!body.is_empty())
                    .then(|| escape_controls(&String::from_utf8_lossy(&body))),
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

/// An attempt made, to record.
struct Attempted {
    job: Job,
    outcome: Outcome,
    verdict: Verdict,
}

/// Records attempts in one transaction (on SQLite every commit waits for the disk), each
/// if its job's lease is still this attempt's: the attempt, the job's new status, and the
/// endpoint's run of failures — disabling it on a 410, or when `disable_after` failures
/// (0: never) have gone on for a day. Answers how many were recorded.
async fn record(db: &Db, attempts: &[Attempted], disable_after: u64) -> sqlx::Result<usize> {
    let now = db.now().0;
    let mut tx = db.begin().await?;
    let (succeeded, mut others): (Vec<&Attempted>, Vec<&Attempted>) = attempts
        .iter()
        .partition(|attempted| attempted.verdict == Verdict::Succeeded);
    // Endpoints' rows are locked in one order, whoever records (PostgreSQL).
    others.sort_by(|a, b| a.job.webhook_id.cmp(&b.job.webhook_id));
    let mut recorded = 0;
    // Successes, the most of them by far, a few statements for them all.
    if !succeeded.is_empty() {
        recorded += record_successes(&mut tx, db.engine, &succeeded, now).await?;
    }
    for attempted in others {
        if record_one(&mut tx, attempted, disable_after, now).await? {
            recorded += 1;
        }
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Records successful attempts, those whose lease is still theirs, in two statements
/// whatever their number: the jobs `succeeded` with their attempts, and their endpoints'
/// runs of failures ended.
async fn record_successes(
    tx: &mut sqlx::AnyConnection,
    engine: Engine,
    attempts: &[&Attempted],
    now: i64,
) -> sqlx::Result<usize> {
    let rows: Vec<serde_json::Value> = attempts
        .iter()
        .map(|Attempted { job, outcome, .. }| {
            serde_json::json!({
                "id": job.id,
                "lease_until": job.lease_until,
                "http_status": outcome.http_status,
                "latency_ms": outcome.latency_ms,
                "response": outcome.response,
            })
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    let source = json_rows(
        engine,
        &[
            ("id", "TEXT"),
            ("lease_until", "BIGINT"),
            ("http_status", "BIGINT"),
            ("latency_ms", "BIGINT"),
            ("response", "TEXT"),
        ],
    );
    // Ours are the jobs whose lease this attempt still held; the attempt is kept on the
    // job's row (migration 0017).
    let ours = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET status = 'succeeded', next_attempt_at = NULL, updated_at = $2, \
         success_http_status = v.http_status, success_latency_ms = v.latency_ms, \
         success_response = v.response \
         FROM {source} WHERE webhook_deliveries.id = v.id AND webhook_deliveries.status = 'delivering' \
         AND webhook_deliveries.next_attempt_at = v.lease_until"
    ))
    .bind(&rows)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // An endpoint that answered 2xx has ended its run of failures, whoever holds the job.
    let webhooks = endpoints_of(attempts.iter().map(|attempted| &attempted.job));
    let sql = format!(
        "UPDATE webhooks SET failures = 0, failing_since = NULL WHERE id IN ({}) AND failures > 0",
        placeholders(1, webhooks.len())
    );
    let mut reset = sqlx::query(&sql);
    for webhook in webhooks {
        reset = reset.bind(webhook);
    }
    reset.execute(&mut *tx).await?;
    Ok(usize::try_from(ours).unwrap_or(usize::MAX))
}

async fn record_one(
    tx: &mut sqlx::AnyConnection,
    attempted: &Attempted,
    disable_after: u64,
    now: i64,
) -> sqlx::Result<bool> {
    let Attempted {
        job,
        outcome,
        verdict,
    } = attempted;
    let verdict = *verdict;
    if verdict == Verdict::Untried {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = attempts - 1, \
             next_attempt_at = $2 WHERE id = $1 AND status = 'delivering' AND next_attempt_at = $3",
        )
        .bind(&job.id)
        .bind(now)
        .bind(job.lease_until)
        .execute(&mut *tx)
        .await?;
        return Ok(true);
    }
    let (status, next) = match verdict {
        Verdict::Succeeded => ("succeeded", None),
        Verdict::Retry(at) | Verdict::Postponed(at) => ("pending", Some(at)),
        Verdict::Gone | Verdict::Failed | Verdict::Dropped | Verdict::Untried => ("failed", None),
    };
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
        Verdict::Dropped | Verdict::Untried | Verdict::Postponed(_) => {}
        Verdict::Succeeded => {
            sqlx::query("UPDATE webhooks SET failures = 0, failing_since = NULL WHERE id = $1 AND failures > 0")
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
    Ok(true)
}

/// `record`, tried again a few times on a database error: an attempt not recorded is made
/// again once its lease runs out. A group still refused is written one attempt at a time,
/// so that one bad row costs only its own attempt.
async fn record_retrying(
    db: &Db,
    attempts: &[Attempted],
    disable_after: u64,
) -> sqlx::Result<usize> {
    let mut pause = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        match record(db, attempts, disable_after).await {
            Err(error) if tries < GROUP_TRIES => {
                tracing::warn!(%error, tries, "cannot record webhook attempts; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
            // Still refused: a row of its own may be the cause.
            Err(error) if attempts.len() > 1 => {
                tracing::warn!(%error, "cannot record webhook attempts together; one at a time");
                let mut recorded = 0;
                for attempted in attempts {
                    match record(db, std::slice::from_ref(attempted), disable_after).await {
                        Ok(one) => recorded += one,
                        Err(error) => {
                            tracing::error!(delivery = %attempted.job.id, %error, "cannot record a webhook attempt")
                        }
                    }
                }
                return Ok(recorded);
            }
            Err(error) if tries < RECORD_TRIES => {
                tracing::warn!(%error, tries, "cannot record a webhook attempt; trying again");
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
            tracing::debug!(%delivery, %webhook, attempt, ?status, latency_ms = outcome.latency_ms, "webhook delivered")
        }
        Verdict::Retry(_) | Verdict::Postponed(_) => {
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
    webhook_id: &str,
    delivery_id: &str,
) -> anyhow::Result<Outcome> {
    // The worker may have it already (it was due at once): then its attempt, once
    // recorded — or, if the worker gave it back untried, this one.
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS as u64 + 5_000);
    loop {
        if let Some(job) = claim_one(db, delivery_id).await? {
            let mut prepared = prepare_all(db, master_key, vec![job]).await;
            let (job, prepared) = prepared.pop().context("the delivery was not read")?;
            let (outcome, verdict) = attempt(db, policy, None, &job, prepared).await;
            log_attempt(&job, &outcome, verdict);
            let attempted = Attempted {
                job,
                outcome: outcome.clone(),
                verdict,
            };
            if record_retrying(db, std::slice::from_ref(&attempted), 0).await? == 0 {
                tracing::warn!(delivery = %attempted.job.id, "lease lost before the attempt was recorded");
            }
            return Ok(outcome);
        }
        let row = sqlx::query(
            "SELECT status, attempts, next_attempt_at FROM webhook_deliveries WHERE id = $1",
        )
        .bind(delivery_id)
        .fetch_optional(&db.pool)
        .await?
        .with_context(|| format!("no delivery {delivery_id}"))?;
        let status: String = row.try_get("status")?;
        let attempts: i64 = row.try_get("attempts")?;
        let lease: Option<i64> = row.try_get("next_attempt_at")?;
        let under_way = status == "delivering" && lease.is_some_and(|lease| lease > db.now().0);
        // Given back untried since: claimed again above, on the next turn.
        let untried = status == "pending" && attempts == 0;
        if !under_way && !untried {
            return last_outcome(db, webhook_id, delivery_id).await;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the delivery {delivery_id} is still being attempted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The latest recorded attempt of a delivery, as its list of attempts shows it.
async fn last_outcome(db: &Db, webhook_id: &str, delivery_id: &str) -> anyhow::Result<Outcome> {
    let attempt = super::store::delivery(db, webhook_id, delivery_id)
        .await?
        .and_then(|mut delivery| delivery.attempts.pop())
        .with_context(|| format!("the delivery {delivery_id} has no attempt recorded"))?;
    Ok(Outcome {
        http_status: attempt
            .http_status
            .and_then(|status| u16::try_from(status).ok()),
        latency_ms: attempt.latency_ms,
        response: attempt.response,
        error: attempt.error,
    })
}

/// Each endpoint's line: as many turns as its concurrency cap, taken by its jobs in the
/// order they were claimed, so that a slow endpoint holds up only its own jobs.
#[derive(Default)]
struct Lines(std::sync::Mutex<HashMap<String, Arc<Semaphore>>>);

impl Lines {
    fn of(&self, webhook_id: &str, cap: usize) -> Arc<Semaphore> {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Lines no job holds any more go.
        lines.retain(|_, line| Arc::strong_count(line) > 1);
        lines
            .entry(webhook_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(cap)))
            .clone()
    }
}

impl Worker {
    /// Runs until `stop` changes; the attempts under way then finish and are recorded.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(SLOTS));
        let room = Arc::new(Notify::new());
        let connections = Arc::new(Connections::default());
        let lines = Arc::new(Lines::default());
        let (finished, results) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(self.clone().record_all(results, room.clone()));
        let pruner = tokio::spawn(self.clone().prune_every_minute(stop.clone()));
        tracing::info!("webhook worker started");
        // When a claim last found nothing due.
        let mut found_nothing: Option<Instant> = None;
        while !*stop.borrow() {
            let free = slots.available_permits();
            let mut full = false;
            if free > 0 {
                let cap =
                    i64::try_from(self.settings.webhook_concurrency.max(1)).unwrap_or(i64::MAX);
                let limit = free.min(CLAIM_AT_MOST);
                match claim_due(&self.db, cap, limit as i64).await {
                    Ok(jobs) => {
                        full = jobs.len() == limit;
                        found_nothing = jobs.is_empty().then(Instant::now);
                        for (job, prepared) in prepare_all(&self.db, &self.master_key, jobs).await {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                // Not possible: only this loop takes slots. Its lease
                                // runs out and it is claimed again.
                                continue;
                            };
                            let line = lines.of(&job.webhook_id, cap as usize);
                            let work = self.clone().work(
                                job,
                                prepared,
                                (slot, line),
                                (connections.clone(), finished.clone(), stop.clone()),
                            );
                            tokio::spawn(work);
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
            let woken_from_outside = tokio::select! {
                _ = room.notified() => false,
                _ = self.wakeup.notified() => true,
                _ = tokio::time::sleep(POLL) => false,
                _ = stop.changed() => false,
            };
            // Every email sent or delivered rings the wakeup, for any account, with webhooks
            // or not: after a claim that found nothing, the next it rings waits a little, so
            // that a stream of sends costs at most a claim per `EMPTY_CLAIM_GAP`.
            if let Some(at) = found_nothing.filter(|_| woken_from_outside) {
                tokio::select! {
                    _ = tokio::time::sleep(EMPTY_CLAIM_GAP.saturating_sub(at.elapsed())) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        let _ = slots.acquire_many(SLOTS as u32).await;
        drop(finished);
        let _ = recorder.await;
        let _ = pruner.await;
        tracing::info!("webhook worker stopped");
    }

    /// Waits for a turn in the job's endpoint's line (its concurrency cap), then attempts it
    /// — unless too little of its lease is left by then.
    async fn work(
        self,
        job: Job,
        prepared: Result<Prepared, NotSent>,
        (slot, line): (OwnedSemaphorePermit, Arc<Semaphore>),
        (connections, finished, mut stop): (
            Arc<Connections>,
            mpsc::UnboundedSender<Attempted>,
            watch::Receiver<bool>,
        ),
    ) {
        // On shutdown, what still waits for its turn goes back untried.
        let turn = tokio::select! {
            turn = line.acquire() => turn.ok(),
            _ = stop.wait_for(|stopped| *stopped) => None,
        };
        let time_needed = i64::try_from(TIMEOUT.as_millis()).unwrap_or(i64::MAX) + 5_000;
        let late = self.db.now().0.saturating_add(time_needed) > job.lease_until;
        let (outcome, verdict) = if turn.is_none() || late {
            let untried = Outcome {
                http_status: None,
                latency_ms: 0,
                response: None,
                error: None,
            };
            (untried, Verdict::Untried)
        } else {
            let tried = attempt(&self.db, &self.policy, Some(&connections), &job, prepared).await;
            log_attempt(&job, &tried.0, tried.1);
            tried
        };
        let _ = finished.send(Attempted {
            job,
            outcome,
            verdict,
        });
        drop(slot);
    }

    /// Records attempts as they finish: whatever finished while the previous group was
    /// written goes in one transaction. An endpoint's next jobs are claimed once its
    /// attempts are recorded (until then they count as under way).
    async fn record_all(self, mut results: mpsc::UnboundedReceiver<Attempted>, room: Arc<Notify>) {
        let disable_after = self.settings.webhook_disable_after_failures;
        while let Some(first) = results.recv().await {
            let mut group = vec![first];
            while let Ok(more) = results.try_recv() {
                group.push(more);
            }
            match record_retrying(&self.db, &group, disable_after).await {
                Ok(recorded) if recorded < group.len() => {
                    tracing::warn!(
                        lost = group.len() - recorded,
                        "leases lost before webhook attempts were recorded"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "cannot record webhook attempts"),
            }
            room.notify_one();
        }
    }

    /// Prunes old events once a minute, apart from the deliveries: a large first prune
    /// (after an upgrade, or a shorter retention) holds none of them up.
    async fn prune_every_minute(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.prune().await;
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Deletes the events past their retention (none a webhook is still delivering).
    async fn prune(&self) {
        let retention_ms = i64::try_from(self.settings.event_retention_days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000);
        // A job is tried for about three days; one created longer ago (with a day to
        // spare) waits for an endpoint that was disabled, and keeps its event no longer.
        let tried_for = RETRY_SCHEDULE.iter().sum::<Duration>() + Duration::from_secs(86_400);
        let tried_for = i64::try_from(tried_for.as_millis()).unwrap_or(i64::MAX);
        match crate::events::prune(&self.db, retention_ms, tried_for, 1000).await {
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
