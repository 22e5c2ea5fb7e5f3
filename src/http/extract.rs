//! Request extractors whose every rejection is an `ApiError`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: 415 without a JSON content type, 413 over the size limit, 400 when the
/// bytes are not JSON, 422 (naming the field) when the JSON does not fit the request.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(&request) {
            return Err(unsupported_media_type());
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "payload_too_large",
                        format!(
                            "the request body is larger than the limit of {} bytes",
                            super::MAX_BODY_BYTES
                        ),
                    )
                } else {
                    ApiError::new(status, "unreadable_body", rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body already read, with the checks of the `Json` extractor.
pub fn parse_json_body<T: DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if !is_json_type(headers) {
        return Err(unsupported_media_type());
    }
    parse_json(bytes)
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

fn is_json(request: &Request) -> bool {
    is_json_type(request.headers())
}

fn is_json_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(content_type) = content_type.to_str() else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message);
                let param = missing_field(message)
                    .map(str::to_string)
                    .or_else(|| (path != "." && !path.is_empty()).then_some(path.clone()));
                let code = if message.starts_with("missing field") {
                    "missing_field"
                } else {
                    "invalid_field"
                };
                let mut error = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    code,
                    match &param {
                        Some(param) if !message.starts_with("missing field") => {
                            format!("{param}: {message}")
                        }
                        _ => message.to_string(),
                    },
                );
                error.param = param;
                error
            }
            _ => ApiError::bad_request(
                "malformed_json",
                format!("the request body is not valid JSON: {inner}"),
            ),
        }
    })
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters: 422, naming the parameter, when they do not fit.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = error.into_inner().to_string();
                let mut error = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_parameter",
                    if path == "." {
                        message
                    } else {
                        format!("{path}: {message}")
                    },
                );
                if path != "." {
                    error.param = Some(path);
                }
                error
            })
    }
}

/// A list in the `{"data": [...]}` shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
}

/// `limit` (1–200, default 50) and `offset` (from 0) of a list.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl Page {
    pub const MAX_LIMIT: i64 = 200;

    /// The limit and offset, checked.
    pub fn parse(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {}", Self::MAX_LIMIT),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::invalid("offset", "offset must be 0 or more"));
        }
        Ok((limit, offset))
    }
}
