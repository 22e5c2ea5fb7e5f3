//! Users: people who accepted an invitation, sign in with a password, and act with access
//! tokens that carry their role in each entity.

pub mod model;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::login))
        .routes(routes!(routes::list_members))
        .routes(routes!(routes::change_role, routes::remove_member))
}
