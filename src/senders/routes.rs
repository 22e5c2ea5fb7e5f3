//! Sender addresses over HTTP (spec 000): each operation once, and the account's and an
//! organization's routes as thin wrappers around it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::Rng;

use super::model::{
    CnameRecord, Count, CreateSender, EmailVerification, Scope, SenderAddress, SenderStatus,
    Success, VerifyCode,
};
use super::store::{self, Stored};
use crate::config::Settings;
use crate::domains::model::DomainRow;
use crate::domains::records::dkim_cnames;
use crate::http::{ApiError, Caller, ErrorBody, Json};
use crate::identity::Role;
use crate::mail::outbox::{Outgoing, enqueue};
use crate::mail::templates::{Kind, render};
use crate::state::AppState;
use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp, new_id};
use crate::types::EmailAddress;

const DAY: i64 = 24 * 3_600_000;
/// Verification emails one address may receive: one a minute, ten a day.
const RESEND_GAP: i64 = 60_000;
const SENDS_PER_DAY: i64 = 10;
const CODE_TRIES: i64 = 5;

/// The organization `id`, when the caller may act in it.
async fn organization(state: &AppState, caller: &Caller, id: String) -> Result<Scope, ApiError> {
    caller.check_entity(&state.db, &id).await?;
    Ok(Scope::Organization(id))
}

/// The account's own sender needs a credential for the whole account; an entity's, a
/// credential of that entity (checked by `organization`).
fn may(caller: &Caller, scope: &Scope, role: Role) -> Result<(), ApiError> {
    match scope {
        Scope::Account => caller.require_account(role),
        Scope::Organization(_) => caller.require(role),
    }
}

async fn load_or_404(
    state: &AppState,
    account_id: &str,
    scope: &Scope,
) -> Result<Stored, ApiError> {
    store::load(&state.db, account_id, scope)
        .await?
        .ok_or_else(|| ApiError::not_found("sender address"))
}

/// The From of mail of the account (of its entity `entity_id` when given): its verified
/// sender, else the system's. Looked up before a transaction: inside one, waiting for
/// another pooled connection while SQLite's write lock is held could starve the pool.
pub async fn effective_from(
    state: &AppState,
    account_id: &str,
    entity_id: Option<&str>,
) -> anyhow::Result<EmailAddress> {
    store::effective_from(&state.db, &state.settings.mail_from, account_id, entity_id).await
}

async fn render_sender(state: &AppState, stored: Stored) -> Result<SenderAddress, ApiError> {
    Ok(describe(&state.db, &state.settings, stored).await?)
}

/// The address as the API shows it. An organization's fully verified address is the one
/// its mail is sent from, which takes no lookup: so an address about to be verified is
/// described as it will be, before the transaction that verifies it.
pub(super) async fn describe(
    db: &Db,
    settings: &Settings,
    stored: Stored,
) -> anyhow::Result<SenderAddress> {
    let tokens = crate::domains::dkim::tokens(db, &stored.domain_id).await?;
    let dns_records = dkim_cnames(&stored.domain, &tokens, settings)
        .into_iter()
        .map(|record| CnameRecord {
            record_type: record.record_type,
            name: record.name,
            value: record.value,
        })
        .collect();
    let (effective, effective_sender) = match stored.scope() {
        Scope::Account => (None, None),
        Scope::Organization(_) if stored.fully_verified() => {
            (Some(true), Some(stored.email.clone()))
        }
        Scope::Organization(id) => {
            let from =
                store::effective_from(db, &settings.mail_from, &stored.account_id, Some(&id))
                    .await?;
            (Some(false), Some(from.to_string()))
        }
    };
    Ok(SenderAddress {
        created_at: Timestamp(stored.created_at),
        updated_at: Timestamp(stored.updated_at),
        email_verification_status: stored.email_status(db.now()),
        domain_verification_status: stored.domain_status(),
        id: stored.id,
        email: stored.email,
        tokens,
        dns_records,
        account_id: stored.account_id,
        organization_id: stored.entity_id,
        effective,
        effective_sender,
    })
}

/// Verifies the address and announces it (`sender.verified`) in one transaction; false
/// when it was verified already.
pub(super) async fn confirm(state: &AppState, mut stored: Stored) -> anyhow::Result<bool> {
    let now = state.db.now();
    let id = stored.id.clone();
    stored.verified_at = Some(now.0);
    stored.updated_at = now.0;
    let view = describe(&state.db, &state.settings, stored).await?;
    let mut tx = state.db.begin().await?;
    if !store::mark_verified(&mut tx, &id, now).await? {
        return Ok(false);
    }
    store::record_event(&mut tx, "sender.verified", &view, now).await?;
    tx.commit().await?;
    Ok(true)
}

