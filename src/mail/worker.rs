//! The delivery worker: claims due emails (one instance each), sends each to all its due
//! recipients in one SMTP transaction through the right transport, records every
//! recipient's reply on its own, and retries temporary failures with backoff, recipient
//! by recipient.
//!
//! Messages go independently: the slot a message frees is filled at once, so a relay that
//! never answers holds the slots of its own messages only, never a whole batch. The mail
//! of one account (through its own relays or the system relay) takes at most
//! `MAILROOM_RELAY_CONCURRENCY` slots; the rest of it waits its turn in the account's line
//! (never failed), and while the line is long the account's mail stays in the queue, so
//! that other accounts' mail goes on. One slot is always kept for mailroom's own mail
//! (verifications, invitations), which no tenant's backlog may hold up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::compose::{self, Email, compose_email};
use super::dkim::on_signing_threads;
use super::outbox::{self, Attempt, Claimed, RecipientAttempt, RecipientStatus, RecipientType};
use super::pool::Pool;
use super::port::Directory;
use super::templates::{Kind, render};
use super::transport::{
    Failure, Limits, RecipientReply, SmtpTarget, Transport, deliver, deliver_each,
    longest_conversation,
};
use crate::config::Settings;
use crate::metrics::{self, Metrics};
use crate::store::crypto::MasterKey;
use crate::store::{Db, new_id};
use crate::types::text::Escaped;
use crate::types::{DomainName, EmailAddress};

/// Attempts before a recipient is given up: with the default 30 s first retry, doubling up
/// to 4 hours apart, the last comes about a day after the first.
pub const MAX_ATTEMPTS: i64 = 13;
const MAX_RETRY_DELAY_MS: i64 = 4 * 3_600_000;

/// Deliveries under way at once on one instance.
const SLOTS: usize = 16;
/// Messages one claim takes at most: the free slots, and more that start as slots free.
/// A claim costs about the same whatever its size, so the next is made only once fewer
/// than `SLOTS` wait, and then fills up to this.
const CLAIM_AT_MOST: usize = 4 * SLOTS;
/// How long a claimed message waits in memory for a slot before it goes back to the queue.
const AHEAD_HOLD: Duration = Duration::from_secs(1);
/// When a message given back to the queue for want of a slot is due again.
const GIVE_BACK_DELAY_MS: i64 = 2_000;
/// Tries at recording an attempt's outcome (0.2 s, doubling, apart: about 6 s in all).
const RECORD_TRIES: u32 = 6;
/// What a lease must have left after a conversation for its outcome to be recorded
/// (every try) before another instance may claim the message.
const RECORDING_MS: i64 = 10_000;

/// Everything delivery needs, and no more.
#[derive(Clone)]
pub struct Delivery {
    pub db: Db,
    pub master_key: MasterKey,
    pub settings: Arc<Settings>,
    pub directory: Arc<dyn Directory>,
    /// Rung after an email is queued, so that the worker starts at once.
    pub wakeup: Arc<Notify>,
    /// Rung after outcomes are recorded with their events, so that webhooks go at once.
    pub events_written: Arc<Notify>,
    pub metrics: Metrics,
}

/// A claimed email, built, signed and routed — or why it cannot go. Built only once it has
/// a slot: an email waiting in its account's line is its metadata alone.
struct Ready {
    message: Claimed,
    /// Where it goes, as the delivery log says it.
    transport: String,
    /// The transport and the message's bytes, the same for every recipient.
    plan: Result<(Transport, Vec<u8>), Failure>,
}

/// An email after its attempt: where it went and what came of it for each recipient tried
/// (in the order of `Claimed::pending`).
type Finished = (Claimed, String, Vec<RecipientReply>);

impl Delivery {
    /// How long a claimed message stays with one instance, from its claim or the lease
    /// renewed right before its conversation: the longest conversation, then the timeout
    /// and at least 10 s, for recording its outcome (tried again on a database error).
    fn lease_ms(&self) -> i64 {
        let timeout_ms = (self.settings.smtp_timeout.max(1) as i64).saturating_mul(1000);
        self.conversation_ms()
            .saturating_add(timeout_ms.max(RECORDING_MS))
    }

