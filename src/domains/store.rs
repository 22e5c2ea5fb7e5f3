//! The `domains` and `domain_events` tables.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use super::dkim;
use super::model::{Checked, Domain, DomainRow, DomainStatus, Due, PROOF_GRACE, Standing};
use super::records::{self, Found};
use crate::config::Settings;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Engine, Timestamp, json_rows, new_id, placeholders};
use crate::types::DomainName;

const COLUMNS: &str = "id, name, status, created_at, verified_at, last_checked_at";

/// How long a claimed check may run before another instance may take it over.
const LEASE_MS: i64 = 120_000;

/// Why a domain could not be added.
#[derive(Debug)]
pub enum AddError {
    /// The account has it already.
    Exists(DomainName),
    /// Another account has it active.
    ActiveElsewhere(DomainName),
    /// The account has as many domains as it may (the limit).
    TooMany(u64),
    /// Key generation is busy: try again shortly.
    Busy,
    Failed(anyhow::Error),
}

impl From<dkim::KeygenError> for AddError {
    fn from(error: dkim::KeygenError) -> AddError {
        match error {
            dkim::KeygenError::Busy => AddError::Busy,
            dkim::KeygenError::Failed(error) => AddError::Failed(error),
        }
    }
}

impl From<sqlx::Error> for AddError {
    fn from(error: sqlx::Error) -> AddError {
        AddError::Failed(error.into())
    }
}

impl From<anyhow::Error> for AddError {
    fn from(error: anyhow::Error) -> AddError {
        AddError::Failed(error)
    }
}

/// The domain of an account by name.
pub async fn find(db: &Db, account_id: &str, name: &DomainName) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM domains WHERE account_id = $1 AND name = $2"
    ))
    .bind(account_id)
    .bind(name.as_str())
    .fetch_optional(&db.pool)
    .await
}

/// A page of the account's domains by name, of one status when given.
pub async fn list(
    db: &Db,
    account_id: &str,
    status: Option<DomainStatus>,
    (limit, offset): (i64, i64),
) -> sqlx::Result<Vec<DomainRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM domains WHERE account_id = $1 AND ($2 IS NULL OR status = $2) \
         ORDER BY name LIMIT $3 OFFSET $4"
    ))
    .bind(account_id)
    .bind(status.map(DomainStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
}

/// How many domains the account has, counted in `conn`.
async fn count(conn: &mut sqlx::AnyConnection, account_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(conn)
        .await
}

/// Adds a domain to an account as `pending`, with its DKIM keys, unless the account has
/// `settings.max_domains_per_account` already.
pub async fn add(
    db: &Db,
    master_key: &MasterKey,
    settings: &Settings,
    account_id: &str,
    name: &DomainName,
) -> Result<DomainRow, AddError> {
    if active_elsewhere(db, account_id, name).await? {
        return Err(AddError::ActiveElsewhere(name.clone()));
    }
    let limit = settings.max_domains_per_account;
    let at_limit = |count: i64| u64::try_from(count).unwrap_or(0) >= limit;
    // Checked before the keys are made, so that an account at its limit costs no CPU...
    if at_limit(count(&mut *db.pool.acquire().await?, account_id).await?) {
        return Err(AddError::TooMany(limit));
    }
    let queue = usize::try_from(settings.keygen_queue).unwrap_or(usize::MAX);
    let keys = dkim::new_domain_keys(queue).await?;
    let now = db.now();
    let interval_ms = (settings.dns_check_interval.max(1) as i64).saturating_mul(1000);
    let id = new_id("dom");
    let mut tx = db.begin().await?;
    // ...and again in the transaction that adds, so that concurrent adds cannot pass it
    // together: SQLite has one writer at a time, PostgreSQL waits on the account's row.
    if db.engine == Engine::Postgres {
        sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
    }
    if at_limit(count(&mut tx, account_id).await?) {
        return Err(AddError::TooMany(limit));
    }
    let inserted = sqlx::query(
        "INSERT INTO domains (id, account_id, name, status, created_at, status_changed_at, next_check_at) \
         VALUES ($1, $2, $3, 'pending', $4, $4, $5)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(name.as_str())
    .bind(now.0)
    .bind(now.0 + interval_ms)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(error) if crate::store::is_unique_violation(&error) => {
            return Err(AddError::Exists(name.clone()));
        }
        inserted => inserted?,
    };
    dkim::insert_keys(&mut tx, &id, &keys, master_key, now).await?;
    record_event(&mut tx, &id, None, DomainStatus::Pending, "added", now).await?;
    tx.commit().await?;
    added(db, account_id, name).await
}

/// The domain just added, by this request or a concurrent one.
async fn added(db: &Db, account_id: &str, name: &DomainName) -> Result<DomainRow, AddError> {
    find(db, account_id, name)
        .await?
        .ok_or_else(|| AddError::Failed(anyhow::anyhow!("{name} vanished as it was added")))
}

/// Whether `name` is active in an account other than `account_id`: the name is that
/// account's, and nothing may be built on it here.
pub async fn active_elsewhere(db: &Db, account_id: &str, name: &DomainName) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM domains WHERE name = $1 AND status = 'active' AND account_id <> $2",
    )
    .bind(name.as_str())
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(found.is_some())
}

