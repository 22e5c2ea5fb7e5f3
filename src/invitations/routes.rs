//! Invitations over HTTP (spec 001), and accepting one.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::model::{
    Acceptance, Accepted, Cancelled, CreateInvitation, DAY, Invitation, InvitationStatus, Resent,
    StatusFilter,
};
use super::store::{self, NewInvitation};
use crate::http::{ApiError, Caller, ErrorBody, Json, List, Query, on_unique};
use crate::identity::{Role, memberships, tokens};
use crate::mail::outbox::{Outgoing, enqueue};
use crate::mail::templates::{Kind, render};
use crate::senders::effective_from;
use crate::state::AppState;
use crate::store::passwords::{self, Priority};
use crate::store::secrets::{digest, new_secret};
use crate::store::{Timestamp, new_id};
use crate::types::EmailAddress;
use crate::types::text::parse_name;
use crate::users::model::check_password;
use crate::users::store as users;

const RESEND_GAP: i64 = 60_000;
/// An invitation older than this cannot be resent: invite again.
const RESEND_LIMIT: i64 = 30 * DAY;

async fn find(state: &AppState, entity_id: &str, id: &str) -> Result<store::Stored, ApiError> {
    store::find(&state.db, entity_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("invitation"))
}

/// Queues the invitation email with a link holding `token`, inside `conn`'s transaction.
async fn send_email(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    from: &EmailAddress,
    invitation: &Invitation,
    token: &str,
) -> Result<(), ApiError> {
    let entity = crate::tenancy::store::entity_name(&mut *conn, &invitation.entity_id).await?;
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
            ("greeting", &greeting),
            ("expires_at", &invitation.expires_at.rfc3339()),
        ],
        &[("link", &link)],
    )?;
    let outgoing = Outgoing::rendered(Some(account_id), from, &to, email);
    enqueue(conn, &state.master_key, outgoing, state.db.now()).await?;
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
    let entity_id = caller.entity_id(&state.db, Role::Admin).await?;
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
    let token = new_secret("inv");
    let from = effective_from(&state, &caller.account_id, Some(&entity_id)).await?;
    let address = email.to_string();
    let new = NewInvitation {
        id: &new_id("einv"),
        entity_id: &entity_id,
        email: &address,
        name: name.as_deref(),
        role: body.role,
        invited_by: &caller.principal,
        invited_by_user_id: caller.user_id.as_deref(),
        token_hash: &digest(&token),
        valid_days,
    };
    let mut tx = state.db.begin().await?;
    let stored = store::insert(&mut tx, new, state.db.now())
        .await
        .map_err(on_unique(|| {
            ApiError::conflict(
                "invitation_pending",
                format!("{email} has a pending invitation already"),
            )
        }))?;
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
    let entity_id = caller.entity_id(&state.db, Role::Viewer).await?;
    let data = store::list(&state.db, &entity_id)
        .await?
        .into_iter()
        .map(|s| s.invitation)
        .filter(|i| filter.status.is_none_or(|wanted| i.status == wanted))
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
    let entity_id = caller.entity_id(&state.db, Role::Viewer).await?;
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
    let entity_id = caller.entity_id(&state.db, Role::Admin).await?;
    let stored = find(&state, &entity_id, &id).await?;
    if !store::cancel(&state.db, &entity_id, &id).await? {
        return Err(ApiError::conflict(
            "invitation_closed",
            format!(
                "the invitation is {} already",
                stored.invitation.status.as_str()
            ),
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
    let entity_id = caller.entity_id(&state.db, Role::Admin).await?;
    let stored = find(&state, &entity_id, &id).await?;
    let now = state.db.now();
    match stored.invitation.status {
        InvitationStatus::Accepted | InvitationStatus::Cancelled => {
            return Err(ApiError::conflict(
                "invitation_closed",
                format!(
                    "the invitation is {}; only pending or expired ones can be resent",
                    stored.invitation.status.as_str()
                ),
            ));
        }
        _ if now.0 - stored.invitation.created_at.0 > RESEND_LIMIT => {
            return Err(ApiError::conflict(
                "invitation_too_old",
                "the invitation is over 30 days old: invite again",
            ));
        }
        _ if now.0 - stored.last_sent_at < RESEND_GAP => {
            return Err(ApiError::too_many(
                "resent_recently",
                "the invitation was sent less than a minute ago",
                stored.last_sent_at + RESEND_GAP - now.0,
            ));
        }
        _ => {}
    }
    let token = new_secret("inv");
    let expires_at = now.0 + stored.valid_days * DAY;
    let from = effective_from(&state, &caller.account_id, Some(&entity_id)).await?;
    let mut tx = state.db.begin().await?;
    store::reissue(&mut tx, &id, &digest(&token), expires_at, now).await?;
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
        expires_at: invitation.expires_at,
    }))
}

