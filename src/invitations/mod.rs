//! Invitations into an entity (spec 001): sent by email, accepted once with a name and a
//! password, making the invitee a user with a role there.

pub mod model;
mod pages;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_invitation, routes::list_invitations))
        .routes(routes!(routes::get_invitation, routes::cancel_invitation))
        .routes(routes!(routes::resend_invitation))
        .routes(routes!(pages::accept_page, pages::accept_invitation))
}
