//! The sending API over HTTP: send one email or a batch (with `Idempotency-Key`), read
//! them, cancel a scheduled one.

use axum::body::{Bytes, HttpBody as _};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::model::*;
use super::store::{self, Email, Filter, StoredAnswer, Visible};
use crate::domains::model::DomainStatus;
use crate::http::{ApiError, Caller, ErrorBody, Json, Query, parse_json_body};
use crate::identity::Role;
use crate::mail::outbox::{self, Cancel, Outgoing, Queued};
use crate::state::AppState;
use crate::store::Timestamp;
use crate::types::EmailAddress;

/// How long an `Idempotency-Key`'s answer is kept.
const KEY_LIFETIME_MS: i64 = 24 * 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// Where an email is sent from: the account, and the entity when the request acts in one
/// (`x-entity-id`, or the entity a limited credential belongs to). An account-wide key
/// without `x-entity-id` sends as the account itself.
struct Sending {
    account_id: String,
    entity_id: Option<String>,
}

fn sending(caller: &Caller) -> Result<Sending, ApiError> {
    caller.require(Role::Editor)?;
    Ok(Sending {
        account_id: caller.account_id.clone(),
        entity_id: acting_entity(caller).map(str::to_string),
    })
}

fn acting_entity(caller: &Caller) -> Option<&str> {
    caller
        .requested_entity
        .as_deref()
        .or(caller.scoped_entity.as_deref())
}

/// The emails a caller may read: a limited credential (or a request naming an entity)
/// sees only that entity's.
fn visible(caller: &Caller) -> Visible<'_> {
    Visible {
        account_id: &caller.account_id,
        entity_id: acting_entity(caller),
    }
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
        )
        .with_param("Idempotency-Key")
    };
    let value = value.to_str().map_err(|_| invalid())?.trim();
    if value.is_empty()
        || value.len() > 255
        || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err(invalid());
    }
    Ok(Some(value.to_string()))
}

/// The body as read, or 413 over these routes' limit.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                format!(
                    "the request body is larger than the limit of {} bytes (15 MB) for sending email",
                    super::MAX_EMAIL_BODY_BYTES
                ),
            )
        } else {
            ApiError::new(status, "unreadable_body", rejection.body_text())
        }
    })
}

/// A turn to read a large body (or one of unknown length), taken before it is read; `None`
/// for a small one. When every turn is taken the body is read and dropped as it comes,
/// never held, so that the client sees the 503 (with `Retry-After`) rather than a
/// connection closed under its upload.
/// What both sending routes read first: the `Idempotency-Key`, and the body parsed, in
/// its turn among large ones (the turn is held while the parsed request is).
async fn read_sent<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> Result<(Option<OwnedSemaphorePermit>, Option<String>, T), ApiError> {
    let headers = request.headers().clone();
    let key = idempotency_key(&headers)?;
    let (turn, request) = large_body_turn(state, request).await?;
    let body = read_body(Bytes::from_request(request, state).await)?;
    let parsed = parse_json_body(&headers, &body)?;
    Ok((turn, key, parsed))
}

async fn large_body_turn(
    state: &AppState,
    request: Request,
) -> Result<(Option<OwnedSemaphorePermit>, Request), ApiError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|length| length <= super::LARGE_BODY_BYTES) {
        return Ok((None, request));
    }
    if let Ok(turn) = state.large_bodies.clone().try_acquire_owned() {
        return Ok((Some(turn), request));
    }
    let mut body = request.into_body();
    let mut read = 0usize;
    while read <= super::MAX_EMAIL_BODY_BYTES {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
            _ => break,
        }
    }
    Err(ApiError::unavailable(
        "busy",
        format!(
            "this server is reading {} other emails over 1 MB; try again after Retry-After seconds",
            super::LARGE_BODIES_AT_ONCE
        ),
        1,
    ))
}

/// Feeds what is written into a hash, so a request is hashed without a copy of it.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What makes two requests with one key the same request: the route, the entity acted in
/// and the request as parsed, so whitespace and the order of fields do not count (the
/// typed request writes its fields in one order, and its maps sorted).
fn request_hasher(route: &str, sending: &Sending) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    hasher.update(sending.entity_id.as_deref().unwrap_or("").as_bytes());
    hasher.update(b"\n");
    hasher
}

