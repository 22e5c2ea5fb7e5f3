//! SMTP connections kept open between messages, as Postfix's connection cache keeps them:
//! opening one costs a TCP handshake, the greeting, EHLO, often STARTTLS and AUTH — more
//! round trips than the message itself takes to a relay nearby.
//!
//! A connection serves only deliveries of the same [`Key`]: the same sender (an account,
//! or mailroom itself) to the same relay, reached the same way, trusting the same
//! certificates, with the same credentials and EHLO name. An authenticated connection is
//! one account's credentials at work: no other account's mail ever travels on it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;

/// How long a connection nobody uses stays open. Postfix keeps one 2 s: a connection
/// is worth keeping across the gaps of a burst, not between bursts. Mailroom's gaps are a
/// little longer than Postfix's — a delivery's outcome is recorded, and the next message
/// claimed, composed and signed, before a slot takes the connection again — and the worker
/// looks for due mail every second at least: 5 s carries a burst across them, and an idle
/// connection holds a relay's session slot (Exim accepts 20 at once by default) and one
/// of the few file descriptors mailroom keeps aside for little longer than that.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection serves in all, however busy it is: Postfix's
/// `smtp_connection_reuse_time_limit`. A relay's changes (a new certificate, another
/// address behind its name, a restart) reach mailroom at least this often.
const MAX_AGE: Duration = Duration::from_secs(300);
/// Transactions on one connection: servers count them too (Exim refuses more than 1 000
/// by default); a bound of ours costs one handshake per hundred messages and keeps any
/// one session from carrying an unbounded share.
const MAX_TRANSACTIONS: u32 = 100;
/// How long a QUIT may take when a connection is closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who a connection was opened for, and how: only deliveries with an equal key share it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The account whose mail it carries; `None` for mailroom's own.
    pub owner: Option<String>,
    pub host: String,
    pub port: u16,
    /// A digest of everything else the connection was opened with (TLS, the certificates
    /// trusted, the credentials, the EHLO name, the destination policy): equal or not is
    /// all that the pool asks of them, and no secret is kept in clear.
    pub how: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owner = self.owner.as_deref().unwrap_or("mailroom");
        write!(f, "{owner} to {}:{}", self.host, self.port)
    }
}

/// A connection ready for a transaction: greeted, secured and authenticated.
pub struct Session {
    pub connection: AsyncSmtpConnection,
    /// Whether the server offered PIPELINING (RFC 2920) in its last reply to EHLO.
    pub pipelining: bool,
    /// Set when a write to the connection failed, where mailroom can see its writes (not
    /// through TLS from the first byte): whether the end of a message went out, or not,
    /// when its reply never came.
    pub write_failed: Option<Arc<AtomicBool>>,
    opened: Instant,
    transactions: u32,
}

impl Session {
    pub fn new(
        connection: AsyncSmtpConnection,
        pipelining: bool,
        write_failed: Option<Arc<AtomicBool>>,
    ) -> Session {
        Session {
            connection,
            pipelining,
            write_failed,
            opened: Instant::now(),
            transactions: 0,
        }
    }

    /// Counts a transaction made on it.
    pub fn served(&mut self) {
        self.transactions = self.transactions.saturating_add(1);
    }

    /// Whether it has served its time or its number of transactions.
    fn worn(&self, now: Instant) -> bool {
        !serves(self.opened, self.transactions, now)
    }
}

/// Whether a connection opened at `opened` that made `transactions` may serve at `now`.
fn serves(opened: Instant, transactions: u32, now: Instant) -> bool {
    transactions < MAX_TRANSACTIONS && now.saturating_duration_since(opened) < MAX_AGE
}

/// `serves`, for a connection unused since `since`.
fn serves_after_idle(since: Instant, opened: Instant, transactions: u32, now: Instant) -> bool {
    now.saturating_duration_since(since) < IDLE_TIMEOUT && serves(opened, transactions, now)
}

struct Idle {
    session: Session,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        let session = &self.session;
        serves_after_idle(self.since, session.opened, session.transactions, now)
    }
}

/// How often at most the connections past their time are looked for: the worker's loop
/// wakes whenever a slot frees, and a sweep holds the lock every delivery takes.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The connections not in use, by key, and bounded three ways: per key and per account by
/// what may be in use at once (`MAILROOM_RELAY_CONCURRENCY`: the worker gives an account no
/// more deliveries at once, whatever relays carry them), and in all by the worker's slots —
/// so that neither many accounts sharing the system relay nor one account with many relay
/// settings keep more sessions open at relays, or more file descriptors, than mailroom
/// delivers on at once. Past a bound, the connection unused the longest is closed.
pub struct Pool {
    per_account: usize,
    total: usize,
    idle: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Each key's connections, the most recently used last.
    by_key: HashMap<Key, Vec<Idle>>,
    count: usize,
    swept: Option<Instant>,
}

impl Kept {
    /// Takes out the connection unused the longest among the keys `which` picks.
    fn evict_oldest(&mut self, which: impl Fn(&Key) -> bool) -> Option<Session> {
        let oldest = self
            .by_key
            .iter()
            .filter(|(key, kept)| which(key) && !kept.is_empty())
            .min_by_key(|(_, kept)| kept[0].since)
            .map(|(key, _)| key.clone())?;
        let kept = self.by_key.get_mut(&oldest)?;
        let one = kept.remove(0);
        if kept.is_empty() {
            self.by_key.remove(&oldest);
        }
        self.count -= 1;
        Some(one.session)
    }

