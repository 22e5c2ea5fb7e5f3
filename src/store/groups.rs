//! Background work in groups: many items run at once, and their results are written a
//! group per transaction. On SQLite every commit waits for the disk, so one commit per
//! item would cap the outbox and the verifier at the disk's flush rate.

use std::future::Future;

use tokio::task::JoinSet;

/// Runs `work` on every item, `concurrency` at a time, and hands the results to `save`
/// in groups: whatever finished while the previous group was being saved.
pub async fn run_in_groups<T, R, W, F, S, G>(items: Vec<T>, concurrency: usize, work: W, save: S)
where
    W: Fn(T) -> F,
    F: Future<Output = R> + Send + 'static,
    R: Send + 'static,
    S: Fn(Vec<R>) -> G,
    G: Future<Output = ()>,
{
    let mut items = items.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < concurrency {
            let Some(item) = items.next() else { break };
            running.spawn(work(item));
        }
        let Some(first) = running.join_next().await else {
            return;
        };
        let mut group = Vec::new();
        let mut finished = Some(first);
        while let Some(result) = finished {
            match result {
                Ok(result) => group.push(result),
                Err(error) => tracing::error!(%error, "a background task failed"),
            }
            finished = running.try_join_next();
        }
        save(group).await;
    }
}