    /// The longest a delivery's conversation may take, connecting included.
    fn conversation_ms(&self) -> i64 {
        let longest = longest_conversation(&Limits::system(&self.settings));
        i64::try_from(longest.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether `from` is the system sender, whose mail only the system transport carries:
    /// no account's relay ever sees it (nor the tokens it holds).
    fn is_system_sender(&self, from: &str) -> bool {
        match (
            EmailAddress::parse(from),
            EmailAddress::parse(&self.settings.mail_from),
        ) {
            (Ok(from), Ok(system)) => from.to_string().eq_ignore_ascii_case(&system.to_string()),
            _ => false,
        }
    }

    /// Whose relay and key a message may use: its account's, or none (`None`: the
    /// operator's own mail — From the system sender, or of no account).
    fn owner(&self, message: &Claimed) -> Option<String> {
        if self.is_system_sender(&message.from) {
            return None;
        }
        message.account_id.clone()
    }

    /// The transport for mail of `owner` From `from_domain`: the domain's relay when the
    /// domain is active in that account, else the system relay, else files.
    async fn transport_for(
        &self,
        owner: Option<&str>,
        from_domain: &DomainName,
    ) -> anyhow::Result<Transport> {
        if let Some(account_id) = owner
            && let Some(target) = self.directory.relay(account_id, from_domain).await?
        {
            return Ok(Transport::Smtp(target));
        }
        self.system_transport()
    }

    fn system_transport(&self) -> anyhow::Result<Transport> {
        Ok(match SmtpTarget::system(&self.settings)? {
            Some(target) => Transport::Smtp(target),
            None => Transport::Files(self.settings.data_dir.join("mail")),
        })
    }

    /// Whether an API email's From is still its account's to send as: it was checked when
    /// accepted, but the domain may since have been deleted (and activated by another
    /// account) or suspended by the operator.
    async fn check_from(&self, message: &Claimed) -> Result<(), Failure> {
        if message.kind != outbox::API_KIND {
            return Ok(());
        }
        match outbox::from_still_allowed(&self.db, message).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Permanent(format!(
                "not sent: {} may no longer be sent from by this account (its domain is not active \
                 in the account and it is not a verified sender address)",
                message.from
            ))),
            Err(error) => Err(Failure::Temporary(format!(
                "cannot check the From address: {error:#}"
            ))),
        }
    }

