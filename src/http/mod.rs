//! Shared HTTP plumbing: the error type, extractors, the auth extractor, pages, the
//! OpenAPI helpers, the health endpoints and the metrics listener. No resource is
//! imported here.

pub mod auth;
mod error;
mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod server;

pub use auth::Caller;
pub use error::{
    ApiError, ErrorBody, errors_as_json, method_not_allowed, on_unique, route_not_found,
};
pub use extract::{Json, List, Page, Query, parse_json_body};

/// Request bodies are small JSON documents; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
