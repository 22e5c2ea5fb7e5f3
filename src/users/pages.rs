//! The page a password-reset link opens, and the endpoint it posts to, which answers JSON
//! to API clients and a page to the form.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::model::{Message, ResetConfirm};
use super::routes::reset_password;
use crate::http::pages::{is_form, page};
use crate::http::{ApiError, ErrorBody, Json, Query};
use crate::state::AppState;
use crate::types::text::escape_html;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenParam {
    /// The token from the reset email.
    pub token: Option<String>,
}

/// The page a reset link opens: a form for the new password.
#[utoipa::path(get, path = "/auth/password-reset/confirm", tag = "users", security(()), params(TokenParam),
    responses((status = 200, description = "An HTML page with the new-password form", content_type = "text/html")))]
pub async fn reset_page(Query(param): Query<TokenParam>) -> Response {
    page(
        StatusCode::OK,
        "Choose a new password",
        &format!(
            "<form method=\"post\" action=\"/auth/password-reset/confirm\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\n\
             <label for=\"password\">A new password (12 characters or more)</label>\n\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\n\
             <button id=\"save\" type=\"submit\">Save</button>\n</form>",
            escape_html(&param.token.unwrap_or_default())
        ),
    )
}

#[derive(Deserialize)]
struct ResetForm {
    token: Option<String>,
    password: Option<String>,
}

/// Set a new password with the token of a reset link (JSON, or the page's form). The link
/// is used up and every access token of the user stops working.
#[utoipa::path(post, path = "/auth/password-reset/confirm", tag = "users", security(()),
    request_body = ResetConfirm,
    responses((status = 503, description = "Busy hashing passwords; see Retry-After", body = ErrorBody),
              (status = 200, description = "The password is changed", body = Message),
              (status = 404, description = "Unknown, used or expired link", body = ErrorBody),
              (status = 422, description = "The password breaks the rule", body = ErrorBody)))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if is_form(&headers) {
        let form: ResetForm = serde_urlencoded::from_bytes(&body).unwrap_or(ResetForm {
            token: None,
            password: None,
        });
        let done = reset_password(
            &state,
            &form.token.unwrap_or_default(),
            &form.password.unwrap_or_default(),
        )
        .await;
        return match done {
            Ok(()) => page(
                StatusCode::OK,
                "Password changed",
                "<p id=\"result\">Your password is changed. Sign in with it; every earlier \
                 session has ended.</p>",
            ),
            Err(error) => page(
                error.status,
                "The password could not be changed",
                &format!(
                    "<p id=\"result\" class=\"error\">{}</p>",
                    escape_html(&error.message)
                ),
            ),
        };
    }
    let run = async {
        let body: ResetConfirm = crate::http::parse_json_body(&headers, &body)?;
        reset_password(&state, &body.token, &body.password).await?;
        Ok::<_, ApiError>(Json(Message {
            message: "Password changed",
        }))
    };
    run.await.into_response()
}
