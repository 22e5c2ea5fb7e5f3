//! The `sender_addresses` and `verification_sends` tables.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{DomainVerification, EmailVerification, Scope, SenderAddress};
use crate::domains::model::DomainStatus;
use crate::store::{Db, Timestamp, new_id};
use crate::types::EmailAddress;

/// A stored sender address with its domain.
pub struct Stored {
    pub id: String,
    pub account_id: String,
    pub entity_id: Option<String>,
    pub email: String,
    pub domain_id: String,
    pub domain: String,
    pub domain_status: DomainStatus,
    pub verified_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub code_hash: Option<String>,
    pub code_failures: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "s.id, s.account_id, s.entity_id, s.email, s.domain_id, d.name AS domain, \
                       d.status AS domain_status, s.verified_at, s.expires_at, s.code_hash, s.code_failures, \
                       s.created_at, s.updated_at";
const FROM: &str = "FROM sender_addresses s JOIN domains d ON d.id = s.domain_id";

impl sqlx::FromRow<'_, AnyRow> for Stored {
    fn from_row(row: &AnyRow) -> sqlx::Result<Stored> {
        let domain_status: String = row.try_get("domain_status")?;
        Ok(Stored {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            entity_id: row.try_get("entity_id")?,
            email: row.try_get("email")?,
            domain_id: row.try_get("domain_id")?,
            domain: row.try_get("domain")?,
            domain_status: DomainStatus::parse(&domain_status)
                .map_err(|e| sqlx::Error::Decode(e.into()))?,
            verified_at: row.try_get("verified_at")?,
            expires_at: row.try_get("expires_at")?,
            code_hash: row.try_get("code_hash")?,
            code_failures: row.try_get("code_failures")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl Stored {
    pub fn email_status(&self, now: Timestamp) -> EmailVerification {
        match (self.verified_at, self.expires_at) {
            (Some(_), _) => EmailVerification::Verified,
            (None, Some(expires)) if expires < now.0 => EmailVerification::Expired,
            _ => EmailVerification::Pending,
        }
    }

    pub fn domain_status(&self) -> DomainVerification {
        self.domain_status.into()
    }

    pub fn fully_verified(&self) -> bool {
        self.verified_at.is_some() && self.domain_status == DomainStatus::Active
    }

    pub fn scope(&self) -> Scope {
        match &self.entity_id {
            Some(id) => Scope::Organization(id.clone()),
            None => Scope::Account,
        }
    }
}

pub async fn load(db: &Db, account_id: &str, scope: &Scope) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE s.account_id = $1 AND COALESCE(s.entity_id, '') = $2"
    ))
    .bind(account_id)
    .bind(scope.key())
    .fetch_optional(&db.pool)
    .await
}

/// The address a verification link's token (its digest) was issued for.
pub async fn by_token(db: &Db, token_hash: &str) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} {FROM} WHERE s.token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(&db.pool)
        .await
}

