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
    let cancelled = db
        .write_alone(
            sqlx::query(
                "UPDATE invitations SET status = 'cancelled', updated_at = $3 \
                 WHERE id = $1 AND entity_id = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(entity_id)
            .bind(db.now().0),
        )
        .await?;
    Ok(cancelled.rows_affected() > 0)
}

/// Gives an invitation a new token and expiry (announced again when it passes), inside
/// the caller's transaction.
pub async fn reissue(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    token_hash: &str,
    expires_at: i64,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invitations SET token_hash = $2, expires_at = $3, expiry_announced_at = NULL, \
         last_sent_at = $4, updated_at = $4 WHERE id = $1",
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

/// The account an entity's invitations belong to (read with them).
const ACCOUNT: &str =
    "(SELECT account_id FROM entities WHERE entities.id = invitations.entity_id) AS account_id";

/// An invitation with the account it belongs to, as its events name it.
pub struct OfAccount {
    pub stored: Stored,
    pub account_id: String,
}

impl sqlx::FromRow<'_, AnyRow> for OfAccount {
    fn from_row(row: &AnyRow) -> sqlx::Result<OfAccount> {
        Ok(OfAccount {
            stored: <Stored as sqlx::FromRow<AnyRow>>::from_row(row)?,
            account_id: row.try_get("account_id")?,
        })
    }
}

/// The invitation `id` read on `conn` (inside a transaction, with its writes).
pub async fn get_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    now: Timestamp,
) -> sqlx::Result<OfAccount> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {ACCOUNT} FROM invitations WHERE id = $2"
    ))
    .bind(now.0)
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Up to `limit` pending invitations past their expiry whose expiry is not announced yet,
/// the longest expired first.
pub async fn expired_unannounced(
    db: &Db,
    now: Timestamp,
    limit: i64,
) -> sqlx::Result<Vec<OfAccount>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, {ACCOUNT} FROM invitations WHERE status = 'pending' \
         AND expiry_announced_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
    ))
    .bind(now.0)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Takes the announcement of the expiry of the invitation `id` (at `expires_at`), in the
/// caller's transaction: false when another instance took it, or the invitation was
/// accepted, cancelled or resent meanwhile.
pub async fn take_expiry_announcement(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let taken = sqlx::query(
        "UPDATE invitations SET expiry_announced_at = $2 WHERE id = $1 AND expires_at = $3 \
         AND status = 'pending' AND expiry_announced_at IS NULL",
    )
    .bind(id)
    .bind(now.0)
    .bind(expires_at.0)
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Writes the event of the account's log about an invitation (`invitation.accepted`,
/// `invitation.expired`), in the transaction of the change; the invitation as the API
/// shows it.
pub async fn record_event(
    conn: &mut sqlx::AnyConnection,
    kind: &str,
    invitation: &OfAccount,
    at: Timestamp,
) -> anyhow::Result<()> {
    let view = &invitation.stored.invitation;
    let account_id = &invitation.account_id;
    let event =
        crate::events::NewEvent::about(account_id, Some(&view.entity_id), kind, &view.id, view)?;
    crate::events::record(conn, event, at).await?;
    Ok(())
}

/// Announces every pending invitation's expiry not announced yet (its status is read from
/// the clock, so nothing else marks it), a batch per transaction; answers how many. Safe
/// beside other instances: the mark taken in the transaction decides who announces.
pub async fn announce_expired(db: &Db) -> anyhow::Result<usize> {
    const BATCH: i64 = 100;
    let mut announced = 0;
    loop {
        let now = db.now();
        let expired = expired_unannounced(db, now, BATCH).await?;
        if expired.is_empty() {
            return Ok(announced);
        }
        let mut taken = 0;
        let mut tx = db.begin().await?;
        for invitation in &expired {
            let view = &invitation.stored.invitation;
            if take_expiry_announcement(&mut tx, &view.id, view.expires_at, now).await? {
                record_event(&mut tx, "invitation.expired", invitation, now).await?;
                taken += 1;
            }
        }
        tx.commit().await?;
        announced += taken;
        if (expired.len() as i64) < BATCH || taken == 0 {
            return Ok(announced);
        }
    }
}
