//! Accepting an invitation: the page its link opens (name and password), and the accept
//! endpoint, which answers JSON to API clients and a page to that form.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::model::{Acceptance, Accepted};
use super::routes::accept;
use crate::http::pages::page;
use crate::http::{ApiError, ErrorBody, Json};
use crate::state::AppState;
use crate::types::text::escape_html;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenParam {
    /// The token from the invitation email.
    pub token: Option<String>,
}

/// The page an invitation link opens: a form for a name and a password.
#[utoipa::path(get, path = "/invitations/accept", tag = "invitations", security(()), params(TokenParam),
    responses((status = 200, description = "An HTML page with the accept form", content_type = "text/html")))]
pub async fn accept_page(Query(param): Query<TokenParam>) -> Response {
    let token = param.token.unwrap_or_default();
    page(
        StatusCode::OK,
        "Accept your invitation",
        &format!(
            "<form method=\"post\" action=\"/invitations/accept\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
             <label for=\"name\">Your name</label>\n<input id=\"name\" name=\"name\" autocomplete=\"name\">\n\
             <label for=\"password\">A password (12 characters or more), or your existing password</label>\n\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\n\
             <button id=\"accept\" type=\"submit\">Accept</button>\n</form>",
            token = escape_html(&token)
        ),
    )
}

#[derive(Deserialize)]
struct AcceptForm {
    token: Option<String>,
    name: Option<String>,
    password: Option<String>,
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Accept an invitation with `?token=` (or `token` in the body). No API key: the token is
/// the credential. A new user gets the name and password; an email that has a user
/// already needs that user's password.
#[utoipa::path(post, path = "/invitations/accept", tag = "invitations", security(()), params(TokenParam),
    request_body = Acceptance,
    responses((status = 200, description = "Accepted: the user and an access token", body = Accepted),
              (status = 401, description = "Wrong password for an existing user", body = ErrorBody),
              (status = 404, description = "Unknown or cancelled invitation", body = ErrorBody),
              (status = 409, description = "Accepted already", body = ErrorBody),
              (status = 410, description = "Expired", body = ErrorBody)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    Query(param): Query<TokenParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if is_form(&headers) {
        let form: AcceptForm = serde_urlencoded::from_bytes(&body).unwrap_or(AcceptForm {
            token: None,
            name: None,
            password: None,
        });
        let acceptance = Acceptance {
            name: form.name,
            password: form.password.unwrap_or_default(),
            token: None,
        };
        let token = form.token.or(param.token).unwrap_or_default();
        return match accept(&state, &token, acceptance).await {
            Ok(accepted) => page(
                StatusCode::OK,
                "Welcome",
                &format!(
                    "<p id=\"result\">You have joined. Your user id is <code>{}</code>; sign in with your email and password.</p>",
                    escape_html(&accepted.user_id)
                ),
            ),
            Err(error) => page(
                error.status,
                "The invitation could not be accepted",
                &format!(
                    "<p id=\"result\" class=\"error\">{}</p>",
                    escape_html(&error.message)
                ),
            ),
        };
    }
    let run = async {
        let body: Acceptance = crate::http::parse_json_body(&headers, &body)?;
        let token = param
            .token
            .clone()
            .or(body.token.clone())
            .unwrap_or_default();
        Ok::<_, ApiError>(Json(accept(&state, &token, body).await?))
    };
    run.await.into_response()
}
