//! The sending API (`/v2/emails`): tenants send their own mail, from their verified
//! senders and active domains, through the one outbox.

pub mod model;
mod routes;
pub mod store;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Emails carry attachments (10 MB decoded, about 13.4 MB in base64): these routes take
/// larger bodies than the rest of the API.
pub const MAX_EMAIL_BODY_BYTES: usize = 15 * 1024 * 1024;
/// Bodies over this size are read a few at a time.
pub const LARGE_BODY_BYTES: u64 = 1024 * 1024;
/// How many large bodies one instance reads and parses at once: each costs several times
/// its size in memory until its email is queued, so a burst of them waits its turn.
pub const LARGE_BODIES_AT_ONCE: usize = 4;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::send_email, routes::list_emails))
        .routes(routes!(routes::send_batch))
        .routes(routes!(routes::get_email))
        .routes(routes!(routes::cancel_email))
        .layer(DefaultBodyLimit::max(MAX_EMAIL_BODY_BYTES))
}
