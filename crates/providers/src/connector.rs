//! The interface between the engine and a payment provider.
//!
//! A connector does one provider call per method and maps the answer into a typed outcome; it
//! never touches the database and never decides a payout's next state. Retrying, backoff and the
//! in-doubt rules live in the engine. Token-based providers (8B REST, 88Pay) fit behind the same
//! methods: token caching and the 401-refresh-repeat rule stay inside their connector.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::{Destination, Money};
use rust_decimal::Decimal;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a connector may know of a payout.
#[derive(Debug, Clone)]
pub struct PayoutForProvider {
    pub money: Money,
    pub destination: Destination,
}

/// The write-ahead submit request: built once at intent time, committed before any money call,
/// and sent unchanged on every retry. `body` is provider specific and holds no secrets
/// (signatures are computed at send time).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrozenRequest {
    /// Our reference, the provider's idempotency handle for this payout.
    pub reference: String,
    pub body: serde_json::Value,
}

/// Answer to "can this payout go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Go,
    /// Not now: e.g. the balance is below the amount. Worth asking again later.
    NotNow {
        reason: String,
    },
}

/// The classified outcome of the one call that moves money (DESIGN rule 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The provider took the payout; its final result comes by callback or status poll.
    Accepted,
    /// The provider answered with a final result already.
    Paid,
    /// The provider said no. Nothing was paid.
    Rejected { reason: String },
    /// The request provably did not reach the provider (connection refused, 429): safe to send
    /// again later under the same reference.
    NotSent { reason: String, retry_after: Option<Duration> },
    /// Unknown whether the provider executed it: timeout, reset, 5xx, unreadable answer.
    InDoubt { reason: String },
}

/// The provider's view of a payout, asked by our reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Paid,
    Failed {
        reason: String,
    },
    Processing,
    /// The provider has no payout under our reference.
    NotFound,
}

/// A read-only call (check, status) that gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Timeout, connection problem, 5xx, unreadable answer: try again later.
    #[error("transient provider error: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// 429: the provider asks us to slow down.
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<Duration> },
    /// The provider refused the request itself (bad signature, bad parameters).
    #[error("provider refused the request: {reason}")]
    Refused { reason: String },
}

impl ProviderError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } | Self::RateLimited { retry_after } => *retry_after,
            Self::Refused { .. } => None,
        }
    }
}

/// A callback whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCallback {
    /// Our reference, as the provider echoes it.
    pub reference: String,
    pub amount: Decimal,
    /// Present when the provider's callback carries it (the 8B partner callback does not).
    pub currency: Option<String>,
    pub status: ProviderStatus,
    /// Equal for two deliveries of the same notification; duplicates are no-ops.
    pub dedupe_key: String,
}

/// The result of checking an incoming callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackVerdict {
    Verified(VerifiedCallback),
    /// Signature wrong or fields missing. `reference` is what the body claimed, if readable,
    /// so the engine can ask the provider directly instead.
    Unverifiable {
        reason: String,
        reference: Option<String>,
    },
}

/// One payment provider.
pub trait Connector: Send + Sync + 'static {
    /// Stable name, stored on each payout ("8b_partner").
    fn name(&self) -> &'static str;

    /// The account (service id, merchant id) the payouts go out from; not a secret.
    fn account(&self) -> String;

    /// Step "check": can this payout go?
    fn check<'a>(
        &'a self,
        payout: &'a PayoutForProvider,
    ) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>>;

    /// Step "intent": build the exact submit request. Pure: no I/O.
    fn freeze_submit(&self, payout: &PayoutForProvider, reference: &str, now: DateTime<Utc>)
    -> FrozenRequest;

    /// Step "submit": the one call that moves money.
    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome>;

    /// Ask the provider for the payout's status by our reference.
    fn status<'a>(
        &'a self,
        request: &'a FrozenRequest,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>>;

    /// The provider's minimum wait between submit and the first status query (8B partner: one
    /// minute); the engine polls no more often than this either.
    fn min_status_interval(&self) -> Duration;

    /// Checks an incoming callback over the exact bytes received.
    fn verify_callback(&self, body: &[u8]) -> CallbackVerdict;

    /// The body the provider expects in answer to a callback (8B partner: "OK" / "ERROR").
    fn callback_answer(&self, accepted: bool) -> &'static str;
}
