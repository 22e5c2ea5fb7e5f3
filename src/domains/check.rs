//! Checking a domain's DNS: the lookups, the status rules, and the background verifier.

use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::DomainStatus;
use super::records::{self, Found, Purpose, RecordStatus, Wanted};
use crate::dns::Answer;
use crate::http::AppState;
use crate::store::groups::run_in_groups;
use crate::store::{Engine, Timestamp, placeholders};

const HOUR: i64 = 3_600_000;
/// How long a pending domain may go without proof before it is `failed`.
pub const PENDING_LIMIT: i64 = 72 * HOUR;
/// How long an active domain's proof may be missing before it is `pending` again.
pub const PROOF_GRACE: i64 = 24 * HOUR;
const ACTIVE_RECHECK: i64 = 24 * HOUR;
const MAX_BACKOFF: i64 = 6 * HOUR;
/// How long a claimed check may run before another instance may take it over.
const LEASE: i64 = 120_000;

/// What the required records, taken together, showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Proven,
    /// A required record is definitely missing or wrong.
    Disproven,
    /// Some lookups failed and none disproved: nothing can be concluded.
    Inconclusive,
}

/// The fields of a domain the status rules read and write.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub status: DomainStatus,
    pub verified_by: Option<String>,
    pub status_changed_at: i64,
    pub verified_at: Option<i64>,
    pub proof_missing_since: Option<i64>,
    pub next_check_at: Option<i64>,
    pub failed_checks: i64,
}

/// Applies one check's outcome; answers the new standing and, when the status changed, why.
pub fn decide(
    before: &Standing,
    outcome: Outcome,
    now: i64,
    interval_ms: i64,
) -> (Standing, Option<&'static str>) {
    let mut after = before.clone();
    let mut reason = None;
    let backoff = |failed: i64| {
        let factor = 1i64 << failed.clamp(0, 16);
        now + interval_ms
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(interval_ms))
    };
    match (before.status, outcome) {
        (DomainStatus::Suspended, _) => {
            after.next_check_at = None;
        }
        (DomainStatus::Pending | DomainStatus::Failed, Outcome::Proven) => {
            after.status = DomainStatus::Active;
            after.verified_by = Some("dns".to_string());
            after.verified_at = Some(now);
            after.proof_missing_since = None;
            after.failed_checks = 0;
            after.next_check_at = Some(now + ACTIVE_RECHECK);
            reason = Some("the DNS records prove the domain");
        }
        (DomainStatus::Pending, _) if now - before.status_changed_at > PENDING_LIMIT => {
            after.status = DomainStatus::Failed;
            after.next_check_at = None;
            reason = Some("no DNS proof within 72 hours");
        }
        (DomainStatus::Pending, _) => {
            after.failed_checks = before.failed_checks + 1;
            after.next_check_at = Some(backoff(after.failed_checks));
        }
        (DomainStatus::Failed, _) => {
            after.next_check_at = None;
        }
        (DomainStatus::Active, Outcome::Proven) => {
            after.proof_missing_since = None;
            after.next_check_at = Some(now + ACTIVE_RECHECK);
        }
        (DomainStatus::Active, Outcome::Inconclusive) => {
            after.next_check_at = Some(now + interval_ms.min(HOUR));
        }
        (DomainStatus::Active, Outcome::Disproven)
            if before.verified_by.as_deref() == Some("operator") =>
        {
            after.next_check_at = Some(now + ACTIVE_RECHECK);
        }
        (DomainStatus::Active, Outcome::Disproven) => {
            let since = before.proof_missing_since.unwrap_or(now);
            if now - since > PROOF_GRACE {
                after.status = DomainStatus::Pending;
                after.proof_missing_since = None;
                after.failed_checks = 0;
                after.next_check_at = Some(backoff(0));
                reason = Some("the DNS proof has been missing for more than 24 hours");
            } else {
                after.proof_missing_since = Some(since);
                after.next_check_at = Some(now + interval_ms.min(HOUR));
            }
        }
    }
    if reason.is_some() {
        after.status_changed_at = now;
    }
    (after, reason)
}

