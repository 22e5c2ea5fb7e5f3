//! Accounts (tenants) and entities (workspaces inside them), and the API keys an admin
//! makes for them.

pub mod accounts;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_entity, routes::list_entities))
        .routes(routes!(routes::get_entity))
        .routes(routes!(routes::create_api_key, routes::list_api_keys))
        .routes(routes!(routes::delete_api_key))
}