fn hash_request(hasher: &mut Sha256, request: &SendEmail) {
    // Writing into a hash cannot fail, nor can serialising plain strings and maps.
    let _ = serde_json::to_writer(HashWriter(hasher), request);
    hasher.update(b"\n");
}

/// The stored answer again, or 409 when the key came with another request.
fn replay(answer: StoredAnswer, hash: &str) -> Result<Response, ApiError> {
    if answer.request_hash != hash {
        return Err(ApiError::conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was used in the last 24 hours with another request; use a new key \
             for a new email",
        )
        .with_param("Idempotency-Key"));
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.response,
    )
        .into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

/// Counts `emails` sends against the account's rate before any of them is made: 429 with
/// `Retry-After` (to the next minute) over the limit, and the refused ones are not counted.
async fn count_sends(state: &AppState, account_id: &str, emails: usize) -> Result<(), ApiError> {
    let limit = state.settings.send_rate_per_minute;
    if limit == 0 {
        return Ok(());
    }
    let now = state.db.now();
    let minute = now.0.div_euclid(MINUTE_MS);
    let emails = emails as i64;
    let sent = store::count_sends(&state.db, account_id, minute, emails).await?;
    if sent > limit as i64 {
        store::uncount_sends(&state.db, account_id, minute, emails).await?;
        return Err(ApiError::too_many(
            "send_rate_exceeded",
            format!(
                "this account may send {limit} emails a minute; try again after Retry-After seconds"
            ),
            (minute + 1) * MINUTE_MS - now.0,
        ));
    }
    Ok(())
}

/// Checks that the account (in the entity) may send as `from`: a sender address of the
/// account or of the entity with its email and domain verified, or any address on a
/// domain active in the account. Else 422 saying what is missing.
async fn authorise_from(
    state: &AppState,
    sending: &Sending,
    from: &EmailAddress,
    param: &str,
) -> Result<(), ApiError> {
    let refuse = |code: &'static str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_param(param)
    };
    let domain = crate::domains::store::find(&state.db, &sending.account_id, from.domain()).await?;
    if domain
        .as_ref()
        .is_some_and(|d| d.status == DomainStatus::Active)
    {
        return Ok(());
    }
    let senders =
        crate::senders::store::with_email(&state.db, &sending.account_id, &from.to_string())
            .await?
            .into_iter()
            .filter(|s| match (&sending.entity_id, &s.entity_id) {
                // An entity sends as its own sender or the account's, never a sibling's.
                (Some(acting), Some(owner)) => acting == owner,
                _ => true,
            })
            .collect::<Vec<_>>();
    if senders.iter().any(|s| s.fully_verified()) {
        return Ok(());
    }
    if let Some(sender) = senders.first() {
        let missing = if sender.verified_at.is_none() {
            format!(
                "{from} is a sender address of this account but its email is not verified yet: open the \
                 link or enter the code of its verification email"
            )
        } else {
            format!(
                "{from} is a verified sender address, but its domain {} is {}: publish its DNS records \
                 and verify it (POST /v2/domains/{}/verify)",
                sender.domain,
                sender.domain_status.as_str(),
                sender.domain
            )
        };
        return Err(refuse("sender_not_verified", missing));
    }
    if let Some(domain) = domain {
        return Err(refuse(
            "domain_not_active",
            format!(
                "{} is {} in this account, not active: publish its DNS records and verify it \
                 (POST /v2/domains/{}/verify), or send from a verified sender address",
                domain.name,
                domain.status.as_str(),
                domain.name
            ),
        ));
    }
    Err(refuse(
        "sender_not_allowed",
        format!(
            "{from} is neither a verified sender address of this account nor an address on one of its \
             active domains: add the domain (POST /v2/domains) or the sender address (POST /v1/email-address)"
        ),
    ))
}