    /// Builds, signs and routes a claimed message; `None` when the runtime stops first.
    async fn prepare(&self, mut message: Claimed) -> Option<Ready> {
        let cannot = |message, transport, failure| {
            Some(Ready {
                message,
                transport,
                plan: Err(failure),
            })
        };
        let none = || "none".to_string();
        if let Err(failure) = self.check_from(&message).await {
            return cannot(message, none(), failure);
        }
        let body = match message.open_body(&self.db, &self.master_key).await {
            Ok(body) => body,
            Err(error) => {
                let failure = Failure::Permanent(format!("cannot open the message: {error:#}"));
                return cannot(message, none(), failure);
            }
        };
        let from_domain = match from_domain(&message.from) {
            Ok(domain) => domain,
            Err(error) => return cannot(message, none(), Failure::Permanent(error)),
        };
        let owner = self.owner(&message);
        let transport = match self.transport_for(owner.as_deref(), &from_domain).await {
            Ok(routed) => routed,
            Err(error) => {
                let failure = Failure::Temporary(format!("no transport: {error:#}"));
                return cannot(message, none(), failure);
            }
        };
        let described = transport.describe_to_tenants();
        let keys = match self
            .directory
            .signing_keys(owner.as_deref(), &from_domain)
            .await
        {
            Ok(keys) => keys,
            Err(error) => {
                let failure = Failure::Temporary(format!("no signing key: {error:#}"));
                return cannot(message, described, failure);
            }
        };
        // The opened body may be megabytes: gone, with the closure, before the conversation.
        let id = message.id.clone();
        let composed = on_signing_threads(move || {
            let composed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                compose_claimed(&message, &body, &keys)
            }))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("composing the message panicked")));
            (message, composed)
        })
        .await;
        let (message, composed) = match composed {
            Ok(done) => done,
            // The runtime is stopping: the message's lease brings it back.
            Err(error) => {
                tracing::warn!(message = %id, %error, "message not composed");
                return None;
            }
        };
        Some(match composed {
            Ok(bytes) => Ready {
                message,
                transport: described,
                plan: Ok((transport, bytes)),
            },
            Err(error) => Ready {
                message,
                transport: described,
                plan: Err(Failure::Permanent(format!(
                    "cannot build the message: {error:#}"
                ))),
            },
        })
    }

    /// Sends a ready email to its due recipients, all in one transaction, on a connection
    /// of `pool`'s for its sender and relay when one is open; answers what came of each.
    async fn send(&self, ready: Ready, pool: &Pool) -> Finished {
        let pending = &ready.message.pending;
        let owner = self.owner(&ready.message);
        let replies = match (&ready.plan, envelope(&ready.message)) {
            // Every recipient due was final already (a lease taken back): nothing to send.
            _ if pending.is_empty() => Vec::new(),
            (Ok((transport, bytes)), Ok((from, to))) => {
                let id = &ready.message.message_id;
                let owner = owner.as_deref();
                deliver_each(transport, pool, owner, id, &from, &to, bytes).await
            }
            (Err(failure), _) => vec![RecipientReply::Failed(failure.clone()); pending.len()],
            (_, Err(failure)) => vec![RecipientReply::Failed(failure); pending.len()],
        };
        (ready.message, ready.transport, replies)
    }

    /// Renewed right before each conversation when what came before (a wait for a slot,
    /// a slow database) left it too short for the conversation and its recording, so that
    /// no other instance claims the message and sends it again while this one talks. Left
    /// as it is otherwise: a renewal is one more write (on SQLite, a flush) per message.
    /// False when another instance has it by now.
    async fn keep_lease(&self, message: &mut Claimed) -> bool {
        let now = self.db.now().0;
        if message.lease_until() - now >= self.conversation_ms() + RECORDING_MS {
            return true;
        }
        match outbox::renew(&self.db, message, now + self.lease_ms()).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(message = %message.id, "lease lost while waiting for a slot");
                false
            }
            Err(error) => {
                tracing::warn!(message = %message.id, %error, "cannot renew a lease");
                false
            }
        }
    }

    /// Puts a message back in the queue untried, for want of a slot.
    async fn give_back(&self, message: &Claimed) {
        let due_at = self.db.now().0 + GIVE_BACK_DELAY_MS;
        if let Err(error) = outbox::release(&self.db, message, due_at).await {
            // Its lease runs out, and it is claimed again then.
            tracing::warn!(message = %message.id, %error, "cannot give a message back");
        }
    }

    /// Delivers `message`, let go by its `account`'s line, in the slot `slot` holds; then,
    /// while the line has messages waiting, those, one after another, in the same slot.
    async fn work(
        self,
        account: Option<String>,
        message: Claimed,
        slot: OwnedSemaphorePermit,
        shared: Arc<Shared>,
    ) {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            let Some(mut ready) = self.prepare(message).await else {
                break;
            };
            if self.keep_lease(&mut ready.message).await {
                let finished = self.send(ready, &shared.pool).await;
                let _ = shared.finished.send(finished);
            }
            if let Some(account) = &account {
                let (message, room) = shared.lines.next(account, !*shared.stop.borrow());
                if room {
                    // The account's mail may be claimed again.
                    shared.room.notify_one();
                }
                next = message;
            }
        }
        drop(slot);
        shared.room.notify_one();
    }

    /// What an attempt leaves each recipient as.
    fn judge<'a>(
        &self,
        message: &'a Claimed,
        transport: &'a str,
        replies: &'a [RecipientReply],
    ) -> Attempt<'a> {
        let now = self.db.now().0;
        let base_ms = (self.settings.mail_retry_seconds.max(1) as i64).saturating_mul(1000);
        let recipients = message
            .pending
            .iter()
            .zip(replies)
            .map(|(recipient, reply)| {
                let (status, detail, next_attempt_at) = match reply {
                    RecipientReply::Sent(reply) => (RecipientStatus::Sent, reply, None),
                    RecipientReply::Refused(Failure::Permanent(error)) => {
                        (RecipientStatus::Bounced, error, None)
                    }
                    RecipientReply::Failed(Failure::Permanent(error)) => {
                        (RecipientStatus::Failed, error, None)
                    }
                    RecipientReply::Refused(Failure::Temporary(error))
                    | RecipientReply::Failed(Failure::Temporary(error)) => {
                        if recipient.attempts < MAX_ATTEMPTS {
                            let at = now + retry_delay_ms(base_ms, recipient.attempts);
                            (RecipientStatus::Deferred, error, Some(at))
                        } else {
                            (RecipientStatus::Failed, error, None)
                        }
                    }
                };
                RecipientAttempt {
                    recipient,
                    status,
                    detail,
                    next_attempt_at,
                }
            })
            .collect();
        Attempt {
            email: message,
            transport,
            recipients,
        }
    }

    /// Records the outcome of each attempt, all in one transaction; on a database error,
    /// again a few times: an outcome not recorded is sent again once the lease runs out.
    async fn record(&self, results: &[Finished]) {
        let attempts: Vec<Attempt> = results
            .iter()
            .map(|(message, transport, replies)| self.judge(message, transport, replies))
            .collect();
        let mut pause = Duration::from_millis(200);
        let mut tries = 1;
        let recorded = loop {
            match outbox::record(&self.db, &attempts, self.db.now()).await {
                Ok(recorded) => {
                    self.events_written.notify_one();
                    break recorded;
                }
                Err(error) if tries < RECORD_TRIES => {
                    tracing::warn!(%error, emails = attempts.len(), tries, "cannot record delivery attempts; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                Err(error) => {
                    tracing::error!(%error, emails = attempts.len(), tries, "cannot record delivery attempts");
                    return;
                }
            }
        };
        for attempt in recorded {
            let (email, transport) = (attempt.email, attempt.transport);
            for outcome in &attempt.recipients {
                let (to, error) = (&outcome.recipient.address, outcome.detail);
                let tries = outcome.recipient.attempts;
                self.metrics.delivery(match outcome.status {
                    RecipientStatus::Sent => metrics::Delivery::Sent,
                    RecipientStatus::Deferred => metrics::Delivery::Retry,
                    _ => metrics::Delivery::Failed,
                });
                match outcome.status {
                    RecipientStatus::Sent => {
                        tracing::info!(email = %email.id, to = %Escaped(to), transport, "sent")
                    }
                    RecipientStatus::Deferred => {
                        tracing::warn!(email = %email.id, to = %Escaped(to), attempt = tries, transport, error = %Escaped(error), "delivery failed; will retry")
                    }
                    _ => {
                        tracing::error!(email = %email.id, to = %Escaped(to), attempt = tries, transport, error = %Escaped(error), "delivery failed for good")
                    }
                }
            }
        }
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.settings.body_retention_hours)
            .unwrap_or(i64::MAX)
            .saturating_mul(3_600_000)
    }

    /// Deletes the bodies past their retention (and any final email's left behind).
    async fn delete_old_bodies(&self) {
        match outbox::delete_old_bodies(&self.db, self.retention_ms()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "email bodies past their retention deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old email bodies"),
        }
    }

    async fn log_depth(&self) {
        match outbox::depth(&self.db).await {
            Ok(depth) => {
                let now = self.db.now().0;
                let overdue_secs = depth
                    .oldest_due
                    .map_or(0, |due| ((now - due) / 1000).max(0));
                tracing::info!(
                    queue_depth = depth.waiting,
                    oldest_due_overdue_secs = overdue_secs,
                    failed_last_hour = depth.failed_last_hour,
                    "outbox"
                );
            }
            Err(error) => tracing::warn!(%error, "cannot read the outbox"),
        }
    }

    async fn claim(self, wanted: Wanted) -> Vec<Claimed> {
        let mut claimed = Vec::new();
        for (tenants, limit) in wanted.kinds {
            let claim = outbox::Claim {
                limit,
                per_account: wanted.per_account,
                lease_ms: self.lease_ms(),
                retention_ms: self.retention_ms(),
                skip: &wanted.crowded,
                tenants,
            };
            match outbox::claim_due(&self.db, &claim).await {
                Ok(more) => claimed.extend(more),
                Err(error) => tracing::error!(%error, "delivery worker cannot claim messages"),
            }
        }
        claimed
    }

    /// Runs until `stop` changes; wakes at once when `wakeup` is rung.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        const METRICS_EVERY: Duration = Duration::from_secs(60);
        let slots = Arc::new(Semaphore::new(SLOTS));
        let (finished, results) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            lines: Lines::new(self.settings.relay_concurrency),
            pool: Pool::new(self.settings.relay_concurrency, SLOTS),
            finished,
            room: Notify::new(),
            stop: stop.clone(),
        });
        let recorder = tokio::spawn(self.clone().record_all(results));
        let mut last_metrics = Instant::now() - METRICS_EVERY;
        let mut ahead = Ahead::default();
        // Claims run beside the loop, which meanwhile starts what was claimed before as
        // slots free.
        let mut claiming: Option<tokio::task::JoinHandle<Vec<Claimed>>> = None;
        let mut may_claim = true;
        // A line shortened, a slot freed or mail came while a claim ran: that claim may
        // have left out what is now to be taken.
        let mut woken_while_claiming = false;
        tracing::info!("delivery worker started");
        while !*stop.borrow() {
            shared.pool.close_unusable();
            if last_metrics.elapsed() >= METRICS_EVERY {
                self.log_depth().await;
                self.delete_old_bodies().await;
                last_metrics = Instant::now();
            }
            if claiming.is_none()
                && may_claim
                && let Some(wanted) =
                    claims_wanted(&ahead, slots.available_permits(), &shared.lines)
            {
                claiming = Some(tokio::spawn(self.clone().claim(wanted)));
            }
            while let Some(waiting) = ahead.next(slots.available_permits()) {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    ahead.put_back(waiting);
                    break;
                };
                // Into its account's line here, not in the delivery's task: what is claimed
                // is always either ahead or in a line when the next claim counts them.
                let account = self.owner(&waiting.1);
                let message = match &account {
                    None => waiting.1,
                    Some(owner) => match shared.lines.enter(owner, waiting.1) {
                        Entry::Go(message) => message,
                        Entry::Waiting => continue,
                        Entry::Full(message) => {
                            self.give_back(&message).await;
                            continue;
                        }
                    },
                };
                tokio::spawn(self.clone().work(account, message, slot, shared.clone()));
            }
            for message in ahead.stale() {
                self.give_back(&message).await;
            }
            // On when a slot frees or a line shortens, on new mail, or a second later for
            // mail that fell due meanwhile.
            may_claim = tokio::select! {
                claimed = async { claiming.as_mut().expect("a claim under way").await }, if claiming.is_some() => {
                    claiming = None;
                    let claimed = claimed.unwrap_or_else(|error| {
                        // What it claimed comes back when its leases run out.
                        tracing::error!(%error, "a claim of messages failed");
                        Vec::new()
                    });
                    // An empty claim found nothing to take (the queue drained, or only
                    // crowded accounts' mail): the next waits for a wakeup, unless one came
                    // while it ran.
                    let any = !claimed.is_empty();
                    claimed.into_iter().for_each(|m| ahead.push(m));
                    let woken = std::mem::take(&mut woken_while_claiming);
                    any || woken
                }
                _ = shared.room.notified() => {
                    woken_while_claiming |= claiming.is_some();
                    true
                }
                _ = self.wakeup.notified() => {
                    woken_while_claiming |= claiming.is_some();
                    true
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => true,
                _ = stop.changed() => true,
            };
        }
        // The deliveries under way finish; what waits goes back to the queue.
        if let Some(claim) = claiming {
            claim
                .await
                .unwrap_or_default()
                .into_iter()
                .for_each(|m| ahead.push(m));
        }
        let _ = slots.acquire_many(SLOTS as u32).await;
        for message in shared.lines.drain().into_iter().chain(ahead.drain()) {
            self.give_back(&message).await;
        }
        shared.pool.close_all().await;
        drop(shared);
        let _ = recorder.await;
        tracing::info!("delivery worker stopped");
    }

    /// Records attempts as they finish: whatever finished while the previous group was
    /// written goes in one transaction (on SQLite every commit waits for the disk).
    async fn record_all(self, mut results: mpsc::UnboundedReceiver<Finished>) {
        while let Some(first) = results.recv().await {
            let mut group = vec![first];
            while let Ok(more) = results.try_recv() {
                group.push(more);
            }
            self.record(&group).await;
        }
    }

    /// `send-test-email`: one message straight through the system transport.
    pub async fn send_test_email(
        &self,
        to: &EmailAddress,
    ) -> anyhow::Result<(String, Result<String, Failure>)> {
        let from = EmailAddress::parse(&self.settings.mail_from)
            .map_err(|e| anyhow::anyhow!("MAILROOM_MAIL_FROM: {e}"))?;
        let sent_at = self.db.now();
        let email = render(
            Kind::Test,
            &[
                ("from", &from.to_string()),
                ("to", &to.to_string()),
                ("sent_at", &sent_at.rfc3339()),
            ],
            &[],
        )?;
        let message_id = format!("<{}@{}>", &new_id("msg")[4..], from.domain());
        let (from_text, to_text) = (from.to_string(), to.to_string());
        let envelope =
            lettre::address::Envelope::new(Some(from_text.parse()?), vec![to_text.parse()?])?;
        let keys = self.directory.signing_keys(None, from.domain()).await?;
        let id = message_id.clone();
        let bytes = on_signing_threads(move || {
            let recipients = [compose::Address {
                name: None,
                email: &to_text,
            }];
            let message = Email {
                from: compose::Address {
                    name: None,
                    email: &from_text,
                },
                to: &recipients,
                cc: &[],
                reply_to: &[],
                subject: &email.subject,
                text: Some(&email.text),
                html: Some(&email.html),
                attachments: &[],
                headers: &[],
                message_id: &id,
                date: sent_at.0,
            };
            compose_email(&message, &keys)
        })
        .await??;
        let transport = self.system_transport()?;
        let result = deliver(&transport, &message_id, &envelope, &bytes).await;
        Ok((transport.describe(), result))
    }
}

