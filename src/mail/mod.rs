//! Mail: the outbox, templates, transports, DKIM signing and the delivery worker.

pub mod address;
pub mod compose;
pub mod dkim;
pub mod outbox;
pub mod templates;
pub mod transport;
pub mod worker;

pub use address::EmailAddress;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(outbox::list_messages))
        .routes(routes!(outbox::get_message))
}
