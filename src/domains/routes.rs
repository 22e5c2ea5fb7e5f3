use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{DOMAIN_COLUMNS, Domain, DomainName, DomainRow, DomainStatus, check, render};
use crate::http::{ApiError, AppState, Caller, Json, Page, Query};
use crate::tenancy::Role;

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

async fn envelope(state: &AppState, row: DomainRow) -> Result<Json<DomainEnvelope>, ApiError> {
    let domain = render(&state.db, &state.settings, vec![row])
        .await?
        .remove(0);
    Ok(Json(DomainEnvelope { domain }))
}

/// The caller's domain named in the path; a name that cannot be a domain names nothing.
async fn find_domain(state: &AppState, caller: &Caller, name: &str) -> Result<DomainRow, ApiError> {
    let name = DomainName::parse(name).map_err(|_| ApiError::not_found("domain"))?;
    super::find(&state.db, &caller.account_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))
}

/// Add a domain. It starts `pending` with three DKIM tokens whose CNAMEs prove it.
#[utoipa::path(post, path = "/v2/domains", tag = "domains",
    request_body = CreateDomain,
    responses((status = 201, description = "The new domain and the records to publish", body = DomainEnvelope),
              (status = 409, description = "Already added, or active in another account", body = crate::http::ErrorBody)))]
pub async fn create_domain(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateDomain>,
) -> Result<(StatusCode, Json<DomainEnvelope>), ApiError> {
    caller.require(Role::Editor)?;
    let name = DomainName::parse(&body.domain).map_err(|e| ApiError::invalid("domain", e))?;
    if super::find(&state.db, &caller.account_id, &name)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(
            "domain_exists",
            format!("{name} is already added"),
        ));
    }
    let row = super::add_domain(&state, &caller.account_id, &name).await?;
    let Json(created) = envelope(&state, row).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List the account's domains, by name.
#[utoipa::path(get, path = "/v2/domains", tag = "domains",
    params(Page, DomainFilter),
    responses((status = 200, description = "A page of domains", body = DomainList),
              (status = 422, description = "Invalid paging or filter", body = crate::http::ErrorBody)))]
pub async fn list_domains(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(filter): Query<DomainFilter>,
) -> Result<Json<DomainList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let rows: Vec<DomainRow> = sqlx::query_as(&format!(
        "SELECT {DOMAIN_COLUMNS} FROM domains WHERE account_id = $1 AND ($2 IS NULL OR status = $2) \
         ORDER BY name LIMIT $3 OFFSET $4"
    ))
    .bind(&caller.account_id)
    .bind(filter.status.map(DomainStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
    .await?;
    let items = render(&state.db, &state.settings, rows).await?;
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
    caller.require(Role::Viewer)?;
    let row = find_domain(&state, &caller, &name).await?;
    envelope(&state, row).await
}

/// Check the domain's DNS now and answer the result.
#[utoipa::path(post, path = "/v2/domains/{domain}/verify", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    responses((status = 200, description = "The domain after the check", body = DomainEnvelope),
              (status = 409, description = "Suspended by the operator", body = crate::http::ErrorBody)))]
pub async fn verify_domain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DomainEnvelope>, ApiError> {
    caller.require(Role::Editor)?;
    let row = find_domain(&state, &caller, &name).await?;
    if row.status == DomainStatus::Suspended {
        return Err(ApiError::conflict(
            "domain_suspended",
            format!("{} is suspended by the operator", row.name),
        ));
    }
    if check::lease_one(&state, &row.id).await? {
        check::check_domain(&state, &row.id).await?;
    }
    let row = find_domain(&state, &caller, &row.name).await?;
    envelope(&state, row).await
}

/// Remove a domain with its keys and records. Refused while something still uses it.
#[utoipa::path(delete, path = "/v2/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "The domain name")),
    responses((status = 200, description = "Removed", body = Deleted),
              (status = 409, description = "Still used by mailboxes or SMTP settings", body = crate::http::ErrorBody)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(Role::Editor)?;
    let row = find_domain(&state, &caller, &name).await?;
    let relays: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM smtp_settings WHERE domain_id = $1")
        .bind(&row.id)
        .fetch_one(&state.db.pool)
        .await?;
    if relays > 0 {
        return Err(ApiError::conflict(
            "domain_in_use",
            format!(
                "{} still has SMTP settings; remove them first (DELETE /api/v2/email/settings?domain={})",
                row.name, row.name
            ),
        ));
    }
    let senders: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sender_addresses WHERE domain_id = $1")
            .bind(&row.id)
            .fetch_one(&state.db.pool)
            .await?;
    if senders > 0 {
        return Err(ApiError::conflict(
            "domain_in_use",
            format!(
                "{} is the domain of a sender address; delete that first (DELETE /v1/email-address)",
                row.name
            ),
        ));
    }
    let mailboxes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE domain_id = $1")
        .bind(&row.id)
        .fetch_one(&state.db.pool)
        .await?;
    if mailboxes > 0 {
        return Err(ApiError::conflict(
            "domain_in_use",
            format!(
                "{} still has {mailboxes} mailbox(es); delete them first",
                row.name
            ),
        ));
    }
    let deleted = sqlx::query("DELETE FROM domains WHERE id = $1 AND account_id = $2")
        .bind(&row.id)
        .bind(&caller.account_id)
        .execute(&state.db.pool)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found("domain"));
    }
    Ok(Json(Deleted {
        ok: true,
        deleted: DeletedDomain { domain: row.name },
    }))
}
