//! The 8B partner payout API: form-urlencoded requests, XML answers, MD5 signatures.
//!
//! Layout, one concern per file:
//! - [`format`]: how amounts and timestamps are written on the wire.
//! - [`signature`]: the MD5 control signatures of every call, and constant-time verification.
//! - [`wire`]: the request fields, the XML answers (parsing and writing) and the single table
//!   that maps the provider's result codes into connector outcomes.
//! - [`client`]: [`EightBPartner`], the [`crate::Connector`] that makes the HTTP calls.
//! - [`callback`]: verification of the provider's signed callbacks.
//! - [`registry`]: the transaction registry (`payout_reestr`) for reconciliation, paged past its
//!   20,000-row limit.
//! - [`statement`]: the balance statement (`balance_statement`), reconciled in aggregate.
//!
//! The sandbox crate reuses [`signature`] and [`wire`] so that it signs and answers exactly like
//! the provider we implement against.

pub mod callback;
pub mod client;
pub mod format;
pub mod registry;
pub mod signature;
pub mod statement;
pub mod wire;

pub use callback::verify_callback;
pub use client::{ConfigError, EightBPartner, EightBPartnerConfig};
