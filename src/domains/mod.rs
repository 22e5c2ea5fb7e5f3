//! Managed domains: added by a tenant, proven by DKIM CNAMEs in DNS, checked again over time.

pub mod check;
pub mod dkim;
pub mod model;
pub mod records;
pub mod rotation;
mod routes;
pub mod store;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The domain checks, with the parts of the shared state they use.
pub fn checker(state: &AppState) -> check::Checker {
    check::Checker {
        db: state.db.clone(),
        resolver: state.resolver.clone(),
        settings: state.settings.clone(),
        metrics: state.metrics.clone(),
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_domain, routes::list_domains))
        .routes(routes!(routes::get_domain, routes::delete_domain))
        .routes(routes!(routes::verify_domain))
        .routes(routes!(routes::rotate_dkim))
}
