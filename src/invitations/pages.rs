//! Accepting an invitation: the page its link opens (a new user's name and password, or a
//! sign-in), and the accept endpoint, which answers JSON to API clients and a page to the
//! forms.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::model::{Acceptance, Accepted};
use super::routes::accept;
use crate::http::auth::signed_in_user;
use crate::http::pages::{is_form, page};
use crate::http::{ApiError, ErrorBody, Json};
use crate::state::AppState;
use crate::types::text::escape_html;
use crate::users::{Trier, sign_in};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenParam {
    /// The token from the invitation email.
    pub token: Option<String>,
}

/// The page an invitation link opens: a form for a new user's name and password, and a
/// sign-in form for someone who has a user already.
#[utoipa::path(get, path = "/invitations/accept", tag = "invitations", security(()), params(TokenParam),
    responses((status = 200, description = "An HTML page with the accept forms", content_type = "text/html")))]
pub async fn accept_page(Query(param): Query<TokenParam>) -> Response {
    let token = escape_html(&param.token.unwrap_or_default());
    page(
        StatusCode::OK,
        "Accept your invitation",
        &format!(
            "<h2>New to mailroom</h2>\n\
             <form method=\"post\" action=\"/invitations/accept\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
             <label for=\"name\">Your name</label>\n<input id=\"name\" name=\"name\" autocomplete=\"name\">\n\
             <label for=\"password\">A password (12 characters or more)</label>\n\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\n\
             <button id=\"accept\" type=\"submit\">Accept</button>\n</form>\n\
             <h2>Already a mailroom user</h2>\n\
             <form method=\"post\" action=\"/invitations/accept\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
             <label for=\"sign-in-email\">Your email</label>\n\
             <input id=\"sign-in-email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\n\
             <label for=\"sign-in-password\">Your password</label>\n\
             <input id=\"sign-in-password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\n\
             <button id=\"sign-in\" type=\"submit\">Sign in and accept</button>\n</form>"
        ),
    )
}

#[derive(Deserialize)]
struct AcceptForm {
    token: Option<String>,
    name: Option<String>,
    /// Set by the sign-in form.
    email: Option<String>,
    password: Option<String>,
}

/// Accept an invitation with `?token=` (or `token` in the body). A new user sends a name
/// and a password; an email that has a user already is accepted by that user, signed in:
/// with their access token, or through the sign-in form of the page (counted like
/// `/auth/login`).
#[utoipa::path(post, path = "/invitations/accept", tag = "invitations", security(()),
    params(TokenParam),
    request_body = Acceptance,
    responses((status = 503, description = "Busy hashing passwords; see Retry-After", body = ErrorBody),
              (status = 200, description = "Accepted: the user and an access token", body = Accepted),
              (status = 401, description = "The email has a user: sign in first; or a wrong sign-in", body = ErrorBody),
              (status = 403, description = "Signed in as a user of another email", body = ErrorBody),
              (status = 404, description = "Unknown or cancelled invitation", body = ErrorBody),
              (status = 409, description = "Accepted already", body = ErrorBody),
              (status = 410, description = "Expired", body = ErrorBody),
              (status = 429, description = "Too many failed sign-ins; see Retry-After", body = ErrorBody)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(param): Query<TokenParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if is_form(&headers) {
        let form: AcceptForm = serde_urlencoded::from_bytes(&body).unwrap_or(AcceptForm {
            token: None,
            name: None,
            email: None,
            password: None,
        });
        let token = form.token.or(param.token).unwrap_or_default();
        let accepted = async {
            let signed_in = match &form.email {
                Some(email) => Some(
                    sign_in(
                        &state.db,
                        Trier::Client(peer.ip()),
                        email,
                        form.password.as_deref().unwrap_or(""),
                    )
                    .await?,
                ),
                None => None,
            };
            let acceptance = Acceptance {
                name: form.name,
                password: form.password.filter(|_| signed_in.is_none()),
                token: None,
            };
            accept(&state, &token, acceptance, signed_in).await
        };
        return match accepted.await {
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
        let signed_in = signed_in_user(&state.db, &headers).await?;
        let body: Acceptance = if body.is_empty() && signed_in.is_some() {
            Acceptance {
                name: None,
                password: None,
                token: None,
            }
        } else {
            crate::http::parse_json_body(&headers, &body)?
        };
        let token = param
            .token
            .clone()
            .or(body.token.clone())
            .unwrap_or_default();
        Ok::<_, ApiError>(Json(accept(&state, &token, body, signed_in).await?))
    };
    run.await.into_response()
}
