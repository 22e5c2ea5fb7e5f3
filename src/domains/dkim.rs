//! DKIM keys (the `dkim_keys` table): one behind each of a domain's three tokens, which
//! are its selectors and never change. One selector signs with RSA-2048, one with Ed25519
//! (a second signature), one stands by; a rotation publishes a new key behind the standby
//! selector, switches signing to it once the old TXT can no longer be cached, and keeps
//! the old key published until mail signed with it has been checked. The public half is
//! published by mailroom's DNS server; the private half is sealed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use ring::signature::KeyPair as _;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::OsRng;
use sqlx::Row;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::model::{Dkim, DkimKey, KeyState};
use crate::config::Settings;
use crate::mail::dkim::Algorithm;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Timestamp, placeholders};
use crate::types::DomainName;

const RSA_BITS: usize = 2048;
const DAY: i64 = 86_400_000;

/// What a new domain's three selectors hold: an RSA key and an Ed25519 key that sign
/// from the start, and a standby key that never signs (a rotation replaces it).
const NEW_DOMAIN: [(Algorithm, bool); 3] = [
    (Algorithm::Rsa, true),
    (Algorithm::Ed25519, true),
    (Algorithm::Ed25519, false),
];

pub struct NewKey {
    pub algorithm: Algorithm,
    /// Base64 of the DKIM `p=`: the DER SubjectPublicKeyInfo for RSA, the raw 32 bytes
    /// for Ed25519 (RFC 8463 §4).
    pub public_key: String,
    private_der: Vec<u8>,
}

/// A token: 128 random bits in 32 hex digits, fit for a DNS label and a DKIM selector.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Why a key was not made.
#[derive(Debug)]
pub enum KeygenError {
    /// Every key thread is busy and `queue` others already wait: try again shortly.
    Busy,
    Failed(anyhow::Error),
}

/// One RSA key at a time per core: its generation holds a core for a while.
fn key_threads() -> &'static Arc<Semaphore> {
    static THREADS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores))
    })
}

/// Keys waiting for a key thread, in this process.
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

/// Makes keys of `algorithms`, in their order. Ed25519 keys are made at once; RSA ones
/// on a blocking thread, at most one per core at once; when all are busy, the caller
/// waits among at most `queue` others, or gets `Busy` at once rather than let a burst of
/// new domains pile up behind the cores.
pub async fn generate_keys(
    algorithms: &[Algorithm],
    queue: usize,
) -> Result<Vec<NewKey>, KeygenError> {
    let algorithms = algorithms.to_vec();
    if !algorithms.contains(&Algorithm::Rsa) {
        return generate_each(&algorithms).map_err(KeygenError::Failed);
    }
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
        generate_each(&algorithms)
    })
    .await
    .map_err(|e| KeygenError::Failed(e.into()))?
    .map_err(KeygenError::Failed)
}

fn generate_each(algorithms: &[Algorithm]) -> anyhow::Result<Vec<NewKey>> {
    algorithms.iter().map(|a| generate_key(*a)).collect()
}

fn generate_key(algorithm: Algorithm) -> anyhow::Result<NewKey> {
    let (public, private_der) = match algorithm {
        Algorithm::Rsa => {
            let private = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)?;
            let public = private.to_public_key().to_public_key_der()?;
            (
                public.as_bytes().to_vec(),
                private.to_pkcs8_der()?.as_bytes().to_vec(),
            )
        }
        Algorithm::Ed25519 => {
            let random = ring::rand::SystemRandom::new();
            let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&random)
                .map_err(|e| anyhow::anyhow!("cannot make an Ed25519 key: {e}"))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.as_ref())
                .map_err(|e| anyhow::anyhow!("cannot read an Ed25519 key: {e}"))?;
            (pair.public_key().as_ref().to_vec(), der.as_ref().to_vec())
        }
    };
    Ok(NewKey {
        algorithm,
        public_key: STANDARD.encode(public),
        private_der,
    })
}

fn seal_context(token: &str) -> String {
    format!("dkim:{token}")
}