/// Parses one email and decides its From; answers what to queue.
async fn prepare(
    state: &AppState,
    sending: &Sending,
    request: &SendEmail,
    prefix: &str,
    now: Timestamp,
) -> Result<Outgoing, ApiError> {
    let draft = request.parse(now, prefix)?;
    let param = format!("{prefix}from");
    let from = match draft.from {
        Some(from) => {
            authorise_from(state, sending, &from.address, &param).await?;
            from
        }
        None => {
            let address = crate::senders::effective_from(
                state,
                &sending.account_id,
                sending.entity_id.as_deref(),
            )
            .await?;
            authorise_from(state, sending, &address, &param).await.map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "missing_field",
                    "give from: this account (or entity) has no verified sender address to send from by \
                     default",
                )
                .with_param(param.clone())
            })?;
            Named {
                name: None,
                address,
            }
        }
    };
    Ok(Outgoing {
        account_id: Some(sending.account_id.clone()),
        entity_id: sending.entity_id.clone(),
        kind: outbox::API_KIND,
        from: from.address,
        from_name: from.name,
        reply_to: draft.reply_to.into_iter().map(|r| r.address).collect(),
        recipients: draft
            .recipients
            .into_iter()
            .map(|(named, kind)| outbox::Recipient {
                address: named.address,
                name: named.name,
                kind,
            })
            .collect(),
        subject: draft.subject,
        text: draft.text,
        html: draft.html,
        attachments: draft
            .attachments
            .into_iter()
            .map(|a| outbox::Attachment {
                filename: a.filename,
                content_type: a.content_type,
                content_id: a.content_id,
                content: a.bytes,
            })
            .collect(),
        headers: draft.headers,
        tags: draft.tags,
        scheduled_at: draft.scheduled_at,
    })
}

/// Queues `emails` in one transaction, with the key's answer (made by `answer` from what
/// was queued) when a key was given. A twin request that committed first wins: its
/// answer is given instead (or 409 when it was another request).
async fn queue_all(
    state: &AppState,
    account_id: &str,
    emails: Vec<Outgoing>,
    key: Option<(&str, &str)>,
    answer: impl FnOnce(Vec<Queued>) -> (StatusCode, String),
) -> Result<Response, ApiError> {
    let now = state.db.now();
    let mut tx = state.db.begin().await?;
    let mut queued = Vec::with_capacity(emails.len());
    for email in emails {
        queued.push(outbox::enqueue(&mut tx, &state.master_key, email, now).await?);
    }
    // Checked with these emails written: the count includes them, and the written row
    // keeps a concurrent request of the account waiting until this one is decided.
    let limit = state.settings.held_bytes_per_account;
    if limit > 0 && !queued.is_empty() {
        let held = store::held_bytes(&mut tx, account_id).await?;
        if held > i64::try_from(limit).unwrap_or(i64::MAX) {
            drop(tx);
            return Err(ApiError::too_many(
                "held_bytes_exceeded",
                format!(
                    "this account's scheduled and waiting emails hold {limit} bytes of bodies at most; \
                     this would make {held}: wait until some are sent (or cancel scheduled ones)"
                ),
                60_000,
            ));
        }
    }
    let (status, body) = answer(queued);
    if let Some((key, hash)) = key {
        let stored = StoredAnswer {
            request_hash: hash.to_string(),
            status: status.as_u16(),
            response: body.clone(),
        };
        let expires = Timestamp(now.0 + KEY_LIFETIME_MS);
        if let Err(error) =
            store::store_answer(&mut tx, account_id, key, &stored, now, expires).await
        {
            drop(tx);
            if !crate::store::is_unique_violation(&error) {
                return Err(error.into());
            }
            return match store::find_answer(&state.db, account_id, key, now).await? {
                Some(first) => replay(first, hash),
                None => Err(ApiError::conflict(
                    "idempotency_key_in_use",
                    "another request with this Idempotency-Key is under way; try again",
                )),
            };
        }
    }
    tx.commit().await?;
    state.wake_outbox();
    state.wake_webhooks();
    // Expired keys and past minutes' counts are read past, not relied on being gone: once
    // a minute is enough to keep the tables small, and spares every send two DELETEs.
    static PRUNED_IN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let minute = now.0.div_euclid(MINUTE_MS);
    if PRUNED_IN.swap(minute, std::sync::atomic::Ordering::Relaxed) != minute
        && let Err(error) = store::prune(&state.db, now, minute).await
    {
        tracing::warn!(%error, "could not prune idempotency keys and send counts");
    }
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Send an email. Answers 202 once it is queued (or scheduled); `GET /v2/emails/{id}`
/// follows its delivery.
#[utoipa::path(post, path = "/v2/emails", tag = "emails", request_body = SendEmail,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Up to 255 characters: the same key with the same body within 24 hours answers the first response again and sends nothing new")),
    responses((status = 202, description = "Queued", body = Queued),
              (status = 409, description = "The Idempotency-Key was used with another request", body = ErrorBody),
              (status = 429, description = "Over the account's sending rate; see Retry-After", body = ErrorBody)))]
