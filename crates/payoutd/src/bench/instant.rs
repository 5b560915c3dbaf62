//! A connector that answers at once, in process: the engine's own cost per payout with no
//! provider in the way. `check` says go, `submit` says paid (or accepted, for the figure that
//! keeps payouts waiting at the provider), `status` says processing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_providers::connector::BoxFuture;
use payoutd_providers::{
    CallbackVerdict, CheckOutcome, Connector, FrozenRequest, IncomingCallback, PayoutForProvider,
    ProviderError, ProviderStatus, SubmitOutcome,
};

/// The account name of the instant connector; bench payouts carry it as their provider.
pub const INSTANT: &str = "bench_instant";

pub struct Instant {
    /// Whether submit finishes the payout (engine floor) or leaves it waiting (RSS figure).
    pub paid_on_submit: bool,
    pub status_interval: Duration,
    /// When set, the wall-clock time of every `check` call is noted here (the pickup figure:
    /// a step's first provider call comes right after its claim).
    pub checks: Option<Arc<Mutex<Vec<DateTime<Utc>>>>>,
}

impl Connector for Instant {
    fn name(&self) -> &str {
        INSTANT
    }

    fn kind(&self) -> &'static str {
        "8b_partner"
    }

    fn account(&self) -> String {
        INSTANT.to_owned()
    }

    fn check<'a>(&'a self, _: &'a PayoutForProvider) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>> {
        if let Some(checks) = &self.checks {
            checks.lock().unwrap_or_else(PoisonError::into_inner).push(Utc::now());
        }
        Box::pin(async { Ok(CheckOutcome::Go) })
    }

    fn freeze_submit(&self, payout: &PayoutForProvider, reference: &str, _: DateTime<Utc>) -> FrozenRequest {
        FrozenRequest {
            reference: reference.to_owned(),
            body: serde_json::json!({ "amount": payout.money.amount().to_string() }),
        }
    }

    fn submit<'a>(&'a self, _: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome> {
        let paid = self.paid_on_submit;
        Box::pin(async move {
            if paid {
                SubmitOutcome::Paid { provider_id: None }
            } else {
                SubmitOutcome::Accepted { provider_id: None }
            }
        })
    }

    fn status<'a>(
        &'a self,
        _: &'a FrozenRequest,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(async { Ok(ProviderStatus::Processing) })
    }

    fn min_status_interval(&self) -> Duration {
        self.status_interval
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn verify_callback(&self, _: &IncomingCallback<'_>) -> CallbackVerdict {
        CallbackVerdict::NotOurs { reason: "the instant connector sends no callbacks".to_owned() }
    }

    fn callback_answer(&self, accepted: bool) -> &'static str {
        if accepted { "OK" } else { "ERROR" }
    }
}
