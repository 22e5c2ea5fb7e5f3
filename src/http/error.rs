//! The one error type of the API: every failure leaves as
//! `{"error": {"type", "code", "message", "param"?}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::types::text::Escaped;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The class of error, from the HTTP status: `invalid_request`, `authentication_error`,
    /// `permission_error`, `not_found`, `conflict`, `validation_error`, `rate_limited`,
    /// `api_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A stable, machine-readable reason such as `missing_field` or `invalid_credentials`.
    pub code: &'static str,
    /// What went wrong, in words meant for the developer reading it.
    pub message: String,
    /// The request field the error is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "insufficient_role", message)
    }

    /// Missing, or belonging to someone else: the two look the same from outside.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// A field that does not hold a valid value.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_param(param)
    }

    /// 429, with `Retry-After` rounded up to whole seconds.
    pub fn too_many(code: &'static str, message: impl Into<String>, wait_ms: i64) -> ApiError {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        error.retry_after_secs = Some(((wait_ms + 999) / 1000).max(1) as u64);
        error
    }

    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        // The cause may quote outside input (a value, a peer's answer): spelled out.
        let cause = cause.to_string();
        tracing::error!(cause = %Escaped(&cause), "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong on our side; the request id in x-request-id helps us find it",
        )
    }

    /// 503 for work the server has no room for now, with `Retry-After`.
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// The JSON body of this error, for answers written below the router.
    pub fn json(&self) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind(),
                code: self.code,
                message: self.message.clone(),
                param: self.param.clone(),
            },
        };
        serde_json::to_string(&body).expect("an error body serializes")
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found",
            409 => "conflict",
            422 => "validation_error",
            429 => "rate_limited",
            500..=599 => "api_error",
            _ => "invalid_request",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind(),
                code: self.code,
                message: self.message,
                param: self.param,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        match error {
            sqlx::Error::RowNotFound => ApiError::not_found("resource"),
            error if crate::store::is_unique_violation(&error) => ApiError::conflict(
                "already_exists",
                "a resource with these values already exists",
            ),
            error => ApiError::internal(error),
        }
    }
}

/// Maps a unique-constraint violation to `conflict` (and any other database error as
/// usual): `.map_err(on_unique(|| ApiError::conflict(…)))`.
pub fn on_unique(conflict: impl FnOnce() -> ApiError) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |error| {
        if crate::store::is_unique_violation(&error) {
            conflict()
        } else {
            error.into()
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        if let Some(busy) = error.downcast_ref::<crate::store::passwords::Busy>() {
            let mut error =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", busy.to_string());
            error.retry_after_secs = Some(1);
            return error;
        }
        ApiError::internal(format!("{error:#}"))
    }
}

pub async fn route_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no route matches this path; /openapi.json lists them all",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept this method; /openapi.json lists the methods",
    )
}

/// Rewrites any error response that is not already JSON (from axum or a layer) into the
/// API's error shape, so that a client never has to parse two kinds of error.
pub async fn errors_as_json(response: Response) -> Response {
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
