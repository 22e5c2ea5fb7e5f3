//! Sender addresses (spec 000): the From of an account's or an organization's mail, proven
//! by a link or code sent to it and by its domain's DNS records.

mod pages;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domains::DomainStatus;
use crate::http::{ApiError, AppState, Caller, ErrorBody, Json};
use crate::mail::EmailAddress;
use crate::mail::outbox::{Outgoing, enqueue};
use crate::mail::templates::{Kind, render};
use crate::store::secrets::{digest, new_secret};
use crate::store::{Db, Timestamp, new_id};
use crate::tenancy::Role;

const DAY: i64 = 24 * 3_600_000;
/// Verification emails one address may receive: one a minute, ten a day.
const RESEND_GAP: i64 = 60_000;
const SENDS_PER_DAY: i64 = 10;
const CODE_TRIES: i64 = 5;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sender, get_sender, delete_sender))
        .routes(routes!(sender_status))
        .routes(routes!(resend_verification))
        .routes(routes!(pages::verification_page, verify_by_code))
        .routes(routes!(pages::confirm_verification))
        .routes(routes!(
            create_org_sender,
            get_org_sender,
            delete_org_sender
        ))
        .routes(routes!(org_sender_status))
        .routes(routes!(resend_org_verification))
        .routes(routes!(verify_org_by_code))
}

/// Whose sender address: the account's, or one organization's (entity's).
#[derive(Debug, Clone)]
enum Scope {
    Account,
    Organization(String),
}

impl Scope {
    fn entity_id(&self) -> Option<&str> {
        match self {
            Scope::Account => None,
            Scope::Organization(id) => Some(id),
        }
    }

    /// The value of `COALESCE(entity_id, '')` for this scope.
    fn key(&self) -> &str {
        self.entity_id().unwrap_or("")
    }

