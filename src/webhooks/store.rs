//! The `webhooks` and `webhook_subscriptions` tables, and the reads of an endpoint's
//! deliveries the API shows.

/// The context a webhook's signing secrets are sealed under.
pub fn seal_context(webhook_id: &str) -> String {
    format!("webhook:{webhook_id}")
}
