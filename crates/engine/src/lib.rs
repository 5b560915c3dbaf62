//! The engine: drives each payout through check -> intent -> submit -> await -> final.
//!
//! - [`worker`]: the claim loop (concurrency, wake-ups, graceful shutdown).
//! - [`wakeup`]: LISTEN/NOTIFY, so a new payout or a callback starts work at once; the claim
//!   loop also polls, so a lost notification only delays work, never loses it.
//! - [`heartbeat`]: extends the lease while a long step runs.
//! - [`steps`]: what each state's step does: the provider calls it needs, and the transition to
//!   write. Connectors return typed outcomes; only the engine turns them into moves.
//! - [`rate_limit`]: the shared per-provider call budget, applied before every provider call.
//! - [`config`]: every knob, with documented defaults.

pub mod config;
pub mod heartbeat;
pub mod rate_limit;
pub mod steps;
pub mod wakeup;
pub mod worker;

pub use config::EngineConfig;
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
}
