//! The retention timer: every worker process runs it, and one pass runs per period across the
//! fleet. Each tick asks the store for a pass unless one finished within `every`
//! (`payoutd_store::retention::run` holds a fleet-wide advisory lock while it runs, so a slow
//! pass is never run twice at once either). `payoutd retention run` does a pass by hand.

use std::time::Duration;

use payoutd_store::retention::{self, RetentionPolicy, RetentionRun};
use payoutd_store::{PgPool, StoreError};
use tokio_util::sync::CancellationToken;

/// The timer's settings.
#[derive(Debug, Clone)]
pub struct RetentionTimerConfig {
    /// Off: this process never runs a pass (default on).
    pub enabled: bool,
    /// At most one pass per this period across the fleet (default 1 h).
    pub every: Duration,
    pub policy: RetentionPolicy,
}

impl Default for RetentionTimerConfig {
    fn default() -> Self {
        Self { enabled: true, every: Duration::from_secs(3600), policy: RetentionPolicy::default() }
    }
}

/// One tick: a pass, unless another process runs one or one finished within `every`.
pub async fn run_once(
    pool: &PgPool,
    config: &RetentionTimerConfig,
    actor: &str,
) -> Result<RetentionRun, StoreError> {
    retention::run(pool, &config.policy, actor, "scheduled retention pass", Some(config.every)).await
}

/// Ticks until `shutdown`. The first tick comes a minute after start (a fleet restarting does
/// not begin with a pass), then every `every`; a tick that finds the last pass recent skips.
pub async fn run(pool: PgPool, config: RetentionTimerConfig, worker_id: String, shutdown: CancellationToken) {
    if !config.enabled {
        return;
    }
    let actor = format!("retention:{worker_id}");
    let first = Duration::from_secs(60).min(config.every);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + first,
        config.every.max(Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A pass stops between statements when the process shuts down: each batch commits on
        // its own, and the next pass carries on where this one stopped.
        let pass = run_once(&pool, &config, &actor);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = pass => match result {
                Ok(RetentionRun::Done(report)) => tracing::info!(?report, "retention pass done"),
                Ok(RetentionRun::Skipped(why)) => tracing::debug!(%why, "retention pass skipped"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; the next tick tries again"),
            }
        }
    }
}
