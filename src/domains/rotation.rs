//! DKIM key rotation: on a tenant's request, and on schedule in the background, where
//! domains from before Ed25519 also get their Ed25519 key and retired private keys are
//! forgotten. Everything here is safe on several instances at once: every change of a
//! domain's keys is made under the domain's lock, and checked again there.

use tokio::sync::watch;

use super::dkim::{self, RotateError, Schedule};
use super::model::{Dkim, DomainRow};
use super::store;
use crate::config::Settings;
use crate::events::{self, NewEvent};
use crate::mail::dkim::Algorithm;
use crate::store::crypto::MasterKey;
use crate::store::{Db, Timestamp};

pub const ROTATED_EVENT: &str = "domain.dkim_rotated";

/// Rotates the `algorithm` key of `row` (a domain of `account_id`), announcing it with a
/// `domain.dkim_rotated` event in the same transaction.
pub async fn rotate(
    db: &Db,
    master_key: &MasterKey,
    settings: &Settings,
    account_id: &str,
    row: DomainRow,
    algorithm: Algorithm,
) -> Result<(), RotateError> {
    let domain_id = row.id.clone();
    let mut view = store::render(db, settings, vec![row]).await?.remove(0);
    let queue = usize::try_from(settings.keygen_queue).unwrap_or(usize::MAX);
    let announce = async |conn: &mut sqlx::AnyConnection, dkim: Dkim| -> anyhow::Result<()> {
        view.dkim = dkim.of(view.status);
        let event = NewEvent::about(account_id, None, ROTATED_EVENT, &domain_id, &view)?;
        events::record(conn, event, db.now()).await?;
        Ok(())
    };
    let schedule = Schedule::of(settings);
    dkim::rotate(
        db, master_key, schedule, &domain_id, algorithm, queue, announce,
    )
    .await
}

/// Domains rotated in one round (a minute) of the background task, at most: each RSA key
/// takes a key thread for a while, which tenants adding domains must not wait behind —
/// after an upgrade, every domain older than the rotation period is due at once.
const ROUND: i64 = 16;

/// Domains from before Ed25519 given their key in one round, at most.
const UPGRADES: i64 = 500;

/// One round of the background task. `upgrading` stays true while domains from before
/// Ed25519 may be left: none is made after the upgrade, so once a round finds none they
/// are not looked for again.
async fn run_once(
    db: &Db,
    master_key: &MasterKey,
    settings: &Settings,
    upgrading: &mut bool,
) -> anyhow::Result<()> {
    let schedule = Schedule::of(settings);
    if *upgrading {
        let (given, left) = dkim::give_ed25519_keys(db, master_key, schedule, UPGRADES).await?;
        if given > 0 {
            tracing::info!(domains = given, "Ed25519 DKIM keys published");
        }
        *upgrading = left;
    }
    let forgotten = dkim::forget_retired(db).await?;
    if forgotten > 0 {
        tracing::info!(keys = forgotten, "retired DKIM keys forgotten");
    }
    let due = dkim::due_for_rotation(db, schedule, ROUND).await?;
    for (domain_id, algorithm) in due {
        let Some((account_id, row)) = store::find_by_id_anywhere(db, &domain_id).await? else {
            continue;
        };
        let name = row.name.clone();
        match rotate(db, master_key, settings, &account_id, row, algorithm).await {
            Ok(()) => {
                tracing::info!(domain = %name, algorithm = algorithm.as_str(), "DKIM key rotated")
            }
            // Another instance, or the tenant, was first; or the domain is gone.
            Err(RotateError::InProgress { .. } | RotateError::NotFound) => {}
            // Every key thread is taken by tenants' new domains: next round.
            Err(RotateError::Keygen(dkim::KeygenError::Busy)) => break,
            Err(
                RotateError::Keygen(dkim::KeygenError::Failed(error)) | RotateError::Failed(error),
            ) => {
                tracing::warn!(domain = %name, %error, "cannot rotate a DKIM key")
            }
        }
    }
    Ok(())
}

/// Rotates keys on schedule until `stop` changes: a round a minute of mailroom's clock
/// (which tests move).
pub async fn run(
    db: Db,
    master_key: MasterKey,
    settings: std::sync::Arc<Settings>,
    stop: watch::Receiver<bool>,
) {
    let mut upgrading = true;
    let mut rounds = db.rounds(stop);
    while rounds.due().await {
        if let Err(error) = run_once(&db, &master_key, &settings, &mut upgrading).await {
            tracing::warn!(%error, "cannot rotate DKIM keys");
        }
        // Upgrades go on at once; rotations wait for the next round.
        rounds.next_at(match upgrading {
            true => Timestamp(i64::MIN),
            false => Timestamp(db.now().0.saturating_add(60_000)),
        });
    }
}
