//! SMTP relay settings of a domain (spec 002): the nodemailer-shaped object through which
//! the domain's outgoing mail leaves.

pub mod model;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            routes::get_settings,
            routes::create_settings,
            routes::update_settings,
            routes::delete_settings
        ))
        .routes(routes!(routes::test_settings))
}
