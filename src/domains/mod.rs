//! Managed domains: added by a tenant, proven by DKIM CNAMEs in DNS, checked again over time.

pub mod check;
pub mod dkim;
pub mod name;
pub mod records;
mod routes;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use name::DomainName;
use records::{DnsRecord, Found};

use crate::config::Settings;
use crate::http::{ApiError, AppState};
use crate::store::{Db, Timestamp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_domain, routes::list_domains))
        .routes(routes!(routes::get_domain, routes::delete_domain))
        .routes(routes!(routes::verify_domain))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    /// Waiting for its DNS records.
    Pending,
    /// Proven; mailboxes and senders may use it.
    Active,
    /// No proof within 72 hours; `verify` can still activate it.
    Failed,
    /// Stopped by the operator.
    Suspended,
}

impl DomainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::Pending => "pending",
            DomainStatus::Active => "active",
            DomainStatus::Failed => "failed",
            DomainStatus::Suspended => "suspended",
        }
    }

    pub fn parse(value: &str) -> anyhow::Result<DomainStatus> {
        Ok(match value {
            "pending" => DomainStatus::Pending,
            "active" => DomainStatus::Active,
            "failed" => DomainStatus::Failed,
            "suspended" => DomainStatus::Suspended,
            other => anyhow::bail!("unknown domain status {other}"),
        })
    }
}

/// A domain in API answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Domain {
    /// The name in ASCII (IDNA A-labels), lowercase.
    pub domain: String,
    pub status: DomainStatus,
    /// The records to publish: the DKIM CNAMEs are required, the rest advised.
    pub records: Vec<DnsRecord>,
    pub created_at: Timestamp,
    pub verified_at: Option<Timestamp>,
    pub last_checked_at: Option<Timestamp>,
}

/// A domain row, before its records are attached.
pub struct DomainRow {
    pub id: String,
    pub name: String,
    pub status: DomainStatus,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    pub last_checked_at: Option<i64>,
}

pub const DOMAIN_COLUMNS: &str = "id, name, status, created_at, verified_at, last_checked_at";

impl sqlx::FromRow<'_, AnyRow> for DomainRow {
    fn from_row(row: &AnyRow) -> sqlx::Result<DomainRow> {
        let status: String = row.try_get("status")?;
        Ok(DomainRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            status: DomainStatus::parse(&status).map_err(|e| sqlx::Error::Decode(e.into()))?,
            created_at: row.try_get("created_at")?,
            verified_at: row.try_get("verified_at")?,
            last_checked_at: row.try_get("last_checked_at")?,
        })
    }
}

/// The domain of an account by name.
pub async fn find(db: &Db, account_id: &str, name: &DomainName) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(&format!(
        "SELECT {DOMAIN_COLUMNS} FROM domains WHERE account_id = $1 AND name = $2"
    ))
    .bind(account_id)
    .bind(name.as_str())
    .fetch_optional(&db.pool)
    .await
}

/// Adds a domain to an account as `pending`, with its DKIM keys. 409 when the account
/// has it already or another account has it active.
pub async fn add_domain(
    state: &AppState,
    account_id: &str,
    name: &DomainName,
) -> Result<DomainRow, ApiError> {
    let active_elsewhere: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM domains WHERE name = $1 AND status = 'active'")
            .bind(name.as_str())
            .fetch_optional(&state.db.pool)
            .await?;
    if active_elsewhere.is_some() {
        return Err(ApiError::conflict(
            "domain_taken",
            format!("{name} is already verified by another account"),
        ));
    }
    let keys = dkim::generate_keys().await?;
    let now = Timestamp::now().0;
    let interval_ms = (state.settings.dns_check_interval.max(1) as i64).saturating_mul(1000);
    let id = crate::store::new_id("dom");
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO domains (id, account_id, name, status, created_at, status_changed_at, next_check_at) \
         VALUES ($1, $2, $3, 'pending', $4, $4, $5)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(name.as_str())
    .bind(now)
    .bind(now + interval_ms)
    .execute(&mut *tx)
    .await
    .map_err(|error| match error {
        e if crate::store::is_unique_violation(&e) => {
            ApiError::conflict("domain_exists", format!("{name} is already added"))
        }
        e => e.into(),
    })?;
    dkim::insert_keys(&mut tx, &id, &keys, &state.master_key).await?;
    record_event(&mut tx, &id, None, DomainStatus::Pending, "added").await?;
    tx.commit().await?;
    find(&state.db, account_id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))
}

