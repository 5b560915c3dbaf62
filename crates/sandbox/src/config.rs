//! Sandbox configuration: the simulated partner account and the faults to inject.

use std::time::Duration;

use payoutd_core::Secret;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One simulated 8B partner account.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The service id expected in URLs and in the check call's `service_id` field.
    pub service_id: String,
    /// The partner secret every signature is checked with.
    pub secret: Secret,
    /// Where signed callbacks go; `None` sends none (clients then have to poll).
    pub callback_url: Option<String>,
    /// The balance payouts are debited from.
    pub initial_balance: Decimal,
    /// Time from executing a payout to its final result (and first callback).
    pub processing_delay: Duration,
    /// Multiplies the spec's callback retry schedule (10 s, 30 s, ... 3600 s); 0.01 makes
    /// redeliveries a hundred times faster for tests.
    pub callback_schedule_scale: f64,
    /// The spec asks for status checks "at least one minute after transaction initialization";
    /// earlier checks are still answered but counted as `early_checks`. The same delay is the
    /// minimum spacing between two checks of one id; closer ones are counted as
    /// `checks_too_soon`.
    pub min_check_delay: Duration,
    /// Seed of the random source behind the fault rates, so a run can be repeated.
    pub seed: u64,
    pub faults: Faults,
}

impl SandboxConfig {
    /// A sandbox with no faults, a large balance, a 2 s processing delay and the spec's
    /// timings.
    pub fn new(service_id: impl Into<String>, secret: Secret) -> Self {
        Self {
            service_id: service_id.into(),
            secret,
            callback_url: None,
            initial_balance: Decimal::from(1_000_000_000_i64),
            processing_delay: Duration::from_secs(2),
            callback_schedule_scale: 1.0,
            min_check_delay: Duration::from_secs(60),
            seed: 0x8b,
            faults: Faults::default(),
        }
    }
}

/// Faults to inject. Rates are probabilities in [0, 1] (values outside are clamped); all are
/// off by default. They can be changed while the sandbox runs ([`crate::Sandbox::set_faults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Every request waits a uniformly random time up to this before being handled.
    pub max_latency: Duration,
    /// HTTP 500 before anything is executed.
    pub error_5xx_rate: f64,
    /// The payout is executed, then the answer is held back for `timeout_delay`, so a client
    /// with a shorter timeout cannot know it went through.
    pub timeout_after_execute_rate: f64,
    pub timeout_delay: Duration,
    /// The executed payout ends NOT_PAID (money returned to the balance).
    pub decline_rate: f64,
    /// An immediate ERROR answer; nothing is executed.
    pub reject_rate: f64,
    /// The callback is delivered twice.
    pub duplicate_callback_rate: f64,
    /// The payout is finalized and its callback delivered before the payout answer returns.
    pub early_callback_rate: f64,
    /// No callback at all: the client has to poll.
    pub drop_callback_rate: f64,
    /// HTTP 429 with `Retry-After: 1`; nothing is executed.
    pub rate_limit_rate: f64,
    /// Delayed ingestion: a payout becomes visible to `check` only this long after its first
    /// submit arrived; until then `check` answers NOT_FOUND although the money moved. A real
    /// provider's asynchronous intake behaves like this, and it is what makes one NOT_FOUND
    /// too weak a reason to resubmit.
    pub ingestion_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            max_latency: Duration::ZERO,
            error_5xx_rate: 0.0,
            timeout_after_execute_rate: 0.0,
            // Longer than any sensible client timeout, so the fault really times the client out.
            timeout_delay: Duration::from_secs(60),
            decline_rate: 0.0,
            reject_rate: 0.0,
            duplicate_callback_rate: 0.0,
            early_callback_rate: 0.0,
            drop_callback_rate: 0.0,
            rate_limit_rate: 0.0,
            ingestion_delay: Duration::ZERO,
        }
    }
}
