//! The `users`, `attempts` and `password_resets` tables.

use sqlx::Row;

use crate::store::{Db, Timestamp, new_id};

/// The form a user's email is kept and looked up in: one user per address, whatever the
/// case it is typed in.
pub fn email_key(email: &str) -> String {
    email.to_ascii_lowercase()
}

/// A user as signing in needs them.
pub struct StoredUser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
}

async fn one_user(db: &Db, column: &str, value: &str) -> sqlx::Result<Option<StoredUser>> {
    let row: Option<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT id, email, password_hash FROM users WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|(id, email, password_hash)| StoredUser {
        id,
        email,
        password_hash,
    }))
}

pub async fn by_email(db: &Db, email: &str) -> sqlx::Result<Option<StoredUser>> {
    one_user(db, "email", &email_key(email)).await
}

pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<StoredUser>> {
    one_user(db, "id", id).await
}

/// Inserts a user inside the caller's transaction.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    email: &str,
    name: &str,
    password_hash: &str,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(id)
        .bind(email_key(email))
        .bind(name)
        .bind(password_hash)
        .bind(now.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a user's password; every reset link of the user still open is used up with it.
pub async fn set_password(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    password_hash: &str,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(password_hash)
        .bind(now.0)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(now.0)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

const ATTEMPTS_KEPT: i64 = 24 * 3_600_000;

/// Writes an attempt for `subject` and answers its id with how many attempts (this one
/// included) the subject has made since `since`, and the first one's time. Written before
/// counting, so that of many concurrent attempts no more than a limit see themselves
/// within it.
pub async fn begin_attempt(
    db: &Db,
    subject: &str,
    since: i64,
    now: Timestamp,
) -> sqlx::Result<(String, i64, i64)> {
    let id = new_id("att");
    // No window is longer than a day: older attempts, of any subject, count no more.
    db.write_alone(sqlx::query("DELETE FROM attempts WHERE at <= $1").bind(now.0 - ATTEMPTS_KEPT))
        .await?;
    db.write_alone(
        sqlx::query("INSERT INTO attempts (id, subject, at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(subject)
            .bind(now.0),
    )
    .await?;
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(at) AS first FROM attempts WHERE subject = $1 AND at > $2",
    )
    .bind(subject)
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    let first: Option<i64> = row.try_get("first")?;
    Ok((id, row.try_get("n")?, first.unwrap_or(now.0)))
}

/// Forgets attempts that turned out not to count (a success, or one refused before work).
pub async fn forget_attempts(db: &Db, ids: &[String]) -> sqlx::Result<()> {
    for id in ids {
        db.write_alone(sqlx::query("DELETE FROM attempts WHERE id = $1").bind(id))
            .await?;
    }
    Ok(())
}

/// Stores a password-reset link's digest inside the caller's transaction.
pub async fn insert_reset(
    conn: &mut sqlx::AnyConnection,
    token_hash: &str,
    user_id: &str,
    expires_at: i64,
    now: Timestamp,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO password_resets (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_at)
        .bind(now.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Uses up a reset link: the user it was for, when it was unused and unexpired. Of two
/// concurrent uses, one gets the user.
pub async fn use_reset(
    conn: &mut sqlx::AnyConnection,
    token_hash: &str,
    now: Timestamp,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE password_resets SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
    )
    .bind(now.0)
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

/// Whether a reset link would still work (for the page it opens).
pub async fn reset_usable(db: &Db, token_hash: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM password_resets WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(db.now().0)
    .fetch_optional(&db.pool)
    .await?;
    Ok(found.is_some())
}
