//! A simulator of the 88Pay API for tests, demos and load runs.
//!
//! It speaks the provider's JSON (the connector's own `wire` types, so both sides share one set
//! of assumptions), issues the guide's short-lived token and session and holds clients to them
//! strictly (one cashout per token), keeps a ledger of every cashout it *executed*, and injects
//! the faults a real provider shows, the same [`Faults`](crate::Faults) as the 8B sandbox plus
//! a forced 401 and a switch that expires every token.
//!
//! It deliberately does not deduplicate cashouts by `merchant_reference`: a second cashout
//! under a reference it already executed is executed again and counted
//! ([`PayStats::executed_more_than_once`]), so tests can catch a double payment.
//!
//! Layout:
//! - [`config`] holds [`PaySandboxConfig`].
//! - `tokens` issues tokens and sessions and checks calls against them.
//! - [`ledger`] keeps the executed cashouts, the balance and the counters ([`PayStats`]).
//! - `api` has the HTTP handlers of token, balance and cashout and the `/_sandbox` views.
//! - `webhooks` makes cashouts final and delivers their webhooks on a redelivery schedule.
//! - [`server`] has [`PaySandbox::start`] and [`PaySandboxHandle`].

mod api;
pub mod config;
pub mod ledger;
pub mod server;
mod tokens;
mod webhooks;

pub use config::PaySandboxConfig;
pub use ledger::{CashoutStatus, PayLedgerEntry, PayStats};
pub use server::{PaySandbox, PaySandboxHandle};
