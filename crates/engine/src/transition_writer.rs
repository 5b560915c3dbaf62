//! Group commit of one worker's transitions. Steps hand their writes to a few writer lanes;
//! each lane takes every write waiting when it is free (up to [`MAX_BATCH`]) and commits them
//! together ([`transition_batch::apply_batch`]), then answers each step. Under load a commit
//! carries many payouts; an idle worker's single write goes out at once, with no added wait.
//!
//! Every payout's write still checks its own fencing token, so a step whose lease was taken
//! over writes nothing, exactly as with one commit per write. A step waits for its answer
//! before any provider call that depends on the write (rule 3: the intent and "submit started"
//! are committed first).

use payoutd_store::group_commit;
use payoutd_store::queue::Lease;
use payoutd_store::transition_batch::{self, ItemResult};
use payoutd_store::transitions::{self, Transition};
use payoutd_store::{PgPool, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::telemetry::INSTRUMENTS;

/// Most writes one commit carries: beyond this the statement's arrays grow without a gain.
pub const MAX_BATCH: usize = 256;
/// Commits in flight at once: while one lane waits for its commit, the next collects.
pub const LANES: usize = 2;

struct Request {
    lease: Lease,
    transition: Transition,
    reply: oneshot::Sender<ItemResult>,
}

/// The handle steps write through. The lanes stop when every handle is dropped, after
/// writing what was handed to them.
pub struct TransitionWriter {
    requests: mpsc::UnboundedSender<Request>,
}

impl TransitionWriter {
    /// Starts the lanes on `pool`.
    pub fn start(pool: PgPool) -> (Self, Vec<JoinHandle<()>>) {
        let (requests, lanes) = group_commit::start_lanes(LANES, MAX_BATCH, move |batch| {
            let pool = pool.clone();
            async move { write_batch(&pool, batch).await }
        });
        (Self { requests }, lanes)
    }

    /// Writes `transition` under `lease` in the next commit of a lane; the payout as the write
    /// left it, or why nothing was written.
    pub async fn write(&self, lease: &Lease, transition: Transition) -> ItemResult {
        let span = tracing::info_span!(
            "transition write",
            otel.kind = "client",
            db.system.name = "postgresql",
            payout.id = %lease.payout_id,
            payout.fencing_token = lease.fencing_token,
            payout.state = %transition.from,
            transition.to = %transition.to,
        );
        async {
            let (reply, answer) = oneshot::channel();
            let request = Request { lease: lease.clone(), transition, reply };
            if self.requests.send(request).is_err() {
                return Err(StoreError::Refused("the worker is stopping: transition not written".into()));
            }
            answer.await.unwrap_or_else(|_| Err(StoreError::Refused("the transition writer stopped".into())))
        }
        .instrument(span)
        .await
    }
}

async fn write_batch(pool: &PgPool, batch: Vec<Request>) {
    INSTRUMENTS.group_commit_writes.record(batch.len() as u64, &[]);
    let items: Vec<(&Lease, &Transition)> = batch.iter().map(|r| (&r.lease, &r.transition)).collect();
    match transition_batch::apply_batch(pool, &items).await {
        Ok(results) => {
            for (request, result) in batch.into_iter().zip(results) {
                let _ = request.reply.send(result);
            }
        }
        // The database refused the batch (an error it reported, so nothing of it was
        // committed): each write alone, so that one bad row fails only its own step. A lost
        // connection is not retried: its commit may have happened, and a write repeated could
        // record a second "submit started" for one call. Those steps fail, and their payouts
        // come back when the lease expires.
        Err(e @ StoreError::Database(sqlx::Error::Database(_))) if batch.len() > 1 => {
            tracing::warn!(error = %e, writes = batch.len(), "batch commit failed; writing its items one by one");
            for request in batch {
                let result = transitions::apply_and_read(pool, &request.lease, &request.transition).await;
                let _ = request.reply.send(result);
            }
        }
        Err(e) => {
            let why = e.to_string();
            let mut batch = batch.into_iter();
            if let Some(request) = batch.next() {
                let _ = request.reply.send(Err(e));
            }
            for request in batch {
                let _ = request.reply.send(Err(StoreError::GroupCommitFailed(why.clone())));
            }
        }
    }
}
