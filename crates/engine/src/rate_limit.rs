//! Before every provider call: take a slot from the provider's shared budget.
//!
//! The budget is one row per provider account, shared by every worker of the fleet (a
//! one-second window on the database's clock, and a pause set by a 429). Touching that row on
//! every call would serialize the fleet on it, so each worker takes calls in blocks
//! ([`RateLimiter`]): one row write buys up to [`block_size`] calls, which the worker then
//! hands out from memory until the block is used up or its window ends.
//!
//! Tolerance of the fleet-wide limit: the row never grants more than `per_second` calls in one
//! window, and a worker uses a call of a block only before that block's window ends on the
//! database's clock (measured from before the row was read), so the fleet never starts more
//! than `per_second` calls per window: the upper bound is exact, as it was with one row write
//! per call. What a block costs is on the low side: calls a worker took but did not use by the
//! end of the window are lost, so the fleet may start up to `workers x (block_size - 1)` fewer
//! calls in a window than the budget allows. A 429 stops this process's calls at once; other
//! processes learn of the pause when they take their next block, at the latest when the
//! current window ends (within one second).

use std::collections::HashMap;
use std::time::Duration;

use payoutd_store::{PgPool, StoreError, rate_limits};
use tokio::time::Instant;

/// Short waits are slept here; longer ones (a 429 pause) reschedule the payout instead of
/// holding a worker slot.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

/// Calls taken from the shared row at once for a budget of `per_second`: a tenth of it
/// (at most one row write per ten calls from a budget of 100/s up), at most 1,000.
pub fn block_size(per_second: u32) -> u32 {
    (per_second / 10).clamp(1, 1000)
}

/// Calls of one provider this worker holds.
#[derive(Debug, Default)]
struct Bucket {
    left: u32,
    /// When the window of those calls ends (this process's monotonic clock, never later than
    /// the window's end on the database's clock).
    expires: Option<Instant>,
    paused_until: Option<Instant>,
    /// The budget of the current window is spent (no need to ask the row again before this).
    spent_until: Option<Instant>,
}

/// One worker's share of the providers' budgets (see the module docs).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: std::sync::Mutex<HashMap<String, Bucket>>,
    /// One block request at a time per worker: steps that find the bucket empty together wait
    /// for the one request instead of each taking a block.
    refill: tokio::sync::Mutex<()>,
}

/// What the bucket says without asking the database.
enum Local {
    Go,
    Paused(Duration),
    Empty,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn take_local(&self, provider: &str) -> Local {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(b) = buckets.get_mut(provider) else { return Local::Empty };
        let now = Instant::now();
        if let Some(until) = b.paused_until {
            if until > now {
                return Local::Paused(until - now);
            }
            b.paused_until = None;
        }
        if let Some(until) = b.spent_until {
            if until > now {
                return Local::Paused(until - now);
            }
            b.spent_until = None;
        }
        match b.expires {
            Some(expires) if expires > now && b.left > 0 => {
                b.left -= 1;
                Local::Go
            }
            _ => Local::Empty,
        }
    }

    /// `Ok(None)`: call now. `Ok(Some(d))`: don't call; try again in `d`.
    pub async fn permit(
        &self,
        pool: &PgPool,
        provider: &str,
        per_second: u32,
    ) -> Result<Option<Duration>, StoreError> {
        for _ in 0..10 {
            let wait = match self.take_local(provider) {
                Local::Go => return Ok(None),
                Local::Paused(wait) => wait,
                Local::Empty => {
                    let _one_at_a_time = self.refill.lock().await;
                    // Another step may have refilled the bucket while this one waited.
                    match self.take_local(provider) {
                        Local::Go => return Ok(None),
                        Local::Paused(wait) => wait,
                        Local::Empty => match self.refill(pool, provider, per_second).await? {
                            None => return Ok(None),
                            Some(wait) => wait,
                        },
                    }
                }
            };
            if wait > MAX_INLINE_WAIT {
                crate::telemetry::rate_limit_wait(provider, "deferred");
                return Ok(Some(wait));
            }
            crate::telemetry::rate_limit_wait(provider, "inline");
            tokio::time::sleep(wait).await;
        }
        crate::telemetry::rate_limit_wait(provider, "deferred");
        Ok(Some(Duration::from_secs(1)))
    }

    /// Takes a block from the shared row; `None` when the caller may call (its call is taken
    /// from the new block), else how long to wait.
    async fn refill(
        &self,
        pool: &PgPool,
        provider: &str,
        per_second: u32,
    ) -> Result<Option<Duration>, StoreError> {
        // Measured before the row is read, so the local end of the window is never later than
        // the database's.
        let asked = Instant::now();
        let block = rate_limits::acquire_block(pool, provider, per_second, block_size(per_second)).await?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let b = buckets.entry(provider.to_owned()).or_default();
        if let Some(paused) = block.paused_for {
            b.left = 0;
            b.paused_until = Some(asked + paused);
            return Ok(Some(paused));
        }
        b.expires = Some(asked + block.window_left);
        if block.granted == 0 {
            b.left = 0;
            // The budget of this window is spent: wait for the next one.
            let wait = block.window_left + Duration::from_millis(1);
            b.spent_until = Some(asked + wait);
            return Ok(Some(wait));
        }
        b.left = block.granted - 1;
        Ok(None)
    }

    /// A 429: pauses the provider for every worker (on the shared row) and drops the calls
    /// this worker holds.
    pub async fn provider_said_slow_down(
        &self,
        pool: &PgPool,
        provider: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), StoreError> {
        let pause = retry_after.unwrap_or(Duration::from_secs(1));
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let b = buckets.entry(provider.to_owned()).or_default();
            b.left = 0;
            b.paused_until = Some(Instant::now() + pause);
        }
        rate_limits::pause(pool, provider, pause).await
    }
}

/// One call's permit straight from the shared row, for callers outside the step pipeline
/// (the balance gauge, once per tick). `Ok(None)`: call now. `Ok(Some(d))`: try again in `d`.
pub async fn permit(pool: &PgPool, provider: &str, per_second: u32) -> Result<Option<Duration>, StoreError> {
    match rate_limits::acquire(pool, provider, per_second).await? {
        None => Ok(None),
        Some(wait) => {
            crate::telemetry::rate_limit_wait(provider, "deferred");
            Ok(Some(wait))
        }
    }
}
