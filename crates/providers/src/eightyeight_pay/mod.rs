//! The 88Pay API: a 60-second token and session taken right before each money call, JSON
//! bodies, unsigned webhooks accepted only at a payout's capability URL.
//!
//! - [`wire`]: the request and answer bodies (the assumed ones listed in one table) and the
//!   status mapping.
//! - [`capability`]: the per-payout `notification_url`, and checking it on receipt.
//! - [`client`]: [`EightyEightPay`], the connector.
//!
//! How an in-doubt submit is resolved: 88Pay has no status call, so only the webhook at the
//! payout's capability URL can tell. The payout waits for it up to the engine's `max_await`
//! and is then parked in needs_review for reconciliation with the provider's statement. It is
//! never sent again: the first request may have been executed.

pub mod capability;
pub mod client;
pub mod wire;

pub use client::{ConfigError, EightyEightPay, EightyEightPayConfig};
