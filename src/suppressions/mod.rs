//! The suppression list: per account, the addresses its mail never goes to. A permanent
//! refusal adds an address (reason `bounce`); the account adds and removes its own.

mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::list_suppressions, routes::add_suppression))
        .routes(routes!(routes::delete_suppression))
}
