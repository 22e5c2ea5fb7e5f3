//! Credentials to callers: API keys (with their cache), users' access tokens, and the
//! memberships that say where a user acts and with which role. No HTTP here: the auth
//! extractor hands in the headers' values and turns a `Refusal` into an answer.

pub mod api_keys;
pub mod memberships;
mod role;
pub mod tokens;

pub use api_keys::KeyCache;
pub use role::Role;

use crate::store::Db;
use crate::tenancy::store as tenancy;

/// Who is calling, checked: the account it acts in, its role, and its entities.
#[derive(Debug, Clone)]
pub struct Credential {
    pub account_id: String,
    pub role: Role,
    /// An API key's id, or a user's id.
    pub principal: String,
    /// Set when a user (an access token) is calling.
    pub user_id: Option<String>,
    /// The digest of the access token a user is calling with (what signing out revokes).
    pub session: Option<String>,
    /// The user the credential acts for: the user calling, or the user who made the key
    /// (directly or through keys they made). Keys made with it act for that user too,
    /// and go when that user leaves the entity.
    pub on_behalf_of: Option<String>,
    /// Set when the credential is limited to one entity (a user always is, per request).
    pub scoped_entity: Option<String>,
    /// The entity the request named, already checked to be the caller's.
    pub requested_entity: Option<String>,
}

/// Why a credential was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// Unknown, mistyped, expired or deleted.
    Invalid,
    /// `X-Key` names another key or user than the secret's.
    Mismatch,
    /// The entity asked for is not one the credential may act in.
    UnknownEntity,
    /// A user who belongs to no entity.
    NoMembership,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Refusal {
    fn from(error: sqlx::Error) -> Refusal {
        Refusal::Database(error)
    }
}

/// Resolves a secret (an API key or an access token) sent with `named` (the `X-Key`
/// header) and asking to act in `entity` (the `x-entity-id` header).
pub async fn resolve(
    db: &Db,
    keys: &KeyCache,
    secret: &str,
    named: Option<&str>,
    entity: Option<&str>,
) -> Result<Credential, Refusal> {
    let has_prefix = |prefix: &str| {
        secret
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('_'))
    };
    if has_prefix(tokens::TOKEN_PREFIX) {
        return resolve_user(db, secret, named, entity).await;
    }
    if !has_prefix(api_keys::KEY_PREFIX) {
        return Err(Refusal::Invalid);
    }
    let key = api_keys::authenticate(db, keys, secret)
        .await?
        .ok_or(Refusal::Invalid)?;
    if named.is_some_and(|named| named != key.id) {
        return Err(Refusal::Mismatch);
    }
    if let Some(entity) = entity {
        let visible = match &key.entity_id {
            Some(scoped) => scoped == entity,
            None => tenancy::entity_in_account(db, entity, &key.account_id).await?,
        };
        if !visible {
            return Err(Refusal::UnknownEntity);
        }
    }
    Ok(Credential {
        account_id: key.account_id,
        role: key.role,
        principal: key.id,
        user_id: None,
        session: None,
        on_behalf_of: key.created_by_user_id,
        scoped_entity: key.entity_id,
        requested_entity: entity.map(str::to_string),
    })
}

/// A user acts in one entity at a time (the one asked for, else the first they joined),
/// with their role there.
async fn resolve_user(
    db: &Db,
    secret: &str,
    named: Option<&str>,
    entity: Option<&str>,
) -> Result<Credential, Refusal> {
    let user_id = tokens::user_of_token(db, secret)
        .await?
        .ok_or(Refusal::Invalid)?;
    if named.is_some_and(|named| named != user_id) {
        return Err(Refusal::Mismatch);
    }
    let Some(membership) = memberships::first_of_user(db, &user_id, entity).await? else {
        return Err(match entity {
            Some(_) => Refusal::UnknownEntity,
            None => Refusal::NoMembership,
        });
    };
    Ok(Credential {
        account_id: membership.account_id,
        role: membership.role,
        principal: user_id.clone(),
        user_id: Some(user_id.clone()),
        session: Some(crate::store::secrets::digest(secret)),
        on_behalf_of: Some(user_id),
        scoped_entity: Some(membership.entity_id.clone()),
        requested_entity: Some(membership.entity_id),
    })
}

/// Whether the credential may act in entity `id`: its own entity, or (unlimited) any
/// entity of its account.
pub async fn may_act_in(db: &Db, credential: &Credential, id: &str) -> sqlx::Result<bool> {
    match &credential.scoped_entity {
        Some(scoped) => Ok(scoped == id),
        None => tenancy::entity_in_account(db, id, &credential.account_id).await,
    }
}

/// The entity a request acts in: the one asked for, else the credential's own, else the
/// account's first.
pub async fn acting_entity(db: &Db, credential: &Credential) -> sqlx::Result<Option<String>> {
    match credential
        .requested_entity
        .as_ref()
        .or(credential.scoped_entity.as_ref())
    {
        Some(entity) => Ok(Some(entity.clone())),
        None => tenancy::first_entity(db, &credential.account_id).await,
    }
}
