//! Domain types and pure rules of payoutd. No I/O lives here.
//!
//! - [`money`]: currencies and amounts with currency-aware scale (rust_decimal, never floats).
//! - [`state`]: the payout state machine: which states exist and which moves are allowed.
//! - [`new_payout`]: parsing an enqueue request into a valid [`new_payout::NewPayout`].
//! - [`retry`]: the retry policy (exponential backoff with jitter) the engine stores as next_run_at.
//! - [`secret`]: a wrapper that keeps secrets out of logs and errors.

pub mod money;
pub mod new_payout;
pub mod retry;
pub mod secret;
pub mod state;

pub use money::{Currency, Money, MoneyError};
pub use new_payout::{Destination, FieldError, NewPayout};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use state::PayoutState;
