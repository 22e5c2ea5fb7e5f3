//! Announcing the addresses whose link and code expired unverified. Nothing changes in
//! the row when that happens (the status is read from the clock), so a sweep writes the
//! `sender.expired` event, once, with the mark that it was written.

use super::routes::describe;
use super::store;
use crate::config::Settings;
use crate::store::Db;

/// Addresses announced per transaction.
const BATCH: i64 = 100;

/// Announces every expiry not announced yet, a batch per transaction; answers how many.
/// Safe beside other instances: the mark taken in the transaction decides who announces.
pub async fn announce_expired(db: &Db, settings: &Settings) -> anyhow::Result<usize> {
    let mut announced = 0;
    loop {
        let now = db.now();
        let expired = store::expired_unannounced(db, now, BATCH).await?;
        if expired.is_empty() {
            return Ok(announced);
        }
        let full_batch = expired.len() as i64 == BATCH;
        // Described before the transaction, which must not wait for another pooled
        // connection (SQLite's write lock is held meanwhile).
        let mut described = Vec::with_capacity(expired.len());
        for stored in expired {
            let (id, expires_at) = (stored.id.clone(), stored.expires_at);
            described.push((id, expires_at, describe(db, settings, stored).await?));
        }
        let mut taken = 0;
        let mut tx = db.begin().await?;
        for (id, expires_at, view) in &described {
            if store::take_expiry_announcement(&mut tx, id, *expires_at, now).await? {
                store::record_event(&mut tx, "sender.expired", view, now).await?;
                taken += 1;
            }
        }
        tx.commit().await?;
        announced += taken;
        if !full_batch || taken == 0 {
            return Ok(announced);
        }
    }
}