fn sign_in_required() -> ApiError {
    ApiError::unauthorized(
        "sign_in_required",
        "this email has a user: sign in as that user (POST /auth/login, or the sign-in form \
         of the invitation page) and accept with its access token",
    )
}

/// Accepts an invitation: creates the user, or — for an email that has a user already —
/// takes the user it is signed in as, and the membership, claiming the invitation in the
/// same transaction, so that of two concurrent accepts exactly one wins. No password of an
/// existing user is ever tried here: holding the token does not make one a guesser.
pub async fn accept(
    state: &AppState,
    token: &str,
    body: Acceptance,
    signed_in: Option<String>,
) -> Result<Accepted, ApiError> {
    let Some(stored) = store::by_token(&state.db, &digest(token)).await? else {
        return Err(ApiError::not_found("invitation"));
    };
    match stored.invitation.status {
        InvitationStatus::Cancelled => return Err(ApiError::not_found("invitation")),
        InvitationStatus::Accepted => {
            return Err(ApiError::conflict(
                "invitation_accepted",
                "the invitation was accepted already",
            ));
        }
        InvitationStatus::Expired => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "invitation_expired",
                "the invitation has expired; ask for a new one",
            ));
        }
        InvitationStatus::Pending => {}
    }
    let invitation = stored.invitation;
    let (user_id, new_user) = match signed_in {
        Some(user_id) => {
            let user = users::by_id(&state.db, &user_id)
                .await?
                .ok_or_else(|| ApiError::not_found("user"))?;
            if user.email != users::email_key(&invitation.email) {
                return Err(ApiError::forbidden(
                    "this invitation is for another email address: sign in as the user it was \
                     sent to",
                ));
            }
            (user_id, None)
        }
        None => {
            // The new user's fields are checked first, whoever the email belongs to.
            let name = parse_name(body.name.as_deref().unwrap_or(""), 200)
                .map_err(|e| ApiError::invalid("name", e))?;
            let password = body.password.unwrap_or_default();
            check_password(&password).map_err(|e| ApiError::invalid("password", e))?;
            if users::by_email(&state.db, &invitation.email)
                .await?
                .is_some()
            {
                return Err(sign_in_required());
            }
            let hash = passwords::hash(&password, Priority::Anonymous).await?;
            (new_id("user"), Some((name, hash)))
        }
    };

    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    if !store::claim(&mut tx, &invitation.id, &user_id, now).await? {
        return Err(ApiError::conflict(
            "invitation_accepted",
            "the invitation was accepted already",
        ));
    }
    if let Some((name, hash)) = new_user {
        crate::users::store::insert(&mut tx, &user_id, &invitation.email, &name, &hash, now)
            .await
            .map_err(on_unique(sign_in_required))?;
    }
    memberships::join(
        &mut tx,
        &invitation.entity_id,
        &user_id,
        invitation.role,
        now,
    )
    .await?;
    let accepted = store::get_on(&mut tx, &invitation.id, now).await?;
    store::record_event(&mut tx, "invitation.accepted", &accepted, now).await?;
    let (access_token, _) = tokens::issue(&mut tx, &user_id, now).await?;
    tx.commit().await?;
    Ok(Accepted {
        message: "Invitation accepted",
        user_id,
        entity_id: invitation.entity_id,
        access_token,
    })
}