/// Deletes the scope's address; answers how many were deleted.
pub async fn delete(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    scope: &Scope,
) -> sqlx::Result<u64> {
    let deleted = sqlx::query(
        "DELETE FROM sender_addresses WHERE account_id = $1 AND COALESCE(entity_id, '') = $2",
    )
    .bind(account_id)
    .bind(scope.key())
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    account_id: &str,
    scope: &Scope,
    email: &str,
    domain_id: &str,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sender_addresses (id, account_id, entity_id, email, domain_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(account_id)
    .bind(scope.entity_id())
    .bind(email)
    .bind(domain_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a new link and code (their digests) with their expiry, which is announced
/// again when it passes.
pub async fn issue_secrets(
    conn: &mut sqlx::AnyConnection,
    sender_id: &str,
    (token_hash, code_hash): (&str, &str),
    expires_at: i64,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sender_addresses SET token_hash = $2, code_hash = $3, code_failures = 0, expires_at = $4, \
         expiry_announced_at = NULL, updated_at = $5 WHERE id = $1",
    )
    .bind(sender_id)
    .bind(token_hash)
    .bind(code_hash)
    .bind(expires_at)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts a verification email from `account_id` to `email` before it is made: answers
/// the send's id, how many the account sent the address since `since` (this one
/// included), the first of them, and the one before this. Per account, so that another
/// tenant cannot use up this one's allowance; an address in any case counts as one.
pub async fn begin_send(
    db: &Db,
    account_id: &str,
    email: &str,
    since: i64,
    now: Timestamp,
) -> sqlx::Result<(String, i64, i64, Option<i64>)> {
    let id = new_id("vs");
    let email = email.to_ascii_lowercase();
    db.write_alone(
        sqlx::query(
            "INSERT INTO verification_sends (id, account_id, email, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(account_id)
        .bind(&email)
        .bind(now.0),
    )
    .await?;
    let row = sqlx::query(
        "SELECT COUNT(*) AS sent, MIN(at) AS first, \
         MAX(CASE WHEN id = $4 THEN NULL ELSE at END) AS previous FROM verification_sends \
         WHERE account_id = $1 AND email = $2 AND at > $3",
    )
    .bind(account_id)
    .bind(&email)
    .bind(since)
    .bind(&id)
    .fetch_one(&db.pool)
    .await?;
    let first: Option<i64> = row.try_get("first")?;
    Ok((
        id,
        row.try_get("sent")?,
        first.unwrap_or(now.0),
        row.try_get("previous")?,
    ))
}

/// Takes back a send that was refused or never made.
pub async fn forget_send(db: &Db, id: &str) -> sqlx::Result<()> {
    db.write_alone(sqlx::query("DELETE FROM verification_sends WHERE id = $1").bind(id))
        .await?;
    Ok(())
}

/// Takes one of the `tries` a code allows, before the code is compared, so that concurrent
/// guesses cannot all be compared: the number of this try, or `None` when none is left
/// (or the code was replaced meanwhile).
pub async fn take_code_try(
    db: &Db,
    sender_id: &str,
    code_hash: &str,
    tries: i64,
) -> sqlx::Result<Option<i64>> {
    let mut write = db.lone_write().await?;
    let failures = sqlx::query_scalar(
        "UPDATE sender_addresses SET code_failures = code_failures + 1 \
         WHERE id = $1 AND code_hash = $2 AND code_failures < $3 RETURNING code_failures",
    )
    .bind(sender_id)
    .bind(code_hash)
    .bind(tries)
    .fetch_optional(&mut *write)
    .await?;
    write.done().await?;
    Ok(failures)
}

/// Voids a code after its last wrong try.
pub async fn void_code(db: &Db, sender_id: &str, code_hash: &str) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query(
            "UPDATE sender_addresses SET code_hash = NULL WHERE id = $1 AND code_hash = $2",
        )
        .bind(sender_id)
        .bind(code_hash),
    )
    .await?;
    Ok(())
}

/// Marks an address verified at `now` and spends its link and code, in the caller's
/// transaction; false when it was already.
pub async fn mark_verified(
    conn: &mut sqlx::AnyConnection,
    sender_id: &str,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE sender_addresses SET verified_at = $2, token_hash = NULL, code_hash = NULL, updated_at = $2 \
         WHERE id = $1 AND verified_at IS NULL",
    )
    .bind(sender_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Up to `limit` addresses whose link and code expired unverified and whose expiry is not
/// yet announced, the longest expired first.
pub async fn expired_unannounced(db: &Db, now: Timestamp, limit: i64) -> sqlx::Result<Vec<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE s.verified_at IS NULL AND s.expiry_announced_at IS NULL \
         AND s.expires_at < $1 ORDER BY s.expires_at LIMIT $2"
    ))
    .bind(now.0)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Takes the announcement of the expiry of the address `sender_id` (at `expires_at`), in the caller's transaction: false when
/// another instance took it, or the address was verified or sent a new link meanwhile.
pub async fn take_expiry_announcement(
    conn: &mut sqlx::AnyConnection,
    sender_id: &str,
    expires_at: Option<i64>,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let taken = sqlx::query(
        "UPDATE sender_addresses SET expiry_announced_at = $2 WHERE id = $1 AND expires_at = $3 \
         AND verified_at IS NULL AND expiry_announced_at IS NULL",
    )
    .bind(sender_id)
    .bind(now.0)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Writes the event of the account's log about an address (`sender.verified`,
/// `sender.expired`), in the transaction of the change; `view` is the address as the API
/// shows it.
pub async fn record_event(
    conn: &mut sqlx::AnyConnection,
    kind: &str,
    view: &SenderAddress,
    at: Timestamp,
) -> anyhow::Result<()> {
    let entity_id = view.organization_id.as_deref();
    let event = crate::events::NewEvent::about(&view.account_id, entity_id, kind, &view.id, view)?;
    crate::events::record(conn, event, at).await?;
    Ok(())
}

/// The fully verified sender of an entity (or, with `None`, of the account), falling back
/// to the account's own.
async fn verified_sender(
    db: &Db,
    account_id: &str,
    entity_id: Option<&str>,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT s.email FROM sender_addresses s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND s.verified_at IS NOT NULL AND d.status = 'active' \
         AND (s.entity_id IS NULL OR s.entity_id = $2) \
         ORDER BY CASE WHEN s.entity_id IS NULL THEN 1 ELSE 0 END LIMIT 1",
    )
    .bind(account_id)
    .bind(entity_id)
    .fetch_optional(&db.pool)
    .await
}

/// The From of mail sent for an entity (or, with `None`, for the account): the entity's
/// sender when both its statuses are verified, else the account's when verified, else
/// `system_from`.
pub async fn effective_from(
    db: &Db,
    system_from: &str,
    account_id: &str,
    entity_id: Option<&str>,
) -> anyhow::Result<EmailAddress> {
    let found = verified_sender(db, account_id, entity_id).await?;
    let address = found.as_deref().unwrap_or(system_from);
    EmailAddress::parse(address).map_err(|e| anyhow::anyhow!("sender address {address}: {e}"))
}

/// The account's sender addresses (of any scope) that are `email`, compared ignoring
/// case: what decides whether the account may send as it.
pub async fn with_email(db: &Db, account_id: &str, email: &str) -> sqlx::Result<Vec<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE s.account_id = $1 AND LOWER(s.email) = LOWER($2)"
    ))
    .bind(account_id)
    .bind(email)
    .fetch_all(&db.pool)
    .await
}
