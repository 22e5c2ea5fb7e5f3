//! The `users` and `login_failures` tables.

use sqlx::Row;

use crate::store::{Db, Timestamp};

/// A user's id and password hash, by email.
pub async fn by_email(db: &Db, email: &str) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(&db.pool)
        .await
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
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(now.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Failed logins for `subject` since `since`: how many, and the first one's time.
pub async fn failures_since(
    db: &Db,
    subject: &str,
    since: i64,
) -> sqlx::Result<(i64, Option<i64>)> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(at) AS first FROM login_failures WHERE subject = $1 AND at > $2",
    )
    .bind(subject)
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("first")?))
}

pub async fn record_failure(db: &Db, subject: &str, at: Timestamp) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO login_failures (subject, at) VALUES ($1, $2)")
        .bind(subject)
        .bind(at.0)
        .execute(&db.pool)
        .await?;
    Ok(())
}
