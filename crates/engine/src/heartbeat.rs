//! Keeps a lease alive while a step runs (a slow provider call must not let another worker
//! take the payout over mid-call).

use std::time::Duration;

use payoutd_store::PgPool;
use payoutd_store::queue::{self, Lease};
use tokio::task::JoinHandle;

/// Spawns the heartbeat; abort the handle when the step ends. Stops on its own when the lease
/// turns out to be lost (the step's own write will then fail its fencing check).
pub fn spawn(pool: PgPool, lease: Lease, every: Duration, extend: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await; // the first tick fires at once; the claim just set the lease
        loop {
            tick.tick().await;
            match queue::heartbeat(&pool, &lease, extend).await {
                Ok(()) => {}
                Err(payoutd_store::StoreError::LeaseLost(id)) => {
                    tracing::warn!(payout_id = %id, "lease lost during a step; its writes will be refused");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "lease heartbeat failed; will retry"),
            }
        }
    })
}
