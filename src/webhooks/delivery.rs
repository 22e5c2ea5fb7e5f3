//! Delivering events to webhooks: the worker that claims due jobs, signs each payload the
//! Standard Webhooks way and POSTs it, and records every attempt.

use serde::Serialize;
use utoipa::ToSchema;

use crate::mail::destination::Policy;
use crate::store::Db;
use crate::store::crypto::MasterKey;

/// What one attempt at a delivery came to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outcome {
    /// The endpoint's HTTP status; `null` when no answer came.
    pub http_status: Option<u16>,
    pub latency_ms: i64,
    /// The first KiB of the reply's body.
    pub response: Option<String>,
    /// Why no answer came: the destination refused by policy, a timeout, a TLS failure…
    pub error: Option<String>,
}

/// Attempts the delivery `delivery_id` at once, records the attempt as the worker does,
/// and answers what came of it (`POST /v2/webhooks/{id}/test`).
pub async fn deliver_now(
    db: &Db,
    master_key: &MasterKey,
    policy: &Policy,
    delivery_id: &str,
) -> anyhow::Result<Outcome> {
    let _ = (db, master_key, policy, delivery_id);
    anyhow::bail!("not yet")
}