/// The claims to make now, mailroom's own mail first: of each kind, when a slot is free
/// and fewer than half a slot's worth of it waits, the free slots and a slot's worth
/// more, so that messages start as slots free without a claim (a write, on SQLite a
/// flush) for each. Tenants' mail leaves one slot free for mailroom's own, and none is
/// claimed of accounts whose line is long already.
fn claims_wanted(ahead: &Ahead, available: usize, lines: &Lines) -> Option<Wanted> {
    let wanted: Vec<(bool, i64)> = [false, true]
        .into_iter()
        .filter_map(|tenants| {
            let free = available.saturating_sub(usize::from(tenants));
            let waiting = ahead.len(tenants);
            (free > 0 && waiting < SLOTS).then(|| {
                let wanted = (free + CLAIM_AT_MOST).saturating_sub(waiting);
                (tenants, wanted.min(CLAIM_AT_MOST) as i64)
            })
        })
        .collect();
    (!wanted.is_empty()).then(|| Wanted {
        kinds: wanted,
        per_account: lines.cap as i64,
        crowded: lines.crowded(ahead),
    })
}

/// What a claim is to take: of each kind (tenants' or mailroom's own) how many at most.
struct Wanted {
    kinds: Vec<(bool, i64)>,
    per_account: i64,
    crowded: Vec<String>,
}

