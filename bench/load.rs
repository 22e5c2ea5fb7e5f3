//! The load that is not a plain wrk run: the mailbox-creation burst, with GETs timed beside
//! it, and a fixed count of emails sent through the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

/// `concurrency` clients create mailboxes for `seconds` while one more GETs a mailbox
/// every 10 ms; prints the creation rate and the GETs' latency percentiles.
pub async fn create_burst(
    url: &str,
    key: &str,
    domain: &str,
    probe_id: i64,
    seconds: f64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let run = mailroom::store::new_id("b");
    let started = Instant::now();

    let probe = {
        let (client, url, key) = (client.clone(), url.to_string(), key.to_string());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < deadline {
                tick.tick().await;
                let sent = Instant::now();
                let answer = client
                    .get(format!("{url}/v2/email-accounts/{probe_id}"))
                    .bearer_auth(&key)
                    .send()
                    .await;
                if matches!(&answer, Ok(a) if a.status().is_success()) {
                    latencies.push(sent.elapsed());
                }
            }
            latencies
        })
    };

    let mut creators = Vec::new();
    for creator in 0..concurrency {
        let (client, url, key, domain) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            domain.to_string(),
        );
        let (created, failed, run) = (created.clone(), failed.clone(), run.clone());
        creators.push(tokio::spawn(async move {
            let mut number = 0;
            while Instant::now() < deadline {
                number += 1;
                let answer = client
                    .post(format!("{url}/v2/email-accounts/create"))
                    .bearer_auth(&key)
                    .json(&json!({ "domain": domain, "local_part": format!("{run}-{creator}-{number}") }))
                    .send()
                    .await;
                let counter = match answer {
                    Ok(a) if a.status().as_u16() == 201 => &created,
                    _ => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for creator in creators {
        creator.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = probe.await?;
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let created = created.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "created": created,
            "failed": failed.load(Ordering::Relaxed),
            "seconds": elapsed,
            "rate": created as f64 / elapsed,
            "gets": latencies.len(),
            "get_p50_ms": percentile(0.50),
            "get_p99_ms": percentile(0.99),
            "get_max_ms": percentile(1.0),
        })
    );
    Ok(())
}

/// A 2 KB text body, as `bench/emails.lua` sends.
fn text_body() -> String {
    "A line of the benchmark's text body, sixty-four bytes long.....\n".repeat(32)
}

/// Posts `count` emails from `from` to `to`, `concurrency` at once, each with a fresh
/// `Idempotency-Key`; stops at the first refusal. Prints the rate they were accepted at.
pub async fn send_burst(
    url: &str,
    key: &str,
    from: &str,
    to: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let run = mailroom::store::new_id("b");
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let (client, next, run) = (client.clone(), next.clone(), run.clone());
        let (url, key) = (url.to_string(), key.to_string());
        let email = json!({ "from": from, "to": to, "subject": "Benchmark", "text": text_body() });
        senders.push(tokio::spawn(async move {
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= count as u64 {
                    return anyhow::Ok(());
                }
                let answer = client
                    .post(format!("{url}/v2/emails"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("{run}-{number}"))
                    .json(&email)
                    .send()
                    .await?;
                let status = answer.status();
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "POST /v2/emails answered {status}: {}",
                    answer.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "accepted": count, "seconds": elapsed, "rate": count as f64 / elapsed })
    );
    Ok(())
}
