//! DKIM keys (the `dkim_keys` table): three per domain, one per token, RSA-2048 as DKIM
//! verifiers expect. The public half is published by mailroom's DNS server; the private
//! half is sealed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::OsRng;
use sqlx::Row;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::crypto::MasterKey;
use crate::store::{Db, Timestamp, placeholders};
use crate::types::DomainName;

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

/// Why a domain's keys were not made.
#[derive(Debug)]
pub enum KeygenError {
    /// Every key thread is busy and `queue` others already wait: try again shortly.
    Busy,
    Failed(anyhow::Error),
}

/// One domain's keys at a time per core: RSA key generation holds a core for a while.
fn key_threads() -> &'static Arc<Semaphore> {
    static THREADS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores))
    })
}

/// Domains waiting for a key thread, in this process.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// A place among the waiting; given back when dropped, even by a request that went away.
struct Waiting;

impl Waiting {
    fn join(queue: usize) -> Option<Waiting> {
        if WAITING.fetch_add(1, Ordering::SeqCst) < queue {
            Some(Waiting)
        } else {
            WAITING.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Generates a domain's keys on a blocking thread, at most one domain per core at once;
/// when all are busy, waits among at most `queue` others, or answers `Busy` at once
/// rather than let a burst of new domains pile up behind the cores.
pub async fn generate_keys(queue: usize) -> Result<Vec<NewKey>, KeygenError> {
    let turn: OwnedSemaphorePermit = match key_threads().clone().try_acquire_owned() {
        Ok(turn) => turn,
        Err(_) => {
            let waiting = Waiting::join(queue).ok_or(KeygenError::Busy)?;
            let turn = key_threads().clone().acquire_owned().await;
            drop(waiting);
            turn.map_err(|e| KeygenError::Failed(e.into()))?
        }
    };
    tokio::task::spawn_blocking(move || {
        // Held until the keys are made, even when the request that asked is gone.
        let _turn = turn;
        (0..KEYS_PER_DOMAIN)
            .map(|_| generate_key())
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await
    .map_err(|e| KeygenError::Failed(e.into()))?
    .map_err(KeygenError::Failed)
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
    now: Timestamp,
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
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The DKIM TXT value for a public key, as mailroom publishes it.
fn record_value(public_key_base64: &str) -> String {
    format!("v=DKIM1; k=rsa; p={public_key_base64}")
}

/// The TXT value published for `token`, when a key has that token.
pub async fn published(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    let key: Option<String> =
        sqlx::query_scalar("SELECT public_key FROM dkim_keys WHERE token = $1")
            .bind(token)
            .fetch_optional(&db.pool)
            .await?;
    Ok(key.as_deref().map(record_value))
}

/// The selector and private key (PKCS#8 DER) that sign mail of `account_id` From
/// `domain`, when the domain is active in that account. With `None` (the operator's own
/// mail) the key of the account where the domain is active, if any (one at most).
pub async fn signing_key(
    db: &Db,
    master_key: &MasterKey,
    account_id: Option<&str>,
    domain: &DomainName,
) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let key: Option<(String, String)> = sqlx::query_as(
        "SELECT k.token, k.private_key FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
         WHERE d.name = $1 AND d.status = 'active' AND ($2 IS NULL OR d.account_id = $2) \
         ORDER BY k.position LIMIT 1",
    )
    .bind(domain.as_str())
    .bind(account_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some((token, sealed)) = key else {
        return Ok(None);
    };
    let der = open_private_key(master_key, &token, &sealed)
        .map_err(|e| anyhow::anyhow!("the DKIM key of {domain}: {e}"))?;
    Ok(Some((token, der)))
}

/// A private key as PKCS#8 DER, opened from its sealed form.
pub fn open_private_key(
    master_key: &MasterKey,
    token: &str,
    sealed: &str,
) -> anyhow::Result<Vec<u8>> {
    master_key.open(sealed, &seal_context(token))
}

/// A domain's DKIM tokens, in order.
pub async fn tokens(db: &Db, domain_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT token FROM dkim_keys WHERE domain_id = $1 ORDER BY position")
        .bind(domain_id)
        .fetch_all(&db.pool)
        .await
}

/// The tokens of each of the domains `ids`, in order, with one query.
pub async fn tokens_of(db: &Db, ids: &[&str]) -> sqlx::Result<HashMap<String, Vec<String>>> {
    let mut tokens: HashMap<String, Vec<String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(tokens);
    }
    let sql = format!(
        "SELECT domain_id, token FROM dkim_keys WHERE domain_id IN ({}) ORDER BY domain_id, position",
        placeholders(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    for row in query.fetch_all(&db.pool).await? {
        tokens
            .entry(row.try_get("domain_id")?)
            .or_default()
            .push(row.try_get("token")?);
    }
    Ok(tokens)
}