/// Claimed messages waiting for a slot (since when), mailroom's own apart from tenants'.
#[derive(Default)]
struct Ahead {
    own: VecDeque<(Instant, Claimed)>,
    tenants: VecDeque<(Instant, Claimed)>,
}

impl Ahead {
    fn push(&mut self, message: Claimed) {
        self.line(&message).push_back((Instant::now(), message));
    }

    /// Puts back what `next` gave, first in its line, waiting since it was claimed.
    fn put_back(&mut self, waiting: (Instant, Claimed)) {
        self.line(&waiting.1).push_front(waiting);
    }

    fn line(&mut self, message: &Claimed) -> &mut VecDeque<(Instant, Claimed)> {
        match message.kind == outbox::API_KIND {
            true => &mut self.tenants,
            false => &mut self.own,
        }
    }

    /// Takes out those that waited `AHEAD_HOLD` without a slot: the slots are held up (a
    /// relay that does not answer), and they go back to the queue, where another instance
    /// may take them and the queue's gauges count them.
    fn stale(&mut self) -> Vec<Claimed> {
        let mut stale = Vec::new();
        for line in [&mut self.own, &mut self.tenants] {
            while line
                .front()
                .is_some_and(|(at, _)| at.elapsed() >= AHEAD_HOLD)
            {
                stale.extend(line.pop_front().map(|(_, message)| message));
            }
        }
        stale
    }

