//! Invitations into an entity (spec 001): sent by email, accepted once with a name and a
//! password, making the invitee a user with a role there.

mod pages;
pub mod users;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{ApiError, AppState, Caller, ErrorBody, Json, List, Query};
use crate::mail::EmailAddress;
use crate::mail::outbox::{Outgoing, enqueue};
use crate::mail::templates::{Kind, render};
use crate::store::secrets::{digest, new_secret};
use crate::store::{Timestamp, new_id, passwords};
use crate::tenancy::Role;
use crate::text::parse_name;

const DAY: i64 = 24 * 3_600_000;
const RESEND_GAP: i64 = 60_000;
/// An invitation older than this cannot be resent: invite again.
const RESEND_LIMIT: i64 = 30 * DAY;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_invitation, list_invitations))
        .routes(routes!(get_invitation, cancel_invitation))
        .routes(routes!(resend_invitation))
        .routes(routes!(pages::accept_page, pages::accept_invitation))
        .routes(routes!(users::login))
        .routes(routes!(users::list_members))
        .routes(routes!(users::change_role, users::remove_member))
}

/// An invitation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// `einv_` and 24 hex digits.
    pub id: String,
    pub entity_id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    /// `pending`, `accepted`, `cancelled` or `expired`.
    pub status: &'static str,
    /// Who invited: a user's id, or the API key's id.
    pub invited_by: String,
    /// The inviting user, when a user invited.
    pub invited_by_user_id: Option<String>,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, entity_id, email, name, role, status, invited_by, invited_by_user_id, expires_at, \
                       accepted_at, created_at, updated_at, last_sent_at, valid_days";

struct Stored {
    invitation: Invitation,
    last_sent_at: i64,
    valid_days: i64,
}

impl sqlx::FromRow<'_, AnyRow> for Stored {
    fn from_row(row: &AnyRow) -> sqlx::Result<Stored> {
        let status: String = row.try_get("status")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let status = match status.as_str() {
            "pending" if expires_at <= Timestamp::now().0 => "expired",
            "pending" => "pending",
            "accepted" => "accepted",
            _ => "cancelled",
        };
        Ok(Stored {
            invitation: Invitation {
                id: row.try_get("id")?,
                entity_id: row.try_get("entity_id")?,
                email: row.try_get("email")?,
                name: row.try_get("name")?,
                role: Role::from_row(row)?,
                status,
                invited_by: row.try_get("invited_by")?,
                invited_by_user_id: row.try_get("invited_by_user_id")?,
                expires_at: Timestamp(expires_at),
                accepted_at: row.try_get::<Option<i64>, _>("accepted_at")?.map(Timestamp),
                created_at: Timestamp(row.try_get("created_at")?),
                updated_at: Timestamp(row.try_get("updated_at")?),
            },
            last_sent_at: row.try_get("last_sent_at")?,
            valid_days: row.try_get("valid_days")?,
        })
    }
}

#[derive(Deserialize, ToSchema)]
pub struct CreateInvitation {
    pub email: String,
    pub role: Role,
    /// The invitee's name, for the email.
    #[serde(default)]
    pub name: Option<String>,
    /// 1 to 30 (default 7).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusFilter {
    /// `pending`, `accepted`, `cancelled` or `expired`.
    #[param(inline)]
    pub status: Option<InvitationStatus>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Cancelled,
    Expired,
}

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub message: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Resent {
    pub message: &'static str,
    pub expires_at: Timestamp,
}

async fn find(state: &AppState, entity_id: &str, id: &str) -> Result<Stored, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE id = $1 AND entity_id = $2"
    ))
    .bind(id)
    .bind(entity_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("invitation"))
}

