//! Passwords: Argon2id (m=19456 KiB, t=2, p=1) in the `{ARGON2ID}$argon2id$…` form that
//! Dovecot verifies. Hashing is slow and memory-hard by design, so it runs on a few
//! long-lived threads of its own — one per core, at a lower priority — each reusing one
//! block of memory: requests never wait on it, and a burst of hashes neither runs more
//! hashes at once than there are cores nor leaves 19 MiB behind per hash in the allocator.

use std::sync::{OnceLock, mpsc};

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

enum Job {
    Hash(String, oneshot::Sender<anyhow::Result<String>>),
    Verify(String, String, oneshot::Sender<anyhow::Result<bool>>),
}

fn workers() -> &'static mpsc::Sender<Job> {
    static WORKERS: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let count = std::thread::available_parallelism().map_or(2, |n| n.get());
        for number in 0..count {
            let receiver = receiver.clone();
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
                        let job = receiver.lock().map(|r| r.recv());
                        let Ok(Ok(job)) = job else { return };
                        match job {
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
        sender
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

pub async fn hash(password: &str) -> anyhow::Result<String> {
    let (reply, answer) = oneshot::channel();
    workers()
        .send(Job::Hash(password.to_string(), reply))
        .map_err(|_| anyhow::anyhow!("the password hashers stopped"))?;
    answer.await?
}

pub async fn verify(password: &str, stored: &str) -> anyhow::Result<bool> {
    let (reply, answer) = oneshot::channel();
    workers()
        .send(Job::Verify(password.to_string(), stored.to_string(), reply))
        .map_err(|_| anyhow::anyhow!("the password hashers stopped"))?;
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
        let stored = hash("correct horse battery").await.unwrap();
        assert!(
            stored.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("correct horse battery", &stored).await.unwrap());
        assert!(!verify("wrong horse battery", &stored).await.unwrap());
        assert_ne!(
            stored,
            hash("correct horse battery").await.unwrap(),
            "salted"
        );
    }

    #[tokio::test]
    async fn the_form_is_the_phc_string_others_verify() {
        let stored = hash("correct horse battery").await.unwrap();
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
        assert!(verify("password", &made).await.unwrap());
        assert!(!verify("passw0rd", &made).await.unwrap());
        assert!(verify("x", "{ARGON2ID}$argon2i$bad").await.is_err());
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (a, b) = (generate(), generate());
        assert!(a.len() >= 20 && a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
