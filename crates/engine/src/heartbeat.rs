//! Keeps a lease alive while a job works on its payout, and tells the job when the lease may be
//! gone, so that the step in flight is cancelled before it can make a provider call under a
//! lease another worker holds (DESIGN rule 4: a lost lease stops the step).
//!
//! The heartbeat lives and dies with its job: [`HeartbeatGuard`] aborts it on drop, so every
//! exit of the job (return, panic, abort of the job's task) stops it. Heartbeats go through a
//! pool of their own, so steps that hold every connection of the main pool cannot starve them.

use std::time::Duration;

use payoutd_store::PgPool;
use payoutd_store::queue::{self, Lease};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Stops the heartbeat when dropped. `lost` fires when the lease is known or feared lost.
pub struct HeartbeatGuard {
    task: JoinHandle<()>,
    lost: CancellationToken,
}

impl HeartbeatGuard {
    /// Cancelled when the lease was taken over, or when no heartbeat has succeeded for so long
    /// that the lease may have expired (we cannot prove we still hold it).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts heartbeats for `lease`: every `every`, extend it to `lease_len` from the database's
/// now. The lease is considered lost `lease_len - every` after the start of the last
/// heartbeat that succeeded (an extension sent at t expires no sooner than t + lease_len).
pub fn start(pool: PgPool, lease: Lease, every: Duration, lease_len: Duration) -> HeartbeatGuard {
    let lost = CancellationToken::new();
    let flag = lost.clone();
    let task = tokio::spawn(async move {
        // The claim set the lease just before the job started.
        let mut held_until = Instant::now() + lease_len.saturating_sub(every);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick fires at once
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(held_until) => {
                    tracing::warn!(payout_id = %lease.payout_id, "no heartbeat got through for a whole lease; stopping the step");
                    flag.cancel();
                    return;
                }
            }
            let sent = Instant::now();
            match tokio::time::timeout(every, queue::heartbeat(&pool, &lease, lease_len)).await {
                Ok(Ok(())) => held_until = sent + lease_len.saturating_sub(every),
                Ok(Err(payoutd_store::StoreError::LeaseLost(id))) => {
                    tracing::warn!(payout_id = %id, "lease lost during a step; stopping it");
                    flag.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease heartbeat failed; will retry"),
                Err(_) => {
                    tracing::warn!(payout_id = %lease.payout_id, "lease heartbeat timed out; will retry")
                }
            }
            if Instant::now() >= held_until {
                tracing::warn!(payout_id = %lease.payout_id, "lease may have expired; stopping the step");
                flag.cancel();
                return;
            }
        }
    });
    HeartbeatGuard { task, lost }
}
