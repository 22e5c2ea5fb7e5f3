//! Background work in groups: many items run at once, and their results are written a
//! group per transaction. On SQLite every commit waits for the disk, so one commit per
//! item would cap the outbox and the verifier at the disk's flush rate.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// Runs `work` on every item, `concurrency` at a time, and hands the results to `save`
/// in groups: whatever finished while the previous group was being saved. Work goes on
/// while a group is saved.
pub async fn run_in_groups<T, R, W, F, S, G>(items: Vec<T>, concurrency: usize, work: W, save: S)
where
    W: Fn(T) -> F,
    F: Future<Output = R> + Send + 'static,
    R: Send + 'static,
    S: Fn(Vec<R>) -> G,
    G: Future<Output = ()>,
{
    let (finished, mut results) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let start_all = async move {
        for item in items {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let task = work(item);
            let finished = finished.clone();
            tokio::spawn(async move {
                let result = task.await;
                drop(slot);
                let _ = finished.send(result);
            });
        }
    };
    let save_all = async {
        while let Some(first) = results.recv().await {
            let mut group = vec![first];
            while let Ok(more) = results.try_recv() {
                group.push(more);
            }
            save(group).await;
        }
    };
    tokio::join!(start_all, save_all);
}
