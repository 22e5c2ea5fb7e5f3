//! The delivery worker: claims due messages (one instance each), sends them through the
//! right transport, records every attempt, and retries temporary failures with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, watch};

use super::compose::{Parts, compose};
use super::outbox::{self, Attempt, Claimed, MessageStatus, Outcome};
use super::port::Directory;
use super::templates::{Kind, render};
use super::transport::{Failure, SmtpTarget, Transport, deliver};
use crate::config::Settings;
use crate::store::crypto::MasterKey;
use crate::store::groups::run_in_groups;
use crate::store::{Db, new_id};
use crate::types::{DomainName, EmailAddress};

/// Attempts before a message is given up: with the default 30 s first retry, doubling up
/// to 4 hours apart, the last comes about a day after the first.
pub const MAX_ATTEMPTS: i64 = 13;
const MAX_RETRY_DELAY_MS: i64 = 4 * 3_600_000;

/// Everything delivery needs, and no more.
#[derive(Clone)]
pub struct Delivery {
    pub db: Db,
    pub master_key: MasterKey,
    pub settings: Arc<Settings>,
    pub directory: Arc<dyn Directory>,
    /// Rung after an email is queued, so that the worker starts at once.
    pub wakeup: Arc<Notify>,
}

impl Delivery {
    fn smtp_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.smtp_timeout.max(1))
    }

    /// How long a claimed message stays with one instance: a whole conversation fits twice.
    fn lease_ms(&self) -> i64 {
        (self.settings.smtp_timeout.max(1) as i64).saturating_mul(2000)
    }

    /// The transport for mail From `from_domain` of `account_id`: the domain's own relay,
    /// else the system relay, else files.
    async fn transport_for(
        &self,
        account_id: Option<&str>,
        from_domain: &DomainName,
    ) -> anyhow::Result<Transport> {
        if let Some(account_id) = account_id
            && let Some(target) = self.directory.relay(account_id, from_domain).await?
        {
            return Ok(Transport::Smtp(target));
        }
        self.system_transport()
    }

    fn system_transport(&self) -> anyhow::Result<Transport> {
        Ok(match &self.settings.smtp_url {
            Some(url) => Transport::Smtp(SmtpTarget::from_url(url.expose(), self.smtp_timeout())?),
            None => Transport::Files(self.settings.data_dir.join("mail")),
        })
    }

    /// Builds and signs the message; answers where it went and what the relay said.
    async fn attempt(&self, message: &Claimed) -> (String, Result<String, Failure>) {
        let none = || "none".to_string();
        let body = match message.open_body(&self.master_key) {
            Ok(body) => body,
            Err(error) => {
                let failure = Failure::Permanent(format!("cannot open the message: {error:#}"));
                return (none(), Err(failure));
            }
        };
        let from_domain = match from_domain(&message.from) {
            Ok(domain) => domain,
            Err(error) => return (none(), Err(Failure::Permanent(error))),
        };
        let transport = match self
            .transport_for(message.account_id.as_deref(), &from_domain)
            .await
        {
            Ok(transport) => transport,
            Err(error) => {
                let failure = Failure::Temporary(format!("no transport: {error:#}"));
                return (none(), Err(failure));
            }
        };
        let parts = Parts {
            from: &message.from,
            to: &message.to,
            subject: &message.subject,
            text: &body.text,
            html: &body.html,
            message_id: &message.message_id,
            date: message.created_at,
        };
        let composed = match self.compose(parts, &from_domain).await {
            Ok(composed) => composed,
            Err(error) => {
                let failure = Failure::Temporary(format!("cannot build the message: {error:#}"));
                return (transport.describe(), Err(failure));
            }
        };
        let result = deliver(
            &transport,
            &message.message_id,
            &composed.envelope,
            &composed.bytes,
        )
        .await;
        (transport.describe(), result)
    }

    async fn compose(
        &self,
        parts: Parts<'_>,
        from_domain: &DomainName,
    ) -> anyhow::Result<super::compose::Composed> {
        let key = self.directory.signing_key(from_domain).await?;
        compose(parts, key.as_ref())
    }

    /// What an attempt leaves the message as.
    fn judge<'a>(
        &self,
        message: &'a Claimed,
        transport: &'a str,
        result: &'a Result<String, Failure>,
    ) -> Attempt<'a> {
        let now = self.db.now().0;
        let base_ms = (self.settings.mail_retry_seconds.max(1) as i64).saturating_mul(1000);
        let (outcome, detail, status, next_attempt_at) = match result {
            Ok(reply) => (Outcome::Sent, reply, MessageStatus::Sent, None),
            Err(Failure::Temporary(error)) if message.attempts < MAX_ATTEMPTS => (
                Outcome::Temporary,
                error,
                MessageStatus::Queued,
                Some(now + retry_delay_ms(base_ms, message.attempts)),
            ),
            Err(Failure::Temporary(error)) => {
                (Outcome::Temporary, error, MessageStatus::Failed, None)
            }
            Err(Failure::Permanent(error)) => {
                (Outcome::Permanent, error, MessageStatus::Failed, None)
            }
        };
        Attempt {
            message,
            transport,
            outcome,
            detail,
            status,
            next_attempt_at,
        }
    }

    /// Records the outcome of each attempt, all in one transaction.
    async fn record(&self, results: &[(Claimed, String, Result<String, Failure>)]) {
        let attempts: Vec<Attempt> = results
            .iter()
            .map(|(message, transport, result)| self.judge(message, transport, result))
            .collect();
        let recorded = match outbox::record(&self.db, &attempts, self.db.now()).await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::error!(%error, messages = attempts.len(), "cannot record delivery attempts");
                return;
            }
        };
        for attempt in recorded {
            let (message, transport, error) = (attempt.message, attempt.transport, attempt.detail);
            match attempt.status {
                MessageStatus::Sent => {
                    tracing::info!(message = %message.id, to = %message.to, transport, "sent")
                }
                MessageStatus::Queued => {
                    tracing::warn!(message = %message.id, attempt = message.attempts, transport, error, "delivery failed; will retry")
                }
                _ => {
                    tracing::error!(message = %message.id, attempt = message.attempts, transport, error, "delivery failed for good")
                }
            }
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

    /// Runs until `stop` changes; wakes at once when `wakeup` is rung.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        const BATCH: i64 = 32;
        const CONCURRENCY: usize = 16;
        const METRICS_EVERY: Duration = Duration::from_secs(60);
        let mut last_metrics = Instant::now() - METRICS_EVERY;
        tracing::info!("delivery worker started");
        while !*stop.borrow() {
            if last_metrics.elapsed() >= METRICS_EVERY {
                self.log_depth().await;
                last_metrics = Instant::now();
            }
            let claimed = match outbox::claim_due(&self.db, BATCH, self.lease_ms()).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::error!(%error, "delivery worker cannot claim messages");
                    Vec::new()
                }
            };
            let full_batch = claimed.len() as i64 == BATCH;
            let send = |message: Claimed| {
                let delivery = self.clone();
                async move {
                    let (transport, result) = delivery.attempt(&message).await;
                    (message, transport, result)
                }
            };
            let save = |results: Vec<_>| {
                let delivery = self.clone();
                async move { delivery.record(&results).await }
            };
            run_in_groups(claimed, CONCURRENCY, send, save).await;
            if !full_batch {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.wakeup.notified() => {}
                    _ = stop.changed() => {}
                }
            }
        }
        tracing::info!("delivery worker stopped");
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
        );
        let message_id = format!("<{}@{}>", &new_id("msg")[4..], from.domain());
        let parts = Parts {
            from: &from.to_string(),
            to: &to.to_string(),
            subject: &email.subject,
            text: &email.text,
            html: &email.html,
            message_id: &message_id,
            date: sent_at.0,
        };
        let composed = self.compose(parts, from.domain()).await?;
        let transport = self.system_transport()?;
        let result = deliver(&transport, &message_id, &composed.envelope, &composed.bytes).await;
        Ok((transport.describe(), result))
    }
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
