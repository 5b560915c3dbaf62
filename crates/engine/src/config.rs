//! Engine settings. Defaults suit production; tests and the demo shorten the times.

use std::time::Duration;

use payoutd_core::RetryPolicy;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this worker in leases and events (host:pid by default).
    pub worker_id: String,
    /// Payouts worked on at once by this process.
    pub concurrency: usize,
    /// How long a claim holds a payout. A crashed worker's payouts are claimable again after
    /// this (default 30 s).
    pub lease: Duration,
    /// How often a running step extends its lease (default lease / 3).
    pub heartbeat_every: Duration,
    /// The fallback poll when no notification arrives (default 1 s).
    pub idle_poll: Duration,
    /// On shutdown, how long in-flight steps may take to finish before they are abandoned to
    /// lease expiry (default 20 s).
    pub shutdown_grace: Duration,
    /// Retries of the pre-submit check (balance); exhausted means failed (no money moved).
    pub check_retry: RetryPolicy,
    /// Retries of a submit that provably did not reach the provider, and of status queries.
    pub call_retry: RetryPolicy,
    /// Status queries of an in-doubt payout before it is parked in needs_review.
    pub in_doubt_max_attempts: u32,
    /// How long to wait for a final answer after the provider accepted, before needs_review.
    pub max_await: Duration,
    /// Provider calls per second, per provider, shared by every worker on the database.
    pub provider_calls_per_second: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            concurrency: 32,
            lease: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(10),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            check_retry: RetryPolicy {
                base: Duration::from_secs(5),
                max_delay: Duration::from_secs(300),
                max_attempts: 8,
            },
            call_retry: RetryPolicy::default(),
            in_doubt_max_attempts: 10,
            max_await: Duration::from_secs(48 * 3600),
            provider_calls_per_second: 100,
        }
    }
}

pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}
