//! The lanes of a group commit: writes wait in one queue, and each lane, when free, takes
//! everything waiting (up to a bound) and hands it to one commit. While one lane waits for its
//! commit, the next collects, so under load a commit carries many writes and an idle process's
//! single write goes out at once. Used by the engine's transition writer and the API's
//! enqueues; what a commit does with its batch is theirs.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// Starts `lanes` lanes that pass batches of up to `max_batch` requests to `commit`. They stop
/// once every sender is dropped and the queue is empty.
pub fn start_lanes<R, F, Fut>(
    lanes: usize,
    max_batch: usize,
    commit: F,
) -> (mpsc::UnboundedSender<R>, Vec<JoinHandle<()>>)
where
    R: Send + 'static,
    F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (requests, receiver) = mpsc::unbounded_channel();
    let receiver = Arc::new(Mutex::new(receiver));
    let commit = Arc::new(commit);
    let handles = (0..lanes)
        .map(|_| {
            let (receiver, commit) = (receiver.clone(), commit.clone());
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut receiver = receiver.lock().await;
                        if receiver.recv_many(&mut batch, max_batch).await == 0 {
                            return;
                        }
                    }
                    commit(batch).await;
                }
            })
        })
        .collect();
    (requests, handles)
}
