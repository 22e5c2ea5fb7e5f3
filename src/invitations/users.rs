//! Users: created by accepting an invitation, signed in with a password, acting with
//! access tokens that carry their role in each entity.

use axum::extract::{ConnectInfo, Path, State};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::net::SocketAddr;
use utoipa::ToSchema;

use crate::http::{ApiError, AppState, Caller, ErrorBody, Json, List};
use crate::mail::EmailAddress;
use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp, passwords};
use crate::tenancy::Role;

/// Every access token starts with this.
pub const TOKEN_PREFIX: &str = "mrt";
const TOKEN_LIFETIME: i64 = 30 * 24 * 3_600_000;
/// Failed logins allowed in a window, per email and per client address.
const FAILURE_WINDOW: i64 = 15 * 60_000;
const FAILURES_PER_EMAIL: i64 = 5;
const FAILURES_PER_ADDRESS: i64 = 20;

/// The user an unexpired access token belongs to.
pub async fn user_of_token(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM access_tokens WHERE token_hash = $1 AND expires_at > $2",
    )
    .bind(digest(token))
    .bind(Timestamp::now().0)
    .fetch_optional(&db.pool)
    .await
}

/// Issues an access token, inside the caller's transaction; answers it and its expiry.
pub async fn issue_token(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
) -> sqlx::Result<(String, Timestamp)> {
    let token = new_secret(TOKEN_PREFIX);
    let now = Timestamp::now().0;
    sqlx::query("INSERT INTO access_tokens (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)")
        .bind(digest(&token))
        .bind(user_id)
        .bind(now + TOKEN_LIFETIME)
        .bind(now)
        .execute(conn)
        .await?;
    Ok((token, Timestamp(now + TOKEN_LIFETIME)))
}

/// A user password: 12 to 128 characters.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    if !(12..=128).contains(&length) {
        return Err(ApiError::invalid(
            "password",
            "password must be 12 to 128 characters",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "password",
            "password must not contain control characters",
        ));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
pub struct Login {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    pub user_id: String,
    /// Send it as `Authorization: Bearer <token>` (or any API key header); valid 30 days.
    pub access_token: String,
    pub expires_at: Timestamp,
}

async fn recent_failures(db: &Db, subject: &str, now: i64) -> sqlx::Result<(i64, Option<i64>)> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(at) AS first FROM login_failures WHERE subject = $1 AND at > $2",
    )
    .bind(subject)
    .bind(now - FAILURE_WINDOW)
    .fetch_one(&db.pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("first")?))
}

