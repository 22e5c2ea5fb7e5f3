//! DKIM keys: three per domain, one per token, RSA-2048 as DKIM verifiers expect.
//! The public half is published by mailroom's DNS server; the private half is sealed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::OsRng;

use crate::store::Timestamp;
use crate::store::crypto::MasterKey;

pub const KEYS_PER_DOMAIN: usize = 3;
const BITS: usize = 2048;

pub struct NewKey {
    pub token: String,
    /// Base64 of the DER SubjectPublicKeyInfo: the `p=` of the DKIM record.
    pub public_key: String,
    private_der: Vec<u8>,
}

/// A token: 128 random bits in 32 hex digits, fit for a DNS label and a DKIM selector.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Generates a domain's keys on a blocking thread: RSA key generation takes a while.
pub async fn generate_keys() -> anyhow::Result<Vec<NewKey>> {
    tokio::task::spawn_blocking(|| (0..KEYS_PER_DOMAIN).map(|_| generate_key()).collect()).await?
}

fn generate_key() -> anyhow::Result<NewKey> {
    let private = rsa::RsaPrivateKey::new(&mut OsRng, BITS)?;
    let public_der = private.to_public_key().to_public_key_der()?;
    Ok(NewKey {
        token: new_token(),
        public_key: STANDARD.encode(public_der.as_bytes()),
        private_der: private.to_pkcs8_der()?.as_bytes().to_vec(),
    })
}

fn seal_context(token: &str) -> String {
    format!("dkim:{token}")
}

pub async fn insert_keys(
    conn: &mut sqlx::AnyConnection,
    domain_id: &str,
    keys: &[NewKey],
    master_key: &MasterKey,
) -> sqlx::Result<()> {
    for (position, key) in keys.iter().enumerate() {
        sqlx::query(
            "INSERT INTO dkim_keys (token, domain_id, position, public_key, private_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.token)
        .bind(domain_id)
        .bind(position as i64)
        .bind(&key.public_key)
        .bind(master_key.seal(&key.private_der, &seal_context(&key.token)))
        .bind(Timestamp::now().0)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A private key as PKCS#8 DER, opened from its sealed form.
pub fn open_private_key(
    master_key: &MasterKey,
    token: &str,
    sealed: &str,
) -> anyhow::Result<Vec<u8>> {
    master_key.open(sealed, &seal_context(token))
}
