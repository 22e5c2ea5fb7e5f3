//! The limits mailroom is measured against: raw Argon2id on every core, and a plain
//! hickory-resolver loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use serde_json::json;
use sqlx::Row;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `operation` in a loop on every core for `seconds`; prints how many ran per second.
/// `prepare` makes each thread's operation, with whatever state it reuses.
fn on_every_core<P, O>(seconds: f64, prepare: P) -> anyhow::Result<()>
where
    P: Fn() -> O,
    O: FnMut(u64) + Send + 'static,
{
    let threads = std::thread::available_parallelism()?.get();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mut operation = prepare();
            std::thread::spawn(move || {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    operation(done);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "threads": threads, "done": done, "seconds": elapsed, "rate": done as f64 / elapsed })
    );
    Ok(())
}

/// Hashes as fast as every core allows, with the parameters mailroom stores passwords
/// with (m=19456 KiB, t=2, p=1), each thread reusing its memory.
pub fn hash_rate(seconds: f64) -> anyhow::Result<()> {
    on_every_core(seconds, || {
        let params = Params::new(19_456, 2, 1, Some(32)).expect("valid parameters");
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut memory = vec![Block::default(); 19_456];
        let mut output = [0u8; 32];
        move |n| {
            let password = format!("password-{n}");
            argon2
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    b"sixteen byte salt",
                    &mut output,
                    &mut memory,
                )
                .expect("hash");
        }
    })
}

/// Raw RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on every core, with ring, as a
/// DKIM signature of a message's headers: what a signed message cannot go below.
pub fn sign_rate(seconds: f64) -> anyhow::Result<()> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
    let key = Arc::new(
        ring::signature::RsaKeyPair::from_pkcs8(key.to_pkcs8_der()?.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    on_every_core(seconds, || {
        let key = key.clone();
        let rng = ring::rand::SystemRandom::new();
        let mut signature = vec![0; key.public().modulus_len()];
        move |_| {
            key.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                &[b'h'; 600],
                &mut signature,
            )
            .expect("sign");
        }
    })
}

/// Replays the queries of the verifier's last sweep over the suffix's domains: each
/// domain's lookups at once, `concurrency` domains at a time, as the verifier runs them.
pub async fn resolve_loop(
    nameserver: std::net::SocketAddr,
    suffix: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let db = crate::seed::open().await?;
    let rows =
        sqlx::query("SELECT id, lookups FROM domains WHERE name LIKE $1 AND lookups IS NOT NULL")
            .bind(format!("%.{suffix}"))
            .fetch_all(&db.pool)
            .await?;
    let mut by_domain: BTreeMap<String, Vec<(RecordType, String)>> = BTreeMap::new();
    let mut queries = 0;
    for row in &rows {
        let lookups: String = row.try_get("lookups")?;
        let lookups: Vec<serde_json::Value> = serde_json::from_str(&lookups)?;
        for lookup in lookups {
            let record_type = match lookup["type"].as_str() {
                Some("CNAME") => RecordType::CNAME,
                Some("MX") => RecordType::MX,
                _ => RecordType::TXT,
            };
            let name = lookup["name"].as_str().unwrap_or_default();
            by_domain
                .entry(row.try_get("id")?)
                .or_default()
                .push((record_type, format!("{name}.")));
            queries += 1;
        }
    }
    anyhow::ensure!(!by_domain.is_empty(), "no lookups recorded for *.{suffix}");

    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
        .into_iter()
        .map(|mut connection| {
            connection.port = nameserver.port();
            connection
        })
        .collect();
    let server = NameServerConfig::new(nameserver.ip(), true, connections);
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    );
    // As mailroom asks: no cache, EDNS(0).
    builder.options_mut().cache_size = 0;
    builder.options_mut().edns0 = true;
    let resolver = builder.build()?;

    let slots = Arc::new(Semaphore::new(concurrency));
    let mut domains = JoinSet::new();
    let mut failures = 0usize;
    let started = Instant::now();
    for (_, lookups) in by_domain.iter() {
        let slot = slots.clone().acquire_owned().await?;
        let resolver = resolver.clone();
        let lookups = lookups.clone();
        domains.spawn(async move {
            let mut each = JoinSet::new();
            for (record_type, name) in lookups {
                let resolver = resolver.clone();
                each.spawn(
                    async move { resolver.lookup(name.as_str(), record_type).await.is_ok() },
                );
            }
            let failed = each.join_all().await.iter().filter(|ok| !**ok).count();
            drop(slot);
            failed
        });
        while let Some(done) = domains.try_join_next() {
            failures += done?;
        }
    }
    for done in domains.join_all().await {
        failures += done;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "domains": by_domain.len(), "queries": queries, "failures": failures,
                "seconds": elapsed, "rate": by_domain.len() as f64 / elapsed })
    );
    Ok(())
}
