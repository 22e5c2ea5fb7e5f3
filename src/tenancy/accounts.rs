//! Creating accounts: from the CLI, and once on the very first start.

use super::Role;
use crate::store::{Db, Timestamp, new_id};

/// A new account with its first entity and an admin API key (the only time it is shown).
#[derive(Debug)]
pub struct NewAccount {
    pub account_id: String,
    pub entity_id: String,
    pub api_key: String,
}

pub async fn create_account(db: &Db, name: &str) -> anyhow::Result<NewAccount> {
    let mut tx = db.begin().await?;
    let account = insert_account(&mut tx, name).await?;
    tx.commit().await?;
    Ok(account)
}

/// Creates the first account when the database has none and no start has done so
/// before; of several instances starting at once, exactly one creates it.
pub async fn bootstrap(db: &Db) -> anyhow::Result<Option<NewAccount>> {
    let mut tx = db.begin().await?;
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await?;
    if accounts > 0 {
        return Ok(None);
    }
    let account = insert_account(&mut tx, "Default").await?;
    let claimed = sqlx::query(
        "INSERT INTO bootstrap (id, account_id, created_at) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&account.account_id)
    .bind(Timestamp::now().0)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(account))
}

async fn insert_account(tx: &mut sqlx::AnyConnection, name: &str) -> anyhow::Result<NewAccount> {
    let now = Timestamp::now().0;
    let account_id = new_id("acc");
    sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&account_id)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let entity = super::entities::insert_entity(&mut *tx, &account_id, name).await?;
    let key =
        super::api_keys::insert_api_key(&mut *tx, &account_id, None, "admin", Role::Admin).await?;
    Ok(NewAccount {
        account_id,
        entity_id: entity.id,
        api_key: key.api_key,
    })
}
