//! What an operator's Prometheus scrapes: counters the HTTP layer, the delivery worker, the
//! domain checks and the DNS server add to, and the outbox gauges read at scrape time.
//!
//! One `Metrics` per running app, never a process-wide one: several apps in one process
//! (as in the tests) each count their own. No label ever holds tenant data (a domain, an
//! address, an id) or a value a stranger chooses freely: every label has a bounded set of
//! values, so that nobody can grow the number of series.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of `Metrics::encode`'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The route label of requests that matched no route: the raw path is never a label.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request durations, in seconds: from a cache hit to a slow DNS check.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Held while the gauges are set and everything is encoded, so that two scrapes at
    /// once never mix their gauges.
    registry: Mutex<Registry>,
    queued: Gauge,
    due: Gauge,
    oldest_due_age: Gauge<f64, AtomicU64>,
    deliveries: Family<Outcome, Counter>,
    domain_checks: Family<Outcome, Counter>,
    http_requests: Family<HttpRequest, Counter>,
    http_latency: Family<HttpRoute, Histogram>,
    dns_queries: Family<DnsAnswer, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequest {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRoute {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsAnswer {
    rcode: &'static str,
}

/// How the outbox stands at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Queue {
    /// Messages not yet sent nor failed.
    pub queued: i64,
    /// Those of them due now: waiting for the worker, not for a retry's time.
    pub due: i64,
    /// How long the oldest due message has been due.
    pub oldest_due_age: Duration,
}

/// What came of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// A temporary failure, tried again later.
    Retry,
    /// Refused for good, or out of attempts.
    Failed,
}

/// What one check of a domain's DNS showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainCheck {
    Proven,
    Disproven,
    Inconclusive,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mailroom");
        let queued = Gauge::default();
        let due = Gauge::default();
        let oldest_due_age = Gauge::default();
        let deliveries = Family::default();
        let domain_checks = Family::default();
        let http_requests = Family::default();
        let http_latency: Family<HttpRoute, Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let dns_queries = Family::default();
        registry.register(
            "outbox_queued",
            "Messages waiting to be sent, due now or later",
            queued.clone(),
        );
        registry.register(
            "outbox_due",
            "Messages due now and waiting for the delivery worker",
            due.clone(),
        );
        registry.register(
            "outbox_oldest_due_age_seconds",
            "How long the oldest due message has been waiting for the delivery worker",
            oldest_due_age.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts by outcome: sent, retry, failed",
            deliveries.clone(),
        );
        registry.register(
            "domain_checks",
            "Checks of domains' DNS by outcome: proven, disproven, inconclusive",
            domain_checks.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP API requests by route template, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP API request durations by route template and method",
            http_latency.clone(),
        );
        registry.register(
            "dns_queries",
            "Questions mailroom's DNS server answered, by response code",
            dns_queries.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                queued,
                due,
                oldest_due_age,
                deliveries,
                domain_checks,
                http_requests,
                http_latency,
                dns_queries,
            }),
        }
    }

    pub fn delivery(&self, outcome: Delivery) {
        let outcome = match outcome {
            Delivery::Sent => "sent",
            Delivery::Retry => "retry",
            Delivery::Failed => "failed",
        };
        self.inner
            .deliveries
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    pub fn domain_check(&self, outcome: DomainCheck) {
        let outcome = match outcome {
            DomainCheck::Proven => "proven",
            DomainCheck::Disproven => "disproven",
            DomainCheck::Inconclusive => "inconclusive",
        };
        let family = &self.inner.domain_checks;
        family.get_or_create(&Outcome { outcome }).inc();
    }

    /// One HTTP request: `route` is the matched route's template (`None`: no route
    /// matched), never the path itself.
    pub fn http_request(&self, route: Option<&str>, method: &str, status: u16, took: Duration) {
        let route = route.unwrap_or(UNMATCHED_ROUTE).to_string();
        let method = known_method(method);
        let request = HttpRequest {
            route: route.clone(),
            method,
            status,
        };
        self.inner.http_requests.get_or_create(&request).inc();
        let family = &self.inner.http_latency;
        family
            .get_or_create(&HttpRoute { route, method })
            .observe(took.as_secs_f64());
    }

    /// One answer of the DNS server, by its response code (RFC 1035's numbers); the
    /// codes it never sends count as `other`.
    /// One answer of the DNS server; a truncated one (over a source's rate, or too large
    /// for UDP) is counted apart, so that a flood does not pass for healthy traffic.
    pub fn dns_query(&self, rcode: u16, truncated: bool) {
        let rcode = match rcode {
            _ if truncated => "truncated",
            0 => "noerror",
            1 => "formerr",
            2 => "servfail",
            3 => "nxdomain",
            4 => "notimp",
            5 => "refused",
            _ => "other",
        };
        self.inner
            .dns_queries
            .get_or_create(&DnsAnswer { rcode })
            .inc();
    }

    /// Everything, in the OpenMetrics text format, with the outbox gauges set from `queue`.
    pub fn encode(&self, queue: Queue) -> String {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.inner.queued.set(queue.queued);
        self.inner.due.set(queue.due);
        self.inner
            .oldest_due_age
            .set(queue.oldest_due_age.as_secs_f64());
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// The method as a label: the standard ones, else `other` (a client may send any token).
fn known_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