    /// The account of each message waiting.
    fn accounts(&self) -> impl Iterator<Item = &str> {
        let all = self.own.iter().chain(&self.tenants);
        all.filter_map(|(_, message)| message.account_id.as_deref())
    }

    /// How many of the kind a claim with `tenants` takes first wait.
    fn len(&self, tenants: bool) -> usize {
        match tenants {
            false => self.own.len(),
            true => self.tenants.len(),
        }
    }

    /// The next to start with `free` slots: mailroom's own first, and tenants' only while
    /// one slot more stays free for it.
    fn next(&mut self, free: usize) -> Option<(Instant, Claimed)> {
        match free {
            0 => None,
            1 => self.own.pop_front(),
            _ => self.own.pop_front().or_else(|| self.tenants.pop_front()),
        }
    }

    fn drain(&mut self) -> Vec<Claimed> {
        let all = self.own.drain(..).chain(self.tenants.drain(..));
        all.map(|(_, message)| message).collect()
    }
}

/// What the worker and its deliveries share.
struct Shared {
    lines: Lines,
    /// The SMTP connections kept open between messages, per sender and relay.
    pool: Pool,
    /// Attempts made, to record.
    finished: mpsc::UnboundedSender<Finished>,
    /// Rung when a slot frees, or an account's line is no longer crowded.
    room: Notify,
    stop: watch::Receiver<bool>,
}