fn code_digest(sender_id: &str, code: &str) -> String {
    digest(&format!("{sender_id}:{code}"))
}

/// Counts a verification email before it is made, and answers its send's id: 429 when
/// the account sent `email` one in the last minute (when `gap` is asked) or ten in the
/// last day. Counted per account, so that another account's sends to the same address
/// cannot block this one, and counted before the work, so that concurrent requests
/// cannot all slip under the limit.
async fn count_send(
    state: &AppState,
    account_id: &str,
    email: &str,
    gap: bool,
) -> Result<String, ApiError> {
    let now = state.db.now();
    let (send, sent, first, previous) =
        store::begin_send(&state.db, account_id, email, now.0 - DAY, now).await?;
    let refusal = match previous {
        Some(previous) if gap && now.0 - previous < RESEND_GAP => Some(ApiError::too_many(
            "too_many_verifications",
            "a verification email went to this address less than a minute ago",
            previous + RESEND_GAP - now.0,
        )),
        _ if sent > SENDS_PER_DAY => Some(ApiError::too_many(
            "too_many_verifications",
            "this account has sent ten verification emails to this address today",
            first + DAY - now.0,
        )),
        _ => None,
    };
    match refusal {
        Some(refusal) => {
            store::forget_send(&state.db, &send).await?;
            Err(refusal)
        }
        None => Ok(send),
    }
}

/// Issues a new link and code and queues the email from `from`, inside `tx` (which must
/// not wait for another pooled connection: SQLite writers hold the lock meanwhile).
async fn send_verification(
    state: &AppState,
    tx: &mut sqlx::AnyConnection,
    sender_id: &str,
    email: &EmailAddress,
    from: &EmailAddress,
    scope: &Scope,
    account_id: &str,
) -> Result<(), ApiError> {
    let token = new_secret("ev");
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000));
    let now = state.db.now();
    store::issue_secrets(
        &mut *tx,
        sender_id,
        (&digest(&token), &code_digest(sender_id, &code)),
        now.0 + DAY,
        now,
    )
    .await?;
    let link = format!("{}/v1/email-address/verify?token={token}", state.public_url);
    let scope_name = match scope {
        Scope::Account => "your account".to_string(),
        Scope::Organization(id) => format!("the organization {id}"),
    };
    let email_text = render(
        Kind::SenderVerification,
        &[("email", &email.to_string()), ("scope", &scope_name)],
        &[("link", &link), ("code", &code)],
    )?;
    let outgoing = Outgoing::rendered(Some(account_id), from, email, email_text);
    enqueue(&mut *tx, &state.master_key, outgoing, now).await?;
    Ok(())
}

/// The account's domain of `email`. A credential of the whole account adds it when it is
/// new; one limited to an entity may not add the account's domains (each counts against
/// the account's limit), so it names only one the account has.
async fn domain_of(
    state: &AppState,
    caller: &Caller,
    email: &EmailAddress,
) -> Result<DomainRow, ApiError> {
    if caller.scoped_entity().is_some() {
        return crate::domains::store::find(&state.db, &caller.account_id, email.domain())
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    "email",
                    format!(
                        "{} is not one of the account's domains; a key of the whole account adds \
                         it first (POST /v2/domains)",
                        email.domain()
                    ),
                )
            });
    }
    Ok(crate::domains::store::find_or_add(
        &state.db,
        &state.master_key,
        &state.settings,
        &caller.account_id,
        email.domain(),
    )
    .await?)
}

async fn create(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    body: CreateSender,
) -> Result<(StatusCode, Json<SenderAddress>), ApiError> {
    may(caller, &scope, Role::Editor)?;
    let email = EmailAddress::parse(&body.email).map_err(|e| ApiError::invalid("email", e))?;
    let send = count_send(state, &caller.account_id, &email.to_string(), false).await?;
    let domain = match domain_of(state, caller, &email).await {
        Ok(domain) => domain,
        Err(error) => {
            store::forget_send(&state.db, &send).await?;
            return Err(error);
        }
    };
    let id = new_id("snd");
    let from = effective_from(state, &caller.account_id, scope.entity_id()).await?;
    let mut tx = state.db.begin().await?;
    store::delete(&mut tx, &caller.account_id, &scope).await?;
    let now = state.db.now();
    let address = email.to_string();
    store::insert(
        &mut tx,
        &id,
        &caller.account_id,
        &scope,
        &address,
        &domain.id,
        now,
    )
    .await?;
    send_verification(
        state,
        &mut tx,
        &id,
        &email,
        &from,
        &scope,
        &caller.account_id,
    )
    .await?;
    tx.commit().await?;
    state.wake_outbox();
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    Ok((
        StatusCode::CREATED,
        Json(render_sender(state, stored).await?),
    ))
}