/// A leased domain as its check starts.
struct Due {
    id: String,
    name: String,
    before: Standing,
    tokens: Vec<String>,
    /// Active in another account: proof here does not make it active.
    active_elsewhere: bool,
}

/// What one check of a domain found and decided, to be saved.
struct Checked {
    due: Due,
    after: Standing,
    reason: Option<&'static str>,
    lookups: Vec<(Wanted, Found)>,
    at: i64,
}

/// Looks up every record of the domain, stores what was found, and applies the status
/// rules. The caller holds the domain's lease.
pub async fn check_domain(state: &AppState, domain_id: &str) -> anyhow::Result<()> {
    let mut checked = Vec::new();
    for due in load(state, &[domain_id.to_string()]).await? {
        checked.push(examine(state, due).await);
    }
    save(state, &checked).await
}

/// The domains to check, with their tokens: two queries for a whole batch.
async fn load(state: &AppState, ids: &[String]) -> anyhow::Result<Vec<Due>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = placeholders(1, ids.len());
    let sql = format!(
        "SELECT d.id, d.name, d.status, d.verified_by, d.status_changed_at, d.verified_at, \
         d.proof_missing_since, d.next_check_at, d.failed_checks, \
         CAST(CASE WHEN EXISTS (SELECT 1 FROM domains o WHERE o.name = d.name \
              AND o.status = 'active' AND o.id <> d.id) THEN 1 ELSE 0 END AS BIGINT) AS active_elsewhere \
         FROM domains d WHERE d.id IN ({list})"
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut tokens = super::tokens_of(&state.db, &id_refs).await?;
    let mut due = Vec::with_capacity(ids.len());
    for row in query.fetch_all(&state.db.pool).await? {
        let id: String = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        due.push(Due {
            tokens: tokens.remove(&id).unwrap_or_default(),
            id,
            name: row.try_get("name")?,
            before: Standing {
                status: DomainStatus::parse(&status)?,
                verified_by: row.try_get("verified_by")?,
                status_changed_at: row.try_get("status_changed_at")?,
                verified_at: row.try_get("verified_at")?,
                proof_missing_since: row.try_get("proof_missing_since")?,
                next_check_at: row.try_get("next_check_at")?,
                failed_checks: row.try_get("failed_checks")?,
            },
            active_elsewhere: row.try_get::<i64, _>("active_elsewhere")? != 0,
        });
    }
    Ok(due)
}

/// The lookups and the decision, without touching the database.
async fn examine(state: &AppState, due: Due) -> Checked {
    let wanted = records::wanted(&due.name, &due.tokens, &state.settings);
    let found = look_up_all(state, &due.name, &wanted).await;
    let outcome = outcome(&wanted, &found, &due.name, state);
    let now = Timestamp::now().0;
    let interval_ms = (state.settings.dns_check_interval.max(1) as i64).saturating_mul(1000);
    let (mut after, mut reason) = decide(&due.before, outcome, now, interval_ms);
    let activates =
        after.status == DomainStatus::Active && due.before.status != DomainStatus::Active;
    if activates && due.active_elsewhere {
        // Proven here, but active in another account: it stays as it was.
        after = Standing {
            next_check_at: Some(now + interval_ms),
            ..due.before.clone()
        };
        reason = None;
    }
    Checked {
        due,
        after,
        reason,
        lookups: wanted.into_iter().zip(found).collect(),
        at: now,
    }
}

async fn insert_lookups(tx: &mut sqlx::AnyConnection, checks: &[Checked]) -> anyhow::Result<()> {
    let lookups: Vec<(&Checked, &Wanted, &Found)> = checks
        .iter()
        .flat_map(|c| c.lookups.iter().map(move |(w, f)| (c, w, f)))
        .collect();
    if lookups.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = (0..lookups.len())
        .map(|i| format!("({})", placeholders(i * 7 + 1, 7)))
        .collect();
    let sql = format!(
        "INSERT INTO domain_lookups (domain_id, checked_at, record_type, name, found, found_at, error) \
         VALUES {}",
        rows.join(", ")
    );
    let mut insert = sqlx::query(&sql);
    for (checked, record, found) in lookups {
        insert = insert
            .bind(&checked.due.id)
            .bind(checked.at)
            .bind(record.record_type)
            .bind(&record.name)
            .bind(serde_json::to_string(&found.values)?)
            .bind(&found.at)
            .bind(&found.error);
    }
    insert.execute(tx).await?;
    Ok(())
}

