//! The delivery log: every email of the account, its status and attempts, never its body.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{ApiError, Caller, ErrorBody, Json, Page, Query};
use crate::identity::Role;
use crate::mail::outbox::{self, MessageLog, MessageStatus};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_messages))
        .routes(routes!(get_message))
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    pub items: Vec<MessageLog>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageFilter {
    /// Only messages with this status.
    #[param(inline)]
    pub status: Option<MessageStatus>,
}

/// The account's delivery log, newest first.
#[utoipa::path(get, path = "/v2/messages", tag = "messages",
    params(Page, MessageFilter),
    responses((status = 200, description = "A page of the delivery log", body = MessageList),
              (status = 422, description = "Invalid paging or filter", body = ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(filter): Query<MessageFilter>,
) -> Result<Json<MessageList>, ApiError> {
    caller.require_account(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let items = outbox::list(
        &state.db,
        &caller.account_id,
        filter.status,
        (limit, offset),
    )
    .await?;
    Ok(Json(MessageList {
        items,
        limit,
        offset,
    }))
}

/// One message of the delivery log.
#[utoipa::path(get, path = "/v2/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The message's id")),
    responses((status = 200, description = "The message", body = MessageLog)))]
pub async fn get_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageLog>, ApiError> {
    caller.require_account(Role::Viewer)?;
    outbox::get(&state.db, &id, &caller.account_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("message"))
}
