//! The HTTP API: router assembly, shared state, middleware and the health endpoints.

mod auth;
mod error;
mod extract;
mod openapi;
pub mod pages;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Caller;
pub use error::{ApiError, ErrorBody};
pub use extract::{Json, Page, Query, parse_json_body};

use crate::config::Settings;
use crate::dns::DnsResolver;
use crate::store::Db;
use crate::store::crypto::MasterKey;

/// Request bodies are small JSON documents; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub settings: Arc<Settings>,
    /// The base of links in emails.
    pub public_url: Arc<str>,
    pub resolver: DnsResolver,
    pub master_key: MasterKey,
    /// Rung after an email is queued, so that the delivery worker starts at once.
    pub outbox_wakeup: Arc<tokio::sync::Notify>,
    pub api_keys: Arc<crate::tenancy::api_keys::KeyCache>,
}

impl AppState {
    pub fn new(settings: &Settings, db: Db, public_url: String) -> anyhow::Result<AppState> {
        Ok(AppState {
            db,
            settings: Arc::new(settings.clone()),
            public_url: Arc::from(public_url),
            resolver: DnsResolver::new(&settings.dns_nameservers)?,
            master_key: MasterKey::load(settings)?,
            outbox_wakeup: Arc::new(tokio::sync::Notify::new()),
            api_keys: Arc::default(),
        })
    }

    /// Call after committing a transaction that queued email.
    pub fn wake_outbox(&self) {
        self.outbox_wakeup.notify_one();
    }
}

/// A list in the `{"data": [...]}` shape.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
}

pub fn router(state: AppState) -> axum::Router {
    let (router, document) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(get_openapi))
        .merge(crate::tenancy::router())
        .merge(crate::domains::router())
        .merge(crate::mail::router())
        .merge(crate::mailboxes::router())
        .merge(crate::senders::router())
        .merge(crate::invitations::router())
        .merge(crate::relays::router())
        .split_for_parts();
    let document = openapi::complete(document);
    let document = Arc::new(document.to_json().expect("the OpenAPI document serializes"));
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(OpenApiJson(document)))
        .layer(middleware::map_response(errors_as_json))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    // The path only: query strings can carry one-time tokens.
                    tracing::info_span!("request", method = %request.method(),
                        path = %request.uri().path(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .with_state(state)
}

#[derive(Clone)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = crate::store::new_id("req");
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

#[derive(Clone)]
struct OpenApiJson(Arc<String>);

#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok`
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "The database does not answer", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    state.db.ping().await.map_err(|error| {
        tracing::warn!(%error, "database not ready");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database does not answer",
        )
    })?;
    Ok(axum::Json(Health { status: "ok" }))
}

/// This document: the OpenAPI 3.1 description of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn get_openapi(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str().to_owned(),
    )
        .into_response()
}

async fn route_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no route matches this path; /openapi.json lists them all",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept this method; /openapi.json lists the methods",
    )
}

/// Rewrites any error response that is not already JSON (from axum or a layer) into the
/// API's error shape, so that a client never has to parse two kinds of error.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let already_shaped = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || already_shaped {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}
