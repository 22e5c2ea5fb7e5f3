//! Entities and API keys over HTTP.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::store::{self, Entity};
use crate::http::{ApiError, Caller, Json, List};
use crate::identity::api_keys::{self, ApiKey, NewApiKey};
use crate::identity::{Role, memberships};
use crate::state::AppState;
use crate::types::text::parse_name;

#[derive(Deserialize, ToSchema)]
pub struct CreateEntity {
    /// 1 to 200 characters.
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateApiKey {
    /// 1 to 100 characters, to remember what the key is for.
    pub name: String,
    pub role: Role,
    /// Limit the key to one entity of the account.
    pub entity_id: Option<String>,
}

/// Create an entity (a workspace) in the caller's account. Needs an account-wide admin key.
#[utoipa::path(post, path = "/entities", tag = "entities",
    request_body = CreateEntity,
    responses((status = 201, description = "The new entity", body = Entity)))]
pub async fn create_entity(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateEntity>,
) -> Result<(StatusCode, Json<Entity>), ApiError> {
    caller.require_account(Role::Admin)?;
    let name = parse_name(&body.name, 200).map_err(|e| ApiError::invalid("name", e))?;
    let mut conn = state.db.pool.acquire().await?;
    let entity = store::insert_entity(&mut conn, &caller.account_id, &name, state.db.now()).await?;
    Ok((StatusCode::CREATED, Json(entity)))
}

/// List the entities the caller may act in: a user's are those they are a member of.
#[utoipa::path(get, path = "/entities", tag = "entities",
    responses((status = 200, description = "The entities", body = List<Entity>)))]
pub async fn list_entities(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<Entity>>, ApiError> {
    let data = match &caller.user_id {
        Some(user_id) => store::entities_of_user(&state.db, user_id, None).await?,
        None => {
            store::entities_of_account(&state.db, &caller.account_id, caller.scoped_entity())
                .await?
        }
    };
    Ok(Json(List { data }))
}

/// Get one entity.
#[utoipa::path(get, path = "/entities/{id}", tag = "entities",
    params(("id" = String, Path, description = "The entity's id")),
    responses((status = 200, description = "The entity", body = Entity)))]
pub async fn get_entity(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Entity>, ApiError> {
    let found = match &caller.user_id {
        Some(user_id) => store::entities_of_user(&state.db, user_id, Some(&id)).await?,
        None if caller.scoped_entity().is_some_and(|scoped| scoped != id) => Vec::new(),
        None => store::entities_of_account(&state.db, &caller.account_id, Some(&id)).await?,
    };
    found
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("entity"))
}

/// Create an API key. An entity-scoped admin can only create keys for its own entity.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    responses((status = 201, description = "The key, with its secret shown once", body = NewApiKey)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateApiKey>,
) -> Result<(StatusCode, Json<NewApiKey>), ApiError> {
    caller.require(Role::Admin)?;
    let name = parse_name(&body.name, 100).map_err(|e| ApiError::invalid("name", e))?;
    let unknown_entity = || ApiError::not_found("entity").with_param("entity_id");
    let entity_id = match (caller.scoped_entity(), body.entity_id) {
        (Some(scoped), Some(asked)) if scoped != asked => return Err(unknown_entity()),
        (Some(scoped), _) => Some(scoped.to_string()),
        (None, Some(asked)) => {
            if !store::entity_in_account(&state.db, &asked, &caller.account_id).await? {
                return Err(unknown_entity());
            }
            Some(asked)
        }
        (None, None) => None,
    };
    let mut conn = state.db.pool.acquire().await?;
    let key = api_keys::insert(
        &mut conn,
        &caller.account_id,
        entity_id.as_deref(),
        &name,
        body.role,
        api_keys::Creator {
            principal: &caller.principal,
            user_id: caller.on_behalf_of.as_deref(),
        },
        state.db.now(),
    )
    .await?;
    // A key made for a user who stopped being the entity's admin meanwhile goes at once:
    // either this check sees them gone, or their removal (after it) revokes the key.
    if let (Some(user_id), Some(entity_id)) = (&caller.on_behalf_of, &entity_id) {
        let still_admin = memberships::member(&state.db, entity_id, user_id)
            .await?
            .is_some_and(|member| member.role == Role::Admin);
        if !still_admin {
            api_keys::revoke_created_by(&state.db, entity_id, user_id).await?;
            state.api_keys.clear();
            return Err(ApiError::forbidden(
                "the user this credential acts for is no longer an admin of the entity",
            ));
        }
    }
    Ok((StatusCode::CREATED, Json(key)))
}

/// List API keys (never their secrets).
#[utoipa::path(get, path = "/api-keys", tag = "api-keys",
    responses((status = 200, description = "The keys", body = List<ApiKey>)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<ApiKey>>, ApiError> {
    caller.require(Role::Admin)?;
    let data = api_keys::list(&state.db, &caller.account_id, caller.scoped_entity()).await?;
    Ok(Json(List { data }))
}

/// Delete an API key; it stops working at once (on other instances sharing the database,
/// within two seconds).
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if !api_keys::delete(&state.db, &id, &caller.account_id, caller.scoped_entity()).await? {
        return Err(ApiError::not_found("API key"));
    }
    state.api_keys.clear();
    Ok(StatusCode::NO_CONTENT)
}
