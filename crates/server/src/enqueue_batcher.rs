//! Group commit of `POST /v1/payouts`. Concurrent requests hand their payout to a few lanes;
//! each lane stores everything waiting when it is free in one transaction
//! ([`client_limits::enqueue_many`]) and answers each request only after that commit, so a
//! payout answered 201 is on disk exactly as with one commit per request. An idle server's
//! single request goes out at once, with no added wait.

use payoutd_store::client_limits::{self, LimitedEnqueue};
use payoutd_store::group_commit;
use payoutd_store::payouts::{Enqueue, OwnedEnqueue};
use payoutd_store::{PgPool, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most payouts one commit carries.
const MAX_BATCH: usize = 256;
/// Commits in flight at once: while one lane waits for its commit, the next collects.
const LANES: usize = 2;

type Reply = oneshot::Sender<Result<LimitedEnqueue, StoreError>>;

/// The handle request handlers enqueue through; cheap to clone. The lanes stop when the last
/// handle is dropped, after storing what they were handed.
#[derive(Clone)]
pub struct EnqueueBatcher {
    requests: mpsc::UnboundedSender<(OwnedEnqueue, Reply)>,
}

impl EnqueueBatcher {
    /// Starts the lanes on `pool` (inside a Tokio runtime).
    pub fn start(pool: PgPool) -> Self {
        let (requests, _lanes) = group_commit::start_lanes(LANES, MAX_BATCH, move |batch| {
            let pool = pool.clone();
            async move { store(&pool, batch).await }
        });
        Self { requests }
    }

    /// Stores `payout` in the next commit of a lane and gives back what became of it.
    pub async fn enqueue(&self, payout: OwnedEnqueue) -> Result<LimitedEnqueue, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((payout, reply))
            .map_err(|_| StoreError::Refused("the server is stopping: payout not stored".into()))?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Refused("the enqueue lane stopped".into())))
    }
}

async fn store(pool: &PgPool, batch: Vec<(OwnedEnqueue, Reply)>) {
    let items: Vec<Enqueue<'_>> = batch.iter().map(|(e, _)| e.as_enqueue()).collect();
    match client_limits::enqueue_many(pool, &items).await {
        Ok(results) => {
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        // The whole commit failed: each payout alone, so that one bad row fails only its own
        // request. Safe even if the commit happened after all (a lost connection): a payout
        // already stored is found by its key and answered as a replay.
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, payouts = batch.len(), "enqueue batch failed; storing its payouts one by one");
            for (payout, reply) in batch {
                let result = client_limits::enqueue(pool, &payout.as_enqueue()).await;
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            if let Some((_, reply)) = batch.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}