/// Queues the invitation email with a link holding `token`, inside `conn`'s transaction.
/// The caller looks up `from` before the transaction: inside it, waiting for another
/// pooled connection while SQLite's write lock is held could starve the pool.
async fn send_email(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    from: &EmailAddress,
    invitation: &Invitation,
    token: &str,
) -> Result<(), ApiError> {
    let entity: String = sqlx::query_scalar("SELECT name FROM entities WHERE id = $1")
        .bind(&invitation.entity_id)
        .fetch_one(&mut *conn)
        .await?;
    let to = EmailAddress::parse(&invitation.email).map_err(ApiError::internal)?;
    let link = format!("{}/invitations/accept?token={token}", state.public_url);
    let greeting = invitation
        .name
        .as_deref()
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let email = render(
        Kind::Invitation,
        &[
            ("inviter", &entity),
            ("entity", &entity),
            ("role", invitation.role.as_str()),
            ("link", &link),
            ("greeting", &greeting),
            ("expires_at", &invitation.expires_at.rfc3339()),
        ],
    );
    enqueue(
        conn,
        &state.master_key,
        Outgoing {
            account_id: Some(account_id),
            from,
            to: &to,
            email,
        },
    )
    .await?;
    Ok(())
}

/// Invite someone into the entity by email.
#[utoipa::path(post, path = "/entities/invitations", tag = "invitations", request_body = CreateInvitation,
    responses((status = 201, description = "The invitation", body = Invitation),
              (status = 409, description = "A pending invitation for this email exists", body = ErrorBody)))]
pub async fn create_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateInvitation>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    caller.require(Role::Admin)?;
    let entity_id = caller.entity_id(&state).await?;
    let email = EmailAddress::parse(&body.email).map_err(|e| ApiError::invalid("email", e))?;
    let name = match body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        Some(name) => Some(parse_name(name, 200).map_err(|e| ApiError::invalid("name", e))?),
        None => None,
    };
    let valid_days = body.expires_in_days.unwrap_or(7);
    if !(1..=30).contains(&valid_days) {
        return Err(ApiError::invalid(
            "expires_in_days",
            "expires_in_days must be between 1 and 30",
        ));
    }
    let now = Timestamp::now().0;
    let token = new_secret("inv");
    let id = new_id("einv");
    let from = crate::senders::effective_from(&state, &caller.account_id, Some(&entity_id)).await?;
    let mut tx = state.db.begin().await?;
    // An expired invitation no longer holds the place of the one pending invitation.
    sqlx::query("UPDATE invitations SET status = 'cancelled', updated_at = $3 WHERE entity_id = $1 AND email = $2 AND status = 'pending' AND expires_at <= $3")
        .bind(&entity_id)
        .bind(email.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO invitations (id, entity_id, email, name, role, status, invited_by, invited_by_user_id, token_hash, \
         valid_days, expires_at, last_sent_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $11, $11)",
    )
    .bind(&id)
    .bind(&entity_id)
    .bind(email.to_string())
    .bind(&name)
    .bind(body.role.as_str())
    .bind(&caller.principal)
    .bind(&caller.user_id)
    .bind(digest(&token))
    .bind(valid_days)
    .bind(now + valid_days * DAY)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(|error| match error {
        e if crate::store::is_unique_violation(&e) => ApiError::conflict("invitation_pending", format!("{email} has a pending invitation already")),
        e => e.into(),
    })?;
    let stored: Stored =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM invitations WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
    send_email(
        &state,
        &mut tx,
        &caller.account_id,
        &from,
        &stored.invitation,
        &token,
    )
    .await?;
    tx.commit().await?;
    state.wake_outbox();
    Ok((StatusCode::CREATED, Json(stored.invitation)))
}

/// The entity's invitations, newest first.
#[utoipa::path(get, path = "/entities/invitations", tag = "invitations", params(StatusFilter),
    responses((status = 200, description = "The invitations", body = List<Invitation>),
              (status = 422, description = "Unknown status", body = ErrorBody)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<StatusFilter>,
) -> Result<Json<List<Invitation>>, ApiError> {
    caller.require(Role::Viewer)?;
    let entity_id = caller.entity_id(&state).await?;
    let stored: Vec<Stored> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE entity_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(&entity_id)
    .fetch_all(&state.db.pool)
    .await?;
    let wanted = filter.status.map(|s| format!("{s:?}").to_lowercase());
    let data = stored
        .into_iter()
        .map(|s| s.invitation)
        .filter(|i| wanted.as_deref().is_none_or(|w| i.status == w))
        .collect();
    Ok(Json(List { data }))
}

