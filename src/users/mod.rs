//! Users: people who accepted an invitation, sign in with a password, and act with access
//! tokens that carry their role in each entity. They change or reset their password and
//! sign out on their own.

pub mod model;
mod pages;
mod routes;
mod sign_in;
pub mod store;

pub use sign_in::{Trier, sign_in};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::login))
        .routes(routes!(routes::logout))
        .routes(routes!(routes::change_password))
        .routes(routes!(routes::request_reset))
        .routes(routes!(pages::reset_page, pages::confirm_reset))
        .routes(routes!(routes::list_members))
        .routes(routes!(routes::change_role, routes::remove_member))
}
