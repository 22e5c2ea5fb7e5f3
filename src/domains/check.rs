//! Checking a domain's DNS: the lookups, the status rules, and the background verifier.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::model::{
    Checked, Dkim, Domain, DomainStatus, Due, HOUR, PENDING_LIMIT, PROOF_GRACE, Standing,
};
use super::records::{self, Found, Purpose, RecordStatus, Wanted};
use super::{dkim, store};
use crate::config::Settings;
use crate::dns::{Answer, DnsResolver};
use crate::metrics::{DomainCheck, Metrics};
use crate::store::{Db, Timestamp};

const ACTIVE_RECHECK: i64 = 24 * HOUR;
const MAX_BACKOFF: i64 = 6 * HOUR;

/// What the required records, taken together, showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Proven,
    /// A required record is definitely missing or wrong.
    Disproven,
    /// Some lookups failed and none disproved: nothing can be concluded.
    Inconclusive,
}

/// Applies one check's outcome; answers the new standing and, when the status changed, why.
pub fn decide(
    before: &Standing,
    outcome: Outcome,
    now: i64,
    interval_ms: i64,
) -> (Standing, Option<&'static str>) {
    let mut after = before.clone();
    let mut reason = None;
    let backoff = |failed: i64| {
        let factor = 1i64 << failed.clamp(0, 16);
        now + interval_ms
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(interval_ms))
    };
    match (before.status, outcome) {
        (DomainStatus::Suspended, _) => {
            after.next_check_at = None;
        }
        (DomainStatus::Pending | DomainStatus::Failed, Outcome::Proven) => {
            after.status = DomainStatus::Active;
            after.verified_by = Some("dns".to_string());
            after.verified_at = Some(now);
            after.proof_missing_since = None;
            after.failed_checks = 0;
            after.next_check_at = Some(now + ACTIVE_RECHECK);
            reason = Some("the DNS records prove the domain");
        }
        (DomainStatus::Pending, _) if now - before.status_changed_at > PENDING_LIMIT => {
            after.status = DomainStatus::Failed;
            after.next_check_at = None;
            reason = Some("no DNS proof within 72 hours");
        }
        (DomainStatus::Pending, _) => {
            after.failed_checks = before.failed_checks + 1;
            after.next_check_at = Some(backoff(after.failed_checks));
        }
        (DomainStatus::Failed, _) => {
            after.next_check_at = None;
        }
        (DomainStatus::Active, Outcome::Proven) => {
            after.proof_missing_since = None;
            after.next_check_at = Some(now + ACTIVE_RECHECK);
        }
        (DomainStatus::Active, Outcome::Inconclusive) => {
            after.next_check_at = Some(now + interval_ms.min(HOUR));
        }
        (DomainStatus::Active, Outcome::Disproven)
            if before.verified_by.as_deref() == Some("operator") =>
        {
            after.next_check_at = Some(now + ACTIVE_RECHECK);
        }
        (DomainStatus::Active, Outcome::Disproven) => {
            let since = before.proof_missing_since.unwrap_or(now);
            if now - since > PROOF_GRACE {
                after.status = DomainStatus::Pending;
                after.proof_missing_since = None;
                after.failed_checks = 0;
                after.next_check_at = Some(backoff(0));
                reason = Some("the DNS proof has been missing for more than 24 hours");
            } else {
                after.proof_missing_since = Some(since);
                after.next_check_at = Some(now + interval_ms.min(HOUR));
            }
        }
    }
    if reason.is_some() {
        after.status_changed_at = now;
    }
    (after, reason)
}

/// The domains a claim takes at most.
const BATCH: i64 = 128;

/// What the checks need: the database, the resolver, and the check interval.
#[derive(Clone)]
pub struct Checker {
    pub db: Db,
    pub resolver: DnsResolver,
    pub settings: Arc<Settings>,
    pub metrics: Metrics,
}

impl Checker {
    fn interval_ms(&self) -> i64 {
        (self.settings.dns_check_interval.max(1) as i64).saturating_mul(1000)
    }

    /// Checks one domain now: waits while another instance checks it, then looks up
    /// every record, stores what was found, and applies the status rules.
    pub async fn check_now(&self, domain_id: &str) -> anyhow::Result<()> {
        if !store::lease_one(&self.db, domain_id).await? {
            return Ok(());
        }
        let mut checked = Vec::new();
        let loaded = store::load_due(
            &mut *self.db.pool.acquire().await?,
            &[domain_id.to_string()],
        )
        .await?;
        for due in loaded {
            checked.push(self.examine(due).await);
        }
        self.save(checked).await
    }

    /// Saves a group of checks; the views that announce changes get their DKIM keys
    /// first, read for the whole group at once.
    async fn save(&self, mut checked: Vec<Checked>) -> anyhow::Result<()> {
        self.attach_dkim(&mut checked).await;
        store::save_checks(&self.db, &checked).await
    }

