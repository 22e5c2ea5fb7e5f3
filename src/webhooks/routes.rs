//! Webhooks and the event log over HTTP. Both are the account's: they need an
//! account-wide credential with the admin role (an endpoint receives every event of the
//! account, across its entities).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;

use super::model::{
    CreateWebhook, CreatedWebhook, DELIVERY_STATUSES, Delivery, DeliveryFilter, DeliveryList,
    EventFilter, EventList, RotatedSecret, TestAnswer, UpdateWebhook, Webhook, WebhookList,
    WebhookPage, WebhookUrl, new_secret, parse_description, parse_event_types, parse_type_filter,
};
use super::store::{self, Changes, NewWebhook, seal_context};
use crate::events::{self, NewEvent, TEST_TYPE};
use crate::http::{ApiError, Caller, ErrorBody, Json, Query};
use crate::identity::Role;
use crate::state::AppState;
use crate::store::{Timestamp, new_id};

/// How long a rotated-out secret keeps signing beside the new one.
const PREVIOUS_SECRET_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);
/// How many tests a webhook may be sent in `TEST_WINDOW`: each opens a connection to the
/// endpoint and writes an event, whatever the endpoint's concurrency cap.
const TESTS_PER_WINDOW: usize = 10;
const TEST_WINDOW: Duration = Duration::from_secs(60);

/// The limit of a list: 1 to 200, 50 when not given.
fn list_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        ));
    }
    Ok(limit)
}

/// A URL the destination policy lets the account save.
fn parse_url(state: &AppState, text: &str) -> Result<WebhookUrl, ApiError> {
    let url = WebhookUrl::parse(text).map_err(|e| ApiError::invalid("url", e))?;
    if !state
        .destination_policy
        .webhook_may_be_saved(url.address(), url.port(), url.is_https())
    {
        return Err(ApiError::invalid(
            "url",
            format!(
                "url may not be used: {}",
                crate::mail::destination::WEBHOOK_RULE
            ),
        ));
    }
    Ok(url)
}

fn not_found() -> ApiError {
    ApiError::not_found("webhook")
}

async fn webhook_of(state: &AppState, caller: &Caller, id: &str) -> Result<Webhook, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    store::get(&mut conn, &caller.account_id, id, state.db.now())
        .await?
        .ok_or_else(not_found)
}

/// Add an endpoint: the account's events of the types listed are POSTed to it, signed
/// with the secret in the answer (shown only here).
#[utoipa::path(post, path = "/v2/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, description = "Added; `secret` is shown only now", body = CreatedWebhook),
              (status = 409, description = "The account has as many webhooks as it may", body = ErrorBody)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    caller.require_account(Role::Admin)?;
    let url = parse_url(&state, &body.url)?;
    let events = parse_event_types(&body.events).map_err(|e| ApiError::invalid("events", e))?;
    let description = parse_description(body.description.as_deref())
        .map_err(|e| ApiError::invalid("description", e))?;
    let id = new_id("wh");
    let secret = new_secret();
    let sealed_secret = state.master_key.seal(secret.as_bytes(), &seal_context(&id));
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    store::lock_account(&mut tx, state.db.engine, &caller.account_id).await?;
    let limit = state.settings.webhooks_per_account;
    let count = store::count(&mut tx, &caller.account_id).await?;
    if limit > 0 && u64::try_from(count).unwrap_or(0) >= limit {
        return Err(ApiError::conflict(
            "webhook_limit_reached",
            format!(
                "the account has {limit} webhooks, as many as it may; delete one \
                 (DELETE /v2/webhooks/{{id}}) to add another"
            ),
        ));
    }
    let new = NewWebhook {
        id: &id,
        account_id: &caller.account_id,
        url: url.as_str(),
        description: description.as_deref(),
        events: &events,
        sealed_secret: &sealed_secret,
    };
    store::insert(&mut tx, &new, now).await?;
    let webhook = store::get(&mut tx, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// The account's webhooks, oldest first.
#[utoipa::path(get, path = "/v2/webhooks", tag = "webhooks", params(WebhookPage),
    responses((status = 200, description = "A page of webhooks", body = WebhookList),
              (status = 422, description = "Invalid paging", body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<WebhookPage>,
) -> Result<Json<WebhookList>, ApiError> {
    caller.require_account(Role::Admin)?;
    let limit = list_limit(page.limit)?;
    let items = store::page(&state.db, &caller.account_id, page.after.as_deref(), limit)
        .await?
        .ok_or_else(|| ApiError::invalid("after", "after is not one of the account's webhooks"))?;
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|w| w.id.clone()))
        .flatten();
    Ok(Json(WebhookList {
        items,
        limit,
        next_after,
    }))
}