pub async fn send_email(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let sending = sending(&caller)?;
    let (_turn, key, request): (_, _, SendEmail) = read_sent(&state, request).await?;
    let mut hasher = request_hasher("POST /v2/emails", &sending);
    hash_request(&mut hasher, &request);
    let hash = hex::encode(hasher.finalize());
    let now = state.db.now();
    if let Some(key) = &key
        && let Some(answer) = store::find_answer(&state.db, &sending.account_id, key, now).await?
    {
        return replay(answer, &hash);
    }
    count_sends(&state, &sending.account_id, 1).await?;
    let email = prepare(&state, &sending, &request, "", now).await?;
    queue_all(
        &state,
        &sending.account_id,
        vec![email],
        key.as_deref().map(|k| (k, hash.as_str())),
        |mut queued| {
            let queued = queued.remove(0);
            let body = serde_json::to_string(&queued).unwrap_or_default();
            (StatusCode::ACCEPTED, body)
        },
    )
    .await
}

/// Send up to 100 emails. Each is checked on its own: the answer lists, in order, each
/// email as queued or why it was refused; the accepted ones are queued together.
#[utoipa::path(post, path = "/v2/emails/batch", tag = "emails", request_body = SendBatch,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "As for POST /v2/emails, for the whole batch")),
    responses((status = 202, description = "Each email queued, or its error", body = BatchAnswer),
              (status = 409, description = "The Idempotency-Key was used with another request", body = ErrorBody),
              (status = 429, description = "Over the account's sending rate; see Retry-After", body = ErrorBody)))]
pub async fn send_batch(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let sending = sending(&caller)?;
    let headers = request.headers().clone();
    let (_turn, key, batch): (_, _, SendBatch) = read_sent(&state, request).await?;
    if batch.emails.is_empty() {
        return Err(ApiError::invalid(
            "emails",
            format!("a batch has 1 to {MAX_BATCH} emails"),
        ));
    }
    // Each item parsed once; one that is not an email is hashed as it was sent.
    let mut hasher = request_hasher("POST /v2/emails/batch", &sending);
    let requests: Vec<Result<SendEmail, ApiError>> = batch
        .emails
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let parsed = parse_json_body::<SendEmail>(&headers, item.get().as_bytes());
            match &parsed {
                Ok(request) => hash_request(&mut hasher, request),
                Err(_) => {
                    hasher.update(item.get().as_bytes());
                    hasher.update(b"\n");
                }
            }
            parsed.map_err(|mut error| {
                error.param = Some(match error.param.take() {
                    Some(param) => format!("emails[{i}].{param}"),
                    None => format!("emails[{i}]"),
                });
                error
            })
        })
        .collect();
    drop(batch);
    let hash = hex::encode(hasher.finalize());
    let now = state.db.now();
    if let Some(key) = &key
        && let Some(answer) = store::find_answer(&state.db, &sending.account_id, key, now).await?
    {
        return replay(answer, &hash);
    }
    count_sends(&state, &sending.account_id, requests.len()).await?;
    let mut results: Vec<Result<(), ItemError>> = Vec::with_capacity(requests.len());
    let mut accepted = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let prefix = format!("emails[{i}].");
        let prepared = match request {
            Ok(request) => prepare(&state, &sending, &request, &prefix, now).await,
            Err(error) => Err(error),
        };
        match prepared {
            Ok(email) => {
                accepted.push(email);
                results.push(Ok(()));
            }
            Err(error) if error.status.is_server_error() => return Err(error),
            Err(error) => results.push(Err(error.into())),
        }
    }
    queue_all(
        &state,
        &sending.account_id,
        accepted,
        key.as_deref().map(|k| (k, hash.as_str())),
        |queued| {
            let mut queued = queued.into_iter();
            let data = results
                .into_iter()
                .map(|result| match result {
                    Ok(()) => BatchItem::Accepted(queued.next().expect("one queued per accepted")),
                    Err(error) => BatchItem::Refused { error },
                })
                .collect();
            let body = serde_json::to_string(&BatchAnswer { data }).unwrap_or_default();
            (StatusCode::ACCEPTED, body)
        },
    )
    .await
}

