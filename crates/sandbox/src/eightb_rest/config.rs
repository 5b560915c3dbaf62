//! Configuration of the 8B REST simulator: the simulated account, its token lifetimes, and the
//! faults to inject.

use std::time::Duration;

use payoutd_core::Secret;
use payoutd_providers::eightb_rest::wire::{ACCESS_TOKEN_SECS, REFRESH_TOKEN_SECS};
use rust_decimal::Decimal;

use crate::config::Faults;

/// One simulated 8B REST account.
#[derive(Debug, Clone)]
pub struct RestSandboxConfig {
    /// The credentials `authorize` accepts.
    pub login: String,
    pub password: Secret,
    /// How long an access token is accepted (the guide: 30 minutes). Shorten it in tests to
    /// see a client refresh.
    pub access_token_lifetime: Duration,
    /// How long a refresh token is accepted (the guide: 10 hours).
    pub refresh_token_lifetime: Duration,
    /// Whether a refresh consumes the refresh token it was given (OAuth rotation). The guide
    /// does not say; rotating is the stricter choice, it catches a client that keeps using an
    /// old refresh token. Access tokens issued earlier stay valid until their own expiry.
    pub rotate_refresh_tokens: bool,
    /// The balance disbursements are debited from (one number for every currency).
    pub initial_balance: Decimal,
    /// Time from executing a disbursement to its final status (and first webhook).
    pub processing_delay: Duration,
    /// Webhooks go to `POST {webhook_base_url}/{disbursementId}`; `None` sends none (clients
    /// then have to poll). Can be changed while running.
    pub webhook_base_url: Option<String>,
    /// Multiplies the redelivery schedule of the 8B partner sandbox (10 s, 30 s, ... 3600 s; the
    /// guide gives none for this API); 0.01 makes redeliveries a hundred times faster.
    pub webhook_schedule_scale: f64,
    /// Seed of the random source behind the fault rates, so a run can be repeated. (Ids and
    /// tokens come from the thread RNG: they are meant to be unguessable, not replayable.)
    pub seed: u64,
    /// The faults shared with the 8B partner sandbox. `reject_rate` answers 422, the callback
    /// faults act on webhooks, `ingestion_delay` hides a fresh disbursement from `GET`.
    pub faults: Faults,
    /// A request with a valid, unexpired access token is answered 401 anyway at this rate
    /// (nothing executed), like a provider that revoked its tokens early.
    pub forced_401_rate: f64,
}

impl RestSandboxConfig {
    /// An account with the guide's token lifetimes, no faults, a large balance and a 2 s
    /// processing delay.
    pub fn new(login: impl Into<String>, password: Secret) -> Self {
        Self {
            login: login.into(),
            password,
            access_token_lifetime: Duration::from_secs(ACCESS_TOKEN_SECS),
            refresh_token_lifetime: Duration::from_secs(REFRESH_TOKEN_SECS),
            rotate_refresh_tokens: true,
            initial_balance: Decimal::from(1_000_000_000_i64),
            processing_delay: Duration::from_secs(2),
            webhook_base_url: None,
            webhook_schedule_scale: 1.0,
            seed: 0x8b_7e57,
            faults: Faults::default(),
            forced_401_rate: 0.0,
        }
    }
}
