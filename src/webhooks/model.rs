//! A webhook as the API takes and shows it: its URL, the event types it receives and its
//! description, each parsed once; its signing secret, made here and shown only once.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::events::{TEST_TYPE, TYPES};
use crate::store::Timestamp;
use crate::types::text::check_text;

/// The longest URL a webhook may have.
pub const MAX_URL_CHARS: usize = 2048;
/// The longest description a webhook may have.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// The statuses of a delivery.
pub const DELIVERY_STATUSES: [&str; 4] = ["pending", "delivering", "succeeded", "failed"];

/// A webhook endpoint's URL: absolute, `https` or `http`, with a host, without credentials
/// (they would be stored and shown in clear) or a fragment. The `url` crate writes it in
/// its normal form, so an address spelled in decimal, octal or hex (`http://2130706433/`)
/// is the address it stands for.
#[derive(Debug, Clone)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        if text.chars().count() > MAX_URL_CHARS {
            return Err(format!("url must be at most {MAX_URL_CHARS} characters"));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("url must not contain spaces or control characters".to_string());
        }
        let url = url::Url::parse(text).map_err(|e| {
            format!("url must be an absolute URL such as https://example.com/hooks ({e})")
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(
                "url must start with https:// (or http:// where the operator allows it)"
                    .to_string(),
            );
        }
        if url.host().is_none() {
            return Err("url must name a host".to_string());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "url must not carry a user name or password: they would be stored in clear; \
                 check the signature instead"
                    .to_string(),
            );
        }
        if url.fragment().is_some() {
            return Err("url must not have a fragment (#…)".to_string());
        }
        if url.as_str().chars().count() > MAX_URL_CHARS {
            return Err(format!("url must be at most {MAX_URL_CHARS} characters"));
        }
        Ok(WebhookUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// The host's address when the host is one (`None`: a name).
    pub fn address(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }

    pub fn port(&self) -> u16 {
        self.0
            .port_or_known_default()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

/// The event types a webhook receives: at least one, each one of `events::TYPES`, each
/// once (in the order first given).
pub fn parse_event_types(given: &[String]) -> Result<Vec<String>, String> {
    if given.is_empty() {
        return Err(format!(
            "events must list at least one event type: {}",
            TYPES.join(", ")
        ));
    }
    let mut types: Vec<String> = Vec::new();
    for kind in given {
        let kind = kind.trim();
        if !TYPES.contains(&kind) {
            return Err(format!(
                "events: `{}` is not an event type; they are {}",
                kind.escape_debug(),
                TYPES.join(", ")
            ));
        }
        if !types.iter().any(|t| t == kind) {
            types.push(kind.to_string());
        }
    }
    Ok(types)
}

/// The event types a list of events may be filtered by: those of `TYPES` and the test
/// event's, given repeated or comma-separated.
pub fn parse_type_filter(given: &[String]) -> Result<Vec<String>, String> {
    let mut types: Vec<String> = Vec::new();
    for kind in given.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if kind.is_empty() {
            continue;
        }
        if !TYPES.contains(&kind) && kind != TEST_TYPE {
            return Err(format!(
                "type: `{}` is not an event type; they are {}, {TEST_TYPE}",
                kind.escape_debug(),
                TYPES.join(", ")
            ));
        }
        if !types.iter().any(|t| t == kind) {
            types.push(kind.to_string());
        }
    }
    Ok(types)
}

/// A description: trimmed, at most `MAX_DESCRIPTION_CHARS` characters, no control or
/// invisible characters; empty means none.
pub fn parse_description(given: Option<&str>) -> Result<Option<String>, String> {
    let Some(text) = given.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    check_text(text).map_err(|e| format!("description {e}"))?;
    Ok(Some(text.to_string()))
}

/// A new signing secret, the Standard Webhooks way: `whsec_` and the base64 of 32 random
/// bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: `https://…` (plain `http` only where the operator allows),
    /// at most 2048 characters, without credentials or a fragment.
    #[schema(example = "https://example.com/hooks/mailroom", max_length = 2048)]
    pub url: String,
    /// The event types to receive (at least one).
    #[schema(schema_with = event_types_schema)]
    pub events: Vec<String>,
    /// A note for people, up to 256 characters.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// Replaces the event types received.
    #[serde(default)]
    #[schema(schema_with = event_types_schema)]
    pub events: Option<Vec<String>>,
    /// `true` turns a disabled endpoint back on (its failure count starts again).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `null` or `""` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 256)]
    pub description: Option<Option<String>>,
}

