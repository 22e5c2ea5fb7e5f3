//! Passwords: Argon2id (m=19456 KiB, t=2, p=1) in the `{ARGON2ID}$argon2id$…` form that
//! Dovecot verifies. Hashing is slow and memory-hard by design, so it runs on a few
//! long-lived threads of its own — one per core, at a lower priority — each reusing one
//! block of memory: requests never wait on it, and a burst of hashes neither runs more
//! hashes at once than there are cores nor leaves 19 MiB behind per hash in the allocator.
//!
//! The queue in front of them is bounded, with a smaller share for anonymous work (logins,
//! accepting invitations, password resets), which also waits behind authenticated work:
//! a flood of logins is answered "busy" at once and cannot delay a mailbox being created.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

use anyhow::{Context, bail};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::distr::Alphanumeric;
use rand::{Rng, RngCore};
use tokio::sync::oneshot;

const SCHEME: &str = "{ARGON2ID}";
const MEMORY_KIB: u32 = 19_456;
const TIME: u32 = 2;
const LANES: u32 = 1;
const OUTPUT: usize = 32;
const SALT: usize = 16;

/// Hashes that may wait, per hashing thread, by who asks.
const ANONYMOUS_QUEUE_PER_THREAD: usize = 4;
const AUTHENTICATED_QUEUE_PER_THREAD: usize = 32;

/// Who a hash is for: a caller who proved who they are, or anyone on the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Authenticated,
    Anonymous,
}

/// Every hashing thread is busy and the queue for this kind of work is full.
#[derive(Debug)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the password hashers are busy; try again in a moment")
    }
}

impl std::error::Error for Busy {}

enum Job {
    Hash(String, oneshot::Sender<anyhow::Result<String>>),
    Verify(String, String, oneshot::Sender<anyhow::Result<bool>>),
}

#[derive(Default)]
struct Waiting {
    authenticated: VecDeque<Job>,
    anonymous: VecDeque<Job>,
}

struct Hashers {
    waiting: Mutex<Waiting>,
    ready: Condvar,
    threads: usize,
}

impl Hashers {
    fn submit(&self, job: Job, priority: Priority) -> Result<(), Busy> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, per_thread) = match priority {
            Priority::Authenticated => (&mut waiting.authenticated, AUTHENTICATED_QUEUE_PER_THREAD),
            Priority::Anonymous => (&mut waiting.anonymous, ANONYMOUS_QUEUE_PER_THREAD),
        };
        if queue.len() >= per_thread * self.threads {
            return Err(Busy);
        }
        queue.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, authenticated work first.
    fn next(&self) -> Job {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = waiting
                .authenticated
                .pop_front()
                .or_else(|| waiting.anonymous.pop_front())
            {
                return job;
            }
            waiting = self.ready.wait(waiting).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn hashers() -> &'static Hashers {
    static HASHERS: OnceLock<&'static Hashers> = OnceLock::new();
    HASHERS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hashers: &'static Hashers = Box::leak(Box::new(Hashers {
            waiting: Mutex::default(),
            ready: Condvar::new(),
            threads,
        }));
        for number in 0..threads {
            std::thread::Builder::new()
                .name(format!("password-hasher-{number}"))
                .spawn(move || {
                    // A hash holds a core for tens of milliseconds. At a lower priority,
                    // a request thread that wakes up gets the core at once instead of
                    // after the hash's time slice.
                    #[cfg(target_os = "linux")]
                    let _ =
                        rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
                    let mut memory = vec![Block::default(); MEMORY_KIB as usize];
                    loop {
                        match hashers.next() {
                            Job::Hash(password, reply) => {
                                let _ = reply.send(hash_now(&password, &mut memory));
                            }
                            Job::Verify(password, stored, reply) => {
                                let _ = reply.send(verify_now(&password, &stored, &mut memory));
                            }
                        }
                    }
                })
                .expect("start a password hasher thread");
        }
        hashers
    })
}