async fn get(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<SenderAddress>, ApiError> {
    may(caller, &scope, Role::Viewer)?;
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    Ok(Json(render_sender(state, stored).await?))
}

async fn delete(state: &AppState, caller: &Caller, scope: Scope) -> Result<Json<Count>, ApiError> {
    may(caller, &scope, Role::Editor)?;
    let mut conn = state.db.pool.acquire().await?;
    let count = store::delete(&mut conn, &caller.account_id, &scope).await?;
    Ok(Json(Count { count }))
}

async fn status(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<SenderStatus>, ApiError> {
    may(caller, &scope, Role::Viewer)?;
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    Ok(Json(SenderStatus {
        email_verification_status: stored.email_status(state.db.now()),
        domain_verification_status: stored.domain_status(),
    }))
}

fn already_verified(stored: &Stored) -> ApiError {
    ApiError::conflict(
        "already_verified",
        format!("{} is verified already", stored.email),
    )
}

async fn resend(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<Success>, ApiError> {
    may(caller, &scope, Role::Editor)?;
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    if stored.verified_at.is_some() {
        return Err(already_verified(&stored));
    }
    count_send(state, &caller.account_id, &stored.email, true).await?;
    let email = EmailAddress::parse(&stored.email).map_err(ApiError::internal)?;
    let from = effective_from(state, &caller.account_id, scope.entity_id()).await?;
    let mut tx = state.db.begin().await?;
    send_verification(
        state,
        &mut tx,
        &stored.id,
        &email,
        &from,
        &scope,
        &caller.account_id,
    )
    .await?;
    tx.commit().await?;
    state.wake_outbox();
    Ok(Json(Success { success: true }))
}

async fn verify_code(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    body: VerifyCode,
) -> Result<Json<SenderAddress>, ApiError> {
    may(caller, &scope, Role::Editor)?;
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    if stored.verified_at.is_some() {
        return Err(already_verified(&stored));
    }
    if stored.email_status(state.db.now()) == EmailVerification::Expired {
        return Err(ApiError::new(
            StatusCode::GONE,
            "code_expired",
            "the code has expired; ask for a new one with resend-verification",
        ));
    }
    let code_void = || {
        ApiError::new(
            StatusCode::GONE,
            "code_void",
            "the code is void after too many wrong tries; ask for a new one with resend-verification",
        )
    };
    let Some(code_hash) = &stored.code_hash else {
        return Err(code_void());
    };
    let Some(try_number) =
        store::take_code_try(&state.db, &stored.id, code_hash, CODE_TRIES).await?
    else {
        return Err(code_void());
    };
    if code_digest(&stored.id, body.code.trim()) != *code_hash {
        let void = try_number >= CODE_TRIES;
        let message = if void {
            store::void_code(&state.db, &stored.id, code_hash).await?;
            "wrong code; that was the last try, ask for a new code with resend-verification"
                .to_string()
        } else {
            format!("wrong code; {} tries left", CODE_TRIES - try_number)
        };
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "wrong_code", message)
                .with_param("code"),
        );
    }
    confirm(state, stored).await?;
    let stored = load_or_404(state, &caller.account_id, &scope).await?;
    Ok(Json(render_sender(state, stored).await?))
}

/// Create the account's sender address (replacing one it has) and email it a link and code.
#[utoipa::path(post, path = "/v1/email-address", tag = "sender-address", request_body = CreateSender,
    responses((status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody),
              (status = 201, description = "The sender address", body = SenderAddress),
              (status = 409, description = "The domain is verified by another account", body = ErrorBody),
              (status = 429, description = "Too many verification emails to this address", body = ErrorBody)))]
pub async fn create_sender(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateSender>,
) -> Result<(StatusCode, Json<SenderAddress>), ApiError> {
    create(&state, &caller, Scope::Account, body).await
}

/// The account's sender address.
#[utoipa::path(get, path = "/v1/email-address", tag = "sender-address",
    responses((status = 200, description = "The sender address", body = SenderAddress)))]
pub async fn get_sender(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SenderAddress>, ApiError> {
    get(&state, &caller, Scope::Account).await
}

/// Delete the account's sender address.
#[utoipa::path(delete, path = "/v1/email-address", tag = "sender-address",
    responses((status = 200, description = "How many were deleted", body = Count)))]
