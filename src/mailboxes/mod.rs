//! Mailboxes on managed domains (spec 003), served by Dovecot and Postfix through the
//! directory views of the schema.

pub mod maildirs;
pub mod model;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::list_domain_mailboxes))
        .routes(routes!(routes::create_mailbox))
        .routes(routes!(routes::list_mailboxes))
        .routes(routes!(routes::get_mailbox, routes::update_mailbox))
        .routes(routes!(routes::delete_mailbox))
        .routes(routes!(routes::reset_password))
}
