//! Mailboxes over HTTP (spec 003).

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::model::*;
use super::store::{self, NewMailbox};
use crate::domains::model::DomainStatus;
use crate::http::{ApiError, Caller, ErrorBody, Json, Page, Query, on_unique};
use crate::identity::Role;
use crate::state::AppState;
use crate::store::passwords::{self, Priority};
use crate::types::{DomainName, LocalPart};

/// The caller's mailbox `id`; 404 when it is not theirs, or not `user_id`'s when given.
async fn find(
    state: &AppState,
    caller: &Caller,
    id: &str,
    user_id: Option<&str>,
) -> Result<Mailbox, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("mailbox"))?;
    let mailbox = store::get(&state.db, id, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::not_found("mailbox"))?;
    match parse_user_id(user_id)? {
        Some(user) if mailbox.user_id.as_deref() != Some(user.as_str()) => {
            Err(ApiError::not_found("mailbox"))
        }
        _ => Ok(mailbox),
    }
}

/// List the mailboxes of one domain.
#[utoipa::path(get, path = "/v2/domains/{domain}/email-accounts", tag = "mailboxes",
    params(("domain" = String, Path, description = "The domain name"), Owner, Page, After),
    responses((status = 200, description = "The domain and a page of its mailboxes", body = DomainMailboxList),
              (status = 422, description = "Invalid paging", body = ErrorBody)))]
pub async fn list_domain_mailboxes(
    State(state): State<AppState>,
    caller: Caller,
    Path(domain): Path<String>,
    Query(owner): Query<Owner>,
    Query(page): Query<Page>,
    Query(after): Query<After>,
) -> Result<Json<DomainMailboxList>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let after = after.parse()?;
    let name = DomainName::parse(&domain).map_err(|_| ApiError::not_found("domain"))?;
    let domain = crate::domains::store::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))?;
    let user = parse_user_id(owner.user_id.as_deref())?;
    let items = store::page_of(
        &state.db,
        &caller.account_id,
        user.as_deref(),
        Some(&domain.id),
        after,
        (limit, offset),
    )
    .await?;
    Ok(Json(DomainMailboxList {
        domain: DomainSummary {
            domain: domain.name,
            status: domain.status,
        },
        next_after: next_after(&items, limit),
        items,
        limit,
        offset,
    }))
}

/// Create a mailbox on an active domain; its password is shown once.
#[utoipa::path(post, path = "/v2/email-accounts/create", tag = "mailboxes",
    request_body = CreateMailbox,
    responses((status = 503, description = "Busy hashing passwords; see Retry-After", body = ErrorBody),
              (status = 201, description = "The mailbox and its password", body = WithPassword<CreatedMailbox>),
              (status = 409, description = "The address exists, or the domain is not active", body = ErrorBody)))]
pub async fn create_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateMailbox>,
) -> Result<(StatusCode, Json<WithPassword<CreatedMailbox>>), ApiError> {
    caller.require_account(Role::Editor)?;
    let name = DomainName::parse(&body.domain).map_err(|e| ApiError::invalid("domain", e))?;
    let local_part =
        LocalPart::parse(&body.local_part).map_err(|e| ApiError::invalid("local_part", e))?;
    let display_name = parse_display_name(body.display_name.as_deref())?;
    let user_id = parse_user_id(body.user_id.as_deref())?;
    let quota_mb = parse_quota(body.quota_mb)?;
    let password = choose_password(body.password.as_deref(), local_part.as_str())?;

    let domain = crate::domains::store::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain").with_param("domain"))?;
    if domain.status != DomainStatus::Active {
        return Err(ApiError::conflict(
            "domain_not_active",
            format!(
                "{name} is {}: mailboxes need an active domain; publish its DNS records \
                 (GET /v2/domains/{name}) and call POST /v2/domains/{name}/verify",
                domain.status.as_str()
            ),
        )
        .with_param("domain"));
    }
    let address = format!("{local_part}@{name}");
    let taken = || {
        ApiError::conflict("mailbox_exists", format!("{address} already exists"))
            .with_param("local_part")
    };
    if store::address_taken(&state.db, &address).await? {
        return Err(taken());
    }
    let password_hash = passwords::hash(&password, Priority::Authenticated).await?;
    let id = store::insert(
        &state.db,
        NewMailbox {
            account_id: &caller.account_id,
            domain_id: &domain.id,
            local_part: local_part.as_str(),
            address: &address,
            user_id: user_id.as_deref(),
            display_name: &display_name,
            password_hash: &password_hash,
            quota_mb,
        },
    )
    .await
    .map_err(on_unique(taken))?;

    let mailbox = find(&state, &caller, &id.to_string(), None).await?;
    Ok((
        StatusCode::CREATED,
        Json(WithPassword {
            account: CreatedMailbox {
                user_id_camel: mailbox.user_id.clone(),
                is_default_camel: mailbox.is_default,
                mailbox,
            },
            password,
            note: NOTE,
        }),
    ))
}

