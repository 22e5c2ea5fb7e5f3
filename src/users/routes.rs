//! Signing in, and the members of an entity.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};

use super::model::{ChangeRole, Login, Message, Session};
use super::store;
use crate::http::{ApiError, Caller, ErrorBody, Json, List};
use crate::identity::memberships::{self, Member};
use crate::identity::{Role, tokens};
use crate::state::AppState;
use crate::store::{Db, passwords};
use crate::types::EmailAddress;

/// Failed logins allowed in a window, per email and per client address.
const FAILURE_WINDOW: i64 = 15 * 60_000;
const FAILURES_PER_EMAIL: i64 = 5;
const FAILURES_PER_ADDRESS: i64 = 20;

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
    let now = state.db.now();
    let by_email = format!("email:{}", email.to_ascii_lowercase());
    let by_address = format!("ip:{}", peer.ip());
    for (subject, limit) in [
        (&by_email, FAILURES_PER_EMAIL),
        (&by_address, FAILURES_PER_ADDRESS),
    ] {
        let (failures, first) =
            store::failures_since(&state.db, subject, now.0 - FAILURE_WINDOW).await?;
        if failures >= limit {
            return Err(ApiError::too_many(
                "too_many_failed_logins",
                "too many failed logins; try again later",
                first.unwrap_or(now.0) + FAILURE_WINDOW - now.0,
            ));
        }
    }
    let user = store::by_email(&state.db, &email).await?;
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
            store::record_failure(&state.db, subject, now).await?;
        }
        return Err(ApiError::unauthorized(
            "invalid_login",
            "the email or the password is wrong",
        ));
    };
    let mut conn = state.db.pool.acquire().await?;
    let (access_token, expires_at) = tokens::issue(&mut conn, &user_id, now).await?;
    Ok(Json(Session {
        user_id,
        access_token,
        expires_at,
    }))
}

async fn member(db: &Db, entity_id: &str, user_id: &str) -> Result<Member, ApiError> {
    memberships::member(db, entity_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// 409 when `member` is the entity's only admin: an entity keeps at least one.
async fn keep_an_admin(db: &Db, entity_id: &str, member: &Member) -> Result<(), ApiError> {
    if member.role == Role::Admin && memberships::admin_count(db, entity_id).await? <= 1 {
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
    let entity_id = caller.entity_id(&state.db, Role::Viewer).await?;
    let data = memberships::members(&state.db, &entity_id).await?;
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
    let entity_id = caller.entity_id(&state.db, Role::Admin).await?;
    let current = member(&state.db, &entity_id, &id).await?;
    if body.role != Role::Admin {
        keep_an_admin(&state.db, &entity_id, &current).await?;
    }
    memberships::set_role(&state.db, &entity_id, &id, body.role).await?;
    Ok(Json(member(&state.db, &entity_id, &id).await?))
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
    let entity_id = caller.entity_id(&state.db, Role::Admin).await?;
    let current = member(&state.db, &entity_id, &id).await?;
    keep_an_admin(&state.db, &entity_id, &current).await?;
    memberships::remove(&state.db, &entity_id, &id).await?;
    Ok(Json(Message {
        message: "User removed",
    }))
}
