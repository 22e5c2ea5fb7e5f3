//! Who is calling: one extractor for the header styles of all four API documents.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::invitations::users::TOKEN_PREFIX;
use crate::tenancy::Role;
use crate::tenancy::api_keys::{self, KEY_PREFIX};

/// An authenticated caller: the account it acts in, its role, and the entity the request
/// is about (from `x-entity-id`, checked against the credential).
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: String,
    pub role: Role,
    /// Who is calling: an API key's id, or a user's id.
    pub principal: String,
    /// Set when a user (an access token) is calling.
    pub user_id: Option<String>,
    /// Set when the credential is limited to one entity.
    scoped_entity: Option<String>,
    /// The entity named by `x-entity-id`, already checked to be the caller's.
    requested_entity: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let secret = credential(&parts.headers)?;
        if secret.starts_with(&format!("{TOKEN_PREFIX}_")) {
            return user_caller(parts, state, &secret).await;
        }
        if !secret.starts_with(&format!("{KEY_PREFIX}_")) {
            return Err(invalid_credentials());
        }
        let key = api_keys::authenticate(state, &secret)
            .await?
            .ok_or_else(invalid_credentials)?;
        if let Some(named) = header(&parts.headers, "x-key")?
            && named != key.id
        {
            return Err(ApiError::unauthorized(
                "key_mismatch",
                "the X-Key header names a different key than the one sent",
            ));
        }
        let requested_entity = match header(&parts.headers, "x-entity-id")? {
            None => None,
            Some(entity_id) => {
                let visible = match &key.entity_id {
                    Some(scoped) => *scoped == entity_id,
                    None => entity_in_account(state, &entity_id, &key.account_id).await?,
                };
                if !visible {
                    return Err(ApiError::not_found("entity").with_param("x-entity-id"));
                }
                Some(entity_id)
            }
        };
        Ok(Caller {
            account_id: key.account_id,
            role: key.role,
            principal: key.id,
            user_id: None,
            scoped_entity: key.entity_id,
            requested_entity,
        })
    }
}

/// A user with an access token acts in one entity at a time (`x-entity-id`, else the
/// first they joined), with their role there.
async fn user_caller(parts: &Parts, state: &AppState, secret: &str) -> Result<Caller, ApiError> {
    let user_id = crate::invitations::users::user_of_token(&state.db, secret)
        .await?
        .ok_or_else(invalid_credentials)?;
    if let Some(named) = header(&parts.headers, "x-key")?
        && named != user_id
    {
        return Err(ApiError::unauthorized(
            "key_mismatch",
            "the X-Key header names another user than the token's",
        ));
    }
    let requested = header(&parts.headers, "x-entity-id")?;
    let membership = sqlx::query(
        "SELECT m.entity_id, m.role, e.account_id FROM memberships m JOIN entities e ON e.id = m.entity_id \
         WHERE m.user_id = $1 AND ($2 IS NULL OR m.entity_id = $2) ORDER BY m.created_at, m.entity_id LIMIT 1",
    )
    .bind(&user_id)
    .bind(&requested)
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(membership) = membership else {
        return Err(match requested {
            Some(_) => ApiError::not_found("entity").with_param("x-entity-id"),
            None => ApiError::forbidden("this user is not a member of any entity"),
        });
    };
    use sqlx::Row;
    let entity_id: String = membership.try_get("entity_id")?;
    Ok(Caller {
        account_id: membership.try_get("account_id")?,
        role: Role::from_row(&membership)?,
        principal: user_id.clone(),
        user_id: Some(user_id),
        scoped_entity: Some(entity_id.clone()),
        requested_entity: Some(entity_id),
    })
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

    /// 403 unless the caller is an admin of the whole account, not of one entity.
    pub fn require_account_admin(&self) -> Result<(), ApiError> {
        self.require(Role::Admin)?;
        if self.scoped_entity.is_some() {
            return Err(ApiError::forbidden(
                "this needs a credential for the whole account; this one is limited to one entity",
            ));
        }
        Ok(())
    }

    /// Checks that the caller may act in entity `id` (an organization of the sender API):
    /// 404 when it is another account's, or outside a limited credential's entity.
    pub async fn check_entity(&self, state: &AppState, id: &str) -> Result<(), ApiError> {
        let visible = match &self.scoped_entity {
            Some(scoped) => scoped == id,
            None => entity_in_account(state, id, &self.account_id).await?,
        };
        if visible {
            Ok(())
        } else {
            Err(ApiError::not_found("organization"))
        }
    }

    /// The entity a limited credential is confined to.
    pub fn scoped_entity(&self) -> Option<&str> {
        self.scoped_entity.as_deref()
    }

    /// The entity the request acts in: `x-entity-id`, else the credential's own entity,
    /// else the account's first entity.
    pub async fn entity_id(&self, state: &AppState) -> Result<String, ApiError> {
        if let Some(entity) = self
            .requested_entity
            .as_ref()
            .or(self.scoped_entity.as_ref())
        {
            return Ok(entity.clone());
        }
        sqlx::query_scalar(
            "SELECT id FROM entities WHERE account_id = $1 ORDER BY created_at, id LIMIT 1",
        )
        .bind(&self.account_id)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("entity"))
    }
}

async fn entity_in_account(
    state: &AppState,
    entity_id: &str,
    account_id: &str,
) -> Result<bool, ApiError> {
    let found = sqlx::query("SELECT 1 FROM entities WHERE id = $1 AND account_id = $2")
        .bind(entity_id)
        .bind(account_id)
        .fetch_optional(&state.db.pool)
        .await?;
    Ok(found.is_some())
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

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized(
        "invalid_credentials",
        "the credential is not valid (unknown, mistyped or deleted)",
    )
}