/// The slots of accounts: at most `cap` deliveries at once per account, whatever relay
/// carries them; the account's next messages wait in its line (a small body with them), and
/// each delivery that ends starts the next.
///
/// A line is crowded from `cap` waiting: no more of the account's mail is claimed, and a
/// claim takes at most `cap` of it, so fewer than `2 * cap` wait. The rest stays in the
/// queue, untried, where other instances and the gauges see it — however slow the relay.
struct Lines {
    cap: usize,
    lines: Mutex<HashMap<String, Line>>,
}

#[derive(Default)]
struct Line {
    running: usize,
    waiting: VecDeque<Claimed>,
}

enum Entry {
    /// A slot of the account's is free: send it now.
    Go(Claimed),
    /// It waits in line; a delivery of the account's sends it when done.
    Waiting,
    /// The line is full: back to the queue with it.
    Full(Claimed),
}

impl Lines {
    fn new(cap: u64) -> Lines {
        Lines {
            // More at once than the slots would never run.
            cap: usize::try_from(cap).unwrap_or(SLOTS).clamp(1, SLOTS),
            lines: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Line>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, account: &str, ready: Claimed) -> Entry {
        let mut lines = self.lock();
        let line = lines.entry(account.to_string()).or_default();
        if line.running < self.cap {
            line.running += 1;
            Entry::Go(ready)
        } else if line.waiting.len() < 2 * self.cap {
            line.waiting.push_back(ready);
            Entry::Waiting
        } else {
            Entry::Full(ready)
        }
    }

    /// After a delivery of `account`'s: the next message in its line when `more` (the
    /// caller sends it in the slot it holds), else `None` and the account's slot frees;
    /// and whether the line just stopped being crowded.
    fn next(&self, account: &str, more: bool) -> (Option<Claimed>, bool) {
        let mut lines = self.lock();
        let Some(line) = lines.get_mut(account) else {
            return (None, false);
        };
        if more && let Some(ready) = line.waiting.pop_front() {
            return (Some(ready), line.waiting.len() + 1 == self.cap);
        }
        line.running = line.running.saturating_sub(1);
        if line.running == 0 && line.waiting.is_empty() {
            lines.remove(account);
        }
        (None, false)
    }

    /// The accounts whose lines are crowded, counting `ahead`, which is claimed but not in
    /// a line yet: their mail stays in the queue meanwhile.
    fn crowded(&self, ahead: &Ahead) -> Vec<String> {
        let mut waiting: HashMap<&str, usize> = HashMap::new();
        for account in ahead.accounts() {
            *waiting.entry(account).or_default() += 1;
        }
        let lines = self.lock();
        for (account, line) in lines.iter() {
            *waiting.entry(account).or_default() += line.waiting.len();
        }
        waiting
            .into_iter()
            .filter(|(_, waiting)| *waiting >= self.cap)
            .map(|(account, _)| account.to_string())
            .collect()
    }

    /// Everything still waiting, once no delivery runs.
    fn drain(&self) -> Vec<Claimed> {
        self.lock()
            .drain()
            .flat_map(|(_, line)| line.waiting)
            .collect()
    }
}

/// The message of a claimed email: the same bytes for every recipient, Bcc never in them.
fn compose_claimed(
    message: &Claimed,
    body: &outbox::Body,
    keys: &[super::port::SigningKey],
) -> anyhow::Result<Vec<u8>> {
    let address = |recipient: &'_ outbox::Pending| -> (RecipientType, (Option<String>, String)) {
        (
            recipient.kind,
            (recipient.name.clone(), recipient.address.clone()),
        )
    };
    let all: Vec<_> = message.recipients.iter().map(address).collect();
    let listed = |kind: RecipientType| -> Vec<compose::Address<'_>> {
        all.iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, (name, email))| compose::Address {
                name: name.as_deref(),
                email,
            })
            .collect()
    };
    let (to, cc) = (listed(RecipientType::To), listed(RecipientType::Cc));
    let reply_to_list: Vec<&str> = message
        .reply_to
        .as_deref()
        .map(|list| list.split(", ").collect())
        .unwrap_or_default();
    let reply_to: Vec<compose::Address<'_>> = reply_to_list
        .iter()
        .map(|email| compose::Address { name: None, email })
        .collect();
    let attachments: Vec<compose::Attachment<'_>> = body
        .attachments
        .iter()
        .map(|a| compose::Attachment {
            filename: &a.filename,
            content_type: &a.content_type,
            content_id: a.content_id.as_deref(),
            bytes: &a.content,
        })
        .collect();
    let headers: Vec<(&str, &str)> = body
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let email = Email {
        from: compose::Address {
            name: message.from_name.as_deref(),
            email: &message.from,
        },
        to: &to,
        cc: &cc,
        reply_to: &reply_to,
        subject: &message.subject,
        text: body.text.as_deref(),
        html: body.html.as_deref(),
        attachments: &attachments,
        headers: &headers,
        message_id: &message.message_id,
        date: message.created_at,
    };
    compose_email(&email, keys)
}

