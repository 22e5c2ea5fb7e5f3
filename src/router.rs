//! Every resource's routes in one router, with the layers every request passes through,
//! the fallbacks, and the OpenAPI document made from the routes' annotations.

use std::sync::Arc;

use axum::Extension;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Request, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{self, ApiError, MAX_BODY_BYTES, health, openapi};
use crate::state::AppState;
use crate::types::text::Escaped;
use crate::{
    domains, emails, invitations, mailboxes, messages, relays, senders, store, suppressions,
    tenancy, users, webhooks,
};

pub fn router(state: AppState) -> axum::Router {
    let (router, document) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(get_openapi))
        .merge(tenancy::router())
        .merge(domains::router())
        .merge(messages::router())
        .merge(mailboxes::router())
        .merge(senders::router())
        .merge(invitations::router())
        .merge(users::router())
        .merge(relays::router())
        .merge(emails::router())
        .merge(suppressions::router())
        .merge(webhooks::router())
        .split_for_parts();
    let document = openapi::complete(document);
    let document = Arc::new(document.to_json().expect("the OpenAPI document serializes"));
    router
        .fallback(http::route_not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(Extension(OpenApiJson(document)))
        .layer(middleware::map_response(http::errors_as_json))
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
                        path = %request.uri().path(), request_id = %Escaped(id))
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(middleware::map_response(nosniff))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            http::metrics::count_requests,
        ))
        .with_state(state)
}

/// Every answer, error or page, is what its `Content-Type` says: browsers must not guess.
async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Clone)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = store::new_id("req");
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

#[derive(Clone)]
struct OpenApiJson(Arc<String>);

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
