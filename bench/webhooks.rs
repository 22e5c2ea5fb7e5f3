//! Benchmark 9's parts: a receiver that answers 200 at once, events with their webhook
//! jobs written as mailroom writes them, the wait for their delivery, and the baseline —
//! the same payloads POSTed raw to the same receiver from one process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use mailroom::events::{self, NewEvent};
use mailroom::store::{Engine, Timestamp};
use serde_json::json;

use crate::seed::open;

/// Serves `POST` anything with 200 at once, and `GET /count` with how many came.
pub async fn receiver(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/count",
            axum::routing::get(|State(count): State<Arc<AtomicU64>>| async move {
                count.load(Ordering::Relaxed).to_string()
            }),
        )
        .fallback(|State(count): State<Arc<AtomicU64>>| async move {
            count.fetch_add(1, Ordering::Relaxed);
            "ok"
        })
        .with_state(count);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "{}",
        json!({ "listen": listener.local_addr()?.to_string() })
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// `count` `email.sent` events of `account`, as the worker writes them when a relay takes
/// a message, each with a job for `webhook` (which is disabled meanwhile, so that nothing
/// goes before the run starts).
pub async fn seed_events(account: &str, webhook: &str, count: usize) -> anyhow::Result<()> {
    let db = open().await?;
    let now = Timestamp::system_now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut tx = db.begin().await?;
        for number in chunk {
            let email_id = format!("em_bench{number:019}");
            let data = json!({
                "id": email_id,
                "from": "noreply@bench.test",
                "subject": "Your invoice for November",
                "tags": {"category": "invoice", "customer": format!("c{number}")},
                "entity_id": null,
                "message_id": format!("<bench{number}@bench.test>"),
                "created_at": now,
                "recipient": {"email": "someone@example.net", "status": "sent",
                              "reply": "250 2.0.0 Ok: queued as 4Xq9F2ZkQz"},
            });
            let event = NewEvent {
                account_id: Some(account),
                entity_id: None,
                kind: "email.sent",
                object_key: &email_id,
                email_id: None,
                recipient: Some("someone@example.net"),
                detail: None,
                data: Some(data),
            };
            let id = events::record(&mut tx, event, now).await?;
            events::queue_delivery(&mut tx, webhook, &id, &email_id, now).await?;
        }
        tx.commit().await?;
    }
    // Statistics as autovacuum would have them within its next minute: PostgreSQL plans
    // the claims with them.
    if db.engine == Engine::Postgres {
        sqlx::query("ANALYZE webhook_deliveries, events")
            .execute(&db.pool)
            .await?;
    }
    println!("{}", json!({ "seeded": count }));
    Ok(())
}

/// Waits until every job of `webhook` has succeeded; prints the rate from `since` (ms)
/// to the last success.
pub async fn webhooks_done(webhook: &str, since: i64) -> anyhow::Result<()> {
    let db = open().await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the events were not delivered in time"
        );
        // On the index of each endpoint's deliveries by status, so that the wait costs
        // the database next to nothing while it is timed.
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 \
             AND status IN ('pending', 'delivering', 'failed')",
        )
        .bind(webhook)
        .fetch_one(&db.pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
         WHERE d.webhook_id = $1 AND (a.http_status IS NULL OR a.http_status <> 200)",
    )
    .bind(webhook)
    .fetch_one(&db.pool)
    .await?;
    anyhow::ensure!(
        failed == 0,
        "{failed} attempts failed; see the server's log"
    );
    let (delivered, last): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), MAX(updated_at) FROM webhook_deliveries WHERE webhook_id = $1",
    )
    .bind(webhook)
    .fetch_one(&db.pool)
    .await?;
    let seconds = (last - since).max(1) as f64 / 1000.0;
    println!(
        "{}",
        json!({ "delivered": delivered, "seconds": seconds, "rate": delivered as f64 / seconds })
    );
    Ok(())
}

/// POSTs the payloads of `webhook`'s events to `url`, `concurrency` at once over kept-alive
/// connections, unsigned and unrecorded: what one process can send the receiver.
pub async fn post_burst(webhook: &str, url: &str, concurrency: usize) -> anyhow::Result<()> {
    let db = open().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY position",
    )
    .bind(webhook)
    .fetch_all(&db.pool)
    .await?;
    let mut conn = db.pool.acquire().await?;
    let mut bodies = Vec::with_capacity(ids.len());
    for id in &ids {
        let event = events::get(&mut conn, id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("event {id} is gone"))?;
        bodies.push((event.id.clone(), serde_json::to_vec(&event)?));
    }
    drop(conn);
    let bodies = Arc::new(bodies);
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut posters = Vec::new();
    for _ in 0..concurrency {
        let (client, next, bodies, url) = (
            client.clone(),
            next.clone(),
            bodies.clone(),
            url.to_string(),
        );
        posters.push(tokio::spawn(async move {
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((id, body)) = bodies.get(number) else {
                    return anyhow::Ok(());
                };
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status() == 200,
                    "the receiver answered {}",
                    answer.status()
                );
                answer.bytes().await?;
            }
        }));
    }
    for poster in posters {
        poster.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "posted": bodies.len(), "seconds": seconds, "rate": bodies.len() as f64 / seconds })
    );
    Ok(())
}
