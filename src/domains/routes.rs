//! Managed domains over HTTP.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::dkim::RotateError;
use super::model::{Domain, DomainRow, DomainStatus};
use super::rotation;
use super::store::{self, AddError};
use crate::http::{ApiError, Caller, ErrorBody, Json, Page, Query};
use crate::identity::Role;
use crate::mail::dkim::Algorithm;
use crate::state::AppState;
use crate::types::DomainName;

#[derive(Deserialize, ToSchema)]
pub struct CreateDomain {
    /// The domain, such as `customer.com`; Unicode names are stored as IDNA A-labels.
    pub domain: String,
}

#[derive(Serialize, ToSchema)]
pub struct DomainEnvelope {
    pub domain: Domain,
}

#[derive(Serialize, ToSchema)]
pub struct DomainList {
    pub items: Vec<Domain>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DomainFilter {
    /// Only domains with this status.
    #[param(inline)]
    pub status: Option<DomainStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub ok: bool,
    pub deleted: DeletedDomain,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedDomain {
    pub domain: String,
}

impl From<AddError> for ApiError {
    fn from(error: AddError) -> ApiError {
        match error {
            AddError::Exists(name) => {
                ApiError::conflict("domain_exists", format!("{name} is already added"))
            }
            AddError::ActiveElsewhere(name) => ApiError::conflict(
                "domain_taken",
                format!("{name} is already verified by another account"),
            ),
            AddError::TooMany(limit) => ApiError::conflict(
                "domain_limit_reached",
                format!(
                    "the account has {limit} domains, as many as it may; delete one to add another"
                ),
            ),
            AddError::Busy => ApiError::unavailable(
                "busy",
                "the server is busy making other domains' DKIM keys; try again in a moment",
                2,
            ),
            AddError::Failed(error) => error.into(),
        }
    }
}

async fn envelope(state: &AppState, row: DomainRow) -> Result<Json<DomainEnvelope>, ApiError> {
    let domain = store::render(&state.db, &state.settings, vec![row])
        .await?
        .remove(0);
    Ok(Json(DomainEnvelope { domain }))
}

/// The caller's domain named in the path; a name that cannot be a domain names nothing.
async fn find_domain(state: &AppState, caller: &Caller, name: &str) -> Result<DomainRow, ApiError> {
    let name = DomainName::parse(name).map_err(|_| ApiError::not_found("domain"))?;
    store::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))
}

/// Add a domain. It starts `pending` with three DKIM tokens whose CNAMEs prove it.
#[utoipa::path(post, path = "/v2/domains", tag = "domains",
    request_body = CreateDomain,
    responses((status = 201, description = "The new domain and the records to publish", body = DomainEnvelope),
              (status = 409, description = "Already added, active in another account, or the account's domain limit reached", body = ErrorBody),
              (status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody)))]
pub async fn create_domain(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateDomain>,
) -> Result<(StatusCode, Json<DomainEnvelope>), ApiError> {
    caller.require_account(Role::Editor)?;
    let name = DomainName::parse(&body.domain).map_err(|e| ApiError::invalid("domain", e))?;
    if store::find(&state.db, &caller.account_id, &name)
        .await?
        .is_some()
    {
        return Err(AddError::Exists(name).into());
    }
    let row = store::add(
        &state.db,
        &state.master_key,
        &state.settings,
        &caller.account_id,
        &name,
    )
    .await?;
    let Json(created) = envelope(&state, row).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List the account's domains, by name.
#[utoipa::path(get, path = "/v2/domains", tag = "domains",
    params(Page, DomainFilter),
    responses((status = 200, description = "A page of domains", body = DomainList),
              (status = 422, description = "Invalid paging or filter", body = ErrorBody)))]
pub async fn list_domains(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(filter): Query<DomainFilter>,
) -> Result<Json<DomainList>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let rows = store::list(
        &state.db,
        &caller.account_id,
        filter.status,
        (limit, offset),
    )
    .await?;
    let items = store::render(&state.db, &state.settings, rows).await?;
    Ok(Json(DomainList {
        items,
        limit,
        offset,
    }))
}

/// Get a domain with its records and what DNS held at the last check.
#[utoipa::path(get, path = "/v2/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    responses((status = 200, description = "The domain", body = DomainEnvelope)))]
pub async fn get_domain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DomainEnvelope>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let row = find_domain(&state, &caller, &name).await?;
    envelope(&state, row).await
}