    /// The lookups and the decision, without touching the database.
    async fn examine(&self, due: Due) -> Checked {
        let wanted = records::wanted(&due.name, &due.tokens, &self.settings);
        let found = look_up_all(&self.resolver, &due.name, &wanted).await;
        let outcome = outcome(&wanted, &found, &due.name, &self.settings);
        self.metrics.domain_check(match outcome {
            Outcome::Proven => DomainCheck::Proven,
            Outcome::Disproven => DomainCheck::Disproven,
            Outcome::Inconclusive => DomainCheck::Inconclusive,
        });
        let now = self.db.now().0;
        let interval_ms = self.interval_ms();
        let (mut after, mut reason) = decide(&due.before, outcome, now, interval_ms);
        let activates =
            after.status == DomainStatus::Active && due.before.status != DomainStatus::Active;
        if activates && due.active_elsewhere {
            // Proven here, but active in another account: it stays as it was.
            after = Standing {
                next_check_at: Some(now + interval_ms),
                ..due.before.clone()
            };
            reason = None;
        }
        let lookups: Vec<(Wanted, Found)> = wanted.into_iter().zip(found).collect();
        // Only a change is announced: the unchanged (most) checks build no view. Its DKIM
        // keys are attached when the group is saved.
        let view = reason.map(|_| Domain {
            dkim: Dkim::default(),
            domain: due.name.clone(),
            status: after.status,
            records: lookups
                .iter()
                .map(|(wanted, found)| {
                    records::evaluate(wanted, Some(found), &due.name, &self.settings)
                })
                .collect(),
            created_at: Timestamp(due.created_at),
            verified_at: after.verified_at.map(Timestamp),
            last_checked_at: Some(Timestamp(now)),
        });
        Checked {
            due,
            after,
            reason,
            lookups,
            at: now,
            view,
        }
    }

    /// The DKIM keys of the views that announce changes, read in one query; none shown
    /// when they cannot be read, for the status change and its event are what must not
    /// wait.
    async fn attach_dkim(&self, checked: &mut [Checked]) {
        let ids: Vec<&str> = checked
            .iter()
            .filter(|c| c.view.is_some())
            .map(|c| c.due.id.as_str())
            .collect();
        if ids.is_empty() {
            return;
        }
        let schedule = dkim::Schedule::of(&self.settings);
        let mut views = match dkim::views_of(&self.db, &ids, schedule).await {
            Ok(views) => views,
            Err(error) => {
                tracing::warn!(%error, domains = ids.len(), "cannot read the domains' DKIM keys");
                return;
            }
        };
        for check in checked {
            if let Some(view) = &mut check.view {
                view.dkim = views
                    .remove(&check.due.id)
                    .unwrap_or_default()
                    .of(view.status);
            }
        }
    }

