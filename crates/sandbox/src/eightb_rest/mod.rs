//! A simulator of the 8B REST API (OAuth-style tokens, JSON bodies, webhooks), for tests,
//! demos and load runs.
//!
//! It speaks exactly the wire types of `payoutd_providers::eightb_rest::wire` (whose request
//! and answer bodies are assumptions: the quick-start guide shows none), checks every request
//! strictly, keeps a ledger of every disbursement it *executed*, and injects the faults of the
//! 8B partner sandbox ([`Faults`](crate::Faults)) plus token faults: access tokens refused
//! before their expiry, and every token revoked at once.
//!
//! It deliberately does not deduplicate intents by `externalId`: a second intent under an
//! `externalId` it already executed is executed again under a new disbursement id and counted,
//! so tests can catch a double payment ([`RestSandboxStats::executed_more_than_once`]).
//!
//! Layout:
//! - [`config`] holds [`RestSandboxConfig`].
//! - `tokens` issues access and refresh tokens and judges their expiry.
//! - [`ledger`] keeps the executed disbursements, the balance and the counters.
//! - `api` holds the HTTP handlers and the `/_sandbox` views.
//! - `webhooks` delivers and redelivers webhooks.
//! - [`server`] holds [`RestSandbox::start`] and [`RestSandboxHandle`].

mod api;
pub mod config;
pub mod ledger;
pub mod server;
mod tokens;
mod webhooks;

pub use api::CLIENT_REFRESH_PATH;
pub use config::RestSandboxConfig;
pub use ledger::{
    DECLINE_ERROR_CODE, DECLINE_ERROR_MESSAGE, DisbursementStatus, RestLedgerEntry, RestSandboxStats,
};
pub use server::{RestSandbox, RestSandboxHandle};
