//! Secrets handed to users (API keys, access tokens, one-time tokens): 256 random bits,
//! shown once, stored only as a SHA-256 digest so that a lookup is one indexed query.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// `{prefix}_{64 hex}`; the prefix tells a reader what kind of secret it is.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The digest stored in place of a secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_256_bits_and_differ() {
        let a = new_secret("mrk");
        let b = new_secret("mrk");
        assert_ne!(a, b);
        let random = a.strip_prefix("mrk_").unwrap();
        assert_eq!(random.len(), 64);
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_digest_is_stable_and_hides_the_secret() {
        let secret = new_secret("mrk");
        assert_eq!(digest(&secret), digest(&secret));
        assert!(!digest(&secret).contains(&secret[4..]));
    }
}
