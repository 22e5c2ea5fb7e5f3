//! Entities: the workspaces of an account ("organizations" in the sender API).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use crate::http::{ApiError, AppState, Caller, Json, List};
use crate::store::{Timestamp, new_id};
use crate::text::parse_name;

#[derive(Debug, Serialize, ToSchema)]
pub struct Entity {
    /// `ent_` and 24 hex digits.
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: Timestamp,
}

impl sqlx::FromRow<'_, AnyRow> for Entity {
    fn from_row(row: &AnyRow) -> sqlx::Result<Entity> {
        Ok(Entity {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            name: row.try_get("name")?,
            created_at: Timestamp(row.try_get("created_at")?),
        })
    }
}

#[derive(Deserialize, ToSchema)]
pub struct CreateEntity {
    /// 1 to 200 characters.
    pub name: String,
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
    caller.require_account_admin()?;
    let name = parse_name(&body.name, 200).map_err(|e| ApiError::invalid("name", e))?;
    let mut conn = state.db.pool.acquire().await?;
    let entity = insert_entity(&mut conn, &caller.account_id, &name).await?;
    Ok((StatusCode::CREATED, Json(entity)))
}

/// List the entities the caller may act in: a user's are those they are a member of.
#[utoipa::path(get, path = "/entities", tag = "entities",
    responses((status = 200, description = "The entities", body = List<Entity>)))]
pub async fn list_entities(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<Entity>>, ApiError> {
    let entities = match &caller.user_id {
        Some(user_id) => {
            sqlx::query_as(
                "SELECT e.id, e.account_id, e.name, e.created_at FROM entities e \
                 JOIN memberships m ON m.entity_id = e.id WHERE m.user_id = $1 ORDER BY e.created_at, e.id",
            )
            .bind(user_id)
            .fetch_all(&state.db.pool)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT id, account_id, name, created_at FROM entities \
                 WHERE account_id = $1 AND ($2 IS NULL OR id = $2) ORDER BY created_at, id",
            )
            .bind(&caller.account_id)
            .bind(caller.scoped_entity())
            .fetch_all(&state.db.pool)
            .await?
        }
    };
    Ok(Json(List { data: entities }))
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
    if let Some(user_id) = &caller.user_id {
        return sqlx::query_as(
            "SELECT e.id, e.account_id, e.name, e.created_at FROM entities e \
             JOIN memberships m ON m.entity_id = e.id WHERE e.id = $1 AND m.user_id = $2",
        )
        .bind(&id)
        .bind(user_id)
        .fetch_optional(&state.db.pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("entity"));
    }
    if caller.scoped_entity().is_some_and(|scoped| scoped != id) {
        return Err(ApiError::not_found("entity"));
    }
    sqlx::query_as(
        "SELECT id, account_id, name, created_at FROM entities WHERE id = $1 AND account_id = $2",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_optional(&state.db.pool)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found("entity"))
}

pub async fn insert_entity(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
) -> sqlx::Result<Entity> {
    let entity = Entity {
        id: new_id("ent"),
        account_id: account_id.to_string(),
        name: name.to_string(),
        created_at: Timestamp::now(),
    };
    sqlx::query("INSERT INTO entities (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&entity.id)
        .bind(&entity.account_id)
        .bind(&entity.name)
        .bind(entity.created_at.0)
        .execute(conn)
        .await?;
    Ok(entity)
}