/// A new domain's three keys (made by `new_domain_keys`), each behind a new token.
pub async fn insert_keys(
    conn: &mut sqlx::AnyConnection,
    domain_id: &str,
    keys: &[NewKey],
    master_key: &MasterKey,
    now: Timestamp,
) -> sqlx::Result<()> {
    for (position, (key, (_, signs))) in keys.iter().zip(NEW_DOMAIN).enumerate() {
        let token = new_token();
        sqlx::query(
            "INSERT INTO dkim_keys (token, domain_id, position, algorithm, public_key, private_key, \
             created_at, signing_since) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token)
        .bind(domain_id)
        .bind(position as i64)
        .bind(key.algorithm.as_str())
        .bind(&key.public_key)
        .bind(master_key.seal(&key.private_der, &seal_context(&token)))
        .bind(now.0)
        .bind(signs.then_some(now.0))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Makes a new domain's keys.
pub async fn new_domain_keys(queue: usize) -> Result<Vec<NewKey>, KeygenError> {
    generate_keys(&NEW_DOMAIN.map(|(algorithm, _)| algorithm), queue).await
}

/// A `dkim_keys` row, without the private key.
#[derive(Debug, Clone)]
struct KeyRow {
    token: String,
    algorithm: Algorithm,
    created_at: i64,
    signing_since: Option<i64>,
    signing_until: Option<i64>,
    retire_at: Option<i64>,
}

const KEY_COLUMNS: &str =
    "domain_id, token, algorithm, created_at, signing_since, signing_until, retire_at";

impl KeyRow {
    fn read(row: &sqlx::any::AnyRow) -> sqlx::Result<KeyRow> {
        let algorithm: String = row.try_get("algorithm")?;
        Ok(KeyRow {
            token: row.try_get("token")?,
            algorithm: Algorithm::parse(&algorithm).map_err(|e| sqlx::Error::Decode(e.into()))?,
            created_at: row.try_get("created_at")?,
            signing_since: row.try_get("signing_since")?,
            signing_until: row.try_get("signing_until")?,
            retire_at: row.try_get("retire_at")?,
        })
    }

    fn state(&self, now: i64) -> KeyState {
        match (self.signing_since, self.signing_until, self.retire_at) {
            (None, _, _) => KeyState::Standby,
            (_, _, Some(retire_at)) if retire_at <= now => KeyState::Standby,
            (Some(since), _, _) if now < since => KeyState::Published,
            (Some(_), Some(until), _) if until <= now => KeyState::Retiring,
            _ => KeyState::Signing,
        }
    }

    fn view(&self, now: i64) -> DkimKey {
        let state = self.state(now);
        let shown = |at: Option<i64>| match state {
            KeyState::Standby => None,
            _ => at.map(Timestamp),
        };
        DkimKey {
            selector: self.token.clone(),
            algorithm: self.algorithm.as_str(),
            bits: (self.algorithm == Algorithm::Rsa).then_some(RSA_BITS as u32),
            state,
            created_at: Timestamp(self.created_at),
            signing_since: shown(self.signing_since),
            retire_at: shown(self.retire_at),
        }
    }
}

/// The rotation schedule, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// A signing key older than this is rotated; `None`: only on request.
    pub rotate_after_ms: Option<i64>,
    pub switch_after_ms: i64,
    pub retire_after_ms: i64,
    /// Whether Ed25519 keys sign (and so are rotated on schedule).
    pub ed25519: bool,
}

impl Schedule {
    pub fn of(settings: &Settings) -> Schedule {
        let ms = |value: u64, unit: i64| {
            i64::try_from(value)
                .unwrap_or(i64::MAX / unit)
                .saturating_mul(unit)
        };
        Schedule {
            rotate_after_ms: (settings.dkim_rotate_days > 0)
                .then(|| ms(settings.dkim_rotate_days, DAY)),
            switch_after_ms: ms(settings.dkim_switch_after_seconds, 1000),
            retire_after_ms: ms(settings.dkim_retire_after_hours, 3_600_000),
            ed25519: settings.dkim_ed25519,
        }
    }

    fn signs(&self, algorithm: Algorithm) -> bool {
        algorithm == Algorithm::Rsa || self.ed25519
    }

    /// When a domain with `keys` is next rotated automatically: when its oldest signing
    /// key has signed for the rotation period, but not before the rotation under way ends.
    fn next_rotation(&self, keys: &[KeyRow], now: i64) -> Option<i64> {
        let rotate_after = self.rotate_after_ms?;
        let due = keys
            .iter()
            .filter(|k| self.signs(k.algorithm) && k.signing_until.is_none())
            .filter_map(|k| k.signing_since)
            .min()?
            .saturating_add(rotate_after);
        Some(under_way_until(keys, now).map_or(due, |until| due.max(until)))
    }
}

/// The DKIM part of the API's view of each of the domains `ids`, with one query.
pub async fn views_of(
    db: &Db,
    ids: &[&str],
    schedule: Schedule,
) -> sqlx::Result<HashMap<String, Dkim>> {
    let mut conn = db.pool.acquire().await?;
    views_in(&mut conn, ids, schedule, db.now().0).await
}

/// `views_of` through `conn`, inside a transaction that just changed the keys.
async fn views_in(
    conn: &mut sqlx::AnyConnection,
    ids: &[&str],
    schedule: Schedule,
    now: i64,
) -> sqlx::Result<HashMap<String, Dkim>> {
    let mut rows: HashMap<String, Vec<KeyRow>> = HashMap::new();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM dkim_keys WHERE domain_id IN ({}) ORDER BY domain_id, position",
        placeholders(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    for row in query.fetch_all(&mut *conn).await? {
        rows.entry(row.try_get("domain_id")?)
            .or_default()
            .push(KeyRow::read(&row)?);
    }
    Ok(rows
        .into_iter()
        .map(|(id, keys)| {
            let dkim = Dkim {
                keys: keys.iter().map(|k| k.view(now)).collect(),
                next_rotation_at: schedule.next_rotation(&keys, now).map(Timestamp),
            };
            (id, dkim)
        })
        .collect())
}

/// The DKIM TXT value for a key, as mailroom publishes it; an empty `p=` says the key is
/// revoked (RFC 6376 §3.6.1).
fn record_value(algorithm: Algorithm, public_key_base64: &str) -> String {
    format!("v=DKIM1; k={}; p={public_key_base64}", algorithm.as_str())
}

/// The TXT value published for `token` at `now`, when a key has that token: a retired
/// key is answered as revoked until its selector holds the next one.
pub async fn published(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    let key: Option<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT algorithm, public_key, retire_at FROM dkim_keys WHERE token = $1")
            .bind(token)
            .fetch_optional(&db.pool)
            .await?;
    let Some((algorithm, public_key, retire_at)) = key else {
        return Ok(None);
    };
    let algorithm = Algorithm::parse(&algorithm).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let retired = retire_at.is_some_and(|at| at <= db.now().0);
    Ok(Some(match retired {
        true => record_value(algorithm, ""),
        false => record_value(algorithm, &public_key),
    }))
}

/// A key that signs, opened.
pub struct Signing {
    pub selector: String,
    pub algorithm: Algorithm,
    /// PKCS#8 DER.
    pub private_der: Vec<u8>,
}

/// The keys that sign mail of `account_id` From `domain` now, RSA first (the Ed25519 one
/// only when `ed25519`), when the domain is active in that account. With `None` (the operator's own mail) the keys of the
/// account where the domain is active, if any (one at most).
pub async fn signing_keys(
    db: &Db,
    master_key: &MasterKey,
    account_id: Option<&str>,
    domain: &DomainName,
    ed25519: bool,
) -> anyhow::Result<Vec<Signing>> {
    let now = db.now().0;
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT k.token, k.algorithm, k.private_key FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
         WHERE d.name = $1 AND d.status = 'active' AND ($2 IS NULL OR d.account_id = $2) \
         AND k.signing_since <= $3 AND (k.signing_until IS NULL OR k.signing_until > $3) \
         AND (k.algorithm = 'rsa' OR $4 = 1)",
    )
    .bind(domain.as_str())
    .bind(account_id)
    .bind(now)
    .bind(i64::from(ed25519))
    .fetch_all(&db.pool)
    .await?;
    let mut signing = Vec::with_capacity(keys.len());
    for (token, algorithm, sealed) in keys {
        let private_der = open_private_key(master_key, &token, &sealed)
            .map_err(|e| anyhow::anyhow!("the DKIM key of {domain}: {e}"))?;
        signing.push(Signing {
            selector: token,
            algorithm: Algorithm::parse(&algorithm)?,
            private_der,
        });
    }
    signing.sort_by_key(|key| key.algorithm != Algorithm::Rsa);
    Ok(signing)
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
pub async fn tokens_of<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Any>,
    ids: &[&str],
) -> sqlx::Result<HashMap<String, Vec<String>>> {
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
    for row in query.fetch_all(executor).await? {
        tokens
            .entry(row.try_get("domain_id")?)
            .or_default()
            .push(row.try_get("token")?);
    }
    Ok(tokens)
}

/// Why a rotation did not start.
#[derive(Debug)]
pub enum RotateError {
    /// A rotation is under way: a new key waits to sign, or an old one to retire, until
    /// `until`.
    InProgress {
        until: Option<Timestamp>,
    },
    /// The domain is gone.
    NotFound,
    Keygen(KeygenError),
    Failed(anyhow::Error),
}

impl From<sqlx::Error> for RotateError {
    fn from(error: sqlx::Error) -> RotateError {
        RotateError::Failed(error.into())
    }
}

/// The standby selector a rotation of a domain with `keys` takes (the highest: a domain
/// from before Ed25519 keeps its lowest for the Ed25519 key it is given), or why none.
fn free_standby(keys: &[KeyRow], now: i64) -> Result<String, RotateError> {
    if keys.is_empty() {
        return Err(RotateError::NotFound);
    }
    let under_way = under_way_until(keys, now);
    let standby = keys
        .iter()
        .rev()
        .find(|k| k.state(now) == KeyState::Standby);
    match standby {
        Some(standby) if under_way.is_none() => Ok(standby.token.clone()),
        _ => Err(RotateError::InProgress {
            until: under_way.map(Timestamp),
        }),
    }
}

/// When the rotation under way among `keys` ends — its new key signs and its old one
/// retires — if one is under way at `now`.
fn under_way_until(keys: &[KeyRow], now: i64) -> Option<i64> {
    keys.iter()
        .flat_map(|k| [k.signing_since, k.retire_at])
        .flatten()
        .filter(|at| *at > now)
        .max()
}

/// Serializes changes to one domain's keys until `tx` ends: the row lock on PostgreSQL,
/// the write lock on SQLite. False when the domain is gone.
async fn lock_domain(tx: &mut sqlx::AnyConnection, domain_id: &str) -> sqlx::Result<bool> {
    let locked = sqlx::query("UPDATE domains SET id = id WHERE id = $1")
        .bind(domain_id)
        .execute(tx)
        .await?;
    Ok(locked.rows_affected() == 1)
}

/// Rotates the `algorithm` key of the domain `domain_id`: a new key goes behind the
/// standby selector at once and signs from `switch_after`; the key it replaces signs until
/// then and stays published for `retire_after` more. The change, and the event that
/// announces it (`announce`, given the domain's DKIM as it is now), are one transaction,
/// under the domain's lock. A domain has one rotation at a time: while a new key waits to
/// sign or an old one to retire (or another request, another instance, got there first),
/// this one is `InProgress` and changes nothing.
pub async fn rotate<F>(
    db: &Db,
    master_key: &MasterKey,
    schedule: Schedule,
    domain_id: &str,
    algorithm: Algorithm,
    queue: usize,
    announce: F,
) -> Result<(), RotateError>
where
    F: for<'c> AsyncFnOnce(&'c mut sqlx::AnyConnection, Dkim) -> anyhow::Result<()>,
{
    // Checked before the key is made, so that a refused rotation costs no CPU...
    let keys = keys_of(&mut *db.pool.acquire().await?, domain_id).await?;
    free_standby(&keys, db.now().0)?;
    let new = generate_keys(&[algorithm], queue)
        .await
        .map_err(RotateError::Keygen)?
        .remove(0);
    let now = db.now().0;
    let switch_at = now.saturating_add(schedule.switch_after_ms);
    let mut tx = db.begin().await?;
    if !lock_domain(&mut tx, domain_id).await? {
        return Err(RotateError::NotFound);
    }
    // ...and again under the lock, where no other change of the domain's keys can pass it.
    let standby = free_standby(&keys_of(&mut tx, domain_id).await?, now)?;
    sqlx::query(
        "UPDATE dkim_keys SET algorithm = $1, public_key = $2, private_key = $3, created_at = $4, \
         signing_since = $5, signing_until = NULL, retire_at = NULL WHERE token = $6",
    )
    .bind(algorithm.as_str())
    .bind(&new.public_key)
    .bind(master_key.seal(&new.private_der, &seal_context(&standby)))
    .bind(now)
    .bind(switch_at)
    .bind(&standby)
    .execute(&mut *tx)
    .await?;
    // The key this one replaces: the one signing with this algorithm.
    sqlx::query(
        "UPDATE dkim_keys SET signing_until = $1, retire_at = $2 \
         WHERE domain_id = $3 AND algorithm = $4 AND token <> $5 \
         AND signing_since IS NOT NULL AND signing_until IS NULL",
    )
    .bind(switch_at)
    .bind(switch_at.saturating_add(schedule.retire_after_ms))
    .bind(domain_id)
    .bind(algorithm.as_str())
    .bind(&standby)
    .execute(&mut *tx)
    .await?;
    let dkim = views_in(&mut tx, &[domain_id], schedule, now)
        .await?
        .remove(domain_id)
        .ok_or(RotateError::NotFound)?;
    announce(&mut *tx, dkim)
        .await
        .map_err(RotateError::Failed)?;
    tx.commit().await?;
    Ok(())
}

async fn keys_of(conn: &mut sqlx::AnyConnection, domain_id: &str) -> sqlx::Result<Vec<KeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM dkim_keys WHERE domain_id = $1 ORDER BY position");
    sqlx::query(&sql)
        .bind(domain_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(KeyRow::read)
        .collect()
}

/// Active domains with a key that has signed for the rotation period, a free standby
/// selector and no rotation under way, the longest-signing first: (domain id, the key's algorithm).
pub async fn due_for_rotation(
    db: &Db,
    schedule: Schedule,
    limit: i64,
) -> sqlx::Result<Vec<(String, Algorithm)>> {
    let Some(rotate_after) = schedule.rotate_after_ms else {
        return Ok(Vec::new());
    };
    let now = db.now().0;
    let only_rsa = match schedule.ed25519 {
        true => "",
        false => "AND k.algorithm = 'rsa'",
    };
    let sql = format!(
        "SELECT k.domain_id, k.algorithm FROM dkim_keys k JOIN domains d ON d.id = k.domain_id \
         WHERE k.signing_until IS NULL AND k.signing_since <= $1 {only_rsa} AND d.status = 'active' \
         AND EXISTS (SELECT 1 FROM dkim_keys s WHERE s.domain_id = k.domain_id \
                     AND (s.signing_since IS NULL OR s.retire_at <= $2)) \
         AND NOT EXISTS (SELECT 1 FROM dkim_keys u WHERE u.domain_id = k.domain_id \
                         AND (u.signing_since > $2 OR u.retire_at > $2)) \
         ORDER BY k.signing_since LIMIT $3"
    );
    let rows: Vec<(String, String)> = sqlx::query_as(&sql)
        .bind(now.saturating_sub(rotate_after))
        .bind(now)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    let mut due: Vec<(String, Algorithm)> = Vec::with_capacity(rows.len());
    for (domain_id, algorithm) in rows {
        // One rotation at a time per domain: its other key waits for the next round.
        if !due.iter().any(|(id, _)| *id == domain_id) {
            due.push((
                domain_id,
                Algorithm::parse(&algorithm).map_err(|e| sqlx::Error::Decode(e.into()))?,
            ));
        }
    }
    Ok(due)
}

/// Gives each domain from before Ed25519 an Ed25519 key behind its first standby
/// selector, published at once and signing after the switch delay (a resolver may still
/// hold the selector's old TXT until then), `limit` domains at most. A domain whose keys
/// an older mailroom made after the migration (none signing yet) gets its first key
/// signing too. Answers how many domains were upgraded, and whether more may be left;
/// safe to run on several instances at once.
pub async fn give_ed25519_keys(
    db: &Db,
    master_key: &MasterKey,
    schedule: Schedule,
    limit: i64,
) -> anyhow::Result<(u64, bool)> {
    let domains: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT s.domain_id FROM dkim_keys s WHERE s.signing_since IS NULL \
         AND NOT EXISTS (SELECT 1 FROM dkim_keys e WHERE e.domain_id = s.domain_id AND e.algorithm = 'ed25519') \
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let more = domains.len() as i64 == limit;
    let mut upgraded = 0;
    for domain_id in domains {
        let key = generate_key(Algorithm::Ed25519)?;
        let now = db.now().0;
        let mut tx = db.begin().await?;
        if !lock_domain(&mut tx, &domain_id).await? {
            continue;
        }
        let keys = keys_of(&mut tx, &domain_id).await?;
        if keys.iter().any(|k| k.algorithm == Algorithm::Ed25519) {
            continue;
        }
        if let Some(first) = keys.first()
            && !keys.iter().any(|k| k.signing_since.is_some())
        {
            sqlx::query("UPDATE dkim_keys SET signing_since = created_at WHERE token = $1")
                .bind(&first.token)
                .execute(&mut *tx)
                .await?;
        }
        let standby = keys
            .iter()
            .skip(1)
            .find(|k| k.state(now) == KeyState::Standby);
        let Some(standby) = standby else {
            continue;
        };
        sqlx::query(
            "UPDATE dkim_keys SET algorithm = 'ed25519', public_key = $1, private_key = $2, \
             created_at = $3, signing_since = $4, signing_until = NULL, retire_at = NULL \
             WHERE token = $5",
        )
        .bind(&key.public_key)
        .bind(master_key.seal(&key.private_der, &seal_context(&standby.token)))
        .bind(now)
        .bind(now.saturating_add(schedule.switch_after_ms))
        .bind(&standby.token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        upgraded += 1;
    }
    Ok((upgraded, more))
}

/// Forgets the private keys retired by now: no one may sign with them again.
pub async fn forget_retired(db: &Db) -> sqlx::Result<u64> {
    let forgotten = db
        .write_alone(
            sqlx::query(
                "UPDATE dkim_keys SET private_key = '', public_key = '' \
                 WHERE retire_at <= $1 AND private_key <> ''",
            )
            .bind(db.now().0),
        )
        .await?;
    Ok(forgotten.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(since: Option<i64>, until: Option<i64>, retire: Option<i64>) -> KeyRow {
        KeyRow {
            token: "t".into(),
            algorithm: Algorithm::Rsa,
            created_at: 0,
            signing_since: since,
            signing_until: until,
            retire_at: retire,
        }
    }

    #[test]
    fn a_keys_state_follows_the_clock() {
        assert_eq!(key(None, None, None).state(5), KeyState::Standby);
        assert_eq!(key(Some(10), None, None).state(5), KeyState::Published);
        assert_eq!(key(Some(10), None, None).state(10), KeyState::Signing);
        let replaced = key(Some(0), Some(10), Some(20));
        assert_eq!(replaced.state(9), KeyState::Signing);
        assert_eq!(replaced.state(10), KeyState::Retiring);
        assert_eq!(replaced.state(19), KeyState::Retiring);
        assert_eq!(replaced.state(20), KeyState::Standby);
        assert_eq!(replaced.view(20).retire_at, None);
    }

    #[test]
    fn the_next_rotation_waits_for_the_one_under_way() {
        let schedule = Schedule {
            rotate_after_ms: Some(100),
            switch_after_ms: 10,
            retire_after_ms: 50,
            ed25519: true,
        };
        let calm = [key(Some(0), None, None), key(None, None, None)];
        assert_eq!(schedule.next_rotation(&calm, 5), Some(100));
        // The standby is taken until 300: the next rotation cannot start before.
        let busy = [
            key(Some(0), None, None),
            key(Some(200), Some(250), Some(300)),
        ];
        assert_eq!(schedule.next_rotation(&busy, 260), Some(300));
        let off = Schedule {
            rotate_after_ms: None,
            ..schedule
        };
        assert_eq!(off.next_rotation(&calm, 5), None);
    }
}