/// The schema of a list of event types: the types are spelled out for clients.
fn event_types_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .enum_values(Some(TYPES)),
        )
        .min_items(Some(1))
        .examples([serde_json::json!(["email.sent", "email.bounced"])])
        .build()
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A webhook endpoint. Its signing secret is shown only when made.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    /// `wh_…`
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// The event types it receives.
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why mailroom turned it off (`endpoint.disabled: …`); `null` when it did not.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<Timestamp>,
    /// Until when the secret replaced by the last rotation still signs beside the new one;
    /// `null` when only one secret signs.
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A webhook just made, with its signing secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify each delivery's `webhook-signature` with it. Shown only now.
    pub secret: String,
}

/// A webhook's new signing secret.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`, shown only now. The previous secret keeps signing beside it until
    /// `previous_secret_expires_at`.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
    pub limit: i64,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookPage {
    /// The `next_after` of the previous page: only webhooks made after it.
    pub after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub number: i64,
    pub at: Timestamp,
    /// The endpoint's HTTP status; `null` when no answer came.
    pub http_status: Option<i64>,
    pub latency_ms: i64,
    /// The first KiB of the reply's body.
    pub response: Option<String>,
    /// Why no answer came (refused by policy, timeout, TLS…).
    pub error: Option<String>,
}

/// One event's delivery to one endpoint, with every attempt at it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// `whd_…`
    pub id: String,
    /// The event's id, which is the `webhook-id` header: the same on every attempt and
    /// replay.
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivering`, `succeeded` or `failed` (out of attempts).
    pub status: String,
    pub attempts: Vec<Attempt>,
    /// When it is tried next; `null` once final.
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip)]
    pub position: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<Delivery>,
    pub limit: i64,
    /// Pass as `after` for the next (older) page; `null` on the last page.
    pub next_after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// Only deliveries in this status: `pending`, `delivering`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// The `next_after` of the previous page: only deliveries older than it.
    pub after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// What `POST /v2/webhooks/{id}/test` did.
#[derive(Serialize, ToSchema)]
pub struct TestAnswer {
    pub delivery_id: String,
    pub event_id: String,
    /// What the endpoint replied, or why it could not be reached.
    pub outcome: Outcome,
}

/// An event as the log lists it and webhooks receive it.
#[derive(Serialize, ToSchema)]
pub struct EventSchema {
    /// `evt_…`: also the `webhook-id` header of its deliveries.
    pub id: String,
    /// `email.sent`, `domain.verified`…
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: Timestamp,
    pub account_id: String,
    /// The entity it concerns, when one.
    pub entity_id: Option<String>,
    /// The object as the API showed it when the event happened.
    pub data: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    #[schema(value_type = Vec<EventSchema>)]
    pub items: Vec<crate::events::Event>,
    pub limit: i64,
    /// Pass as `after` for the next page; `null` when this page is not full.
    pub next_after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Only events of these types: repeated (`type=a&type=b`) or comma-separated.
    #[serde(default, rename = "type")]
    pub types: Option<Vec<String>>,
    /// The `next_after` of the previous page (an event id): only events after it.
    pub after: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_any_spelling_are_read_as_addresses() {
        for (text, ip) in [
            ("http://2130706433/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("https://[::1]/", "::1"),
            ("https://[::ffff:10.0.0.1]:8443/x", "::ffff:10.0.0.1"),
        ] {
            let url = WebhookUrl::parse(text).unwrap();
            assert_eq!(url.address(), Some(ip.parse().unwrap()), "{text}");
        }
        assert_eq!(
            WebhookUrl::parse("https://example.com").unwrap().address(),
            None
        );
    }

    #[test]
    fn urls_that_cannot_be_stored_are_refused() {
        for text in [
            "example.com/hooks",
            "/hooks",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "https://exa mple.com/",
            "https://example.com/\n",
            "mailto:a@example.com",
        ] {
            assert!(WebhookUrl::parse(text).is_err(), "{text}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(WebhookUrl::parse(&long).is_err());
    }

    #[test]
    fn event_types_are_folded() {
        let given = ["email.sent", "email.sent", "domain.verified"].map(String::from);
        assert_eq!(
            parse_event_types(&given).unwrap(),
            ["email.sent", "domain.verified"]
        );
        assert!(parse_event_types(&[]).is_err());
        assert!(parse_event_types(&["webhook.test".to_string()]).is_err());
    }
}

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
