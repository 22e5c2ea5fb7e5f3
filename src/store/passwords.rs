//! Passwords: Argon2id (m=19456 KiB, t=2, p=1) in the `{ARGON2ID}$argon2id$…` form that
//! Dovecot verifies. Hashing is slow by design, so it runs on blocking threads, at most
//! one per core at a time, and never holds up the threads that serve requests.

use std::sync::OnceLock;

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::Semaphore;

const SCHEME: &str = "{ARGON2ID}";

fn hasher() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

pub async fn hash(password: &str) -> anyhow::Result<String> {
    let password = password.to_string();
    let _permit = permits().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        let phc = hasher()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))?;
        Ok(format!("{SCHEME}{phc}"))
    })
    .await?
}

pub async fn verify(password: &str, stored: &str) -> anyhow::Result<bool> {
    let password = password.to_string();
    let stored = stored.strip_prefix(SCHEME).unwrap_or(stored).to_string();
    let _permit = permits().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("a stored password hash is malformed")?;
        Ok(hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// A password for someone who did not choose one: 24 letters and digits from a CSPRNG
/// (about 143 bits).
pub fn generate() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_have_dovecots_form_and_verify() {
        let stored = hash("correct horse battery").await.unwrap();
        assert!(
            stored.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("correct horse battery", &stored).await.unwrap());
        assert!(!verify("wrong horse battery", &stored).await.unwrap());
        assert_ne!(
            stored,
            hash("correct horse battery").await.unwrap(),
            "salted"
        );
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (a, b) = (generate(), generate());
        assert!(a.len() >= 20 && a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