/// One email without its body: recipients with their status, attempts and last reply,
/// and its events.
#[utoipa::path(get, path = "/v2/emails/{id}", tag = "emails",
    params(("id" = String, Path, description = "The email's id (`em_…`)")),
    responses((status = 200, description = "The email", body = Email)))]
pub async fn get_email(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Email>, ApiError> {
    caller.require(Role::Viewer)?;
    store::get(&state.db, &visible(&caller), &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("email"))
}

/// The emails sent through the API, newest first, paged by position (`after`).
#[utoipa::path(get, path = "/v2/emails", tag = "emails",
    params(EmailFilter),
    responses((status = 200, description = "A page of emails", body = EmailList),
              (status = 422, description = "Invalid filter or paging", body = ErrorBody)))]
pub async fn list_emails(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<EmailFilter>,
) -> Result<Json<EmailList>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        ));
    }
    if query.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "after must be 0 or more"));
    }
    let given = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let status = given(&query.status);
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("status is one of {}", STATUSES.join(", ")),
        ));
    }
    let tag = match given(&query.tag) {
        Some(tag) => {
            let (key, value) = tag
                .split_once(':')
                .ok_or_else(|| ApiError::invalid("tag", "tag is key:value"))?;
            check_tag_key(key).map_err(|e| ApiError::invalid("tag", e))?;
            check_tag_value(value).map_err(|e| ApiError::invalid("tag", e))?;
            Some((key.to_string(), value.to_string()))
        }
        None => None,
    };
    let address = |name: &str, value: Option<String>| -> Result<Option<String>, ApiError> {
        value
            .map(|v| {
                EmailAddress::parse(&v)
                    .map(|a| a.to_string())
                    .map_err(|e| ApiError::invalid(name, e))
            })
            .transpose()
    };
    let filter = Filter {
        status,
        tag,
        to: address("to", given(&query.to))?,
        from: address("from", given(&query.from))?,
        before: query.after,
    };
    let items = store::page(&state.db, &visible(&caller), &filter, limit).await?;
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.position))
        .flatten();
    Ok(Json(EmailList {
        items,
        limit,
        next_after,
    }))
}

/// Cancel a scheduled email that is not being sent yet.
#[utoipa::path(post, path = "/v2/emails/{id}/cancel", tag = "emails",
    params(("id" = String, Path, description = "The email's id (`em_…`)")),
    responses((status = 200, description = "Cancelled", body = Email),
              (status = 409, description = "Not scheduled (sent, sending, or cancelled already)", body = ErrorBody)))]
pub async fn cancel_email(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Email>, ApiError> {
    caller.require(Role::Editor)?;
    let visible = visible(&caller);
    if store::get(&state.db, &visible, &id).await?.is_none() {
        return Err(ApiError::not_found("email"));
    }
    let mut tx = state.db.begin().await?;
    match outbox::cancel(&mut tx, &caller.account_id, &id, state.db.now()).await? {
        Cancel::Cancelled => tx.commit().await?,
        Cancel::NotFound => return Err(ApiError::not_found("email")),
        Cancel::NotScheduled(status) => {
            return Err(ApiError::conflict(
                "not_scheduled",
                format!(
                    "only a scheduled email that is not being sent can be cancelled; this one is {}",
                    status.as_str()
                ),
            ));
        }
    }
    store::get(&state.db, &visible, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("email"))
}