/// Check the domain's DNS now and answer the result.
#[utoipa::path(post, path = "/v2/domains/{domain}/verify", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    responses((status = 200, description = "The domain after the check", body = DomainEnvelope),
              (status = 409, description = "Suspended by the operator", body = ErrorBody)))]
pub async fn verify_domain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DomainEnvelope>, ApiError> {
    caller.require_account(Role::Editor)?;
    let row = find_domain(&state, &caller, &name).await?;
    if row.status == DomainStatus::Suspended {
        return Err(ApiError::conflict(
            "domain_suspended",
            format!("{} is suspended by the operator", row.name),
        ));
    }
    super::checker(&state).check_now(&row.id).await?;
    let row = find_domain(&state, &caller, &row.name).await?;
    envelope(&state, row).await
}

#[derive(Deserialize, ToSchema)]
pub struct RotateDkim {
    /// Which signing key to replace: `rsa` (the default) or `ed25519`.
    #[schema(example = "rsa")]
    pub algorithm: Option<String>,
}

impl From<RotateError> for ApiError {
    fn from(error: RotateError) -> ApiError {
        match error {
            RotateError::InProgress { until } => ApiError::conflict(
                "rotation_in_progress",
                match until {
                    Some(until) => format!(
                        "a rotation of this domain's DKIM keys is under way until {}; one at a time",
                        until.rfc3339()
                    ),
                    None => "a rotation of this domain's DKIM keys is under way".to_string(),
                },
            ),
            RotateError::NotFound => ApiError::not_found("domain"),
            RotateError::Keygen(error) => AddError::from(error).into(),
            RotateError::Failed(error) => error.into(),
        }
    }
}

/// Rotate a DKIM key: a new key is published at once behind the standby selector and
/// signs after `MAILROOM_DKIM_SWITCH_AFTER_SECONDS`; the old one stays published for
/// `MAILROOM_DKIM_RETIRE_AFTER_HOURS` more. The CNAMEs to publish do not change.
#[utoipa::path(post, path = "/v2/domains/{domain}/dkim/rotate", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    request_body = RotateDkim,
    responses((status = 200, description = "The domain, its new key published", body = DomainEnvelope),
              (status = 409, description = "A rotation is under way", body = ErrorBody),
              (status = 503, description = "Busy making DKIM keys; see Retry-After", body = ErrorBody)))]
pub async fn rotate_dkim(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<RotateDkim>,
) -> Result<Json<DomainEnvelope>, ApiError> {
    caller.require_account(Role::Editor)?;
    let row = find_domain(&state, &caller, &name).await?;
    let algorithm = match body.algorithm.as_deref() {
        None => Algorithm::Rsa,
        Some(name) => Algorithm::parse(name)
            .map_err(|_| ApiError::invalid("algorithm", "algorithm must be rsa or ed25519"))?,
    };
    let name = row.name.clone();
    rotation::rotate(
        &state.db,
        &state.master_key,
        &state.settings,
        &caller.account_id,
        row,
        algorithm,
    )
    .await?;
    let row = find_domain(&state, &caller, &name).await?;
    envelope(&state, row).await
}

/// Remove a domain with its keys and records. Refused while something still uses it.
#[utoipa::path(delete, path = "/v2/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    responses((status = 200, description = "Removed", body = Deleted),
              (status = 409, description = "Still used by mailboxes or SMTP settings", body = ErrorBody)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require_account(Role::Editor)?;
    let row = find_domain(&state, &caller, &name).await?;
    let in_use = store::in_use(&state.db, &row.id).await?;
    let refuse = |why: String| Err(ApiError::conflict("domain_in_use", why));
    if in_use.relays > 0 {
        return refuse(format!(
            "{} still has SMTP settings; remove them first (DELETE /api/v2/email/settings?domain={})",
            row.name, row.name
        ));
    }
    if in_use.senders > 0 {
        return refuse(format!(
            "{} is the domain of a sender address; delete that first (DELETE /v1/email-address)",
            row.name
        ));
    }
    if in_use.mailboxes > 0 {
        return refuse(format!(
            "{} still has {} mailbox(es); delete them first",
            row.name, in_use.mailboxes
        ));
    }
    if !store::delete(&state.db, &row.id, &caller.account_id).await? {
        return Err(ApiError::not_found("domain"));
    }
    Ok(Json(Deleted {
        ok: true,
        deleted: DeletedDomain { domain: row.name },
    }))
}
