//! The claim loop. Claims due payouts up to its free capacity, runs each in its own task
//! (steps chained while the payout stays due), and sleeps until a notification, the next due
//! time or the fallback poll. On shutdown it stops claiming, lets in-flight steps finish and
//! releases their payouts; whatever is still running after the grace period is abandoned to
//! lease expiry, which is safe by construction (fencing tokens, submit_in_flight).
//!
//! A step whose lease is lost (or can no longer be proven held) is cancelled where it stands;
//! a payout whose steps keep failing for a reason retrying cannot fix is parked after
//! `max_failed_steps` (a poison row must not be retried every lease period forever).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use opentelemetry::KeyValue;
use payoutd_store::queue::{self, Lease};
use payoutd_store::transitions::{self, AfterWrite, StepFailure};
use payoutd_store::{PayoutRow, PgPool, StoreError};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::rate_limit::RateLimiter;
use crate::references::References;
use crate::steps::{self, StepContext};
use crate::telemetry::{INSTRUMENTS, Pulse};
use crate::transition_writer::TransitionWriter;
use crate::{ConfigError, Connectors, EngineConfig, EngineError, heartbeat, wakeup};

/// Counts kept by one worker, for logs, the demo and tests.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub claimed: AtomicU64,
    pub steps: AtomicU64,
    pub leases_lost: AtomicU64,
    pub released_on_shutdown: AtomicU64,
    pub errors: AtomicU64,
    pub parked_poison: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub claimed: u64,
    pub steps: u64,
    pub leases_lost: u64,
    pub released_on_shutdown: u64,
    pub errors: u64,
    pub parked_poison: u64,
}

impl WorkerCounters {
    pub fn report(&self) -> WorkerReport {
        WorkerReport {
            claimed: self.claimed.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            leases_lost: self.leases_lost.load(Ordering::Relaxed),
            released_on_shutdown: self.released_on_shutdown.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            parked_poison: self.parked_poison.load(Ordering::Relaxed),
        }
    }
}

pub struct Worker {
    pool: PgPool,
    /// A few connections of their own for lease heartbeats, so that steps holding every
    /// connection of `pool` cannot starve them (DESIGN rule 1: a healthy worker keeps its
    /// leases).
    heartbeat_pool: PgPool,
    connectors: Connectors,
    config: Arc<EngineConfig>,
    counters: Arc<WorkerCounters>,
    wake: Arc<Notify>,
    pulse: Arc<Pulse>,
    /// The worker's share of the providers' call budgets, taken in blocks.
    limiter: Arc<RateLimiter>,
    /// The worker's block of provider references.
    references: Arc<References>,
}

