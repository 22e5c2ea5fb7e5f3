//! Webhooks: an account's endpoints, the signed delivery of its events to them (a worker
//! claims the jobs the events made), and the API of the account's event log.

pub mod delivery;
pub mod model;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