/// One UPDATE for the checks' domains, from a VALUES list (its columns are `column1`…
/// on both engines).
async fn update_standings(tx: &mut sqlx::AnyConnection, checks: &[Checked]) -> anyhow::Result<()> {
    const TYPES: [&str; 9] = [
        "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
    ];
    let rows: Vec<String> = (0..checks.len())
        .map(|i| {
            let casts: Vec<String> = TYPES
                .iter()
                .enumerate()
                .map(|(k, t)| format!("CAST(${} AS {t})", i * TYPES.len() + k + 1))
                .collect();
            format!("({})", casts.join(", "))
        })
        .collect();
    let sql = format!(
        "UPDATE domains SET status = v.column2, verified_by = v.column3, status_changed_at = v.column4, \
         verified_at = v.column5, proof_missing_since = v.column6, next_check_at = v.column7, \
         failed_checks = v.column8, last_checked_at = v.column9, lease_until = NULL \
         FROM (VALUES {}) AS v WHERE domains.id = v.column1",
        rows.join(", ")
    );
    let mut update = sqlx::query(&sql);
    for checked in checks {
        let after = &checked.after;
        update = update
            .bind(&checked.due.id)
            .bind(after.status.as_str())
            .bind(&after.verified_by)
            .bind(after.status_changed_at)
            .bind(after.verified_at)
            .bind(after.proof_missing_since)
            .bind(after.next_check_at)
            .bind(after.failed_checks)
            .bind(checked.at);
    }
    update.execute(tx).await?;
    Ok(())
}

