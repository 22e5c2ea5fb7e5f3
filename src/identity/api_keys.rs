//! API keys (the `api_keys` table): created by the CLI or by an admin, shown once, stored
//! as a SHA-256 digest, and found again by that digest on every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::Role;
use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp, new_id};

/// Every API key starts with this, so that a leaked one is easy to recognise.
pub const KEY_PREFIX: &str = "mrk";

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_` and 24 hex digits; what `X-Key` names.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The entity the key is limited to; `null` for a key that acts for the whole account.
    pub entity_id: Option<String>,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    /// Who created it: a user's id, another key's id, or `cli`.
    pub created_by: String,
    /// The user who created it, when a user did; the key is revoked when that user
    /// leaves the entity or stops being its admin.
    pub created_by_user_id: Option<String>,
    pub created_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for ApiKey {
    fn from_row(row: &AnyRow) -> sqlx::Result<ApiKey> {
        Ok(ApiKey {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: Role::from_row(row)?,
            entity_id: row.try_get("entity_id")?,
            prefix: row.try_get("prefix")?,
            created_by: row.try_get("created_by")?,
            created_by_user_id: row.try_get("created_by_user_id")?,
            created_at: Timestamp(row.try_get("created_at")?),
        })
    }
}

/// A key as created: the only answer that carries its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret. It is shown this once; mailroom keeps only a digest of it.
    pub api_key: String,
}

/// The credential a secret stands for.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub account_id: String,
    pub entity_id: Option<String>,
    pub role: Role,
    /// The user it acts for: who made it, or made the key that made it.
    pub created_by_user_id: Option<String>,
}

/// Who creates a key: `principal` is a user's or a key's id, or `cli`.
#[derive(Debug, Clone, Copy)]
pub struct Creator<'a> {
    pub principal: &'a str,
    pub user_id: Option<&'a str>,
}

impl Creator<'static> {
    pub const CLI: Creator<'static> = Creator {
        principal: "cli",
        user_id: None,
    };
}

pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    entity_id: Option<&str>,
    name: &str,
    role: Role,
    created_by: Creator<'_>,
    now: Timestamp,
) -> sqlx::Result<NewApiKey> {
    let secret = new_secret(KEY_PREFIX);
    let key = ApiKey {
        id: new_id("key"),
        name: name.to_string(),
        role,
        entity_id: entity_id.map(str::to_string),
        prefix: secret[..KEY_PREFIX.len() + 9].to_string(),
        created_by: created_by.principal.to_string(),
        created_by_user_id: created_by.user_id.map(str::to_string),
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO api_keys (id, account_id, entity_id, name, role, secret_hash, prefix, \
         created_by, created_by_user_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&key.id)
    .bind(account_id)
    .bind(&key.entity_id)
    .bind(&key.name)
    .bind(role.as_str())
    .bind(digest(&secret))
    .bind(&key.prefix)
    .bind(&key.created_by)
    .bind(&key.created_by_user_id)
    .bind(key.created_at.0)
    .execute(conn)
    .await?;
    Ok(NewApiKey {
        key,
        api_key: secret,
    })
}

/// The account's keys, or only those of `entity_id` when given.
pub async fn list(db: &Db, account_id: &str, entity_id: Option<&str>) -> sqlx::Result<Vec<ApiKey>> {
    sqlx::query_as(
        "SELECT id, name, role, entity_id, prefix, created_by, created_by_user_id, created_at \
         FROM api_keys \
         WHERE account_id = $1 AND ($2 IS NULL OR entity_id = $2) ORDER BY created_at, id",
    )
    .bind(account_id)
    .bind(entity_id)
    .fetch_all(&db.pool)
    .await
}

/// Deletes key `id` of the account (of `entity_id` when given); answers whether it existed.
pub async fn delete(
    db: &Db,
    id: &str,
    account_id: &str,
    entity_id: Option<&str>,
) -> sqlx::Result<bool> {
    let deleted = db.write_alone(sqlx::query(
        "DELETE FROM api_keys WHERE id = $1 AND account_id = $2 AND ($3 IS NULL OR entity_id = $3)",
    )
    .bind(id)
    .bind(account_id)
    .bind(entity_id)
    )
    .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Deletes the keys user `user_id` created in entity `entity_id`.
pub async fn revoke_created_by(db: &Db, entity_id: &str, user_id: &str) -> sqlx::Result<()> {
    db.write_alone(
        sqlx::query("DELETE FROM api_keys WHERE entity_id = $1 AND created_by_user_id = $2")
            .bind(entity_id)
            .bind(user_id),
    )
    .await?;
    Ok(())
}

/// The keys that answered lately, by digest, so that a request costs one query fewer.
/// Only keys that exist are kept: a new key works at once, and guessing fills nothing.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Instant, KeyRecord)>>,
}

impl KeyCache {
    /// How long a deleted key may still work on another instance.
    pub const TTL: Duration = Duration::from_secs(2);
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, digest: &str) -> Option<KeyRecord> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(digest)
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, key)| key.clone())
    }

    fn put(&self, digest: String, key: KeyRecord) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < Self::TTL);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (Instant::now(), key));
    }

    /// After a key is deleted: this instance forgets every key at once.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The key a secret belongs to, from the cache or by one lookup on a unique index (no
/// slow hash: the secret is random).
pub async fn authenticate(
    db: &Db,
    cache: &KeyCache,
    secret: &str,
) -> sqlx::Result<Option<KeyRecord>> {
    let digest = digest(secret);
    if let Some(key) = cache.get(&digest) {
        return Ok(Some(key));
    }
    let row =
        sqlx::query("SELECT id, account_id, entity_id, role, created_by_user_id FROM api_keys WHERE secret_hash = $1")
            .bind(&digest)
            .fetch_optional(&db.pool)
            .await?;
    let key = row
        .map(|row| {
            Ok::<_, sqlx::Error>(KeyRecord {
                id: row.try_get("id")?,
                account_id: row.try_get("account_id")?,
                entity_id: row.try_get("entity_id")?,
                role: Role::from_row(&row)?,
                created_by_user_id: row.try_get("created_by_user_id")?,
            })
        })
        .transpose()?;
    if let Some(key) = &key {
        cache.put(digest, key.clone());
    }
    Ok(key)
}
