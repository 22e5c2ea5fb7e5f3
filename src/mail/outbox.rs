//! The outbox: every email is a row written in the transaction of the change that causes
//! it, delivered later by the worker. The delivery log (never the bodies) is in the API.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};

use super::address::EmailAddress;
use super::templates::Rendered;
use crate::http::{ApiError, AppState, Caller, Json, Page, Query};
use crate::store::crypto::MasterKey;
use crate::store::{Timestamp, new_id};
use crate::tenancy::Role;

/// An email to queue.
pub struct Outgoing<'a> {
    /// The account the email is on behalf of; `None` for the operator's own mail.
    pub account_id: Option<&'a str>,
    pub from: &'a EmailAddress,
    pub to: &'a EmailAddress,
    pub email: Rendered,
}

/// The sealed part of a queued email: it can carry one-time tokens.
#[derive(Serialize, Deserialize)]
pub struct Body {
    pub text: String,
    pub html: String,
}

pub fn seal_context(id: &str) -> String {
    format!("outbox:{id}")
}

/// Queues an email on `conn`, inside the caller's transaction; answers its id. Call
/// `AppState::wake_outbox` after the commit so that the worker sends it at once.
pub async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    master_key: &MasterKey,
    outgoing: Outgoing<'_>,
) -> anyhow::Result<String> {
    let id = new_id("msg");
    let now = Timestamp::now().0;
    let message_id = format!("<{}@{}>", &id[4..], outgoing.from.domain());
    let body = serde_json::to_vec(&Body {
        text: outgoing.email.text,
        html: outgoing.email.html,
    })?;
    sqlx::query(
        "INSERT INTO outbox (id, account_id, kind, from_address, to_address, subject, body, message_id, \
         status, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9, $9, $9)",
    )
    .bind(&id)
    .bind(outgoing.account_id)
    .bind(outgoing.email.kind.as_str())
    .bind(outgoing.from.to_string())
    .bind(outgoing.to.to_string())
    .bind(&outgoing.email.subject)
    .bind(master_key.seal(&body, &seal_context(&id)))
    .bind(&message_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for its (next) attempt.
    Queued,
    /// An attempt is under way.
    Sending,
    Sent,
    /// Refused for good, or out of attempts.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
        }
    }
}

/// A message in the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageLog {
    pub id: String,
    /// What caused the email, such as `sender_verification` or `invitation`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub status: String,
    pub attempts: i64,
    /// The reason of the last failed attempt, in the server's words.
    pub last_error: Option<String>,
    /// The `Message-ID` header, the same on every attempt.
    pub message_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub next_attempt_at: Option<Timestamp>,
    pub sent_at: Option<Timestamp>,
}

const LOG_COLUMNS: &str = "id, kind, from_address, to_address, subject, status, attempts, last_error, \
                           message_id, created_at, updated_at, next_attempt_at, sent_at";

impl sqlx::FromRow<'_, AnyRow> for MessageLog {
    fn from_row(row: &AnyRow) -> sqlx::Result<MessageLog> {
        let status: String = row.try_get("status")?;
        Ok(MessageLog {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            from: row.try_get("from_address")?,
            to: row.try_get("to_address")?,
            subject: row.try_get("subject")?,
            next_attempt_at: match status.as_str() {
                "queued" => row
                    .try_get::<Option<i64>, _>("next_attempt_at")?
                    .map(Timestamp),
                _ => None,
            },
            status,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            message_id: row.try_get("message_id")?,
            created_at: Timestamp(row.try_get("created_at")?),
            updated_at: Timestamp(row.try_get("updated_at")?),
            sent_at: row.try_get::<Option<i64>, _>("sent_at")?.map(Timestamp),
        })
    }
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
              (status = 422, description = "Invalid paging or filter", body = crate::http::ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(filter): Query<MessageFilter>,
) -> Result<Json<MessageList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, offset) = page.parse()?;
    let items = sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM outbox WHERE account_id = $1 AND ($2 IS NULL OR status = $2) \
         ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
    ))
    .bind(&caller.account_id)
    .bind(filter.status.map(MessageStatus::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
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
    caller.require(Role::Viewer)?;
    sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM outbox WHERE id = $1 AND account_id = $2"
    ))
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_optional(&state.db.pool)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found("message"))
}