/// Sign in with email and password.
#[utoipa::path(post, path = "/auth/login", tag = "users", security(()), request_body = Login,
    responses((status = 200, description = "An access token", body = Session),
              (status = 401, description = "Wrong email or password", body = ErrorBody),
              (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    let email = EmailAddress::parse(&body.email)
        .map_err(|e| ApiError::invalid("email", e))?
        .to_string();
    let now = Timestamp::now().0;
    let by_email = format!("email:{}", email.to_ascii_lowercase());
    let by_address = format!("ip:{}", peer.ip());
    for (subject, limit) in [
        (&by_email, FAILURES_PER_EMAIL),
        (&by_address, FAILURES_PER_ADDRESS),
    ] {
        let (failures, first) = recent_failures(&state.db, subject, now).await?;
        if failures >= limit {
            let wait = first.unwrap_or(now) + FAILURE_WINDOW - now;
            let mut error = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_failed_logins",
                "too many failed logins; try again later",
            );
            error.retry_after_secs = Some(((wait + 999) / 1000).max(1) as u64);
            return Err(error);
        }
    }
    let user: Option<(String, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&state.db.pool)
            .await?;
    let verified = match &user {
        Some((_, hash)) => passwords::verify(&body.password, hash).await?,
        // Hash anyway, so that an unknown email takes as long as a wrong password.
        None => {
            passwords::hash(&body.password).await?;
            false
        }
    };
    let Some((user_id, _)) = user.filter(|_| verified) else {
        for subject in [&by_email, &by_address] {
            sqlx::query("INSERT INTO login_failures (subject, at) VALUES ($1, $2)")
                .bind(subject)
                .bind(now)
                .execute(&state.db.pool)
                .await?;
        }
        return Err(ApiError::unauthorized(
            "invalid_login",
            "the email or the password is wrong",
        ));
    };
    let mut conn = state.db.pool.acquire().await?;
    let (access_token, expires_at) = issue_token(&mut conn, &user_id).await?;
    Ok(Json(Session {
        user_id,
        access_token,
        expires_at,
    }))
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

#[derive(Deserialize, ToSchema)]
pub struct ChangeRole {
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct Message {
    pub message: &'static str,
}

async fn member(state: &AppState, entity_id: &str, user_id: &str) -> Result<Member, ApiError> {
    sqlx::query_as(&format!(
        "{MEMBER} WHERE m.entity_id = $1 AND m.user_id = $2"
    ))
    .bind(entity_id)
    .bind(user_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("user"))
}

/// 409 when `user_id` is the entity's only admin: an entity keeps at least one.
async fn keep_an_admin(state: &AppState, entity_id: &str, member: &Member) -> Result<(), ApiError> {
    if member.role != Role::Admin {
        return Ok(());
    }
    let admins: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE entity_id = $1 AND role = 'admin'",
    )
    .bind(entity_id)
    .fetch_one(&state.db.pool)
    .await?;
    if admins <= 1 {
        return Err(ApiError::conflict(
            "last_admin",
            "this is the entity's last admin; make another member admin first",
        ));
    }
    Ok(())
}

/// The entity's members and their roles.
#[utoipa::path(get, path = "/entities/users", tag = "users",
    responses((status = 200, description = "The members", body = List<Member>)))]
pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<Member>>, ApiError> {
    caller.require(Role::Viewer)?;
    let entity_id = caller.entity_id(&state).await?;
    let data = sqlx::query_as(&format!(
        "{MEMBER} WHERE m.entity_id = $1 ORDER BY m.created_at, u.id"
    ))
    .bind(&entity_id)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(Json(List { data }))
}

/// Change a member's role; the last admin cannot be demoted.
#[utoipa::path(patch, path = "/entities/users/{id}", tag = "users", request_body = ChangeRole,
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, description = "The member", body = Member),
              (status = 409, description = "The entity's last admin", body = ErrorBody)))]
pub async fn change_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ChangeRole>,
) -> Result<Json<Member>, ApiError> {
    caller.require(Role::Admin)?;
    let entity_id = caller.entity_id(&state).await?;
    let current = member(&state, &entity_id, &id).await?;
    if body.role != Role::Admin {
        keep_an_admin(&state, &entity_id, &current).await?;
    }
    sqlx::query("UPDATE memberships SET role = $3 WHERE entity_id = $1 AND user_id = $2")
        .bind(&entity_id)
        .bind(&id)
        .bind(body.role.as_str())
        .execute(&state.db.pool)
        .await?;
    Ok(Json(member(&state, &entity_id, &id).await?))
}

/// Remove a member from the entity; the last admin cannot be removed.
#[utoipa::path(delete, path = "/entities/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, description = "Removed", body = Message),
              (status = 409, description = "The entity's last admin", body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    caller.require(Role::Admin)?;
    let entity_id = caller.entity_id(&state).await?;
    let current = member(&state, &entity_id, &id).await?;
    keep_an_admin(&state, &entity_id, &current).await?;
    sqlx::query("DELETE FROM memberships WHERE entity_id = $1 AND user_id = $2")
        .bind(&entity_id)
        .bind(&id)
        .execute(&state.db.pool)
        .await?;
    Ok(Json(Message {
        message: "User removed",
    }))
}