/// One invitation.
#[utoipa::path(get, path = "/entities/invitations/{id}", tag = "invitations",
    params(("id" = String, Path, description = "The invitation's id")),
    responses((status = 200, description = "The invitation", body = Invitation)))]
pub async fn get_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Invitation>, ApiError> {
    caller.require(Role::Viewer)?;
    let entity_id = caller.entity_id(&state).await?;
    Ok(Json(find(&state, &entity_id, &id).await?.invitation))
}

/// Cancel a pending invitation; its link stops working.
#[utoipa::path(delete, path = "/entities/invitations/{id}", tag = "invitations",
    params(("id" = String, Path, description = "The invitation's id")),
    responses((status = 200, description = "Cancelled", body = Cancelled),
              (status = 409, description = "Accepted or cancelled already", body = ErrorBody)))]
pub async fn cancel_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(Role::Admin)?;
    let entity_id = caller.entity_id(&state).await?;
    let stored = find(&state, &entity_id, &id).await?;
    let cancelled = sqlx::query("UPDATE invitations SET status = 'cancelled', updated_at = $3 WHERE id = $1 AND entity_id = $2 AND status = 'pending'")
        .bind(&id)
        .bind(&entity_id)
        .bind(Timestamp::now().0)
        .execute(&state.db.pool)
        .await?;
    if cancelled.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "invitation_closed",
            format!("the invitation is {} already", stored.invitation.status),
        ));
    }
    Ok(Json(Cancelled {
        message: "Invitation cancelled",
    }))
}

/// Send the invitation again with a new link (the old one stops working) and a new expiry.
#[utoipa::path(post, path = "/entities/invitations/{id}/resend", tag = "invitations",
    params(("id" = String, Path, description = "The invitation's id")),
    responses((status = 200, description = "Resent", body = Resent),
              (status = 409, description = "Accepted, cancelled, or over 30 days old", body = ErrorBody),
              (status = 429, description = "Resent less than a minute ago; see Retry-After", body = ErrorBody)))]