/// Stores what the checks found (replacing the last lookups) and what they decided, in
/// one transaction with a few statements for the whole group.
async fn save(state: &AppState, checks: &[Checked]) -> anyhow::Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    let sql = format!(
        "DELETE FROM domain_lookups WHERE domain_id IN ({})",
        placeholders(1, checks.len())
    );
    let mut delete = sqlx::query(&sql);
    for checked in checks {
        delete = delete.bind(&checked.due.id);
    }
    delete.execute(&mut *tx).await?;

    // SQLite's binding cost grows with the square of a statement's parameters, so there
    // a few domains share statements; PostgreSQL takes the whole group in two.
    let per_statement = match state.db.engine {
        Engine::Sqlite => 8,
        Engine::Postgres => 64,
    };
    for chunk in checks.chunks(per_statement) {
        insert_lookups(&mut tx, chunk).await?;
        update_standings(&mut tx, chunk).await?;
    }

    let changed: Vec<(&Checked, &str)> = checks
        .iter()
        .filter_map(|c| c.reason.map(|reason| (c, reason)))
        .collect();
    if !changed.is_empty() {
        let rows: Vec<String> = (0..changed.len())
            .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
            .collect();
        let sql = format!(
            "INSERT INTO domain_events (domain_id, at, from_status, to_status, reason) VALUES {}",
            rows.join(", ")
        );
        let mut insert = sqlx::query(&sql);
        for (checked, reason) in &changed {
            insert = insert
                .bind(&checked.due.id)
                .bind(checked.at)
                .bind(checked.due.before.status.as_str())
                .bind(checked.after.status.as_str())
                .bind(*reason);
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    for (checked, reason) in changed {
        tracing::info!(domain = %checked.due.name, from = checked.due.before.status.as_str(),
            to = checked.after.status.as_str(), reason, "domain status changed");
    }
    Ok(())
}

fn outcome(wanted: &[Wanted], found: &[Found], domain: &str, state: &AppState) -> Outcome {
    let statuses: Vec<RecordStatus> = wanted
        .iter()
        .zip(found)
        .filter(|(w, _)| w.required)
        .map(|(w, f)| records::evaluate(w, Some(f), domain, &state.settings).status)
        .collect();
    if statuses.iter().all(|s| *s == RecordStatus::Verified) {
        Outcome::Proven
    } else if statuses
        .iter()
        .any(|s| matches!(s, RecordStatus::NotFound | RecordStatus::Mismatch))
    {
        Outcome::Disproven
    } else {
        Outcome::Inconclusive
    }
}

/// All lookups of one domain at once; answers one `Found` per wanted record, in order.
async fn look_up_all(state: &AppState, domain: &str, wanted: &[Wanted]) -> Vec<Found> {
    let mut lookups = JoinSet::new();
    for (index, record) in wanted.iter().enumerate() {
        let resolver = state.resolver.clone();
        let record = record.clone();
        let domain = domain.to_string();
        lookups.spawn(async move { (index, look_up(&resolver, &domain, &record).await) });
    }
    let mut found = vec![Found::default(); wanted.len()];
    while let Some(result) = lookups.join_next().await {
        match result {
            Ok((index, answer)) => found[index] = answer,
            Err(error) => tracing::error!(%error, "a DNS lookup task failed"),
        }
    }
    found
}

async fn look_up(resolver: &crate::dns::DnsResolver, domain: &str, record: &Wanted) -> Found {
    let record_type = match record.record_type {
        "CNAME" => RecordType::CNAME,
        "MX" => RecordType::MX,
        _ => RecordType::TXT,
    };
    match resolver.lookup(&record.name, record_type).await {
        Answer::Found(values) => Found {
            values: records::relevant(record.purpose, values),
            ..Found::default()
        },
        Answer::Failed(error) => Found {
            error: Some(error),
            ..Found::default()
        },
        // A DNS provider that appends the zone turns `x._domainkey.customer.com` into
        // `x._domainkey.customer.com.customer.com`: look there to say so.
        Answer::Nothing if record.purpose == Purpose::Dkim => {
            let doubled = format!("{}.{domain}", record.name);
            match resolver.lookup(&doubled, record_type).await {
                Answer::Found(values) => Found {
                    values,
                    at: Some(doubled),
                    error: None,
                },
                _ => Found::default(),
            }
        }
        Answer::Nothing => Found::default(),
    }
}

/// Takes the lease on one domain for an immediate check; waits while another instance
/// is checking it. Answers false when the wait ran out.
pub async fn lease_one(state: &AppState, domain_id: &str) -> anyhow::Result<bool> {
    for _ in 0..100 {
        let now = Timestamp::now().0;
        let taken = sqlx::query(
            "UPDATE domains SET lease_until = $2 WHERE id = $1 \
             AND (lease_until IS NULL OR lease_until < $3)",
        )
        .bind(domain_id)
        .bind(now + LEASE)
        .bind(now)
        .execute(&state.db.pool)
        .await?;
        if taken.rows_affected() == 1 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Claims up to `limit` domains that are due, for this instance alone.
async fn claim_due(state: &AppState, limit: i64) -> anyhow::Result<Vec<String>> {
    let lock = match state.db.engine {
        Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let now = Timestamp::now().0;
    let sql = format!(
        "UPDATE domains SET lease_until = $1 \
         WHERE id IN (SELECT id FROM domains WHERE next_check_at <= $2 \
                        AND status IN ('pending', 'active') \
                        AND (lease_until IS NULL OR lease_until < $2) \
                      ORDER BY next_check_at LIMIT $3 {lock}) \
           AND (lease_until IS NULL OR lease_until < $2) \
         RETURNING id"
    );
    let ids = sqlx::query_scalar(&sql)
        .bind(now + LEASE)
        .bind(now)
        .bind(limit)
        .fetch_all(&state.db.pool)
        .await?;
    Ok(ids)
}

/// The background verifier: checks due domains until `stop` changes.
pub async fn run_verifier(state: AppState, mut stop: watch::Receiver<bool>) {
    const BATCH: i64 = 128;
    const CONCURRENCY: usize = 16;
    let idle = Duration::from_secs(state.settings.dns_check_interval.clamp(1, 30));
    tracing::info!("domain verifier started");
    while !*stop.borrow() {
        let claimed = match claim_due(&state, BATCH).await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::error!(%error, "domain verifier cannot claim domains");
                Vec::new()
            }
        };
        let full_batch = claimed.len() as i64 == BATCH;
        let due = match load(&state, &claimed).await {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "domain verifier cannot read the claimed domains");
                Vec::new()
            }
        };
        let examine = |due: Due| {
            let state = state.clone();
            async move { examine(&state, due).await }
        };
        let save = |checks: Vec<Checked>| {
            let state = state.clone();
            async move {
                if let Err(error) = save(&state, &checks).await {
                    tracing::error!(%error, domains = checks.len(), "cannot save domain checks");
                }
            }
        };
        run_in_groups(due, CONCURRENCY, examine, save).await;
        if !full_batch {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
        }
    }
    tracing::info!("domain verifier stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: i64 = 300_000;

    fn standing(status: DomainStatus, changed: i64) -> Standing {
        Standing {
            status,
            verified_by: None,
            status_changed_at: changed,
            verified_at: None,
            proof_missing_since: None,
            next_check_at: Some(changed),
            failed_checks: 0,
        }
    }

    #[test]
    fn pending_becomes_active_on_proof() {
        let (after, reason) = decide(
            &standing(DomainStatus::Pending, 0),
            Outcome::Proven,
            1000,
            INTERVAL,
        );
        assert_eq!(after.status, DomainStatus::Active);
        assert_eq!(after.verified_at, Some(1000));
        assert!(reason.is_some());
    }

    #[test]
    fn pending_backs_off_then_fails_after_72_hours() {
        let start = standing(DomainStatus::Pending, 0);
        let (first, _) = decide(&start, Outcome::Disproven, 1, INTERVAL);
        let (second, _) = decide(&first, Outcome::Disproven, 2, INTERVAL);
        assert!(second.next_check_at.unwrap() - 2 > first.next_check_at.unwrap() - 1);
        assert_eq!(second.status, DomainStatus::Pending);
        let (late, reason) = decide(&second, Outcome::Inconclusive, PENDING_LIMIT + 1, INTERVAL);
        assert_eq!(late.status, DomainStatus::Failed);
        assert_eq!(late.next_check_at, None);
        assert!(reason.is_some());
    }

    #[test]
    fn active_survives_a_short_loss_of_proof_and_failed_lookups() {
        let active = Standing {
            verified_by: Some("dns".into()),
            ..standing(DomainStatus::Active, 0)
        };
        let (missing, reason) = decide(&active, Outcome::Disproven, 10, INTERVAL);
        assert_eq!((missing.status, reason), (DomainStatus::Active, None));
        assert_eq!(missing.proof_missing_since, Some(10));
        let (unsure, _) = decide(&missing, Outcome::Inconclusive, PROOF_GRACE + 100, INTERVAL);
        assert_eq!(
            unsure.status,
            DomainStatus::Active,
            "a failed lookup never demotes"
        );
        let (back, _) = decide(&missing, Outcome::Proven, 20, INTERVAL);
        assert_eq!(back.proof_missing_since, None);
        let (demoted, reason) = decide(&missing, Outcome::Disproven, PROOF_GRACE + 11, INTERVAL);
        assert_eq!(demoted.status, DomainStatus::Pending);
        assert!(reason.is_some());
    }

    #[test]
    fn operator_activation_is_not_undone_by_dns() {
        let active = Standing {
            verified_by: Some("operator".into()),
            proof_missing_since: Some(0),
            ..standing(DomainStatus::Active, 0)
        };
        let (after, _) = decide(&active, Outcome::Disproven, PROOF_GRACE * 3, INTERVAL);
        assert_eq!(after.status, DomainStatus::Active);
    }
}