    /// The background verifier: checks due domains until `stop` changes. Claiming,
    /// checking and saving overlap: the next batch is claimed while the last domains of
    /// the current one are looked up, and a group of checks is saved while the next
    /// checks go on, so the lookups never wait for the database.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        const CONCURRENCY: usize = 16;
        tracing::info!("domain verifier started");
        // Claimed domains wait here for a free slot: up to a batch, so that the next
        // claim runs while the last one is checked (a batch takes well under its lease).
        let (queue, mut due) = mpsc::channel::<Due>(BATCH as usize);
        let (finished, mut checked) = mpsc::unbounded_channel::<Checked>();
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let check_all = async {
            while let Some(next) = due.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let checker = self.clone();
                let finished = finished.clone();
                tokio::spawn(async move {
                    let check = checker.examine(next).await;
                    drop(slot);
                    let _ = finished.send(check);
                });
            }
            drop(finished);
        };
        let save_all = async {
            while let Some(first) = checked.recv().await {
                let mut group = vec![first];
                while let Ok(more) = checked.try_recv() {
                    group.push(more);
                }
                let domains = group.len();
                if let Err(error) = self.save(group).await {
                    tracing::error!(%error, domains, "cannot save domain checks");
                }
            }
        };
        tokio::join!(self.claim_all(queue, stop), check_all, save_all);
        tracing::info!("domain verifier stopped");
    }

    /// Claims due domains in batches and queues them to be checked, until `stop`
    /// changes; waits a while when there were fewer than a batch.
    async fn claim_all(&self, queue: mpsc::Sender<Due>, mut stop: watch::Receiver<bool>) {
        let idle = Duration::from_secs(self.settings.dns_check_interval.clamp(1, 30));
        while !*stop.borrow() {
            let loaded = match store::claim_due(&self.db, BATCH).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::error!(%error, "domain verifier cannot claim domains");
                    Vec::new()
                }
            };
            let full_batch = loaded.len() as i64 == BATCH;
            for next in loaded {
                if queue.send(next).await.is_err() {
                    return;
                }
            }
            if !full_batch {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

fn outcome(wanted: &[Wanted], found: &[Found], domain: &str, settings: &Settings) -> Outcome {
    let statuses: Vec<RecordStatus> = wanted
        .iter()
        .zip(found)
        .filter(|(w, _)| w.required)
        .map(|(w, f)| records::evaluate(w, Some(f), domain, settings).status)
        .collect();
    if statuses.iter().all(|s| *s == RecordStatus::Verified) {
        Outcome::Proven
    } else if statuses
        .iter()
        .any(|s| matches!(s, RecordStatus::NotFound | RecordStatus::Mismatch))
    {
        Outcome::Disproven
    } else {
        Outcome::Inconclusive
    }
}

/// All lookups of one domain at once; answers one `Found` per wanted record, in order.
async fn look_up_all(resolver: &DnsResolver, domain: &str, wanted: &[Wanted]) -> Vec<Found> {
    let mut lookups = JoinSet::new();
    for (index, record) in wanted.iter().enumerate() {
        let resolver = resolver.clone();
        let record = record.clone();
        let domain = domain.to_string();
        lookups.spawn(async move { (index, look_up(&resolver, &domain, &record).await) });
    }
    let mut found = vec![Found::default(); wanted.len()];
    while let Some(result) = lookups.join_next().await {
        match result {
            Ok((index, answer)) => found[index] = answer,
            Err(error) => tracing::error!(%error, "a DNS lookup task failed"),
        }
    }
    found
}

async fn look_up(resolver: &DnsResolver, domain: &str, record: &Wanted) -> Found {
    let record_type = match record.record_type {
        "CNAME" => RecordType::CNAME,
        "MX" => RecordType::MX,
        _ => RecordType::TXT,
    };
    match resolver.lookup(&record.name, record_type).await {
        Answer::Found(values) => Found {
            values: records::relevant(record.purpose, values),
            ..Found::default()
        },
        Answer::Failed(error) => Found {
            error: Some(error),
            ..Found::default()
        },
        // A DNS provider that appends the zone turns `x._domainkey.customer.com` into
        // `x._domainkey.customer.com.customer.com`: look there to say so.
        Answer::Nothing if record.purpose == Purpose::Dkim => {
            let doubled = format!("{}.{domain}", record.name);
            match resolver.lookup(&doubled, record_type).await {
                Answer::Found(values) => Found {
                    values,
                    at: Some(doubled),
                    error: None,
                },
                _ => Found::default(),
            }
        }
        Answer::Nothing => Found::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: i64 = 300_000;

    fn standing(status: DomainStatus, changed: i64) -> Standing {
        Standing {
            status,
            verified_by: None,
            status_changed_at: changed,
            verified_at: None,
            proof_missing_since: None,
            next_check_at: Some(changed),
            failed_checks: 0,
        }
    }

    #[test]
    fn pending_becomes_active_on_proof() {
        let (after, reason) = decide(
            &standing(DomainStatus::Pending, 0),
            Outcome::Proven,
            1000,
            INTERVAL,
        );
        assert_eq!(after.status, DomainStatus::Active);
        assert_eq!(after.verified_at, Some(1000));
        assert!(reason.is_some());
    }

    #[test]
    fn pending_backs_off_then_fails_after_72_hours() {
        let start = standing(DomainStatus::Pending, 0);
        let (first, _) = decide(&start, Outcome::Disproven, 1, INTERVAL);
        let (second, _) = decide(&first, Outcome::Disproven, 2, INTERVAL);
        assert!(second.next_check_at.unwrap() - 2 > first.next_check_at.unwrap() - 1);
        assert_eq!(second.status, DomainStatus::Pending);
        let (late, reason) = decide(&second, Outcome::Inconclusive, PENDING_LIMIT + 1, INTERVAL);
        assert_eq!(late.status, DomainStatus::Failed);
        assert_eq!(late.next_check_at, None);
        assert!(reason.is_some());
    }

    #[test]
    fn active_survives_a_short_loss_of_proof_and_failed_lookups() {
        let active = Standing {
            verified_by: Some("dns".into()),
            ..standing(DomainStatus::Active, 0)
        };
        let (missing, reason) = decide(&active, Outcome::Disproven, 10, INTERVAL);
        assert_eq!((missing.status, reason), (DomainStatus::Active, None));
        assert_eq!(missing.proof_missing_since, Some(10));
        let (unsure, _) = decide(&missing, Outcome::Inconclusive, PROOF_GRACE + 100, INTERVAL);
        assert_eq!(
            unsure.status,
            DomainStatus::Active,
            "a failed lookup never demotes"
        );
        let (back, _) = decide(&missing, Outcome::Proven, 20, INTERVAL);
        assert_eq!(back.proof_missing_since, None);
        let (demoted, reason) = decide(&missing, Outcome::Disproven, PROOF_GRACE + 11, INTERVAL);
        assert_eq!(demoted.status, DomainStatus::Pending);
        assert!(reason.is_some());
    }

    #[test]
    fn operator_activation_is_not_undone_by_dns() {
        let active = Standing {
            verified_by: Some("operator".into()),
            proof_missing_since: Some(0),
            ..standing(DomainStatus::Active, 0)
        };
        let (after, _) = decide(&active, Outcome::Disproven, PROOF_GRACE * 3, INTERVAL);
        assert_eq!(after.status, DomainStatus::Active);
    }
}
