//! The simulated 88Pay merchant account and the faults to inject.

use std::time::Duration;

use payoutd_core::{Currency, Secret};
use rust_decimal::Decimal;

use crate::config::Faults;

/// One simulated 88Pay merchant account.
#[derive(Debug, Clone)]
pub struct PaySandboxConfig {
    /// Expected in the `x-api-key` header of the token call.
    pub api_key: Secret,
    /// Expected in the `X-Merchant-Id` header of the token call.
    pub merchant_id: String,
    /// How long a token (and its session) is accepted. The guide says 60 s; tests shorten it
    /// to a second or two to see expiry without waiting a minute. `expires_in` in the token
    /// answer is an integer: this in whole seconds, rounded down, so a client is never told a
    /// token lives longer than it does; except that it is at least 1, so a sub-second lifetime
    /// is advertised as 1 s and expires "in flight", earlier than the client expects.
    pub token_lifetime: Duration,
    /// The balance cashouts are debited from.
    pub initial_balance: Decimal,
    /// The account's currency: the only one cashouts are accepted in (default COP).
    pub currency: Currency,
    /// Time from executing a cashout to its final status (and first webhook).
    pub processing_delay: Duration,
    /// Multiplies the webhook redelivery schedule (the same intervals as the 8B sandbox's
    /// callbacks, 10 s ... 3600 s, as the guides name none); 0.01 is a hundred times faster.
    pub webhook_schedule_scale: f64,
    /// Seed of the random source behind the fault rates, so a run can be repeated.
    pub seed: u64,
    /// The shared fault model. `ingestion_delay` is ignored: 88Pay has no status call.
    /// Its `*_callback_rate` fields act on webhooks.
    pub faults: Faults,
    /// Probability that a call with a valid token and session is answered 401 anyway (nothing
    /// executed), like a provider that invalidates tokens early.
    pub forced_401_rate: f64,
    /// Every webhook attempt, first or redelivery, is lost while this is on; the schedule
    /// keeps running, so switching it off lets later redeliveries arrive.
    pub drop_all_webhooks: bool,
}

impl PaySandboxConfig {
    /// An account in COP with a large balance, the guide's 60 s tokens, a 2 s processing delay,
    /// the full webhook schedule and no faults.
    pub fn new(merchant_id: impl Into<String>, api_key: Secret) -> Self {
        Self {
            api_key,
            merchant_id: merchant_id.into(),
            token_lifetime: Duration::from_secs(60),
            initial_balance: Decimal::from(1_000_000_000_i64),
            currency: Currency::parse("COP").expect("COP is a supported currency"),
            processing_delay: Duration::from_secs(2),
            webhook_schedule_scale: 1.0,
            seed: 0x88,
            faults: Faults::default(),
            forced_401_rate: 0.0,
            drop_all_webhooks: false,
        }
    }

    /// `expires_in` of the token answer: the lifetime in whole seconds, rounded down, at least 1.
    pub(crate) fn expires_in_secs(&self) -> u64 {
        self.token_lifetime.as_secs().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_rounds_down_but_is_at_least_one() {
        let mut config = PaySandboxConfig::new("M", Secret::new("k"));
        assert_eq!(config.expires_in_secs(), 60);
        config.token_lifetime = Duration::from_millis(300);
        assert_eq!(config.expires_in_secs(), 1);
        config.token_lifetime = Duration::from_millis(1500);
        assert_eq!(config.expires_in_secs(), 1);
        config.token_lifetime = Duration::ZERO;
        assert_eq!(config.expires_in_secs(), 1);
    }
}