/// List the account's mailboxes.
#[utoipa::path(get, path = "/v2/email-accounts", tag = "mailboxes",
    params(ListFilter, Page, After),
    responses((status = 200, description = "A page of mailboxes", body = MailboxList),
              (status = 422, description = "Invalid paging or filter", body = ErrorBody)))]
pub async fn list_mailboxes(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<ListFilter>,
    Query(page): Query<Page>,
    Query(after): Query<After>,
) -> Result<Json<MailboxList>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let after = after.parse()?;
    let user = parse_user_id(filter.user_id.as_deref())?;
    let domain = match filter
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        Some(domain) => {
            let name = DomainName::parse(domain).map_err(|e| ApiError::invalid("domain", e))?;
            match crate::domains::store::find(&state.db, &caller.account_id, &name).await? {
                Some(domain) => Some(domain.id),
                // Not the caller's domain: nothing of theirs is on it.
                None => {
                    return Ok(Json(MailboxList {
                        items: Vec::new(),
                        limit,
                        offset,
                        next_after: None,
                    }));
                }
            }
        }
        None => None,
    };
    let items = store::page_of(
        &state.db,
        &caller.account_id,
        user.as_deref(),
        domain.as_deref(),
        after,
        (limit, offset),
    )
    .await?;
    Ok(Json(MailboxList {
        next_after: next_after(&items, limit),
        items,
        limit,
        offset,
    }))
}

/// Get one mailbox.
#[utoipa::path(get, path = "/v2/email-accounts/{id}", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id"), Owner),
    responses((status = 200, description = "The mailbox", body = MailboxEnvelope)))]
pub async fn get_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(owner): Query<Owner>,
) -> Result<Json<MailboxEnvelope>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let account = find(&state, &caller, &id, owner.user_id.as_deref()).await?;
    Ok(Json(MailboxEnvelope { account }))
}

/// Change a mailbox's display name, status or quota.
#[utoipa::path(put, path = "/v2/email-accounts/{id}", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id")),
    request_body = UpdateMailbox,
    responses((status = 200, description = "The mailbox", body = MailboxEnvelope)))]
pub async fn update_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateMailbox>,
) -> Result<Json<MailboxEnvelope>, ApiError> {
    caller.require_account(Role::Editor)?;
    let mailbox = find(&state, &caller, &id, body.user_id.as_deref()).await?;
    let display_name = match body.display_name.as_deref() {
        Some(name) => parse_display_name(Some(name))?,
        None => mailbox.display_name.clone(),
    };
    let status = body.status.unwrap_or(mailbox.status);
    let quota_mb = match body.quota_mb {
        Some(quota) => parse_quota(quota)?,
        None => mailbox.quota_mb,
    };
    store::update(
        &state.db,
        &mailbox,
        &caller.account_id,
        &display_name,
        status,
        quota_mb,
    )
    .await?;
    let account = find(&state, &caller, &id, None).await?;
    Ok(Json(MailboxEnvelope { account }))
}

/// Delete a mailbox. When it was its user's default, their oldest other one becomes default.
#[utoipa::path(post, path = "/v2/email-accounts/delete", tag = "mailboxes",
    request_body = DeleteMailbox,
    responses((status = 200, description = "Deleted", body = DeletedMailbox)))]
pub async fn delete_mailbox(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<DeleteMailbox>,
) -> Result<Json<DeletedMailbox>, ApiError> {
    caller.require_account(Role::Editor)?;
    let mailbox = find(
        &state,
        &caller,
        &body.id.to_string(),
        body.user_id.as_deref(),
    )
    .await?;
    if !store::delete(&state.db, &mailbox, &caller.account_id).await? {
        return Err(ApiError::not_found("mailbox"));
    }
    Ok(Json(DeletedMailbox {
        ok: true,
        deleted: DeletedRef {
            id: mailbox.id,
            address: mailbox.address,
        },
    }))
}

/// Set a new password (given or generated) and show it once.
#[utoipa::path(post, path = "/v2/email-accounts/{id}/password/reset", tag = "mailboxes",
    params(("id" = i64, Path, description = "The mailbox's id")),
    request_body = ResetPassword,
    responses((status = 503, description = "Busy hashing passwords; see Retry-After", body = ErrorBody),
              (status = 200, description = "The new password", body = WithPassword<MailboxRef>)))]
pub async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ResetPassword>,
) -> Result<Json<WithPassword<MailboxRef>>, ApiError> {
    caller.require_account(Role::Editor)?;
    let mailbox = find(&state, &caller, &id, body.user_id.as_deref()).await?;
    let password = choose_password(body.password.as_deref(), &mailbox.local_part)?;
    let password_hash = passwords::hash(&password, Priority::Authenticated).await?;
    store::set_password(&state.db, mailbox.id, &caller.account_id, &password_hash).await?;
    Ok(Json(WithPassword {
        account: MailboxRef {
            id: mailbox.id,
            domain: mailbox.domain,
            address: mailbox.address,
        },
        password,
        note: NOTE,
    }))
}
