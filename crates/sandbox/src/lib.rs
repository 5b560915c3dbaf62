//! A simulator of the 8B partner payout API for tests, demos and load runs.
//!
//! It speaks the provider's wire format (form-urlencoded in, XML out, MD5 signatures checked
//! with the same functions the connector uses), keeps a ledger of every payout it *executed*,
//! and injects the faults a real provider shows: latency, 5xx, 429, timeouts after executing,
//! declines, refusals, and duplicate, early or missing callbacks.
//!
//! It deliberately does not deduplicate payouts by id: a second payout request under an id it
//! already executed is executed again and counted, so tests can catch a double payment.
//!
//! Layout:
//! - [`config`]: [`SandboxConfig`] and the runtime-adjustable [`Faults`].
//! - [`ledger`]: the ledger of executed payouts, the balance and the counters.
//! - `dice`: the seeded random source behind the fault rates.
//! - `api`: the HTTP handlers of payout, check, balance and the `/_sandbox` views.
//! - `callbacks`: signed callback delivery on the spec's retry schedule.
//! - [`registry`]: the transaction registry (`payout_reestr`) with its 20,000-row limit.
//! - `runtime`: the plumbing all three simulators share (listener, server, delivery client,
//!   shutdown, background tasks, `traceparent`s, front-door faults, redelivery loop).
//! - [`server`]: [`Sandbox::start`], [`SandboxHandle`] and [`run_standalone`].

mod api;
mod callbacks;
pub mod config;
mod dice;
pub mod eightb_rest;
pub mod eightyeight_pay;
pub mod ledger;
pub mod registry;
mod runtime;
pub mod server;

pub use callbacks::SPEC_CALLBACK_SCHEDULE_SECS;
pub use config::{Faults, SandboxConfig};
pub use ledger::{LedgerEntry, LedgerStatus, SandboxStats};
pub use server::{Sandbox, SandboxError, SandboxHandle, run_standalone};
