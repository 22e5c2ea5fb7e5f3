//! Signing a webhook's payload the Standard Webhooks way, so that receivers verify it
//! with the published libraries: `v1,` and the base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// What a signing secret looks like as the API shows it: this, then base64.
pub const PREFIX: &str = "whsec_";

/// A signing key, built only from a well-formed `whsec_…` secret.
pub struct SigningKey(ring::hmac::Key);

impl SigningKey {
    /// The key of a `whsec_<base64>` secret.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a signing secret starts with {PREFIX}"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| "a signing secret is base64 after its prefix".to_string())?;
        if bytes.is_empty() {
            return Err("a signing secret is not empty".to_string());
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

/// The `webhook-signature` header: one signature per key, space-separated (during a
/// rotation the previous secret signs beside the new one, so that receivers holding
/// either accept the message).
pub fn header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its libraries' tests.
    #[test]
    fn signs_as_the_specification_does() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signed = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_keys_sign_side_by_side() {
        let keys = [
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
        ];
        let signed = header(&keys, "evt_1", 1, b"{}");
        let parts: Vec<&str> = signed.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
        ] {
            assert!(SigningKey::parse(bad).is_err(), "{bad}");
        }
    }
}