/// The account's domain `name`, added as `pending` when new; safe when several requests
/// add the same name at once.
pub async fn find_or_add(
    state: &AppState,
    account_id: &str,
    name: &DomainName,
) -> Result<DomainRow, ApiError> {
    if let Some(row) = find(&state.db, account_id, name).await? {
        return Ok(row);
    }
    match add_domain(state, account_id, name).await {
        Err(error) if error.code == "domain_exists" => find(&state.db, account_id, name)
            .await?
            .ok_or_else(|| ApiError::not_found("domain")),
        result => result,
    }
}

/// A domain's DKIM tokens, in order.
pub async fn tokens(db: &Db, domain_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT token FROM dkim_keys WHERE domain_id = $1 ORDER BY position")
        .bind(domain_id)
        .fetch_all(&db.pool)
        .await
}

/// The tokens of each of the domains `ids`, in order, with one query.
pub async fn tokens_of(db: &Db, ids: &[&str]) -> sqlx::Result<HashMap<String, Vec<String>>> {
    let mut tokens: HashMap<String, Vec<String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(tokens);
    }
    let sql = format!(
        "SELECT domain_id, token FROM dkim_keys WHERE domain_id IN ({}) ORDER BY domain_id, position",
        crate::store::placeholders(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    for row in query.fetch_all(&db.pool).await? {
        tokens
            .entry(row.try_get("domain_id")?)
            .or_default()
            .push(row.try_get("token")?);
    }
    Ok(tokens)
}

/// Attaches records (wanted, and found at the last check) to domain rows, with two
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
    let placeholders = crate::store::placeholders(1, ids.len());
    let tokens = tokens_of(db, &ids).await?;

    let sql = format!(
        "SELECT domain_id, record_type, name, found, found_at, error FROM domain_lookups \
         WHERE domain_id IN ({placeholders})"
    );
    let mut query = sqlx::query(&sql);
    for id in &ids {
        query = query.bind(*id);
    }
    let mut found: HashMap<(String, String, String), Found> = HashMap::new();
    for row in query.fetch_all(&db.pool).await? {
        let values: String = row.try_get("found")?;
        found.insert(
            (
                row.try_get("domain_id")?,
                row.try_get("record_type")?,
                row.try_get("name")?,
            ),
            Found {
                values: serde_json::from_str(&values).unwrap_or_default(),
                at: row.try_get("found_at")?,
                error: row.try_get("error")?,
            },
        );
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

pub async fn record_event(
    conn: &mut sqlx::AnyConnection,
    domain_id: &str,
    from: Option<DomainStatus>,
    to: DomainStatus,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO domain_events (domain_id, at, from_status, to_status, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(domain_id)
    .bind(Timestamp::now().0)
    .bind(from.map(DomainStatus::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// The operator's override (CLI only): sets the status of the domain `name` in the
/// account that holds it (`account_id` picks one when several do).
pub async fn set_status_by_operator(
    db: &Db,
    name: &DomainName,
    account_id: Option<&str>,
    status: DomainStatus,
) -> anyhow::Result<String> {
    let holders: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, account_id FROM domains WHERE name = $1 AND ($2 IS NULL OR account_id = $2)",
    )
    .bind(name.as_str())
    .bind(account_id)
    .fetch_all(&db.pool)
    .await?;
    let (domain_id, holder) = match holders.as_slice() {
        [] => anyhow::bail!(
            "no account has added {name}; add it with POST /v2/domains first (or check --account)"
        ),
        [one] => one.clone(),
        _ => anyhow::bail!("several accounts have added {name}; pick one with --account"),
    };
    let before: String = sqlx::query_scalar("SELECT status FROM domains WHERE id = $1")
        .bind(&domain_id)
        .fetch_one(&db.pool)
        .await?;
    let now = Timestamp::now().0;
    let mut tx = db.begin().await?;
    let (verified_by, next_check_at) = match status {
        DomainStatus::Active => (Some("operator"), Some(now + check::PROOF_GRACE)),
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
    .bind(now)
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
    record_event(
        &mut tx,
        &domain_id,
        Some(DomainStatus::parse(&before)?),
        status,
        reason,
    )
    .await?;
    tx.commit().await?;
    Ok(holder)
}
