//! Memberships (the `memberships` table): which users belong to which entity, with
//! which role.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::Role;
use crate::store::{Db, Timestamp};

/// Where a user acts: an entity, its account, and the user's role there.
pub struct Membership {
    pub entity_id: String,
    pub account_id: String,
    pub role: Role,
}

/// The user's membership in `entity_id`, or (without one) the first they joined.
pub async fn first_of_user(
    db: &Db,
    user_id: &str,
    entity_id: Option<&str>,
) -> sqlx::Result<Option<Membership>> {
    let row = sqlx::query(
        "SELECT m.entity_id, m.role, e.account_id FROM memberships m JOIN entities e ON e.id = m.entity_id \
         WHERE m.user_id = $1 AND ($2 IS NULL OR m.entity_id = $2) ORDER BY m.created_at, m.entity_id LIMIT 1",
    )
    .bind(user_id)
    .bind(entity_id)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|row| {
        Ok(Membership {
            entity_id: row.try_get("entity_id")?,
            account_id: row.try_get("account_id")?,
            role: Role::from_row(&row)?,
        })
    })
    .transpose()
}

/// Makes the user a member of the entity with `role`, inside the caller's transaction.
/// Joining again keeps the better of the two roles.
pub async fn join(
    conn: &mut sqlx::AnyConnection,
    entity_id: &str,
    user_id: &str,
    role: Role,
    now: Timestamp,
) -> sqlx::Result<()> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE entity_id = $1 AND user_id = $2")
            .bind(entity_id)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    match current.as_deref().and_then(Role::parse) {
        Some(current) if current >= role => {}
        Some(_) => {
            sqlx::query("UPDATE memberships SET role = $3 WHERE entity_id = $1 AND user_id = $2")
                .bind(entity_id)
                .bind(user_id)
                .bind(role.as_str())
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query("INSERT INTO memberships (entity_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
                .bind(entity_id)
                .bind(user_id)
                .bind(role.as_str())
                .bind(now.0)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// A member of an entity.
#[derive(Serialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// When they joined the entity.
    pub created_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for Member {
    fn from_row(row: &AnyRow) -> sqlx::Result<Member> {
        Ok(Member {
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            role: Role::from_row(row)?,
            created_at: Timestamp(row.try_get("created_at")?),
        })
    }
}

const MEMBER: &str = "SELECT u.id AS user_id, u.email, u.name, m.role, m.created_at \
                      FROM memberships m JOIN users u ON u.id = m.user_id";

pub async fn member(db: &Db, entity_id: &str, user_id: &str) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(&format!(
        "{MEMBER} WHERE m.entity_id = $1 AND m.user_id = $2"
    ))
    .bind(entity_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await
}

pub async fn members(db: &Db, entity_id: &str) -> sqlx::Result<Vec<Member>> {
    sqlx::query_as(&format!(
        "{MEMBER} WHERE m.entity_id = $1 ORDER BY m.created_at, u.id"
    ))
    .bind(entity_id)
    .fetch_all(&db.pool)
    .await
}

pub async fn admin_count(db: &Db, entity_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE entity_id = $1 AND role = 'admin'")
        .bind(entity_id)
        .fetch_one(&db.pool)
        .await
}

pub async fn set_role(db: &Db, entity_id: &str, user_id: &str, role: Role) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query("UPDATE memberships SET role = $3 WHERE entity_id = $1 AND user_id = $2")
            .bind(entity_id)
            .bind(user_id)
            .bind(role.as_str()),
    )
    .await?;
    Ok(())
}

pub async fn remove(db: &Db, entity_id: &str, user_id: &str) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query("DELETE FROM memberships WHERE entity_id = $1 AND user_id = $2")
            .bind(entity_id)
            .bind(user_id),
    )
    .await?;
    Ok(())
}
