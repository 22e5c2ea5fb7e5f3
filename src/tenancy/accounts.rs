//! Creating accounts: from the CLI, and once on the very first start.

use super::store;
use crate::identity::{Role, api_keys};
use crate::store::Db;

/// A new account with its first entity and an admin API key (the only time it is shown).
#[derive(Debug)]
pub struct NewAccount {
    pub account_id: String,
    pub entity_id: String,
    pub api_key: String,
}

pub async fn create_account(db: &Db, name: &str) -> anyhow::Result<NewAccount> {
    let mut tx = db.begin().await?;
    let account = insert_account(&mut tx, db, name).await?;
    tx.commit().await?;
    Ok(account)
}

/// Creates the first account when the database has none and no start has done so
/// before; of several instances starting at once, exactly one creates it.
pub async fn bootstrap(db: &Db) -> anyhow::Result<Option<NewAccount>> {
    let mut tx = db.begin().await?;
    if store::count_accounts(&mut tx).await? > 0 {
        return Ok(None);
    }
    let account = insert_account(&mut tx, db, "Default").await?;
    if !store::claim_bootstrap(&mut tx, &account.account_id, db.now()).await? {
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(account))
}

async fn insert_account(
    tx: &mut sqlx::AnyConnection,
    db: &Db,
    name: &str,
) -> anyhow::Result<NewAccount> {
    let now = db.now();
    let account_id = store::insert_account(&mut *tx, name, now).await?;
    let entity = store::insert_entity(&mut *tx, &account_id, name, now).await?;
    let key = api_keys::insert(
        &mut *tx,
        &account_id,
        None,
        "admin",
        Role::Admin,
        api_keys::Creator::CLI,
        now,
    )
    .await?;
    Ok(NewAccount {
        account_id,
        entity_id: entity.id,
        api_key: key.api_key,
    })
}

/// An account-wide admin key made by the operator: the way back in for an account whose
/// last admin key was deleted.
pub async fn create_admin_key(
    db: &Db,
    account_id: &str,
    name: &str,
) -> anyhow::Result<api_keys::NewApiKey> {
    let mut tx = db.begin().await?;
    if !store::account_exists(&mut tx, account_id).await? {
        anyhow::bail!("no account has the id {account_id}");
    }
    let key = api_keys::insert(
        &mut tx,
        account_id,
        None,
        name,
        Role::Admin,
        api_keys::Creator::CLI,
        db.now(),
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}
