//! The `suppressions` table, as the API reads and changes it (the outbox adds bounces).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::store::{Db, Timestamp};

/// An address the account's mail never goes to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Suppression {
    /// The address, lower-cased.
    pub email: String,
    /// `manual` (added through the API) or `bounce` (refused for good by its server).
    pub reason: String,
    /// The note given, or the server's refusal.
    pub detail: Option<String>,
    pub created_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for Suppression {
    fn from_row(row: &AnyRow) -> sqlx::Result<Suppression> {
        Ok(Suppression {
            email: row.try_get("email")?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            created_at: Timestamp(row.try_get("created_at")?),
        })
    }
}

/// A page of the account's list by address, past `after` when given.
pub async fn page(
    db: &Db,
    account_id: &str,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Suppression>> {
    sqlx::query_as(
        "SELECT email, reason, detail, created_at FROM suppressions \
         WHERE account_id = $1 AND email > $2 ORDER BY email LIMIT $3",
    )
    .bind(account_id)
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

pub async fn get(db: &Db, account_id: &str, email: &str) -> sqlx::Result<Option<Suppression>> {
    sqlx::query_as(
        "SELECT email, reason, detail, created_at FROM suppressions WHERE account_id = $1 AND email = $2",
    )
    .bind(account_id)
    .bind(email)
    .fetch_optional(&db.pool)
    .await
}

/// The account's entries, counted no further than `up_to` (so a check costs at most that).
pub async fn count(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    up_to: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM suppressions WHERE account_id = $1 LIMIT $2) AS listed",
    )
    .bind(account_id)
    .bind(up_to)
    .fetch_one(conn)
    .await
}

/// Adds a manual entry; a duplicate is a unique violation.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    email: &str,
    detail: Option<&str>,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO suppressions (account_id, email, reason, detail, created_at) \
         VALUES ($1, $2, 'manual', $3, $4)",
    )
    .bind(account_id)
    .bind(email)
    .bind(detail)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes an entry of the account; false when it had none.
pub async fn delete(db: &Db, account_id: &str, email: &str) -> sqlx::Result<bool> {
    let deleted = db
        .write_alone(
            sqlx::query("DELETE FROM suppressions WHERE account_id = $1 AND email = $2")
                .bind(account_id)
                .bind(email),
        )
        .await?;
    Ok(deleted.rows_affected() > 0)
}