pub async fn delete_sender(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Count>, ApiError> {
    delete(&state, &caller, Scope::Account).await
}

/// The two verification statuses of the account's sender address.
#[utoipa::path(get, path = "/v1/email-address/status", tag = "sender-address",
    responses((status = 200, description = "The statuses", body = SenderStatus)))]
pub async fn sender_status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SenderStatus>, ApiError> {
    status(&state, &caller, Scope::Account).await
}

/// Send a new link and code (the old ones stop working): once a minute, ten times a day.
#[utoipa::path(post, path = "/v1/email-address/resend-verification", tag = "sender-address",
    responses((status = 200, description = "Sent", body = Success),
              (status = 409, description = "Verified already", body = ErrorBody),
              (status = 429, description = "Too soon; see Retry-After", body = ErrorBody)))]
pub async fn resend_verification(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Success>, ApiError> {
    resend(&state, &caller, Scope::Account).await
}

/// Verify the account's sender address with the code from the email.
#[utoipa::path(post, path = "/v1/email-address/verify", tag = "sender-address", request_body = VerifyCode,
    responses((status = 200, description = "Verified", body = SenderAddress),
              (status = 409, description = "Verified already", body = ErrorBody),
              (status = 410, description = "The code expired or is void", body = ErrorBody)))]
pub async fn verify_by_code(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<VerifyCode>,
) -> Result<Json<SenderAddress>, ApiError> {
    verify_code(&state, &caller, Scope::Account, body).await
}

/// Create an organization's sender address (replacing one it has).
#[utoipa::path(post, path = "/v1/organizations/{id}/email-address", tag = "sender-address", request_body = CreateSender,
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody),
              (status = 201, description = "The sender address", body = SenderAddress),
              (status = 409, description = "The domain is verified by another account", body = ErrorBody),
              (status = 429, description = "Too many verification emails to this address", body = ErrorBody)))]
pub async fn create_org_sender(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateSender>,
) -> Result<(StatusCode, Json<SenderAddress>), ApiError> {
    let scope = organization(&state, &caller, id).await?;
    create(&state, &caller, scope, body).await
}

/// An organization's sender address, with the address its mail is sent from now.
#[utoipa::path(get, path = "/v1/organizations/{id}/email-address", tag = "sender-address",
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 200, description = "The sender address", body = SenderAddress)))]
pub async fn get_org_sender(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SenderAddress>, ApiError> {
    let scope = organization(&state, &caller, id).await?;
    get(&state, &caller, scope).await
}

/// Delete an organization's sender address.
#[utoipa::path(delete, path = "/v1/organizations/{id}/email-address", tag = "sender-address",
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 200, description = "How many were deleted", body = Count)))]
pub async fn delete_org_sender(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Count>, ApiError> {
    let scope = organization(&state, &caller, id).await?;
    delete(&state, &caller, scope).await
}

/// The two verification statuses of an organization's sender address.
#[utoipa::path(get, path = "/v1/organizations/{id}/email-address/status", tag = "sender-address",
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 200, description = "The statuses", body = SenderStatus)))]
pub async fn org_sender_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SenderStatus>, ApiError> {
    let scope = organization(&state, &caller, id).await?;
    status(&state, &caller, scope).await
}

/// Send an organization's sender address a new link and code.
#[utoipa::path(post, path = "/v1/organizations/{id}/email-address/resend-verification", tag = "sender-address",
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 200, description = "Sent", body = Success),
              (status = 409, description = "Verified already", body = ErrorBody),
              (status = 429, description = "Too soon; see Retry-After", body = ErrorBody)))]
pub async fn resend_org_verification(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Success>, ApiError> {
    let scope = organization(&state, &caller, id).await?;
    resend(&state, &caller, scope).await
}

/// Verify an organization's sender address with the code from the email.
#[utoipa::path(post, path = "/v1/organizations/{id}/email-address/verify", tag = "sender-address", request_body = VerifyCode,
    params(("id" = String, Path, description = "The organization (entity)")),
    responses((status = 200, description = "Verified", body = SenderAddress),
              (status = 409, description = "Verified already", body = ErrorBody),
              (status = 410, description = "The code expired or is void", body = ErrorBody)))]
pub async fn verify_org_by_code(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<VerifyCode>,
) -> Result<Json<SenderAddress>, ApiError> {
    let scope = organization(&state, &caller, id).await?;
    verify_code(&state, &caller, scope, body).await
}
