//! Access tokens (the `access_tokens` table): what a user acts with after accepting an
//! invitation or signing in; stored as a SHA-256 digest.

use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp};

/// Every access token starts with this.
pub const TOKEN_PREFIX: &str = "mrt";
const LIFETIME_MS: i64 = 30 * 24 * 3_600_000;

/// The user an unexpired access token belongs to.
pub async fn user_of_token(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM access_tokens WHERE token_hash = $1 AND expires_at > $2",
    )
    .bind(digest(token))
    .bind(db.now().0)
    .fetch_optional(&db.pool)
    .await
}

/// Issues an access token, inside the caller's transaction; answers it and its expiry.
pub async fn issue(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    now: Timestamp,
) -> sqlx::Result<(String, Timestamp)> {
    let token = new_secret(TOKEN_PREFIX);
    let expires_at = Timestamp(now.0 + LIFETIME_MS);
    sqlx::query("INSERT INTO access_tokens (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)")
        .bind(digest(&token))
        .bind(user_id)
        .bind(expires_at.0)
        .bind(now.0)
        .execute(conn)
        .await?;
    Ok((token, expires_at))
}

/// Revokes one token (signing out).
pub async fn revoke(db: &Db, token_hash: &str) -> sqlx::Result<()> {
    db.write_alone(sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1").bind(token_hash))
        .await?;
    Ok(())
}

/// Revokes every token of a user but `keep` (the one changing the password, if any),
/// inside the caller's transaction.
pub async fn revoke_all(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    keep: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND token_hash <> COALESCE($2, '')")
        .bind(user_id)
        .bind(keep)
        .execute(conn)
        .await?;
    Ok(())
}
