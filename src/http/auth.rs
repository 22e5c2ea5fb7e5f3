//! Who is calling: one extractor for the header styles of all four API documents. The
//! headers are read here; what they stand for is decided by `identity`.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::ApiError;
use crate::identity::{self, Credential, Refusal, Role};
use crate::state::AppState;
use crate::store::Db;

/// An authenticated caller: the account it acts in, its role, and the entity the request
/// is about (from `x-entity-id`, checked against the credential).
#[derive(Debug, Clone)]
pub struct Caller(Credential);

impl std::ops::Deref for Caller {
    type Target = Credential;
    fn deref(&self) -> &Credential {
        &self.0
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let secret = credential(&parts.headers)?;
        let named = header(&parts.headers, "x-key")?;
        let entity = header(&parts.headers, "x-entity-id")?;
        identity::resolve(
            &state.db,
            &state.api_keys,
            &secret,
            named.as_deref(),
            entity.as_deref(),
        )
        .await
        .map(Caller)
        .map_err(ApiError::from)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Invalid => ApiError::unauthorized(
                "invalid_credentials",
                "the credential is not valid (unknown, mistyped or deleted)",
            ),
            Refusal::Mismatch => ApiError::unauthorized(
                "key_mismatch",
                "the X-Key header names another key or user than the credential sent",
            ),
            Refusal::UnknownEntity => ApiError::not_found("entity").with_param("x-entity-id"),
            Refusal::NoMembership => ApiError::forbidden("this user is not a member of any entity"),
            Refusal::Database(error) => error.into(),
        }
    }
}

impl Caller {
    /// 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; the credential has {}",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }

    /// 403 unless the caller acts for the whole account — an API key not limited to an
    /// entity — with at least `role`. Account-scoped resources (domains, mailboxes, SMTP
    /// settings, the account's sender address, the delivery log) need it.
    pub fn require_account(&self, role: Role) -> Result<(), ApiError> {
        self.require(role)?;
        if self.scoped_entity.is_some() {
            return Err(ApiError::forbidden(
                "this needs a credential for the whole account (an API key not limited to an \
                 entity); this one acts only inside its entity",
            ));
        }
        Ok(())
    }

    /// Checks that the caller may act in entity `id` (an organization of the sender API):
    /// 404 when it is another account's, or outside a limited credential's entity.
    pub async fn check_entity(&self, db: &Db, id: &str) -> Result<(), ApiError> {
        if identity::may_act_in(db, self, id).await? {
            Ok(())
        } else {
            Err(ApiError::not_found("organization"))
        }
    }

    /// The entity a limited credential is confined to.
    pub fn scoped_entity(&self) -> Option<&str> {
        self.scoped_entity.as_deref()
    }

    /// The entity the request acts in — `x-entity-id`, else the credential's own entity,
    /// else the account's first entity — once the caller's role is at least `role`.
    pub async fn entity_id(&self, db: &Db, role: Role) -> Result<String, ApiError> {
        self.require(role)?;
        identity::acting_entity(db, self)
            .await?
            .ok_or_else(|| ApiError::not_found("entity"))
    }
}

/// The user a request is signed in as, when it carries a credential at all: for endpoints
/// anyone may call but a signed-in user calls differently (accepting an invitation). An
/// API key is refused: it is nobody's person.
pub async fn signed_in_user(db: &Db, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let secret = match credential(headers) {
        Ok(secret) => secret,
        Err(error) if error.code == "missing_credentials" => return Ok(None),
        Err(error) => return Err(error),
    };
    if !secret.starts_with(&format!("{}_", identity::tokens::TOKEN_PREFIX)) {
        return Err(ApiError::forbidden(
            "this needs a user's access token, not an API key",
        ));
    }
    identity::tokens::user_of_token(db, &secret)
        .await?
        .map(Some)
        .ok_or_else(|| Refusal::Invalid.into())
}

/// The secret from `Authorization: Bearer <t>`, `Authorization: <t>`, `x-api-key: <t>` or
/// `X-Access-Token: <t>`. Several may be sent, but they must agree.
fn credential(headers: &HeaderMap) -> Result<String, ApiError> {
    let authorization =
        header(headers, "authorization")?.map(|value| match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                token.trim().to_string()
            }
            _ => value,
        });
    let mut sent = [
        authorization,
        header(headers, "x-api-key")?,
        header(headers, "x-access-token")?,
    ]
    .into_iter()
    .flatten();
    let Some(secret) = sent.next() else {
        return Err(ApiError::unauthorized(
            "missing_credentials",
            "send an API key as `Authorization: Bearer <key>`, `x-api-key` or `X-Access-Token`",
        ));
    };
    if sent.any(|other| other != secret) {
        return Err(ApiError::unauthorized(
            "conflicting_credentials",
            "the request carries two different credentials",
        ));
    }
    Ok(secret)
}

/// A header's trimmed value; absent when missing or empty.
fn header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        ApiError::bad_request(
            "invalid_header",
            format!("the {name} header is not valid text"),
        )
    })?;
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_string()))
}