    async fn of_organization(
        state: &AppState,
        caller: &Caller,
        id: String,
    ) -> Result<Scope, ApiError> {
        caller.check_entity(state, &id).await?;
        Ok(Scope::Organization(id))
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CnameRecord {
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub name: String,
    pub value: String,
}

/// A sender address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderAddress {
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub id: String,
    pub email: String,
    /// `pending`, `verified` or `expired` (the link and code ran out; resend them).
    pub email_verification_status: &'static str,
    /// `pending`, `verified` (the domain is active) or `failed`.
    pub domain_verification_status: &'static str,
    /// The DKIM tokens of the address's domain.
    pub tokens: Vec<String>,
    /// The CNAME records the tokens stand for.
    pub dns_records: Vec<CnameRecord>,
    pub account_id: String,
    /// `null` for the account's own sender address.
    pub organization_id: Option<String>,
    /// On an organization's address: whether its mail is sent from it now (both statuses
    /// verified). Otherwise its account's address is used when verified, else the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective: Option<bool>,
    /// On an organization's address: the address its mail is sent from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_sender: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderStatus {
    pub email_verification_status: &'static str,
    pub domain_verification_status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Count {
    pub count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateSender {
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
pub struct VerifyCode {
    /// The 6-digit code from the verification email.
    pub code: String,
}

/// A stored sender address with its domain.
struct Stored {
    id: String,
    account_id: String,
    entity_id: Option<String>,
    email: String,
    domain_id: String,
    domain: String,
    domain_status: String,
    verified_at: Option<i64>,
    expires_at: Option<i64>,
    code_hash: Option<String>,
    code_failures: i64,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str = "s.id, s.account_id, s.entity_id, s.email, s.domain_id, d.name AS domain, \
                       d.status AS domain_status, s.verified_at, s.expires_at, s.code_hash, s.code_failures, \
                       s.created_at, s.updated_at";
const FROM: &str = "FROM sender_addresses s JOIN domains d ON d.id = s.domain_id";

impl sqlx::FromRow<'_, AnyRow> for Stored {
    fn from_row(row: &AnyRow) -> sqlx::Result<Stored> {
        Ok(Stored {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            entity_id: row.try_get("entity_id")?,
            email: row.try_get("email")?,
            domain_id: row.try_get("domain_id")?,
            domain: row.try_get("domain")?,
            domain_status: row.try_get("domain_status")?,
            verified_at: row.try_get("verified_at")?,
            expires_at: row.try_get("expires_at")?,
            code_hash: row.try_get("code_hash")?,
            code_failures: row.try_get("code_failures")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl Stored {
    fn email_status(&self) -> &'static str {
        match (self.verified_at, self.expires_at) {
            (Some(_), _) => "verified",
            (None, Some(expires)) if expires < Timestamp::now().0 => "expired",
            _ => "pending",
        }
    }

    fn domain_status(&self) -> &'static str {
        match self.domain_status.as_str() {
            "active" => "verified",
            "failed" | "suspended" => "failed",
            _ => "pending",
        }
    }

    fn fully_verified(&self) -> bool {
        self.verified_at.is_some() && self.domain_status == DomainStatus::Active.as_str()
    }
}

async fn load(db: &Db, account_id: &str, scope: &Scope) -> Result<Option<Stored>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} {FROM} WHERE s.account_id = $1 AND COALESCE(s.entity_id, '') = $2"
    ))
    .bind(account_id)
    .bind(scope.key())
    .fetch_optional(&db.pool)
    .await?)
}

async fn load_or_404(db: &Db, account_id: &str, scope: &Scope) -> Result<Stored, ApiError> {
    load(db, account_id, scope)
        .await?
        .ok_or_else(|| ApiError::not_found("sender address"))
}

async fn render_sender(
    state: &AppState,
    stored: Stored,
    scope: &Scope,
) -> Result<SenderAddress, ApiError> {
    let tokens = crate::domains::tokens(&state.db, &stored.domain_id).await?;
    let zone = state.settings.dkim_zone.trim_end_matches('.');
    let dns_records = tokens
        .iter()
        .map(|token| CnameRecord {
            record_type: "CNAME",
            name: format!("{token}._domainkey.{}", stored.domain),
            value: format!("{token}.{zone}"),
        })
        .collect();
    let (effective, effective_sender) = match scope {
        Scope::Account => (None, None),
        Scope::Organization(id) => {
            let from = effective_from(state, &stored.account_id, Some(id)).await?;
            (
                Some(stored.fully_verified() && from.to_string() == stored.email),
                Some(from.to_string()),
            )
        }
    };
    Ok(SenderAddress {
        created_at: Timestamp(stored.created_at),
        updated_at: Timestamp(stored.updated_at),
        email_verification_status: stored.email_status(),
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

/// The From of mail sent for an entity (or, with `None`, for the account): the entity's
/// sender when both its statuses are verified, else the account's when verified, else the
/// system sender.
pub async fn effective_from(
    state: &AppState,
    account_id: &str,
    entity_id: Option<&str>,
) -> Result<EmailAddress, ApiError> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT s.email FROM sender_addresses s JOIN domains d ON d.id = s.domain_id \
         WHERE s.account_id = $1 AND s.verified_at IS NOT NULL AND d.status = 'active' \
         AND (s.entity_id IS NULL OR s.entity_id = $2) \
         ORDER BY CASE WHEN s.entity_id IS NULL THEN 1 ELSE 0 END LIMIT 1",
    )
    .bind(account_id)
    .bind(entity_id)
    .fetch_optional(&state.db.pool)
    .await?;
    let address = found.unwrap_or_else(|| state.settings.mail_from.clone());
    EmailAddress::parse(&address)
        .map_err(|e| ApiError::internal(format!("sender address {address}: {e}")))
}

fn code_digest(sender_id: &str, code: &str) -> String {
    digest(&format!("{sender_id}:{code}"))
}

/// 429 when `email` was sent a verification in the last minute (when `gap` is asked) or
/// ten in the last day.
async fn check_send_limits(db: &Db, email: &str, gap: bool) -> Result<(), ApiError> {
    let now = Timestamp::now().0;
    let row = sqlx::query("SELECT COUNT(*) AS sent, MIN(at) AS first, MAX(at) AS last FROM verification_sends WHERE email = $1 AND at > $2")
        .bind(email)
        .bind(now - DAY)
        .fetch_one(&db.pool)
        .await?;
    let sent: i64 = row.try_get("sent")?;
    let first: Option<i64> = row.try_get("first")?;
    let last: Option<i64> = row.try_get("last")?;
    let too_many = |wait_ms: i64, why: &str| {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_verifications", why);
        error.retry_after_secs = Some(((wait_ms + 999) / 1000).max(1) as u64);
        error
    };
    if gap
        && let Some(last) = last
        && now - last < RESEND_GAP
    {
        return Err(too_many(
            last + RESEND_GAP - now,
            "a verification email went to this address less than a minute ago",
        ));
    }
    if sent >= SENDS_PER_DAY {
        return Err(too_many(
            first.unwrap_or(now) + DAY - now,
            "this address has had ten verification emails today",
        ));
    }
    Ok(())
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
    let now = Timestamp::now().0;
    sqlx::query(
        "UPDATE sender_addresses SET token_hash = $2, code_hash = $3, code_failures = 0, expires_at = $4, \
         updated_at = $5 WHERE id = $1",
    )
    .bind(sender_id)
    .bind(digest(&token))
    .bind(code_digest(sender_id, &code))
    .bind(now + DAY)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let link = format!("{}/v1/email-address/verify?token={token}", state.public_url);
    let scope_name = match scope {
        Scope::Account => "your account".to_string(),
        Scope::Organization(id) => format!("the organization {id}"),
    };
    let email_text = render(
        Kind::SenderVerification,
        &[
            ("email", &email.to_string()),
            ("scope", &scope_name),
            ("link", &link),
            ("code", &code),
        ],
    );
    enqueue(
        &mut *tx,
        &state.master_key,
        Outgoing {
            account_id: Some(account_id),
            from,
            to: email,
            email: email_text,
        },
    )
    .await?;
    sqlx::query("INSERT INTO verification_sends (email, at) VALUES ($1, $2)")
        .bind(email.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn create(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    body: CreateSender,
) -> Result<(StatusCode, Json<SenderAddress>), ApiError> {
    caller.require(Role::Editor)?;
    let email = EmailAddress::parse(&body.email).map_err(|e| ApiError::invalid("email", e))?;
    check_send_limits(&state.db, &email.to_string(), false).await?;
    let domain = crate::domains::find_or_add(state, &caller.account_id, email.domain()).await?;
    let id = new_id("snd");
    let now = Timestamp::now().0;
    let from = effective_from(state, &caller.account_id, scope.entity_id()).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "DELETE FROM sender_addresses WHERE account_id = $1 AND COALESCE(entity_id, '') = $2",
    )
    .bind(&caller.account_id)
    .bind(scope.key())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sender_addresses (id, account_id, entity_id, email, domain_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(scope.entity_id())
    .bind(email.to_string())
    .bind(&domain.id)
    .bind(now)
    .execute(&mut *tx)
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
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    Ok((
        StatusCode::CREATED,
        Json(render_sender(state, stored, &scope).await?),
    ))
}

async fn get(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<SenderAddress>, ApiError> {
    caller.require(Role::Viewer)?;
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    Ok(Json(render_sender(state, stored, &scope).await?))
}

async fn delete(state: &AppState, caller: &Caller, scope: Scope) -> Result<Json<Count>, ApiError> {
    caller.require(Role::Editor)?;
    let deleted = sqlx::query(
        "DELETE FROM sender_addresses WHERE account_id = $1 AND COALESCE(entity_id, '') = $2",
    )
    .bind(&caller.account_id)
    .bind(scope.key())
    .execute(&state.db.pool)
    .await?;
    Ok(Json(Count {
        count: deleted.rows_affected(),
    }))
}

async fn status(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<SenderStatus>, ApiError> {
    caller.require(Role::Viewer)?;
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    Ok(Json(SenderStatus {
        email_verification_status: stored.email_status(),
        domain_verification_status: stored.domain_status(),
    }))
}

async fn resend(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
) -> Result<Json<Success>, ApiError> {
    caller.require(Role::Editor)?;
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    if stored.verified_at.is_some() {
        return Err(ApiError::conflict(
            "already_verified",
            format!("{} is verified already", stored.email),
        ));
    }
    check_send_limits(&state.db, &stored.email, true).await?;
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
    caller.require(Role::Editor)?;
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    if stored.verified_at.is_some() {
        return Err(ApiError::conflict(
            "already_verified",
            format!("{} is verified already", stored.email),
        ));
    }
    if stored.email_status() == "expired" {
        return Err(ApiError::new(
            StatusCode::GONE,
            "code_expired",
            "the code has expired; ask for a new one with resend-verification",
        ));
    }
    let Some(code_hash) = &stored.code_hash else {
        return Err(ApiError::new(
            StatusCode::GONE,
            "code_void",
            "the code is void after too many wrong tries; ask for a new one with resend-verification",
        ));
    };
    let code = body.code.trim();
    if code_digest(&stored.id, code) != *code_hash {
        let failures = stored.code_failures + 1;
        let voided = failures >= CODE_TRIES;
        sqlx::query("UPDATE sender_addresses SET code_failures = $2, code_hash = CASE WHEN $3 = 1 THEN NULL ELSE code_hash END WHERE id = $1")
            .bind(&stored.id)
            .bind(failures)
            .bind(i64::from(voided))
            .execute(&state.db.pool)
            .await?;
        let message = if voided {
            "wrong code; that was the last try, ask for a new code with resend-verification"
                .to_string()
        } else {
            format!("wrong code; {} tries left", CODE_TRIES - failures)
        };
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "wrong_code", message)
                .with_param("code"),
        );
    }
    mark_verified(&state.db, &stored.id).await?;
    let stored = load_or_404(&state.db, &caller.account_id, &scope).await?;
    Ok(Json(render_sender(state, stored, &scope).await?))
}

/// Marks an address verified and spends its link and code.
async fn mark_verified(db: &Db, sender_id: &str) -> sqlx::Result<bool> {
    let now = Timestamp::now().0;
    let updated = sqlx::query(
        "UPDATE sender_addresses SET verified_at = $2, token_hash = NULL, code_hash = NULL, updated_at = $2 \
         WHERE id = $1 AND verified_at IS NULL",
    )
    .bind(sender_id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Create the account's sender address (replacing one it has) and email it a link and code.
#[utoipa::path(post, path = "/v1/email-address", tag = "sender-address", request_body = CreateSender,
    responses((status = 201, description = "The sender address", body = SenderAddress),
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
    responses((status = 201, description = "The sender address", body = SenderAddress),
              (status = 409, description = "The domain is verified by another account", body = ErrorBody),
              (status = 429, description = "Too many verification emails to this address", body = ErrorBody)))]
pub async fn create_org_sender(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateSender>,
) -> Result<(StatusCode, Json<SenderAddress>), ApiError> {
    let scope = Scope::of_organization(&state, &caller, id).await?;
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
    let scope = Scope::of_organization(&state, &caller, id).await?;
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
    let scope = Scope::of_organization(&state, &caller, id).await?;
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
    let scope = Scope::of_organization(&state, &caller, id).await?;
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
    let scope = Scope::of_organization(&state, &caller, id).await?;
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
    let scope = Scope::of_organization(&state, &caller, id).await?;
    verify_code(&state, &caller, scope, body).await
}
