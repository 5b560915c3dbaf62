//! The engine: drives each payout through check -> intent -> submit -> await -> final.
//!
//! - [`worker`]: the claim loop (concurrency, wake-ups, graceful shutdown).
//! - [`wakeup`]: LISTEN/NOTIFY, so a new payout or a callback starts work at once; the claim
//!   loop also polls, so a lost notification only delays work, never loses it.
//! - [`heartbeat`]: extends the lease while a job runs, on connections of its own, and
//!   cancels the step when the lease is lost.
//! - [`clock`]: the worker's wall clock (never used for due times).
//! - [`transition_writer`]: group commit: the writes of many steps in one commit, each still
//!   fenced by its own lease.
//! - [`steps`]: what each state's step does: the provider calls it needs, and the transition to
//!   write. Connectors return typed outcomes; only the engine turns them into moves.
//! - [`rate_limit`]: the shared per-provider call budget, applied before every provider call,
//!   taken from the shared row in blocks per worker (its module docs state the tolerance).
//! - [`references`]: our provider references, reserved in blocks per worker.
//! - [`reconciliation`]: one reconciliation run (provider registry vs our payouts), stored.
//! - [`retention_timer`]: runs the retention pass (masking old destination details, pruning
//!   old callback bodies) once per period across the fleet.
//! - [`webhook_delivery`]: the webhook delivery service (its own claim loop, leases, retries
//!   stored in the database, per-endpoint slow-down and disabling); [`webhook_http`]: its
//!   outbound HTTP client with the SSRF checks on the address actually connected to.
//! - [`gauges`]: the timer that refreshes the queue gauges (payouts by state, due backlog, age
//!   of the oldest due payout) and polls provider balances.
//! - [`telemetry`]: the engine's instruments and the claim loop's pulse (for readiness).
//! - [`config`]: every knob, with documented defaults, and the start-up check that refuses
//!   settings which would break a rule.

pub mod clock;
pub mod config;
pub mod gauges;
pub mod heartbeat;
pub mod rate_limit;
pub mod reconciliation;
pub mod references;
pub mod restore_check;
pub mod retention_timer;
pub mod statement_reconciliation;
pub mod steps;
pub mod telemetry;
pub mod transition_writer;
pub mod wakeup;
pub mod webhook_delivery;
pub mod webhook_http;
pub mod worker;

pub use clock::Clock;
pub use config::{ConfigError, EngineConfig};
pub use payoutd_providers::Connectors;
pub use worker::{Worker, WorkerReport};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] payoutd_store::StoreError),
    #[error("payout {payout} names provider {provider:?}, which is not configured")]
    UnknownProvider { payout: uuid::Uuid, provider: String },
    #[error("payout {0} has no frozen submit request although its state needs one")]
    MissingIntent(uuid::Uuid),
    #[error("payout {payout} is {state}: no automatic step runs on it")]
    NotActive { payout: uuid::Uuid, state: payoutd_core::PayoutState },
}

impl EngineError {
    /// A failure that retrying cannot fix: the row itself is wrong for this worker (a poison
    /// row). Counted per payout and parked after a bound; database trouble is not poison.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            Self::UnknownProvider { .. }
                | Self::MissingIntent(_)
                | Self::Store(payoutd_store::StoreError::Corrupt(_))
        )
    }
}