/// The envelope of an attempt: the email's From, and the recipients tried now.
fn envelope(message: &Claimed) -> Result<(lettre::Address, Vec<lettre::Address>), Failure> {
    let parse = |address: &str| {
        address
            .parse::<lettre::Address>()
            .map_err(|e| Failure::Permanent(format!("the address {address}: {e}")))
    };
    let from = parse(&message.from)?;
    let to = message
        .pending
        .iter()
        .map(|recipient| parse(&recipient.address))
        .collect::<Result<_, _>>()?;
    Ok((from, to))
}

fn from_domain(from: &str) -> Result<DomainName, String> {
    let domain = from.rsplit('@').next().unwrap_or_default();
    DomainName::parse(domain).map_err(|e| format!("the From address {from}: {e}"))
}

/// Exponential backoff with ±20% jitter, so that retries of many messages spread out.
fn retry_delay_ms(base_ms: i64, attempts: i64) -> i64 {
    let delay = base_ms
        .saturating_mul(1 << (attempts - 1).clamp(0, 20))
        .min(MAX_RETRY_DELAY_MS.max(base_ms));
    let jitter = rand::rng().random_range(0.8..1.2);
    (delay as f64 * jitter) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_and_a_ceiling() {
        let base = 30_000;
        let first = retry_delay_ms(base, 1);
        assert!((24_000..=36_000).contains(&first), "{first}");
        let fifth = retry_delay_ms(base, 5);
        assert!((384_000..=576_000).contains(&fifth), "{fifth}");
        let late = retry_delay_ms(base, 12);
        assert!(late <= (MAX_RETRY_DELAY_MS as f64 * 1.2) as i64, "{late}");
        let total: i64 = (1..MAX_ATTEMPTS)
            .map(|n| base.saturating_mul(1 << (n - 1)).min(MAX_RETRY_DELAY_MS))
            .sum();
        assert!(
            (12 * 3_600_000..36 * 3_600_000).contains(&total),
            "about a day: {total}"
        );
    }
}