/// One webhook (never its secret).
#[utoipa::path(get, path = "/v2/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses((status = 200, description = "The webhook", body = Webhook)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require_account(Role::Admin)?;
    webhook_of(&state, &caller, &id).await.map(Json)
}

/// Change a webhook's URL, event types, description, or turn it off and on. Turning it on
/// starts its failure count again.
#[utoipa::path(patch, path = "/v2/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook,
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses((status = 200, description = "The webhook as changed", body = Webhook)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateWebhook>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require_account(Role::Admin)?;
    // Another account's webhook is not found, whatever the body holds.
    webhook_of(&state, &caller, &id).await?;
    let url = body
        .url
        .as_deref()
        .map(|text| parse_url(&state, text))
        .transpose()?;
    let events = body
        .events
        .as_deref()
        .map(parse_event_types)
        .transpose()
        .map_err(|e| ApiError::invalid("events", e))?;
    let description = body
        .description
        .as_ref()
        .map(|given| parse_description(given.as_deref()))
        .transpose()
        .map_err(|e| ApiError::invalid("description", e))?;
    let changes = Changes {
        url: url.as_ref().map(WebhookUrl::as_str),
        events: events.as_deref(),
        enabled: body.enabled,
        description: description.as_ref().map(Option::as_deref),
    };
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    if !store::update(&mut tx, &caller.account_id, &id, &changes, now).await? {
        return Err(not_found());
    }
    let webhook = store::get(&mut tx, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    // Re-enabled, its waiting deliveries are due.
    state.wake_webhooks();
    Ok(Json(webhook))
}

/// Delete a webhook: nothing more is sent to it, and its deliveries go with it.
#[utoipa::path(delete, path = "/v2/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_account(Role::Admin)?;
    if !store::delete(&state.db, &caller.account_id, &id).await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret, shown only here. The previous one keeps signing beside it for
/// 24 hours, so receivers can be moved to the new one without losing a delivery; until
/// then another rotation is refused, as it would end that overlap at once.
#[utoipa::path(post, path = "/v2/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses((status = 200, description = "The new secret, shown only now", body = RotatedSecret),
              (status = 409, description = "`rotation_in_progress`: the previous secret still signs", body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RotatedSecret>, ApiError> {
    caller.require_account(Role::Admin)?;
    let secret = new_secret();
    let sealed_secret = state.master_key.seal(secret.as_bytes(), &seal_context(&id));
    let now = state.db.now();
    let until = Timestamp(now.0 + PREVIOUS_SECRET_OVERLAP.as_millis() as i64);
    let mut tx = state.db.begin().await?;
    let webhook = store::get_locked(&mut tx, state.db.engine, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    if let Some(overlap_ends) = webhook.previous_secret_expires_at {
        return Err(ApiError::conflict(
            "rotation_in_progress",
            format!(
                "the secret replaced by the last rotation still signs until {}: rotate again \
                 after that, once receivers use the current one. To stop a leaked secret at \
                 once, delete the webhook and create it again",
                overlap_ends.rfc3339()
            ),
        ));
    }
    if !store::rotate_secret(&mut tx, &caller.account_id, &id, &sealed_secret, until, now).await? {
        return Err(not_found());
    }
    let webhook = store::get(&mut tx, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    Ok(Json(RotatedSecret { webhook, secret }))
}

/// Send a `webhook.test` event to this endpoint now (even when it is disabled, to check
/// it before turning it on again) and answer what it replied. One test at a time, ten a
/// minute, so that tests cannot flood an endpoint nor the event log.
#[utoipa::path(post, path = "/v2/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses((status = 200, description = "Sent; `outcome` says what the endpoint replied, or why it could not be reached", body = TestAnswer),
              (status = 409, description = "`test_in_progress`: another test of this webhook has not been answered yet", body = ErrorBody),
              (status = 429, description = "`rate_limited`: ten tests in the last minute; `Retry-After` says when the next may go", body = ErrorBody)))]
pub async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TestAnswer>, ApiError> {
    caller.require_account(Role::Admin)?;
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    // Counted in the transaction that writes the test, the webhook held: concurrent tests
    // take turns and each sees those before it.
    store::get_locked(&mut tx, state.db.engine, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    if store::test_under_way(&mut tx, &id).await? {
        return Err(ApiError::conflict(
            "test_in_progress",
            format!(
                "a test of this webhook is under way; send the next once it has answered \
                 (an endpoint has {} seconds to)",
                super::delivery::TIMEOUT.as_secs()
            ),
        ));
    }
    let window = TEST_WINDOW.as_millis() as i64;
    let recent =
        store::tests_since(&mut tx, &caller.account_id, &id, Timestamp(now.0 - window)).await?;
    if recent.len() >= TESTS_PER_WINDOW {
        // The next may go when enough of these have left the window.
        let leaves_last = recent[recent.len() - TESTS_PER_WINDOW];
        return Err(ApiError::too_many(
            "rate_limited",
            format!(
                "a webhook may be tested {TESTS_PER_WINDOW} times a minute; try again after \
                 Retry-After seconds"
            ),
            leaves_last + window - now.0,
        ));
    }
    let data = serde_json::json!({
        "webhook_id": id,
        "message": "A test event from mailroom: this endpoint receives the account's events.",
    });
    let event = NewEvent::about(&caller.account_id, None, TEST_TYPE, &id, &data)
        .map_err(anyhow::Error::from)?;
    let event_id = events::record(&mut tx, event, now).await?;
    let delivery_id = events::queue_delivery(&mut tx, &id, &event_id, &id, now).await?;
    tx.commit().await?;
    let outcome = super::delivery::deliver_now(
        &state.db,
        &state.master_key,
        &state.destination_policy,
        &id,
        &delivery_id,
    )
    .await?;
    Ok(Json(TestAnswer {
        delivery_id,
        event_id,
        outcome,
    }))
}

/// A webhook's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/v2/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)"), DeliveryFilter),
    responses((status = 200, description = "A page of deliveries", body = DeliveryList),
              (status = 422, description = "Invalid filter or paging", body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<DeliveryFilter>,
) -> Result<Json<DeliveryList>, ApiError> {
    caller.require_account(Role::Admin)?;
    webhook_of(&state, &caller, &id).await?;
    let limit = list_limit(query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(status) = status
        && !DELIVERY_STATUSES.contains(&status)
    {
        return Err(ApiError::invalid(
            "status",
            format!("status is one of {}", DELIVERY_STATUSES.join(", ")),
        ));
    }
    let after = query
        .after
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let filter = store::DeliveryFilter {
        webhook_id: &id,
        status,
        after,
        limit,
    };
    let items = store::deliveries(&state.db, &filter)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("after", "after is not one of this webhook's deliveries")
        })?;
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeliveryList {
        items,
        limit,
        next_after,
    }))
}

