//! The state every request handler shares, made once by the composition root (`app`)
//! from the parts below it.

use std::sync::Arc;

use crate::config::Settings;
use crate::dns::DnsResolver;
use crate::identity::KeyCache;
use crate::mail::destination::Policy;
use crate::metrics::Metrics;
use crate::store::Db;
use crate::store::crypto::MasterKey;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub settings: Arc<Settings>,
    /// The base of links in emails.
    pub public_url: Arc<str>,
    pub resolver: DnsResolver,
    pub master_key: MasterKey,
    /// Rung after an email is queued, so that the delivery worker starts at once.
    pub outbox_wakeup: Arc<tokio::sync::Notify>,
    /// Rung when webhook deliveries may have become due (an email sent or delivered, an
    /// endpoint enabled, a replay), so that the webhooks' worker looks at once rather than
    /// on its next round.
    pub webhooks_wakeup: Arc<tokio::sync::Notify>,
    pub api_keys: Arc<KeyCache>,
    /// Where tenants' relays may connect, parsed once at start.
    pub destination_policy: Arc<Policy>,
    /// This app's counters, which `/metrics` on the metrics listener shows.
    pub metrics: Metrics,
    /// Turns to read a large email request's body; see `emails::LARGE_BODIES_AT_ONCE`.
    pub large_bodies: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Call after committing a transaction that queued email.
    pub fn wake_outbox(&self) {
        self.outbox_wakeup.notify_one();
    }

    /// Call after committing a transaction that wrote events or made deliveries due.
    pub fn wake_webhooks(&self) {
        self.webhooks_wakeup.notify_one();
    }
}
