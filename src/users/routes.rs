//! Signing in and out, passwords, and the members of an entity.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;

use super::model::{
    ChangePassword, ChangeRole, Login, Message, ResetRequest, Session, check_password,
};
use super::sign_in::{Trier, client_subject, sign_in};
use super::store;
use crate::http::{ApiError, Caller, ErrorBody, Json, List};
use crate::identity::memberships::{self, Member};
use crate::identity::{Role, api_keys, tokens};
use crate::mail::outbox::{Outgoing, enqueue};
use crate::mail::templates::{Kind, render};
use crate::state::AppState;
use crate::store::passwords::{self, Priority};
use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp};
use crate::types::EmailAddress;

/// A reset link works this long, once.
const RESET_LIFETIME: i64 = 3_600_000;
/// Reset requests per hour: per client address (answered 429 beyond), and emails sent per
/// address (quietly not sent beyond, so that the answer never tells whether a user exists).
const RESET_WINDOW: i64 = 3_600_000;
const RESETS_PER_CLIENT: i64 = 10;
const RESET_EMAILS_PER_USER: i64 = 3;

fn parse_email(email: &str) -> Result<EmailAddress, ApiError> {
    EmailAddress::parse(email).map_err(|e| ApiError::invalid("email", e))
}

/// Sign in with email and password.
#[utoipa::path(post, path = "/auth/login", tag = "users", security(()), request_body = Login,
    responses((status = 200, description = "An access token", body = Session),
              (status = 401, description = "Wrong email or password", body = ErrorBody),
              (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody),
              (status = 503, description = "Too many sign-ins at once; see Retry-After", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    let email = parse_email(&body.email)?.to_string();
    let user_id = sign_in(&state.db, Trier::Client(peer.ip()), &email, &body.password).await?;
    let mut conn = state.db.pool.acquire().await?;
    let (access_token, expires_at) = tokens::issue(&mut conn, &user_id, state.db.now()).await?;
    Ok(Json(Session {
        user_id,
        access_token,
        expires_at,
    }))
}

/// The user calling, with the digest of their token: 403 for an API key.
fn user_of(caller: &Caller) -> Result<(&str, &str), ApiError> {
    match (&caller.user_id, &caller.session) {
        (Some(user_id), Some(session)) => Ok((user_id, session)),
        _ => Err(ApiError::forbidden(
            "this needs a user's access token, not an API key",
        )),
    }
}

/// Sign out: the access token sent stops working.
#[utoipa::path(post, path = "/auth/logout", tag = "users",
    responses((status = 200, description = "Signed out", body = Message)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Message>, ApiError> {
    let (_, session) = user_of(&caller)?;
    tokens::revoke(&state.db, session).await?;
    Ok(Json(Message {
        message: "Signed out",
    }))
}

/// Change your password: the current one is checked (five wrong tries in 15 minutes,
/// counted apart from logins, so that strangers' failed logins cannot block it), and every
/// other access token of yours stops working.
#[utoipa::path(post, path = "/auth/password", tag = "users", request_body = ChangePassword,
    responses((status = 503, description = "Busy hashing passwords; see Retry-After", body = ErrorBody),
              (status = 200, description = "Changed", body = Message),
              (status = 401, description = "The current password is wrong", body = ErrorBody),
              (status = 422, description = "The new password breaks the rule", body = ErrorBody),
              (status = 429, description = "Too many wrong passwords; see Retry-After", body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<ChangePassword>,
) -> Result<Json<Message>, ApiError> {
    let (user_id, session) = user_of(&caller)?;
    check_password(&body.new_password).map_err(|e| ApiError::invalid("new_password", e))?;
    let user = store::by_id(&state.db, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    sign_in(
        &state.db,
        Trier::SignedIn,
        &user.email,
        &body.current_password,
    )
    .await
    .map_err(|error| match error.code {
        "invalid_login" => {
            ApiError::unauthorized("wrong_password", "the current password is wrong")
                .with_param("current_password")
        }
        _ => error,
    })?;
    let hash = passwords::hash(&body.new_password, Priority::Authenticated).await?;
    let mut tx = state.db.begin().await?;
    store::set_password(&mut tx, user_id, &hash, state.db.now()).await?;
    tokens::revoke_all(&mut tx, user_id, Some(session)).await?;
    tx.commit().await?;
    Ok(Json(Message {
        message: "Password changed",
    }))
}

/// Ask for a password-reset link by email. The answer is the same whether or not a user
/// has this email.
#[utoipa::path(post, path = "/auth/password-reset", tag = "users", security(()), request_body = ResetRequest,
    responses((status = 202, description = "A link is on its way if a user has this email", body = Message),
              (status = 429, description = "Too many requests from this client; see Retry-After", body = ErrorBody)))]
pub async fn request_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<ResetRequest>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let email = parse_email(&body.email)?;
    let now = state.db.now();
    let since = now.0 - RESET_WINDOW;
    let (_, count, first) = store::begin_attempt(
        &state.db,
        &format!("reset-ip:{}", client_subject(peer.ip())),
        since,
        now,
    )
    .await?;
    if count > RESETS_PER_CLIENT {
        return Err(ApiError::too_many(
            "too_many_resets",
            "too many password resets asked from here; try again later",
            first + RESET_WINDOW - now.0,
        ));
    }
    let answer = Json(Message {
        message: "If a user has this email, a link to choose a new password is on its way",
    });
    let (_, count, _) = store::begin_attempt(
        &state.db,
        &format!("reset-email:{}", store::email_key(&email.to_string())),
        since,
        now,
    )
    .await?;
    let user = store::by_email(&state.db, &email.to_string()).await?;
    if let (Some(user), true) = (user, count <= RESET_EMAILS_PER_USER) {
        // Made after the answer, so that its time does not tell that the user exists.
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = send_reset_link(&state, &user).await {
                tracing::error!(error = %format!("{error:#}"), "cannot queue a password-reset email");
            }
        });
    }
    Ok((StatusCode::ACCEPTED, answer))
}