pub async fn resend_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Resent>, ApiError> {
    caller.require(Role::Admin)?;
    let entity_id = caller.entity_id(&state).await?;
    let stored = find(&state, &entity_id, &id).await?;
    let now = Timestamp::now().0;
    match stored.invitation.status {
        "accepted" | "cancelled" => {
            return Err(ApiError::conflict(
                "invitation_closed",
                format!(
                    "the invitation is {}; only pending or expired ones can be resent",
                    stored.invitation.status
                ),
            ));
        }
        _ if now - stored.invitation.created_at.0 > RESEND_LIMIT => {
            return Err(ApiError::conflict(
                "invitation_too_old",
                "the invitation is over 30 days old: invite again",
            ));
        }
        _ if now - stored.last_sent_at < RESEND_GAP => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resent_recently",
                "the invitation was sent less than a minute ago",
            );
            error.retry_after_secs =
                Some(((stored.last_sent_at + RESEND_GAP - now + 999) / 1000).max(1) as u64);
            return Err(error);
        }
        _ => {}
    }
    let token = new_secret("inv");
    let expires_at = now + stored.valid_days * DAY;
    let from = crate::senders::effective_from(&state, &caller.account_id, Some(&entity_id)).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE invitations SET token_hash = $2, expires_at = $3, last_sent_at = $4, updated_at = $4 WHERE id = $1")
        .bind(&id)
        .bind(digest(&token))
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let mut invitation = stored.invitation;
    invitation.expires_at = Timestamp(expires_at);
    send_email(
        &state,
        &mut tx,
        &caller.account_id,
        &from,
        &invitation,
        &token,
    )
    .await?;
    tx.commit().await?;
    state.wake_outbox();
    Ok(Json(Resent {
        message: "Invitation resent",
        expires_at: Timestamp(expires_at),
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct Acceptance {
    /// Your name (for a new user).
    #[serde(default)]
    pub name: Option<String>,
    /// A new password (12 to 128 characters), or, when the email has a user already,
    /// that user's password.
    pub password: String,
    /// The token, when not in `?token=`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub message: &'static str,
    pub user_id: String,
    pub entity_id: String,
    pub access_token: String,
}

/// Accepts an invitation: creates the user (or checks an existing one's password) and the
/// membership, and claims the invitation in the same transaction, so that of two
/// concurrent accepts exactly one wins.
pub async fn accept(state: &AppState, token: &str, body: Acceptance) -> Result<Accepted, ApiError> {
    let stored: Option<Stored> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE token_hash = $1"
    ))
    .bind(digest(token))
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(stored) = stored else {
        return Err(ApiError::not_found("invitation"));
    };
    match stored.invitation.status {
        "cancelled" => return Err(ApiError::not_found("invitation")),
        "accepted" => {
            return Err(ApiError::conflict(
                "invitation_accepted",
                "the invitation was accepted already",
            ));
        }
        "expired" => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "invitation_expired",
                "the invitation has expired; ask for a new one",
            ));
        }
        _ => {}
    }
    let invitation = stored.invitation;
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(&invitation.email)
            .fetch_optional(&state.db.pool)
            .await?;
    let now = Timestamp::now().0;
    let (user_id, new_user) = match existing {
        Some((user_id, hash)) => {
            if !passwords::verify(&body.password, &hash).await? {
                return Err(ApiError::unauthorized(
                    "wrong_password",
                    "this email has an account already: enter its password",
                ));
            }
            (user_id, None)
        }
        None => {
            let name = parse_name(body.name.as_deref().unwrap_or(""), 200)
                .map_err(|e| ApiError::invalid("name", e))?;
            users::check_password(&body.password)?;
            (
                new_id("user"),
                Some((name, passwords::hash(&body.password).await?)),
            )
        }
    };

    let mut tx = state.db.begin().await?;
    let claimed = sqlx::query(
        "UPDATE invitations SET status = 'accepted', accepted_at = $2, accepted_by = $3, updated_at = $2 \
         WHERE id = $1 AND status = 'pending' AND expires_at > $2",
    )
    .bind(&invitation.id)
    .bind(now)
    .bind(&user_id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "invitation_accepted",
            "the invitation was accepted already",
        ));
    }
    if let Some((name, hash)) = new_user {
        sqlx::query("INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
            .bind(&user_id)
            .bind(&invitation.email)
            .bind(&name)
            .bind(&hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|error| match error {
                e if crate::store::is_unique_violation(&e) => ApiError::conflict("user_exists", "this email got an account a moment ago: accept again with its password"),
                e => e.into(),
            })?;
    }
    // Joining again keeps the better of the two roles.
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE entity_id = $1 AND user_id = $2")
            .bind(&invitation.entity_id)
            .bind(&user_id)
            .fetch_optional(&mut *tx)
            .await?;
    match role.as_deref().and_then(Role::parse) {
        Some(current) if current >= invitation.role => {}
        Some(_) => {
            sqlx::query("UPDATE memberships SET role = $3 WHERE entity_id = $1 AND user_id = $2")
                .bind(&invitation.entity_id)
                .bind(&user_id)
                .bind(invitation.role.as_str())
                .execute(&mut *tx)
                .await?;
        }
        None => {
            sqlx::query("INSERT INTO memberships (entity_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&invitation.entity_id)
                .bind(&user_id)
                .bind(invitation.role.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
    }
    let (access_token, _) = users::issue_token(&mut tx, &user_id).await?;
    tx.commit().await?;
    Ok(Accepted {
        message: "Invitation accepted",
        user_id,
        entity_id: invitation.entity_id,
        access_token,
    })
}
