//! The claim loop. Claims due payouts up to its free capacity, runs each in its own task
//! (steps chained while the payout stays due), and sleeps until a notification, the next due
//! time or the fallback poll. On shutdown it stops claiming, lets in-flight steps finish and
//! releases their payouts; whatever is still running after the grace period is abandoned to
//! lease expiry, which is safe by construction (fencing tokens, submit_in_flight).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use payoutd_store::queue::{self, Lease};
use payoutd_store::transitions::{self, AfterWrite};
use payoutd_store::{PayoutRow, PgPool, StoreError, payouts};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::steps::{self, StepContext};
use crate::{Connectors, EngineConfig, EngineError, heartbeat, wakeup};

/// Counts kept by one worker, for logs, the demo and tests.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub claimed: AtomicU64,
    pub steps: AtomicU64,
    pub leases_lost: AtomicU64,
    pub released_on_shutdown: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub claimed: u64,
    pub steps: u64,
    pub leases_lost: u64,
    pub released_on_shutdown: u64,
    pub errors: u64,
}

impl WorkerCounters {
    pub fn report(&self) -> WorkerReport {
        WorkerReport {
            claimed: self.claimed.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            leases_lost: self.leases_lost.load(Ordering::Relaxed),
            released_on_shutdown: self.released_on_shutdown.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

pub struct Worker {
    pool: PgPool,
    connectors: Connectors,
    config: Arc<EngineConfig>,
    counters: Arc<WorkerCounters>,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(pool: PgPool, connectors: Connectors, config: EngineConfig) -> Self {
        Self {
            pool,
            connectors,
            config: Arc::new(config),
            counters: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) -> WorkerReport {
        let listener_stop = CancellationToken::new();
        let listener =
            tokio::spawn(wakeup::listen(self.pool.clone(), self.wake.clone(), listener_stop.clone()));
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tasks = JoinSet::new();
        tracing::info!(worker = %self.config.worker_id, concurrency = self.config.concurrency, "worker started");

        while !shutdown.is_cancelled() {
            // Reap finished tasks so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match queue::claim_due(&self.pool, &self.config.worker_id, free as i64, self.config.lease)
                    .await
                {
                    Ok(batch) => {
                        claimed = batch.len();
                        for (row, lease) in batch {
                            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                            self.counters.claimed.fetch_add(1, Ordering::Relaxed);
                            let job = Job {
                                pool: self.pool.clone(),
                                connectors: self.connectors.clone(),
                                config: self.config.clone(),
                                counters: self.counters.clone(),
                                shutdown: shutdown.clone(),
                            };
                            tasks.spawn(async move {
                                job.run(row, lease).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "claim failed; backing off");
                    }
                }
            }
            if claimed > 0 && claimed == free {
                continue; // probably more due work
            }
            // With every slot busy only a finishing task matters: skip the next-due query.
            let sleep = if free == 0 { self.config.idle_poll } else { self.idle_sleep().await };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next(), if free == 0 || claimed > 0 => {}
            }
        }

        tracing::info!(in_flight = tasks.len(), "worker stopping: finishing in-flight steps");
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(abandoned = tasks.len(), "grace period over; abandoning steps to lease expiry");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        listener_stop.cancel();
        let _ = listener.await;
        let report = self.counters.report();
        tracing::info!(?report, "worker stopped");
        report
    }

    /// How long to sleep when idle: until the next due payout, at most the fallback poll.
    async fn idle_sleep(&self) -> Duration {
        match queue::next_due_at(&self.pool).await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.config.idle_poll),
            _ => self.config.idle_poll,
        }
    }
}

/// One claimed payout, worked on until it is released.
struct Job {
    pool: PgPool,
    connectors: Connectors,
    config: Arc<EngineConfig>,
    counters: Arc<WorkerCounters>,
    shutdown: CancellationToken,
}

impl Job {
    async fn run(self, mut row: PayoutRow, lease: Lease) {
        let beat = heartbeat::spawn(
            self.pool.clone(),
            lease.clone(),
            self.config.heartbeat_every,
            self.config.lease,
        );
        loop {
            let span = tracing::info_span!(
                "payout.step",
                payout_id = %row.id,
                account = %row.account,
                provider = %row.provider,
                state = %row.state,
                attempt = row.attempt,
                traceparent = row.traceparent.as_deref().unwrap_or(""),
            );
            let result = self.step(&row, &lease).instrument(span).await;
            self.counters.steps.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(AfterWrite::Continue) if self.shutdown.is_cancelled() => {
                    if queue::release(&self.pool, &lease).await.is_ok() {
                        self.counters.released_on_shutdown.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(AfterWrite::Continue) => match payouts::get(&self.pool, row.id).await {
                    Ok(Some(next)) => row = next,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(payout_id = %row.id, error = %e, "reload failed; lease will expire");
                        break;
                    }
                },
                Ok(AfterWrite::Release) => break,
                Err(EngineError::Store(StoreError::LeaseLost(id))) => {
                    self.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(payout_id = %id, "lease lost: another worker or a callback took the payout over");
                    break;
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(payout_id = %row.id, error = %e, "step failed; the payout is retried after its lease expires");
                    break;
                }
            }
        }
        beat.abort();
    }

    async fn step(&self, row: &PayoutRow, lease: &Lease) -> Result<AfterWrite, EngineError> {
        let connector = self
            .connectors
            .get(&row.provider)
            .ok_or_else(|| EngineError::UnknownProvider { payout: row.id, provider: row.provider.clone() })?;
        let actor = format!("worker:{}", self.config.worker_id);
        let ctx = StepContext {
            pool: &self.pool,
            config: &self.config,
            connector: connector.as_ref(),
            actor: &actor,
        };
        let transition = steps::run(&ctx, row, lease).await?;
        transitions::apply(&self.pool, lease, &transition).await?;
        if transition.to != row.state {
            tracing::info!(from = %row.state, to = %transition.to, reason = %transition.reason, "transition");
        }
        Ok(if transition.to.is_final() { AfterWrite::Release } else { transition.after })
    }
}
