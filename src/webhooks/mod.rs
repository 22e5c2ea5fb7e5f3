//! Webhooks: an account's endpoints, the signed delivery of its events to them (a worker
//! claims the jobs the events made), and the API of the account's event log.

mod client;
pub mod delivery;
pub mod model;
mod routes;
pub mod signature;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_webhook, routes::list_webhooks))
        .routes(routes!(
            routes::get_webhook,
            routes::update_webhook,
            routes::delete_webhook
        ))
        .routes(routes!(routes::rotate_secret))
        .routes(routes!(routes::test_webhook))
        .routes(routes!(routes::list_deliveries))
        .routes(routes!(routes::replay_delivery))
        .routes(routes!(routes::list_events))
}