fn argon2(
    memory_kib: u32,
    time: u32,
    lanes: u32,
    output: usize,
) -> anyhow::Result<Argon2<'static>> {
    let params =
        Params::new(memory_kib, time, lanes, Some(output)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str, memory: &mut [Block]) -> anyhow::Result<String> {
    let mut salt = [0u8; SALT];
    rand::rng().fill_bytes(&mut salt);
    let mut output = [0u8; OUTPUT];
    argon2(MEMORY_KIB, TIME, LANES, OUTPUT)?
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
        .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))?;
    Ok(format!(
        "{SCHEME}$argon2id$v=19$m={MEMORY_KIB},t={TIME},p={LANES}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(output)
    ))
}

fn verify_now(password: &str, stored: &str, memory: &mut Vec<Block>) -> anyhow::Result<bool> {
    let phc = stored.strip_prefix(SCHEME).unwrap_or(stored);
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", params, salt, expected] = parts.as_slice() else {
        bail!("a stored password hash is not in the {SCHEME} argon2id form");
    };
    let mut cost = [0u32; 3];
    for (slot, (key, value)) in cost
        .iter_mut()
        .zip(params.split(',').filter_map(|p| p.split_once('=')))
    {
        *slot = value
            .parse()
            .with_context(|| format!("the {key} of a stored password hash"))?;
    }
    let [memory_kib, time, lanes] = cost;
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .context("the salt of a stored password hash")?;
    let expected = STANDARD_NO_PAD
        .decode(expected)
        .context("a stored password hash")?;
    let hasher = argon2(memory_kib, time, lanes, expected.len())?;
    let needed = hasher.params().block_count();
    if memory.len() < needed {
        memory.resize(needed, Block::default());
    }
    let mut output = vec![0u8; expected.len()];
    hasher
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut output,
            &mut memory[..needed],
        )
        .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))?;
    // Compared in constant time: every byte, whatever the first difference.
    Ok(output
        .iter()
        .zip(&expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0)
}

/// Hashes a new password; fails with [`Busy`] when the queue for `priority` is full.
pub async fn hash(password: &str, priority: Priority) -> anyhow::Result<String> {
    let (reply, answer) = oneshot::channel();
    hashers().submit(Job::Hash(password.to_string(), reply), priority)?;
    answer.await?
}

/// Checks a password against a stored hash; fails with [`Busy`] when the queue is full.
pub async fn verify(password: &str, stored: &str, priority: Priority) -> anyhow::Result<bool> {
    let (reply, answer) = oneshot::channel();
    hashers().submit(
        Job::Verify(password.to_string(), stored.to_string(), reply),
        priority,
    )?;
    answer.await?
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
    use argon2::PasswordVerifier;
    use argon2::password_hash::PasswordHash;

    #[tokio::test]
    async fn hashes_have_dovecots_form_and_verify() {
        let stored = hash("correct horse battery", Priority::Authenticated)
            .await
            .unwrap();
        assert!(
            stored.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            verify("correct horse battery", &stored, Priority::Authenticated)
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong horse battery", &stored, Priority::Authenticated)
                .await
                .unwrap()
        );
        assert_ne!(
            stored,
            hash("correct horse battery", Priority::Authenticated)
                .await
                .unwrap(),
            "salted"
        );
    }

    #[tokio::test]
    async fn the_form_is_the_phc_string_others_verify() {
        let stored = hash("correct horse battery", Priority::Authenticated)
            .await
            .unwrap();
        let phc = PasswordHash::new(stored.strip_prefix(SCHEME).unwrap()).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &phc)
                .is_ok()
        );
        // And a hash made elsewhere, with other costs, verifies here.
        let other = argon2(4096, 3, 1, 32).unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
        let made = argon2::PasswordHasher::hash_password(&other, b"password", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify("password", &made, Priority::Authenticated)
                .await
                .unwrap()
        );
        assert!(
            !verify("passw0rd", &made, Priority::Authenticated)
                .await
                .unwrap()
        );
        assert!(
            verify("x", "{ARGON2ID}$argon2i$bad", Priority::Authenticated)
                .await
                .is_err()
        );
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (a, b) = (generate(), generate());
        assert!(a.len() >= 20 && a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
