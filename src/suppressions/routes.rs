//! The suppression list over HTTP. It is the account's: an account-wide credential reads
//! it (viewer) and changes it (editor).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::store::{self, Suppression};
use crate::http::{ApiError, Caller, ErrorBody, Json, Query, on_unique};
use crate::identity::Role;
use crate::mail::outbox::suppression_key;
use crate::state::AppState;
use crate::types::EmailAddress;
use crate::types::text::check_text;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionPage {
    /// The `next_after` of the previous page: only addresses after it.
    pub after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionList {
    pub items: Vec<Suppression>,
    pub limit: i64,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    pub email: String,
    /// A note of why, up to 256 characters; shown as `detail`.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
    pub email: String,
}

fn key_of(email: &str, param: &str) -> Result<String, ApiError> {
    EmailAddress::parse(email)
        .map(|address| suppression_key(&address))
        .map_err(|e| ApiError::invalid(param, e))
}

/// The account's suppression list, by address.
#[utoipa::path(get, path = "/v2/suppressions", tag = "suppressions",
    params(SuppressionPage),
    responses((status = 200, description = "A page of the list", body = SuppressionList),
              (status = 422, description = "Invalid paging", body = ErrorBody)))]
pub async fn list_suppressions(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<SuppressionPage>,
) -> Result<Json<SuppressionList>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        ));
    }
    let items = store::page(&state.db, &caller.account_id, page.after.as_deref(), limit).await?;
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|s| s.email.clone()))
        .flatten();
    Ok(Json(SuppressionList {
        items,
        limit,
        next_after,
    }))
}

/// Add an address: the account's mail never goes to it (its recipients become
/// `suppressed`).
#[utoipa::path(post, path = "/v2/suppressions", tag = "suppressions",
    request_body = AddSuppression,
    responses((status = 201, description = "Added", body = Suppression),
              (status = 409, description = "On the list already, or the list is full", body = ErrorBody)))]
pub async fn add_suppression(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<AddSuppression>,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    caller.require_account(Role::Editor)?;
    let email = key_of(&body.email, "email")?;
    let detail = match body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        Some(reason) if reason.chars().count() > 256 => {
            return Err(ApiError::invalid(
                "reason",
                "reason must be at most 256 characters",
            ));
        }
        Some(reason) => {
            check_text(reason).map_err(|e| ApiError::invalid("reason", format!("reason {e}")))?;
            Some(reason)
        }
        None => None,
    };
    let mut tx = state.db.begin().await?;
    let limit = state.settings.suppressions_per_account;
    if limit > 0 {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if store::count(&mut tx, &caller.account_id, limit).await? >= limit {
            return Err(ApiError::conflict(
                "suppression_limit_reached",
                format!(
                    "the suppression list has {limit} addresses, as many as it may; delete some \
                     (DELETE /v2/suppressions/{{email}}) to add others"
                ),
            ));
        }
    }
    store::insert(&mut tx, &caller.account_id, &email, detail, state.db.now())
        .await
        .map_err(on_unique(|| {
            ApiError::conflict(
                "already_suppressed",
                format!("{email} is on the list already"),
            )
            .with_param("email")
        }))?;
    tx.commit().await?;
    let added = store::get(&state.db, &caller.account_id, &email)
        .await?
        .ok_or_else(|| ApiError::not_found("suppression"))?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Remove an address: mail may go to it again.
#[utoipa::path(delete, path = "/v2/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "The address")),
    responses((status = 200, description = "Removed", body = Deleted)))]
pub async fn delete_suppression(
    State(state): State<AppState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    caller.require_account(Role::Editor)?;
    let email = EmailAddress::parse(&email)
        .map(|address| suppression_key(&address))
        .map_err(|_| ApiError::not_found("suppression"))?;
    if !store::delete(&state.db, &caller.account_id, &email).await? {
        return Err(ApiError::not_found("suppression"));
    }
    Ok(Json(Deleted {
        deleted: true,
        email,
    }))
}
