//! The pages a verification link opens. Opening the link (GET) changes nothing, so that
//! mail scanners that follow links verify nothing; only the page's button (POST) does.

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::routes::confirm;
use super::store::{self, Stored};
use crate::http::pages::page;
use crate::state::AppState;
use crate::store::secrets::digest;
use crate::types::text::escape_html;

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct TokenParam {
    /// The token from the verification email's link.
    pub token: Option<String>,
}

/// What a token stands for: an address waiting for it, or why it cannot be used.
async fn lookup(state: &AppState, token: Option<&str>) -> Result<Stored, Response> {
    let unknown = || {
        page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p class=\"error\">This link is not valid, or it was used already. Ask for a new one where you added the address.</p>",
        )
    };
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 128) else {
        return Err(unknown());
    };
    let stored = store::by_token(&state.db, &digest(token))
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot look up a verification token");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "<p class=\"error\">Please try again in a moment.</p>",
            )
        })?;
    let stored = stored.ok_or_else(unknown)?;
    if stored
        .expires_at
        .is_some_and(|expires| expires < state.db.now().0)
    {
        return Err(page(
            StatusCode::GONE,
            "Link expired",
            "<p class=\"error\">This link has expired. Ask for a new one where you added the address.</p>",
        ));
    }
    Ok(stored)
}

/// The page a verification link opens: it shows the address and a button to confirm it.
#[utoipa::path(get, path = "/v1/email-address/verify", tag = "sender-address", security(()),
    params(TokenParam),
    responses((status = 200, description = "An HTML page with a confirm button", content_type = "text/html"),
              (status = 404, description = "An HTML page: unknown or used link", content_type = "text/html"),
              (status = 410, description = "An HTML page: expired link", content_type = "text/html")))]
pub async fn verification_page(
    State(state): State<AppState>,
    Query(param): Query<TokenParam>,
) -> Response {
    let token = param.token.unwrap_or_default();
    let stored = match lookup(&state, Some(&token)).await {
        Ok(stored) => stored,
        Err(response) => return response,
    };
    page(
        StatusCode::OK,
        "Confirm your sender address",
        &format!(
            "<p>Confirm that <b id=\"email\">{email}</b> is yours and may be used as a sender address.</p>\n\
             <form method=\"post\" action=\"/v1/email-address/verify/confirm\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
             <button id=\"confirm\" type=\"submit\">Confirm {email}</button>\n</form>",
            email = escape_html(&stored.email),
            token = escape_html(&token),
        ),
    )
}

/// The confirm button of the verification page: verifies the address.
#[utoipa::path(post, path = "/v1/email-address/verify/confirm", tag = "sender-address", security(()),
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "An HTML page: verified", content_type = "text/html"),
              (status = 404, description = "An HTML page: unknown or used link", content_type = "text/html"),
              (status = 410, description = "An HTML page: expired link", content_type = "text/html")))]
pub async fn confirm_verification(
    State(state): State<AppState>,
    form: Result<Form<TokenParam>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.ok().and_then(|Form(form)| form.token);
    let stored = match lookup(&state, token.as_deref()).await {
        Ok(stored) => stored,
        Err(response) => return response,
    };
    let email = escape_html(&stored.email);
    match confirm(&state, stored).await {
        Ok(true) => page(
            StatusCode::OK,
            "Address confirmed",
            &format!(
                "<p id=\"result\"><b>{email}</b> is confirmed as a sender address. You can close this page.</p>"
            ),
        ),
        Ok(false) => page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p class=\"error\">This link was used already.</p>",
        ),
        Err(error) => {
            tracing::error!(%error, "cannot verify a sender address");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "<p class=\"error\">Please try again in a moment.</p>",
            )
        }
    }
}
