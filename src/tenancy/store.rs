//! The `accounts`, `entities` and `bootstrap` tables.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::store::{Db, Timestamp, new_id};

#[derive(Debug, Serialize, ToSchema)]
pub struct Entity {
    /// `ent_` and 24 hex digits.
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for Entity {
    fn from_row(row: &AnyRow) -> sqlx::Result<Entity> {
        Ok(Entity {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            name: row.try_get("name")?,
            created_at: Timestamp(row.try_get("created_at")?),
        })
    }
}

pub async fn insert_account(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    now: Timestamp,
) -> sqlx::Result<String> {
    let account_id = new_id("acc");
    sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&account_id)
        .bind(name)
        .bind(now.0)
        .execute(conn)
        .await?;
    Ok(account_id)
}

pub async fn count_accounts(conn: &mut sqlx::AnyConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(conn)
        .await
}

pub async fn account_exists(conn: &mut sqlx::AnyConnection, id: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Records that the first start made `account_id`; false when another start did first.
pub async fn claim_bootstrap(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    now: Timestamp,
) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "INSERT INTO bootstrap (id, account_id, created_at) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(account_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

pub async fn insert_entity(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
    now: Timestamp,
) -> sqlx::Result<Entity> {
    let entity = Entity {
        id: new_id("ent"),
        account_id: account_id.to_string(),
        name: name.to_string(),
        created_at: now,
    };
    sqlx::query("INSERT INTO entities (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&entity.id)
        .bind(&entity.account_id)
        .bind(&entity.name)
        .bind(entity.created_at.0)
        .execute(conn)
        .await?;
    Ok(entity)
}

pub async fn entity_in_account(db: &Db, entity_id: &str, account_id: &str) -> sqlx::Result<bool> {
    let found = sqlx::query("SELECT 1 FROM entities WHERE id = $1 AND account_id = $2")
        .bind(entity_id)
        .bind(account_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(found.is_some())
}

/// The account's first entity, made with the account.
pub async fn first_entity(db: &Db, account_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT id FROM entities WHERE account_id = $1 ORDER BY created_at, id LIMIT 1",
    )
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await
}

/// The account's entities, or only `entity_id` when given.
pub async fn entities_of_account(
    db: &Db,
    account_id: &str,
    entity_id: Option<&str>,
) -> sqlx::Result<Vec<Entity>> {
    sqlx::query_as(
        "SELECT id, account_id, name, created_at FROM entities \
         WHERE account_id = $1 AND ($2 IS NULL OR id = $2) ORDER BY created_at, id",
    )
    .bind(account_id)
    .bind(entity_id)
    .fetch_all(&db.pool)
    .await
}

/// The entities the user is a member of, in every account, or only `entity_id` when given.
pub async fn entities_of_user(
    db: &Db,
    user_id: &str,
    entity_id: Option<&str>,
) -> sqlx::Result<Vec<Entity>> {
    sqlx::query_as(
        "SELECT e.id, e.account_id, e.name, e.created_at FROM entities e \
         JOIN memberships m ON m.entity_id = e.id WHERE m.user_id = $1 AND ($2 IS NULL OR e.id = $2) \
         ORDER BY e.created_at, e.id",
    )
    .bind(user_id)
    .bind(entity_id)
    .fetch_all(&db.pool)
    .await
}

/// The name of an entity, read inside the caller's transaction.
pub async fn entity_name(conn: &mut sqlx::AnyConnection, entity_id: &str) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT name FROM entities WHERE id = $1")
        .bind(entity_id)
        .fetch_one(conn)
        .await
}