impl Worker {
    /// Refuses settings that would break a rule (see [`EngineConfig::validate`]).
    pub fn new(pool: PgPool, connectors: Connectors, config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate(&connectors)?;
        let heartbeat_pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(config.heartbeat_every)
            .connect_lazy_with((*pool.connect_options()).clone());
        Ok(Self {
            pool,
            heartbeat_pool,
            connectors,
            config: Arc::new(config),
            counters: Arc::default(),
            wake: Arc::new(Notify::new()),
            pulse: Arc::default(),
            limiter: Arc::default(),
            references: Arc::default(),
        })
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// The claim loop's pulse: it beats on every turn (at least every `idle_poll`) and stops
    /// when the loop ends. The readiness probe reads it.
    pub fn pulse(&self) -> Arc<Pulse> {
        self.pulse.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) -> WorkerReport {
        let listener_stop = CancellationToken::new();
        let listener =
            tokio::spawn(wakeup::listen(self.pool.clone(), self.wake.clone(), listener_stop.clone()));
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let (writer, writer_lanes) = TransitionWriter::start(self.pool.clone());
        let writer = Arc::new(writer);
        let mut tasks = JoinSet::new();
        tracing::info!(worker = %self.config.worker_id, concurrency = self.config.concurrency, "worker started");
        // Whether this worker's idle mark is set (enqueues wake it only then).
        let mut marked_idle = false;

        while !shutdown.is_cancelled() {
            self.pulse.beat();
            // Reap finished tasks so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match queue::claim_batch(&self.pool, &self.config.worker_id, free as i64, self.config.lease)
                    .await
                {
                    Ok(batch) => {
                        claimed = batch.ready.len() + batch.undecodable.len();
                        if claimed > 0 && marked_idle {
                            marked_idle = false;
                            if let Err(e) = queue::busy_again(&self.pool, &self.config.worker_id).await {
                                tracing::warn!(error = %e, "could not clear the idle mark");
                            }
                        }
                        for (lease, error) in batch.undecodable {
                            self.counters.claimed.fetch_add(1, Ordering::Relaxed);
                            let reason = format!("the payout row does not decode: {error}");
                            record_poison(&self.pool, &self.config, &self.counters, &lease, &reason).await;
                        }
                        for (row, lease) in batch.ready {
                            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                            self.counters.claimed.fetch_add(1, Ordering::Relaxed);
                            let job = Job {
                                pool: self.pool.clone(),
                                heartbeat_pool: self.heartbeat_pool.clone(),
                                connectors: self.connectors.clone(),
                                config: self.config.clone(),
                                counters: self.counters.clone(),
                                shutdown: shutdown.clone(),
                                limiter: self.limiter.clone(),
                                references: self.references.clone(),
                                writer: writer.clone(),
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
            let sleep = if free == 0 {
                self.config.idle_poll
            } else {
                marked_idle = true;
                self.idle_sleep().await
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next(), if free == 0 || claimed > 0 => {}
            }
        }

        // Not ready from here on: a draining worker takes no new work.
        self.pulse.stop();
        if marked_idle {
            let _ = queue::busy_again(&self.pool, &self.config.worker_id).await;
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
        // The lanes stop once the last handle is gone, after writing what they were handed.
        drop(writer);
        for lane in writer_lanes {
            let _ = lane.await;
        }
        listener_stop.cancel();
        let _ = listener.await;
        let report = self.counters.report();
        tracing::info!(?report, "worker stopped");
        report
    }

    /// How long to sleep when idle: until the next due payout, at most the fallback poll. Marks
    /// the worker idle on the way, so that the next enqueue wakes it.
    async fn idle_sleep(&self) -> Duration {
        match queue::going_idle(&self.pool, &self.config.worker_id).await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.config.idle_poll),
            _ => self.config.idle_poll,
        }
    }
}

/// Counts a failed step of a poison row and gives the payout back, or parks it at the bound.
async fn record_poison(
    pool: &PgPool,
    config: &EngineConfig,
    counters: &WorkerCounters,
    lease: &Lease,
    reason: &str,
) {
    let actor = format!("worker:{}", config.worker_id);
    // Retried a lease period later: a row that fails because of this worker's configuration
    // (an unknown provider) may succeed on another worker of the fleet, but must not spin.
    let retry_in = config.lease;
    match transitions::record_step_failure(pool, lease, &actor, reason, config.max_failed_steps, retry_in)
        .await
    {
        Ok(StepFailure::Parked { failed_steps }) => {
            counters.parked_poison.fetch_add(1, Ordering::Relaxed);
            tracing::error!(payout_id = %lease.payout_id, failed_steps, %reason, alert = true, "poison payout parked in needs_review");
        }
        Ok(StepFailure::Retried { failed_steps }) => {
            tracing::error!(payout_id = %lease.payout_id, failed_steps, %reason, "step failed; retried later");
        }
        Err(e) => {
            tracing::warn!(payout_id = %lease.payout_id, error = %e, "could not record a failed step; the lease will expire");
        }
    }
}

/// One claimed payout, worked on until it is released.
struct Job {
    pool: PgPool,
    heartbeat_pool: PgPool,
    connectors: Connectors,
    config: Arc<EngineConfig>,
    counters: Arc<WorkerCounters>,
    shutdown: CancellationToken,
    limiter: Arc<RateLimiter>,
    references: Arc<References>,
    /// Group commit of this worker's transitions.
    writer: Arc<TransitionWriter>,
}

impl Job {
    async fn run(self, mut row: PayoutRow, lease: Lease) {
        // Dropped on every way out of this function, which stops the heartbeats.
        let beat = heartbeat::start(
            self.heartbeat_pool.clone(),
            lease.clone(),
            self.config.heartbeat_every,
            self.config.lease,
        );
        loop {
            let span = step_span(&row, &lease);
            let started = Instant::now();
            let result = tokio::select! {
                r = self.step(&row, &lease).instrument(span.clone()) => r,
                // A lost lease cancels the step wherever it is, provider call included: another
                // worker owns the payout now, and this one must not act on it.
                _ = beat.lost().cancelled() => Err(EngineError::Store(StoreError::LeaseLost(row.id))),
            };
            record_step(&span, &row, &result, started.elapsed());
            self.counters.steps.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok((AfterWrite::Continue, _)) if self.shutdown.is_cancelled() => {
                    if queue::release(&self.pool, &lease).await.is_ok() {
                        self.counters.released_on_shutdown.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                // The write read the payout back: the next step starts from what it left.
                Ok((AfterWrite::Continue, Some(next))) => row = *next,
                Ok((AfterWrite::Continue, None)) => {
                    tracing::warn!(payout_id = %row.id, "the payout does not decode after its write; lease will expire");
                    break;
                }
                Ok((AfterWrite::Release, _)) => break,
                Err(EngineError::Store(StoreError::LeaseLost(id))) => {
                    self.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    INSTRUMENTS.leases_lost.add(1, &[]);
                    tracing::info!(payout_id = %id, "lease lost: another worker or a callback took the payout over");
                    break;
                }
                Err(e) if e.is_poison() => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    record_poison(&self.pool, &self.config, &self.counters, &lease, &e.to_string()).await;
                    break;
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(payout_id = %row.id, error = %e, "step failed; the payout is retried after its lease expires");
                    break;
                }
            }
        }
        drop(beat);
    }

    /// Runs one step and writes its transition; gives back what to do next and the payout as
    /// the write left it.
    async fn step(
        &self,
        row: &PayoutRow,
        lease: &Lease,
    ) -> Result<(AfterWrite, Option<Box<PayoutRow>>), EngineError> {
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
            limiter: &self.limiter,
            references: &self.references,
            writer: &self.writer,
        };
        let transition = steps::run(&ctx, row, lease).await?;
        let (from, to, after) = (transition.from, transition.to, transition.after);
        let reason = transition.reason.clone();
        let written = self.writer.write(lease, transition).await?;
        if to != from {
            tracing::info!(%from, %to, %reason, "transition");
        }
        let after = if to.is_active() { after } else { AfterWrite::Release };
        Ok((after, written.map(Box::new)))
    }
}

/// The span of one step: the messaging conventions' "process" span (kind consumer), a child of
/// the trace context stored with the payout at enqueue, so that every step of a payout, in any
/// worker process and however much later, lands in the payout's one trace.
fn step_span(row: &PayoutRow, lease: &Lease) -> tracing::Span {
    let span = tracing::info_span!(
        "process payouts",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.operation.type = "process",
        messaging.operation.name = "step",
        messaging.destination.name = "payouts",
        messaging.message.id = %row.id,
        payout.id = %row.id,
        payout.account = %row.account,
        payout.provider = %row.provider,
        payout.state = %row.state,
        payout.attempt = row.attempt,
        payout.fencing_token = lease.fencing_token,
        trace_id = tracing::field::Empty,
        step.result = tracing::field::Empty,
    );
    payoutd_providers::telemetry::continue_trace(&span, row.traceparent.as_deref());
    span
}

/// Ends a step's telemetry: its result on the span and in the duration histogram.
fn record_step(
    span: &tracing::Span,
    row: &PayoutRow,
    result: &Result<(AfterWrite, Option<Box<PayoutRow>>), EngineError>,
    took: Duration,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(EngineError::Store(StoreError::LeaseLost(_))) => "lease_lost",
        Err(e) if e.is_poison() => "poison",
        Err(_) => "error",
    };
    span.record("step.result", outcome);
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    INSTRUMENTS.step_duration.record(
        took.as_secs_f64(),
        &[
            KeyValue::new("provider", row.provider.clone()),
            KeyValue::new("state", row.state.as_str()),
            KeyValue::new("result", outcome),
        ],
    );
}