/// The account's domain `name`, added as `pending` when new; safe when several requests
/// add the same name at once. A name the account holds only pending while another
/// account has proved it is refused as adding it would be.
pub async fn find_or_add(
    db: &Db,
    master_key: &MasterKey,
    settings: &Settings,
    account_id: &str,
    name: &DomainName,
) -> Result<DomainRow, AddError> {
    if let Some(row) = find(db, account_id, name).await? {
        if row.status != DomainStatus::Active && active_elsewhere(db, account_id, name).await? {
            return Err(AddError::ActiveElsewhere(name.clone()));
        }
        return Ok(row);
    }
    match add(db, master_key, settings, account_id, name).await {
        Err(AddError::Exists(_)) => added(db, account_id, name).await,
        result => result,
    }
}

/// What still refers to a domain, and so keeps it from being deleted.
pub struct InUse {
    pub relays: i64,
    pub senders: i64,
    pub mailboxes: i64,
}

pub async fn in_use(db: &Db, id: &str) -> sqlx::Result<InUse> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM smtp_settings WHERE domain_id = $1) AS relays, \
                (SELECT COUNT(*) FROM sender_addresses WHERE domain_id = $1) AS senders, \
                (SELECT COUNT(*) FROM mailboxes WHERE domain_id = $1) AS mailboxes",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    Ok(InUse {
        relays: row.try_get("relays")?,
        senders: row.try_get("senders")?,
        mailboxes: row.try_get("mailboxes")?,
    })
}

