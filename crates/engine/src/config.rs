//! Engine settings, and the start-up check that refuses settings which would break a rule
//! (DESIGN rule 12). Defaults suit production; tests and the demo shorten the times, within the
//! same constraints.

use std::time::Duration;

use payoutd_core::RetryPolicy;
use payoutd_providers::Connectors;

use crate::clock::Clock;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this worker in leases and events (host:pid by default).
    pub worker_id: String,
    /// Payouts worked on at once by this process.
    pub concurrency: usize,
    /// How long a claim holds a payout. A crashed worker's payouts are claimable again after
    /// this (default 15 s).
    pub lease: Duration,
    /// How often a running step extends its lease (default 5 s, a third of the lease).
    pub heartbeat_every: Duration,
    /// Added to request timeout + lease wherever the engine must be sure a stalled worker's
    /// request can no longer reach the provider (default 5 s).
    pub safety_margin: Duration,
    /// The fallback poll when no notification arrives (default 1 s).
    pub idle_poll: Duration,
    /// On shutdown, how long in-flight steps may take to finish before they are abandoned to
    /// lease expiry (default 20 s).
    pub shutdown_grace: Duration,
    /// Retries of the pre-submit check (balance); exhausted means failed (no money moved).
    pub check_retry: RetryPolicy,
    /// Retries of a submit that provably did not reach the provider, and of status queries.
    pub call_retry: RetryPolicy,
    /// Status queries of an in-doubt payout that gave no answer before it is parked.
    pub in_doubt_max_attempts: u32,
    /// NOT_FOUND answers (each one status interval apart) before an in-doubt payout is sent
    /// again under the same reference (default 2; at least 2).
    pub resubmit_after_not_found: u32,
    /// NOT_FOUND answers for a payout the provider had accepted before it is parked
    /// (default 3). Accepted payouts are never resubmitted.
    pub not_found_before_review: u32,
    /// Steps in a row that fail for a reason retrying cannot fix (unknown provider, missing
    /// intent, undecodable row) before the payout is parked (default 5).
    pub max_failed_steps: u32,
    /// The most a provider's `Retry-After` may pause calls (default 5 min); longer values are
    /// capped, and the cap is logged.
    pub max_retry_after: Duration,
    /// How long to wait for a final answer after the provider accepted, before needs_review.
    pub max_await: Duration,
    /// Provider calls per second, per provider account, shared by every worker on the database.
    pub provider_calls_per_second: u32,
    /// Accounts with their own budget instead of `provider_calls_per_second`.
    pub account_calls_per_second: std::collections::BTreeMap<String, u32>,
    /// How soon a payout waiting for a paused account looks again (default 5 s). Resuming wakes
    /// waiting payouts at once; the recheck grows with the pause's age up to
    /// `pause_recheck_max` (default 5 min), so a long pause writes few deferral events.
    pub pause_recheck_min: Duration,
    pub pause_recheck_max: Duration,
    /// The worker's wall clock. Used only where the provider sees a time (request dates);
    /// never for due times, which come from the database's clock. Tests skew it.
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            concurrency: 32,
            lease: Duration::from_secs(15),
            heartbeat_every: Duration::from_secs(5),
            safety_margin: Duration::from_secs(5),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            check_retry: RetryPolicy {
                base: Duration::from_secs(5),
                max_delay: Duration::from_secs(300),
                max_attempts: 8,
            },
            call_retry: RetryPolicy::default(),
            in_doubt_max_attempts: 10,
            resubmit_after_not_found: 2,
            not_found_before_review: 3,
            max_failed_steps: 5,
            max_retry_after: Duration::from_secs(300),
            max_await: Duration::from_secs(48 * 3600),
            provider_calls_per_second: 100,
            account_calls_per_second: Default::default(),
            pause_recheck_min: Duration::from_secs(5),
            pause_recheck_max: Duration::from_secs(300),
            clock: Clock::system(),
        }
    }
}

/// Settings that would break a rule. The message names the settings and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration refused: {0}")]
pub struct ConfigError(pub String);

impl EngineConfig {
    /// The least time after a submit started before a stalled copy of it can no longer reach
    /// the provider: request timeout + lease + safety margin.
    pub fn stall_window(&self, request_timeout: Duration) -> Duration {
        request_timeout + self.lease + self.safety_margin
    }

    /// Refuses settings that would break a rule, naming them (DESIGN rule 12):
    /// - every provider's status interval must be longer than its request timeout + lease +
    ///   safety margin, else two NOT_FOUND answers one interval apart could both come before a
    ///   stalled submit arrives, and the payout would be paid twice;
    /// - the lease must outlast a provider call, and heartbeats must come at least twice per
    ///   lease, else a healthy worker loses its payouts mid-call;
    /// - a resubmit needs at least two NOT_FOUND answers.
    pub fn validate(&self, connectors: &Connectors) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.lease.is_zero() || self.heartbeat_every.is_zero() {
            problems.push("lease and heartbeat_every must be positive".to_owned());
        }
        if self.heartbeat_every.saturating_mul(2) > self.lease {
            problems.push(format!(
                "heartbeat_every ({}) must be at most half the lease ({}) so that one late heartbeat does \
                 not lose the lease",
                show(self.heartbeat_every),
                show(self.lease)
            ));
        }
        if self.resubmit_after_not_found < 2 {
            problems.push(format!(
                "resubmit_after_not_found ({}) must be at least 2: one NOT_FOUND may come before a \
                 delayed or stalled submit shows up at the provider",
                self.resubmit_after_not_found
            ));
        }
        if self.max_failed_steps == 0 || self.not_found_before_review == 0 {
            problems.push("max_failed_steps and not_found_before_review must be at least 1".to_owned());
        }
        for name in connectors.names() {
            let Some(c) = connectors.get(name) else { continue };
            let (interval, timeout) = (c.min_status_interval(), c.request_timeout());
            let window = self.stall_window(timeout);
            if interval <= window {
                problems.push(format!(
                    "{name}: status interval ({}) must be longer than request timeout ({}) + lease ({}) + \
                     safety margin ({}) = {}; shorten the request timeout or the lease, or lengthen the \
                     status interval",
                    show(interval),
                    show(timeout),
                    show(self.lease),
                    show(self.safety_margin),
                    show(window)
                ));
            }
            if timeout >= self.lease {
                problems.push(format!(
                    "{name}: request timeout ({}) must be shorter than the lease ({}), so that a lease \
                     re-verified right before a provider call covers the whole call",
                    show(timeout),
                    show(self.lease)
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems.join("; "))) }
    }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}
