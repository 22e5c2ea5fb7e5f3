//! Metrics over HTTP: the layer that counts the API's requests, and the router of the
//! separate metrics listener, whose only page is `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::mail::outbox;
use crate::metrics::{CONTENT_TYPE, Metrics, Queue};
use crate::store::Db;

/// Counts a request under its route's template (`/v2/domains/{domain}`), never its path:
/// the path holds tenants' names, and a stranger could make up any number of them.
pub async fn count_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_request(
        route.as_ref().map(MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// What the metrics listener serves: `GET /metrics`, and 404 for anything else.
pub fn router(db: Db, metrics: Metrics) -> axum::Router {
    let scraper = Scraper {
        db,
        metrics,
        last_reading: Arc::default(),
    };
    axum::Router::new()
        .route("/metrics", get(scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(scraper)
}

#[derive(Clone)]
struct Scraper {
    db: Db,
    metrics: Metrics,
    /// The outbox as last read, and when: scrapes within a second of one another share one
    /// reading (and wait for it), so that a burst of them is one query, not one each.
    last_reading: Arc<tokio::sync::Mutex<Option<(Instant, Queue)>>>,
}

const READING_KEPT: Duration = Duration::from_secs(1);

impl Scraper {
    async fn queue(&self) -> sqlx::Result<Queue> {
        let mut last = self.last_reading.lock().await;
        if let Some((at, queue)) = *last
            && at.elapsed() < READING_KEPT
        {
            return Ok(queue);
        }
        let queue = outbox::queue(&self.db).await?;
        *last = Some((Instant::now(), queue));
        Ok(queue)
    }
}

async fn scrape(State(scraper): State<Scraper>) -> Response {
    let metrics = &scraper.metrics;
    match scraper.queue().await {
        Ok(queue) => (
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            metrics.encode(queue),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics: cannot read the outbox");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}
