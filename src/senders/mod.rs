//! Sender addresses (spec 000): the From of an account's or an organization's mail, proven
//! by a link or code sent to it and by its domain's DNS records.

mod expiry;
pub mod model;
mod pages;
mod routes;
pub mod store;

pub use expiry::announce_expired;
pub use routes::effective_from;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            routes::create_sender,
            routes::get_sender,
            routes::delete_sender
        ))
        .routes(routes!(routes::sender_status))
        .routes(routes!(routes::resend_verification))
        .routes(routes!(pages::verification_page, routes::verify_by_code))
        .routes(routes!(pages::confirm_verification))
        .routes(routes!(
            routes::create_org_sender,
            routes::get_org_sender,
            routes::delete_org_sender
        ))
        .routes(routes!(routes::org_sender_status))
        .routes(routes!(routes::resend_org_verification))
        .routes(routes!(routes::verify_org_by_code))
}