    fn of_owner(&self, owner: &str) -> usize {
        self.by_key
            .iter()
            .filter(|(key, _)| key.owner.as_deref() == Some(owner))
            .map(|(_, kept)| kept.len())
            .sum()
    }
}

impl Pool {
    /// At most `per_account` connections kept for one account's mail, over all its keys;
    /// at most `total` in all.
    pub fn new(per_account: u64, total: usize) -> Pool {
        Pool {
            per_account: usize::try_from(per_account).unwrap_or(usize::MAX).max(1),
            total: total.max(1),
            idle: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept connection of `key`, the most recently used first; those past their time
    /// are closed on the way.
    pub fn take(&self, key: &Key) -> Option<Session> {
        let now = Instant::now();
        let mut past = Vec::new();
        let mut found = None;
        {
            let mut idle = self.lock();
            let idle = &mut *idle;
            if let Some(kept) = idle.by_key.get_mut(key) {
                while let Some(one) = kept.pop() {
                    idle.count -= 1;
                    if one.usable(now) {
                        found = Some(one.session);
                        break;
                    }
                    past.push(one.session);
                }
                if kept.is_empty() {
                    idle.by_key.remove(key);
                }
            }
        }
        past.into_iter().for_each(close);
        found
    }

    /// Keeps a connection after a transaction that left it in a known state; closes it
    /// instead when it is worn. Past a bound (its key's or account's share, or the total),
    /// the connection unused the longest within that bound is closed.
    pub fn keep(&self, key: Key, session: Session) {
        let now = Instant::now();
        if session.worn(now) {
            close(session);
            return;
        }
        let mut closed = Vec::new();
        {
            let mut idle = self.lock();
            let owner = key.owner.clone();
            let kept = idle.by_key.entry(key).or_default();
            kept.push(Idle {
                session,
                since: now,
            });
            idle.count += 1;
            if let Some(owner) = owner.as_deref() {
                while idle.of_owner(owner) > self.per_account {
                    let Some(one) = idle.evict_oldest(|k| k.owner.as_deref() == Some(owner)) else {
                        break;
                    };
                    closed.push(one);
                }
            }
            while idle.count > self.total {
                let Some(one) = idle.evict_oldest(|_| true) else {
                    break;
                };
                closed.push(one);
            }
        }
        closed.into_iter().for_each(close);
    }

    /// Closes every kept connection of `key`: one of them stopped answering, and the
    /// others, opened to the same relay, likely did too — trying each would cost a
    /// message's time.
    pub fn close_key(&self, key: &Key) {
        let closed = {
            let mut idle = self.lock();
            let closed = idle.by_key.remove(key).unwrap_or_default();
            idle.count -= closed.len();
            closed
        };
        closed.into_iter().for_each(|one| close(one.session));
    }

    /// Closes the connections idle too long or worn; at most once a second, however often
    /// it is called.
    pub fn close_unusable(&self) {
        let now = Instant::now();
        let mut past = Vec::new();
        {
            let mut idle = self.lock();
            if idle
                .swept
                .is_some_and(|swept| now.saturating_duration_since(swept) < SWEEP_EVERY)
            {
                return;
            }
            idle.swept = Some(now);
            let idle = &mut *idle;
            idle.by_key.retain(|_, kept| {
                let before = kept.len();
                let (usable, unusable): (Vec<Idle>, Vec<Idle>) = std::mem::take(kept)
                    .into_iter()
                    .partition(|one| one.usable(now));
                past.extend(unusable.into_iter().map(|one| one.session));
                *kept = usable;
                idle.count -= before - kept.len();
                !kept.is_empty()
            });
        }
        past.into_iter().for_each(close);
    }

    /// Closes every kept connection, each with a QUIT, and waits for them.
    pub async fn close_all(&self) {
        let all: Vec<Session> = {
            let mut idle = self.lock();
            idle.count = 0;
            idle.by_key
                .drain()
                .flat_map(|(_, kept)| kept.into_iter().map(|one| one.session))
                .collect()
        };
        let quitting: Vec<_> = all.into_iter().map(|s| tokio::spawn(quit(s))).collect();
        for one in quitting {
            let _ = one.await;
        }
    }
}

/// Closes a connection with a QUIT, without waiting for it: the server's reply changes
/// nothing.
pub fn close(session: Session) {
    tokio::spawn(quit(session));
}

async fn quit(mut session: Session) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, session.connection.abort()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stops_serving_when_idle_old_or_worn() {
        let opened = Instant::now();
        let soon = opened + Duration::from_secs(2);
        assert!(serves_after_idle(opened, opened, 0, soon));
        assert!(!serves_after_idle(opened, opened, 0, opened + IDLE_TIMEOUT));
        // Busy all along: it serves until its age runs out.
        let last_used = opened + MAX_AGE - Duration::from_secs(1);
        assert!(serves_after_idle(last_used, opened, 50, last_used));
        assert!(!serves_after_idle(last_used, opened, 50, opened + MAX_AGE));
        assert!(serves(opened, MAX_TRANSACTIONS - 1, soon));
        assert!(!serves(opened, MAX_TRANSACTIONS, soon));
    }
}