/// Deliver a delivery's event again to the same endpoint, as a new delivery. The event
/// keeps its id (the `webhook-id` header), so a receiver that had it can tell. While a
/// delivery of the event to the endpoint is not final, that one is answered (and tried at
/// once if it waits for a later try): one event's replays are never more than one job.
#[utoipa::path(post, path = "/v2/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)"),
           ("delivery_id" = String, Path, description = "The delivery's id (`whd_…`)")),
    responses((status = 202, description = "Queued as a new delivery, or the delivery of the same event still under way", body = Delivery)))]
pub async fn replay_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    caller.require_account(Role::Admin)?;
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    // Held, so that concurrent replays take turns and each sees the job of the one before.
    store::get_locked(&mut tx, state.db.engine, &caller.account_id, &id, now)
        .await?
        .ok_or_else(not_found)?;
    let (event_id, object_key) = store::delivered_event(&mut tx, &id, &delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    if events::get(&mut tx, &event_id).await?.is_none() {
        return Err(ApiError::not_found("event"));
    }
    let replayed = match store::hurry_in_flight(&mut tx, &id, &event_id, now).await? {
        Some(in_flight) => in_flight,
        None => events::queue_delivery(&mut tx, &id, &event_id, &object_key, now).await?,
    };
    tx.commit().await?;
    state.wake_webhooks();
    let delivery = store::delivery(&state.db, &id, &replayed)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

/// The account's event log, oldest first: the payloads its webhooks receive, kept for
/// the retention period (`MAILROOM_EVENT_RETENTION_DAYS`).
#[utoipa::path(get, path = "/v2/events", tag = "events", params(EventFilter),
    responses((status = 200, description = "A page of events", body = EventList),
              (status = 422, description = "Invalid filter or paging; `after` that is not an event of the account's log (it may have passed the retention period)", body = ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<EventList>, ApiError> {
    caller.require_account(Role::Admin)?;
    let mut types = Vec::new();
    let mut after = None;
    let mut limit = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "type" => types.push(value.into_owned()),
            "after" => after = Some(value.trim().to_string()).filter(|a| !a.is_empty()),
            "limit" => {
                limit = Some(value.trim().parse::<i64>().map_err(|_| {
                    ApiError::invalid("limit", "limit must be a number between 1 and 200")
                })?)
            }
            _ => {}
        }
    }
    let limit = list_limit(limit)?;
    let types = parse_type_filter(&types).map_err(|e| ApiError::invalid("type", e))?;
    let filter = events::Filter {
        account_id: &caller.account_id,
        types: &types,
        after: after.as_deref(),
        limit,
    };
    let items = events::list(&state.db, &filter).await?.ok_or_else(|| {
        ApiError::invalid(
            "after",
            "after is not an event of the account's log (it may have passed the retention period)",
        )
    })?;
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(EventList {
        items,
        limit,
        next_after,
    }))
}