/// Deletes the account's domain with its keys, lookups and events.
pub async fn delete(db: &Db, id: &str, account_id: &str) -> sqlx::Result<bool> {
    let deleted = db
        .write_alone(
            sqlx::query("DELETE FROM domains WHERE id = $1 AND account_id = $2")
                .bind(id)
                .bind(account_id),
        )
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// What the last check found for one record, as the `lookups` column of `domains` holds
/// it (a JSON array of these, one per record checked).
#[derive(Serialize, Deserialize)]
struct StoredLookup {
    #[serde(rename = "type")]
    record_type: String,
    name: String,
    values: Vec<String>,
    at: Option<String>,
    error: Option<String>,
}

/// Attaches records (wanted, and found at the last check) to domain rows, with a few
/// queries for any number of domains.
pub async fn render(
    db: &Db,
    settings: &Settings,
    rows: Vec<DomainRow>,
) -> sqlx::Result<Vec<Domain>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let tokens = dkim::tokens_of(&db.pool, &ids).await?;
    let mut keys = dkim::views_of(db, &ids, dkim::Schedule::of(settings)).await?;

    let sql = format!(
        "SELECT id, lookups FROM domains WHERE id IN ({}) AND lookups IS NOT NULL",
        placeholders(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in &ids {
        query = query.bind(*id);
    }
    let mut found: HashMap<(String, String, String), Found> = HashMap::new();
    for row in query.fetch_all(&db.pool).await? {
        let id: String = row.try_get("id")?;
        let lookups: String = row.try_get("lookups")?;
        let lookups: Vec<StoredLookup> = serde_json::from_str(&lookups).unwrap_or_default();
        for lookup in lookups {
            found.insert(
                (id.clone(), lookup.record_type, lookup.name),
                Found {
                    values: lookup.values,
                    at: lookup.at,
                    error: lookup.error,
                },
            );
        }
    }

    Ok(rows
        .into_iter()
        .map(|row| {
            let wanted = records::wanted(
                &row.name,
                tokens.get(&row.id).map_or(&[][..], |t| t),
                settings,
            );
            let records = wanted
                .iter()
                .map(|w| {
                    let key = (row.id.clone(), w.record_type.to_string(), w.name.clone());
                    records::evaluate(w, found.get(&key), &row.name, settings)
                })
                .collect();
            Domain {
                dkim: keys.remove(&row.id).unwrap_or_default().of(row.status),
                domain: row.name,
                status: row.status,
                records,
                created_at: Timestamp(row.created_at),
                verified_at: row.verified_at.map(Timestamp),
                last_checked_at: row.last_checked_at.map(Timestamp),
            }
        })
        .collect())
}

async fn record_event(
    conn: &mut sqlx::AnyConnection,
    domain_id: &str,
    from: Option<DomainStatus>,
    to: DomainStatus,
    reason: &str,
    at: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO domain_events (domain_id, at, from_status, to_status, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(domain_id)
    .bind(at.0)
    .bind(from.map(DomainStatus::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// A change of a domain's status, as its event tells it.
struct DomainEvent<'a> {
    account_id: &'a str,
    domain_id: &'a str,
    reason: &'a str,
    /// The domain as the API shows it after the change.
    view: &'a Domain,
}

/// Writes the event of the account's log that tells of a domain's new status, in the
/// transaction of the change.
async fn record_status_event(
    conn: &mut sqlx::AnyConnection,
    event: DomainEvent<'_>,
    at: Timestamp,
) -> anyhow::Result<()> {
    let kind = event.view.status.event_type();
    let new = crate::events::NewEvent {
        detail: Some(event.reason),
        ..crate::events::NewEvent::about(event.account_id, None, kind, event.domain_id, event.view)?
    };
    crate::events::record(conn, new, at).await?;
    Ok(())
}

/// The operator's override (CLI only): sets the status of the domain `name` in the
/// account that holds it (`account_id` picks one when several do); answers the account.
/// A change of status is announced in the account's event log (`settings` spell out the
/// domain's records there, as the API shows them).
pub async fn set_status_by_operator(
    db: &Db,
    settings: &Settings,
    name: &DomainName,
    account_id: Option<&str>,
    status: DomainStatus,
) -> anyhow::Result<String> {
    let holders: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, account_id, status FROM domains WHERE name = $1 AND ($2 IS NULL OR account_id = $2)",
    )
    .bind(name.as_str())
    .bind(account_id)
    .fetch_all(&db.pool)
    .await?;
    let (domain_id, holder, before) = match holders.as_slice() {
        [] => anyhow::bail!(
            "no account has added {name}; add it with POST /v2/domains first (or check --account)"
        ),
        [one] => one.clone(),
        _ => anyhow::bail!("several accounts have added {name}; pick one with --account"),
    };
    // The records as the last check found them, read before the transaction: the change
    // leaves them as they are.
    let row = find_by_id(&mut *db.pool.acquire().await?, &domain_id).await?;
    let Some(row) = row else {
        anyhow::bail!("{name} was deleted meanwhile");
    };
    let mut view = render(db, settings, vec![row]).await?.remove(0);
    // The keys as they are, shown below as the new status shows them.
    let schedule = dkim::Schedule::of(settings);
    let mut keys = dkim::views_of(db, &[&domain_id], schedule).await?;
    let now = db.now();
    let mut tx = db.begin().await?;
    let (verified_by, next_check_at) = match status {
        DomainStatus::Active => (Some("operator"), Some(now.0 + PROOF_GRACE)),
        _ => (None, None),
    };
    let updated = sqlx::query(
        "UPDATE domains SET status = $2, verified_by = COALESCE($3, verified_by), \
         verified_at = CASE WHEN $2 = 'active' THEN $4 ELSE verified_at END, \
         status_changed_at = $4, proof_missing_since = NULL, next_check_at = $5 WHERE id = $1",
    )
    .bind(&domain_id)
    .bind(status.as_str())
    .bind(verified_by)
    .bind(now.0)
    .bind(next_check_at)
    .execute(&mut *tx)
    .await;
    if let Err(error) = &updated
        && crate::store::is_unique_violation(error)
    {
        anyhow::bail!("{name} is already active in another account");
    }
    updated?;
    let reason = match status {
        DomainStatus::Active => "activated by the operator",
        _ => "set by the operator",
    };
    let before = DomainStatus::parse(&before)?;
    record_event(&mut tx, &domain_id, Some(before), status, reason, now).await?;
    if status != before {
        let row = find_by_id(&mut tx, &domain_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} vanished as its status was set"))?;
        view.status = row.status;
        view.dkim = keys.remove(&domain_id).unwrap_or_default().of(row.status);
        view.verified_at = row.verified_at.map(Timestamp);
        view.last_checked_at = row.last_checked_at.map(Timestamp);
        let event = DomainEvent {
            account_id: &holder,
            domain_id: &domain_id,
            reason,
            view: &view,
        };
        record_status_event(&mut tx, event, now).await?;
    }
    tx.commit().await?;
    Ok(holder)
}

/// A domain by id, read on `conn` (inside a transaction, it shows the transaction's writes).
async fn find_by_id(conn: &mut sqlx::AnyConnection, id: &str) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM domains WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The domain `id`, whatever its account, with that account.
pub async fn find_by_id_anywhere(db: &Db, id: &str) -> sqlx::Result<Option<(String, DomainRow)>> {
    let mut conn = db.pool.acquire().await?;
    let account_id: Option<String> =
        sqlx::query_scalar("SELECT account_id FROM domains WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(account_id) = account_id else {
        return Ok(None);
    };
    Ok(find_by_id(&mut conn, id)
        .await?
        .map(|row| (account_id, row)))
}

/// Takes the lease on one domain for an immediate check; waits while another instance
/// is checking it. Answers false when the wait ran out.
pub async fn lease_one(db: &Db, domain_id: &str) -> sqlx::Result<bool> {
    for _ in 0..100 {
        let now = db.now().0;
        let taken = db
            .write_alone(
                sqlx::query(
                    "UPDATE domains SET lease_until = $2 WHERE id = $1 \
                     AND (lease_until IS NULL OR lease_until < $3)",
                )
                .bind(domain_id)
                .bind(now + LEASE_MS)
                .bind(now),
            )
            .await?;
        if taken.rows_affected() == 1 {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Claims up to `limit` domains that are due, for this instance alone, and reads them in
/// the same transaction: on SQLite that is the connection that writes, whose cache the
/// saved checks keep warm, and a claim waits its turn instead of colliding with them.
pub async fn claim_due(db: &Db, limit: i64) -> anyhow::Result<Vec<Due>> {
    let lock = match db.engine {
        Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let now = db.now().0;
    let sql = format!(
        "UPDATE domains SET lease_until = $1 \
         WHERE id IN (SELECT id FROM domains WHERE next_check_at <= $2 \
                        AND status IN ('pending', 'active') \
                        AND (lease_until IS NULL OR lease_until < $2) \
                      ORDER BY next_check_at LIMIT $3 {lock}) \
           AND (lease_until IS NULL OR lease_until < $2) \
         RETURNING id"
    );
    let mut tx = db.begin().await?;
    let ids: Vec<String> = sqlx::query_scalar(&sql)
        .bind(now + LEASE_MS)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    let due = load_due(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(due)
}

/// The domains to check, with their tokens: two queries for a whole batch.
pub async fn load_due(conn: &mut sqlx::AnyConnection, ids: &[String]) -> anyhow::Result<Vec<Due>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT d.id, d.account_id, d.name, d.created_at, d.status, d.verified_by, \
         d.status_changed_at, d.verified_at, d.proof_missing_since, d.next_check_at, d.failed_checks, \
         CAST(CASE WHEN EXISTS (SELECT 1 FROM domains o WHERE o.name = d.name \
              AND o.status = 'active' AND o.id <> d.id) THEN 1 ELSE 0 END AS BIGINT) AS active_elsewhere \
         FROM domains d WHERE d.id IN ({})",
        placeholders(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut tokens = dkim::tokens_of(&mut *conn, &id_refs).await?;
    let mut due = Vec::with_capacity(ids.len());
    for row in query.fetch_all(&mut *conn).await? {
        let id: String = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        due.push(Due {
            tokens: tokens.remove(&id).unwrap_or_default(),
            id,
            account_id: row.try_get("account_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
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

/// One UPDATE for the checks' domains: each one's new standing and what its lookups found.
async fn update_checked(
    tx: &mut sqlx::AnyConnection,
    engine: Engine,
    checks: &[Checked],
) -> anyhow::Result<()> {
    let mut rows = Vec::with_capacity(checks.len());
    for checked in checks {
        let lookups: Vec<StoredLookup> = checked
            .lookups
            .iter()
            .map(|(wanted, found)| StoredLookup {
                record_type: wanted.record_type.to_string(),
                name: wanted.name.clone(),
                values: found.values.clone(),
                at: found.at.clone(),
                error: found.error.clone(),
            })
            .collect();
        let after = &checked.after;
        rows.push(json!({
            "id": checked.due.id,
            "status": after.status.as_str(),
            "verified_by": after.verified_by,
            "status_changed_at": after.status_changed_at,
            "verified_at": after.verified_at,
            "proof_missing_since": after.proof_missing_since,
            "next_check_at": after.next_check_at,
            "failed_checks": after.failed_checks,
            "checked_at": checked.at,
            "lookups": serde_json::to_string(&lookups)?,
        }));
    }
    let source = json_rows(
        engine,
        &[
            ("id", "TEXT"),
            ("status", "TEXT"),
            ("verified_by", "TEXT"),
            ("status_changed_at", "BIGINT"),
            ("verified_at", "BIGINT"),
            ("proof_missing_since", "BIGINT"),
            ("next_check_at", "BIGINT"),
            ("failed_checks", "BIGINT"),
            ("checked_at", "BIGINT"),
            ("lookups", "TEXT"),
        ],
    );
    let sql = format!(
        "UPDATE domains SET status = v.status, verified_by = v.verified_by, \
         status_changed_at = v.status_changed_at, verified_at = v.verified_at, \
         proof_missing_since = v.proof_missing_since, next_check_at = v.next_check_at, \
         failed_checks = v.failed_checks, last_checked_at = v.checked_at, lookups = v.lookups, \
         lease_until = NULL \
         FROM {source} WHERE domains.id = v.id"
    );
    sqlx::query(&sql)
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(tx)
        .await?;
    Ok(())
}

/// The changes of status among a group of checks: one row each in `domain_events`, and
/// the event of the account's log that tells of it (with its webhook jobs), in a few
/// statements for the whole group. The log's rows are those `events::record` writes.
async fn record_changes(
    tx: &mut sqlx::AnyConnection,
    engine: Engine,
    changed: &[(&Checked, &str)],
) -> anyhow::Result<()> {
    let history: Vec<serde_json::Value> = changed
        .iter()
        .map(|(checked, reason)| {
            json!({
                "domain_id": checked.due.id,
                "at": checked.at,
                "from_status": checked.due.before.status.as_str(),
                "to_status": checked.after.status.as_str(),
                "reason": reason,
            })
        })
        .collect();
    let source = json_rows(
        engine,
        &[
            ("domain_id", "TEXT"),
            ("at", "BIGINT"),
            ("from_status", "TEXT"),
            ("to_status", "TEXT"),
            ("reason", "TEXT"),
        ],
    );
    sqlx::query(&format!(
        "INSERT INTO domain_events (domain_id, at, from_status, to_status, reason) \
         SELECT v.domain_id, v.at, v.from_status, v.to_status, v.reason FROM {source}"
    ))
    .bind(serde_json::Value::Array(history).to_string())
    .execute(&mut *tx)
    .await?;

    // The account's log: only changes whose view was built (all, in practice).
    let mut events = Vec::with_capacity(changed.len());
    for (checked, reason) in changed {
        let Some(view) = &checked.view else { continue };
        let kind = view.status.event_type();
        let event = crate::events::NewEvent {
            detail: Some(reason),
            ..crate::events::NewEvent::about(
                &checked.due.account_id,
                None,
                kind,
                &checked.due.id,
                view,
            )?
        };
        events.push((event, Timestamp(checked.at)));
    }
    crate::events::record_all(tx, engine, &events).await?;
    Ok(())
}

/// Stores what the checks found (replacing the last lookups) and what they decided, in
/// one transaction with a few statements for the whole group; a change of status is
/// announced in the account's event log in the same transaction.
pub async fn save_checks(db: &Db, checks: &[Checked]) -> anyhow::Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let changed: Vec<(&Checked, &str)> = checks
        .iter()
        .filter_map(|c| c.reason.map(|reason| (c, reason)))
        .collect();
    let mut tx = db.begin().await?;
    update_checked(&mut tx, db.engine, checks).await?;
    if !changed.is_empty() {
        record_changes(&mut tx, db.engine, &changed).await?;
    }
    tx.commit().await?;
    for (checked, reason) in changed {
        tracing::info!(domain = %checked.due.name, from = checked.due.before.status.as_str(),
            to = checked.after.status.as_str(), reason, "domain status changed");
    }
    Ok(())
}