/// Stores a new reset link for `user` and queues the email carrying it, to the address
/// the user has (however the request spelled it).
async fn send_reset_link(state: &AppState, user: &store::StoredUser) -> anyhow::Result<()> {
    let email = EmailAddress::parse(&user.email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let from =
        EmailAddress::parse(&state.settings.mail_from).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = new_secret("rst");
    let link = format!(
        "{}/auth/password-reset/confirm?token={token}",
        state.public_url
    );
    let email_text = render(
        Kind::PasswordReset,
        &[],
        &[("link", &link), ("expires_in", "1 hour")],
    )?;
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    store::insert_reset(
        &mut tx,
        &digest(&token),
        &user.id,
        now.0 + RESET_LIFETIME,
        now,
    )
    .await?;
    let outgoing = Outgoing::rendered(None, &from, &email, email_text);
    enqueue(&mut tx, &state.master_key, outgoing, now).await?;
    tx.commit().await?;
    state.wake_outbox();
    Ok(())
}

/// Sets a new password with a reset link's token: the link is used up, and every access
/// token of the user stops working.
pub async fn reset_password(state: &AppState, token: &str, password: &str) -> Result<(), ApiError> {
    check_password(password).map_err(|e| ApiError::invalid("password", e))?;
    let unknown = || ApiError::not_found("reset link").with_param("token");
    // Only a live link is worth a hash: made-up tokens cost nothing.
    if !store::reset_usable(&state.db, &digest(token)).await? {
        return Err(unknown());
    }
    let hash = passwords::hash(password, Priority::Anonymous).await?;
    let now: Timestamp = state.db.now();
    let mut tx = state.db.begin().await?;
    let Some(user_id) = store::use_reset(&mut tx, &digest(token), now).await? else {
        return Err(unknown());
    };
    store::set_password(&mut tx, &user_id, &hash, now).await?;
    tokens::revoke_all(&mut tx, &user_id, None).await?;
    tx.commit().await?;
    Ok(())
}

async fn member(db: &Db, entity_id: &str, user_id: &str) -> Result<Member, ApiError> {
    memberships::member(db, entity_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// 409 when `member` is the entity's only user admin and the caller acts only inside the
/// entity: it keeps at least one. The account's own admin keys stand above the entity, so
/// they may remove or demote that admin (someone who left, say).
async fn keep_an_admin(
    db: &Db,
    caller: &Caller,
    entity_id: &str,
    member: &Member,
) -> Result<(), ApiError> {
    if caller.scoped_entity().is_some()
        && member.role == Role::Admin
        && memberships::admin_count(db, entity_id).await? <= 1
    {
        return Err(ApiError::conflict(
            "last_admin",
            "this is the entity's last admin; make another member admin first",
        ));
    }
    Ok(())
}

/// The keys a member made in the entity stop working once they are no longer its admin.
async fn revoke_keys_of(state: &AppState, entity_id: &str, user_id: &str) -> Result<(), ApiError> {
    api_keys::revoke_created_by(&state.db, entity_id, user_id).await?;
    state.api_keys.clear();
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
        keep_an_admin(&state.db, &caller, &entity_id, &current).await?;
    }
    memberships::set_role(&state.db, &entity_id, &id, body.role).await?;
    if body.role != Role::Admin {
        revoke_keys_of(&state, &entity_id, &id).await?;
    }
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
    keep_an_admin(&state.db, &caller, &entity_id, &current).await?;
    memberships::remove(&state.db, &entity_id, &id).await?;
    revoke_keys_of(&state, &entity_id, &id).await?;
    Ok(Json(Message {
        message: "User removed",
    }))
}
