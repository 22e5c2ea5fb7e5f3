//! The `invitations` table.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{DAY, Invitation, InvitationStatus};
use crate::identity::Role;
use crate::store::{Db, Timestamp};

/// An invitation as stored, with what resending needs.
pub struct Stored {
    pub invitation: Invitation,
    pub last_sent_at: i64,
    pub valid_days: i64,
}

/// The columns, with a pending invitation past its expiry (the `$1` of every query that
/// reads them is now) read as expired.
const COLUMNS: &str = "id, entity_id, email, name, role, \
     CASE WHEN status = 'pending' AND expires_at <= $1 THEN 'expired' ELSE status END AS status, \
     invited_by, invited_by_user_id, expires_at, accepted_at, created_at, updated_at, last_sent_at, valid_days";

impl sqlx::FromRow<'_, AnyRow> for Stored {
    fn from_row(row: &AnyRow) -> sqlx::Result<Stored> {
        let status = match row.try_get::<String, _>("status")?.as_str() {
            "pending" => InvitationStatus::Pending,
            "accepted" => InvitationStatus::Accepted,
            "expired" => InvitationStatus::Expired,
            _ => InvitationStatus::Cancelled,
        };
        Ok(Stored {
            invitation: Invitation {
                id: row.try_get("id")?,
                entity_id: row.try_get("entity_id")?,
                email: row.try_get("email")?,
                name: row.try_get("name")?,
                role: Role::from_row(row)?,
                status,
                invited_by: row.try_get("invited_by")?,
                invited_by_user_id: row.try_get("invited_by_user_id")?,
                expires_at: Timestamp(row.try_get("expires_at")?),
                accepted_at: row.try_get::<Option<i64>, _>("accepted_at")?.map(Timestamp),
                created_at: Timestamp(row.try_get("created_at")?),
                updated_at: Timestamp(row.try_get("updated_at")?),
            },
            last_sent_at: row.try_get("last_sent_at")?,
            valid_days: row.try_get("valid_days")?,
        })
    }
}

pub async fn find(db: &Db, entity_id: &str, id: &str) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE id = $2 AND entity_id = $3"
    ))
    .bind(db.now().0)
    .bind(id)
    .bind(entity_id)
    .fetch_optional(&db.pool)
    .await
}

/// The invitation a token (its digest) was issued for.
pub async fn by_token(db: &Db, token_hash: &str) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE token_hash = $2"
    ))
    .bind(db.now().0)
    .bind(token_hash)
    .fetch_optional(&db.pool)
    .await
}

/// The entity's invitations, newest first.
pub async fn list(db: &Db, entity_id: &str) -> sqlx::Result<Vec<Stored>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE entity_id = $2 ORDER BY created_at DESC, id"
    ))
    .bind(db.now().0)
    .bind(entity_id)
    .fetch_all(&db.pool)
    .await
}

/// A new invitation, as `insert` stores it.
pub struct NewInvitation<'a> {
    pub id: &'a str,
    pub entity_id: &'a str,
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub role: Role,
    pub invited_by: &'a str,
    pub invited_by_user_id: Option<&'a str>,
    pub token_hash: &'a str,
    pub valid_days: i64,
}

/// Inserts a pending invitation inside the caller's transaction, after cancelling an
/// expired one for the same email (it no longer holds the place of the one pending
/// invitation); answers it as stored.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    new: NewInvitation<'_>,
    now: Timestamp,
) -> sqlx::Result<Stored> {
    sqlx::query(
        "UPDATE invitations SET status = 'cancelled', updated_at = $3 \
         WHERE entity_id = $1 AND email = $2 AND status = 'pending' AND expires_at <= $3",
    )
    .bind(new.entity_id)
    .bind(new.email)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO invitations (id, entity_id, email, name, role, status, invited_by, invited_by_user_id, token_hash, \
         valid_days, expires_at, last_sent_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $11, $11)",
    )
    .bind(new.id)
    .bind(new.entity_id)
    .bind(new.email)
    .bind(new.name)
    .bind(new.role.as_str())
    .bind(new.invited_by)
    .bind(new.invited_by_user_id)
    .bind(new.token_hash)
    .bind(new.valid_days)
    .bind(now.0 + new.valid_days * DAY)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM invitations WHERE id = $2"))
        .bind(now.0)
        .bind(new.id)
        .fetch_one(&mut *conn)
        .await
}

/// Cancels a pending invitation; false when it was not pending.
pub async fn cancel(db: &Db, entity_id: &str, id: &str) -> sqlx::Result<bool> {
    let cancelled = sqlx::query(
        "UPDATE invitations SET status = 'cancelled', updated_at = $3 \
         WHERE id = $1 AND entity_id = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(entity_id)
    .bind(db.now().0)
    .execute(&db.pool)
    .await?;
    Ok(cancelled.rows_affected() > 0)
}

/// Gives an invitation a new token and expiry, inside the caller's transaction.
pub async fn reissue(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    token_hash: &str,
    expires_at: i64,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invitations SET token_hash = $2, expires_at = $3, last_sent_at = $4, updated_at = $4 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(token_hash)
    .bind(expires_at)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a pending, unexpired invitation accepted by `user_id`, inside the caller's
/// transaction; false when another accept came first (or it expired meanwhile).
pub async fn claim(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    user_id: &str,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "UPDATE invitations SET status = 'accepted', accepted_at = $2, accepted_by = $3, updated_at = $2 \
         WHERE id = $1 AND status = 'pending' AND expires_at > $2",
    )
    .bind(id)
    .bind(now.0)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}
