//! Domain types and pure rules of payoutd. No I/O lives here.
//!
//! - [`money`]: currencies and amounts with currency-aware scale (rust_decimal, never floats).
//! - [`state`]: the payout state machine: which states exist and which moves are allowed.
//! - [`new_payout`]: parsing an enqueue request into a valid [`new_payout::NewPayout`].
//! - [`retry`]: the retry policy (exponential backoff with jitter) the engine stores as next_run_at.
//! - [`secret`]: a wrapper that keeps secrets out of logs and errors.
//! - [`webhook`]: webhook event types and the signature scheme (Standard Webhooks headers).
//! - [`sealing`]: AES-256-GCM sealing of secrets payoutd must read back (webhook secrets).
//! - [`net_policy`]: which addresses a client-supplied URL may reach (SSRF).
//! - [`provider_outcome`]: what a provider can answer, and the one decision of what an answer
//!   does to a payout (used by polling and callbacks alike).
//! - [`credentials`]: the fleet-wide provider token store connectors are handed.
//! - [`batch_file`]: mass-payout batch files (CSV, JSON lines), every row checked before any is stored.

pub mod batch_file;
pub mod credentials;
pub mod money;
pub mod net_policy;
pub mod new_payout;
pub mod provider_outcome;
pub mod retry;
pub mod sealing;
pub mod secret;
pub mod state;
pub mod webhook;

pub use money::{Currency, Money, MoneyError};
pub use new_payout::{Destination, FieldError, NewPayout};
pub use provider_outcome::{
    AnswerEffect, CheckOutcome, ProviderError, ProviderStatus, StatusLookup, SubmitOutcome, VerifiedCallback,
    effect_of_answer,
};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use state::PayoutState;
