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
pub use payoutd_core::provider_outcome::{
    CheckOutcome, ProviderError, ProviderStatus, StatusLookup, SubmitOutcome, VerifiedCallback,
};
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

/// The result of checking an incoming callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackVerdict {
    Verified(VerifiedCallback),
    /// Signature wrong or fields missing, or a provider whose callbacks carry no signature
    /// (8B REST): the content is not trusted. `reference` (ours) or `provider_id` (theirs) is
    /// what the request claimed, if readable, so the engine can ask the provider directly.
    Unverifiable {
        reason: String,
        reference: Option<String>,
        provider_id: Option<String>,
    },
    /// The request is not addressed to a valid callback URL of this account (a wrong secret
    /// path segment or capability token): it is not stored and changes nothing.
    NotOurs {
        reason: String,
    },
}

/// An incoming provider callback, as received: the path below `/v1/callbacks/{account}`
/// (8B REST puts the transaction id there, 88Pay's capability URL its token), the headers and
/// the exact body bytes.
#[derive(Debug, Clone, Copy)]
pub struct IncomingCallback<'a> {
    /// The rest of the path after the account, without the leading slash ("" when none).
    pub path: &'a str,
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
}

/// What a provider says of one of its payouts when asked by its own id: enough to tell whether
/// it is ours (reference, amount, currency) before believing its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    pub provider_id: String,
    pub reference: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: ProviderStatus,
}

/// One payment provider.
pub trait Connector: Send + Sync + 'static {
    /// The configured account name, stored on each payout and used for its callback route
    /// and rate limit ("8b_partner" for the default account of an upgraded deployment).
    fn name(&self) -> &str;

    /// The provider kind: "8b_partner", "8b_rest" or "88pay".
    fn kind(&self) -> &'static str;

    /// The provider's own id of the account (service id, login, merchant id); not a secret.
    fn account(&self) -> String;

    /// Step "check": can this payout go?
    fn check<'a>(
        &'a self,
        payout: &'a PayoutForProvider,
    ) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>>;

    /// Step "intent": build the exact submit request. Pure: no I/O.
    fn freeze_submit(&self, payout: &PayoutForProvider, reference: &str, now: DateTime<Utc>)
    -> FrozenRequest;

    /// The account's balance, where the provider has a balance call (`None` where it has not).
    /// Read-only; polled on a timer for the balance gauge.
    fn balance(&self) -> Option<BoxFuture<'_, Result<Decimal, ProviderError>>> {
        None
    }

    /// Step "submit": the one call that moves money.
    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome>;

    /// Ask the provider for the payout's status: by our reference, or by the provider's id
    /// where [`Connector::status_lookup`] says so (`provider_id` is then `Some`).
    fn status<'a>(
        &'a self,
        request: &'a FrozenRequest,
        provider_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>>;

    /// How this provider lets us learn an outcome after submit.
    fn status_lookup(&self) -> StatusLookup {
        StatusLookup::ByReference
    }

    /// Asks the provider about one of its payouts by its own id, for providers whose webhooks
    /// name only that id (8B REST). `None` where the provider has no such call.
    fn find_by_provider_id<'a>(
        &'a self,
        _provider_id: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<ProviderRecord>, ProviderError>>> {
        None
    }

    /// The provider's minimum wait between submit and the first status query (8B partner: one
    /// minute); the engine polls no more often than this either.
    fn min_status_interval(&self) -> Duration;

    /// The longest any single call to the provider may take, answer included. A request still
    /// in flight after this is abandoned, so it cannot reach the provider later than this after
    /// it was sent; the engine's resubmit rule builds on that.
    fn request_timeout(&self) -> Duration;

    /// Checks an incoming callback: its path, headers and the exact bytes received.
    fn verify_callback(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict;

    /// The body the provider expects in answer to a callback (8B partner: "OK" / "ERROR").
    fn callback_answer(&self, accepted: bool) -> &'static str;
}
