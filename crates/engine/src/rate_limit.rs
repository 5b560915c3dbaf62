//! Before every provider call: take a slot from the provider's shared budget.

use std::time::Duration;

use payoutd_store::{PgPool, StoreError, rate_limits};

/// Short waits are slept here; longer ones (a 429 pause) reschedule the payout instead of
/// holding a worker slot.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

/// `Ok(None)`: call now. `Ok(Some(d))`: don't call; try again in `d`.
pub async fn permit(pool: &PgPool, provider: &str, per_second: u32) -> Result<Option<Duration>, StoreError> {
    for _ in 0..10 {
        match rate_limits::acquire(pool, provider, per_second).await? {
            None => return Ok(None),
            Some(wait) if wait <= MAX_INLINE_WAIT => {
                crate::telemetry::rate_limit_wait(provider, "inline");
                tokio::time::sleep(wait).await
            }
            Some(wait) => {
                crate::telemetry::rate_limit_wait(provider, "deferred");
                return Ok(Some(wait));
            }
        }
    }
    crate::telemetry::rate_limit_wait(provider, "deferred");
    Ok(Some(Duration::from_secs(1)))
}

/// A 429 pauses the provider for every worker.
pub async fn provider_said_slow_down(
    pool: &PgPool,
    provider: &str,
    retry_after: Option<Duration>,
) -> Result<(), StoreError> {
    rate_limits::pause(pool, provider, retry_after.unwrap_or(Duration::from_secs(1))).await
}
