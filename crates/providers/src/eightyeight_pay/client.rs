//! [`EightyEightPay`]: the 88Pay connector.
//!
//! The guide's token is "valid for 60 seconds and must be used immediately to initiate a
//! transaction", so each money call takes its own fresh token and session right before it is
//! sent (one token call per cashout). If the provider answers 401 (the token expired in flight),
//! a new token is taken and the same cashout, under the same reference and capability URL, is
//! sent once more: a 401 means nothing was executed. The balance call (check step) reuses a
//! token of this process while it has more than half its life left. Tokens here live for
//! seconds and are never shared between processes, so they are never stored.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use payoutd_core::Secret;
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

use super::capability::CapabilityKey;
use super::wire::{self, BalanceData, CashoutData, Envelope, FrozenCashout, TokenData, Webhook};
use crate::connector::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, FrozenRequest, IncomingCallback, PayoutForProvider,
    ProviderError, ProviderStatus, StatusLookup, SubmitOutcome, VerifiedCallback,
};
use crate::http::{self, HttpAnswer, SendError};
use crate::telemetry::CallName;

/// The provider kind.
pub const PROVIDER: &str = "88pay";

#[derive(Debug, Clone)]
pub struct EightyEightPayConfig {
    pub account_name: String,
    pub base_url: String,
    pub merchant_id: String,
    pub api_key: Secret,
    /// ISO 3166-1 alpha-3 country of the payouts ("COL").
    pub country: String,
    /// payoutd's public base URL as 88Pay reaches it; capability URLs are built under it.
    pub notification_base_url: String,
    /// Key of the capability URLs' tokens.
    pub capability_key: Secret,
    pub request_timeout: Duration,
    /// Not used for polling (88Pay has no status call); kept for the engine's interval rules.
    pub min_status_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("88Pay base_url and notification_base_url must start with http:// or https://")]
    Url,
    #[error("88Pay merchant id and api key must not be empty")]
    Credentials,
    #[error("88Pay country must be an ISO 3166-1 alpha-3 code such as COL")]
    Country,
    #[error("88Pay capability key must be at least 32 characters")]
    CapabilityKey,
    #[error(transparent)]
    Http(#[from] http::BuildError),
}

/// A token and its session, as issued.
struct Session {
    token: Secret,
    session_id: String,
    issued: Instant,
    lifetime: Duration,
}

pub struct EightyEightPay {
    config: EightyEightPayConfig,
    base: String,
    http: reqwest::Client,
    capability: CapabilityKey,
    /// The balance call's token, reused while it has more than half its life left.
    read_session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for EightyEightPay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EightyEightPay").field("account", &self.config.account_name).finish_non_exhaustive()
    }
}

/// Why a token could not be had: nothing else was sent.
struct TokenError(String);

impl EightyEightPay {
    pub fn new(config: EightyEightPayConfig) -> Result<Self, ConfigError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !url_ok(&base) || !url_ok(&config.notification_base_url) {
            return Err(ConfigError::Url);
        }
        if config.merchant_id.is_empty() || config.api_key.is_empty() {
            return Err(ConfigError::Credentials);
        }
        if config.country.len() != 3 || !config.country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ConfigError::Country);
        }
        if config.capability_key.expose().len() < 32 {
            return Err(ConfigError::CapabilityKey);
        }
        let http = http::build_client(config.request_timeout)?;
        let capability = CapabilityKey::new(&config.capability_key);
        Ok(Self { config, base, http, capability, read_session: Mutex::new(None) })
    }

    fn call<'a>(&'a self, operation: &'static str, url_template: &'static str) -> CallName<'a> {
        CallName { provider: PROVIDER, operation, url_template, account: &self.config.merchant_id }
    }

    /// The capability URL of the payout under `reference`.
    pub fn notification_url(&self, reference: &str) -> String {
        format!(
            "{}/v1/callbacks/{}/{}",
            self.config.notification_base_url.trim_end_matches('/'),
            self.config.account_name,
            self.capability.path(&self.config.account_name, reference)
        )
    }

    async fn new_session(&self) -> Result<Session, TokenError> {
        let url = format!("{}{}", self.base, wire::TOKEN_PATH);
        let call = self.call("token", wire::TOKEN_PATH);
        let answer = http::send(&self.http, &call, Method::POST, &url, |r| {
            r.header(wire::API_KEY_HEADER, self.config.api_key.expose())
                .header(wire::MERCHANT_ID_HEADER, &self.config.merchant_id)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{}")
        })
        .await
        .map_err(|e| TokenError(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(TokenError(format!("token call answered HTTP {}", answer.status)));
        }
        let data: TokenData =
            envelope_data(&answer.body).ok_or_else(|| TokenError("unreadable token answer".into()))?;
        Ok(Session {
            token: Secret::new(data.access_token),
            session_id: data.session_id,
            issued: Instant::now(),
            lifetime: Duration::from_secs(data.expires_in),
        })
    }

    async fn send_with(
        &self,
        call: &CallName<'_>,
        path: &str,
        body: Vec<u8>,
        session: &Session,
    ) -> Result<HttpAnswer, SendError> {
        let url = format!("{}{path}", self.base);
        http::send(&self.http, call, Method::POST, &url, |r| {
            r.bearer_auth(session.token.expose())
                .header(wire::SESSION_HEADER, &session.session_id)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        })
        .await
    }

    async fn send_cashout(&self, request: &FrozenRequest) -> SubmitOutcome {
        let frozen: FrozenCashout = match serde_json::from_value(request.body.clone()) {
            Ok(f) => f,
            Err(e) => {
                return SubmitOutcome::NotSent {
                    reason: format!("frozen cashout unreadable: {e}"),
                    retry_after: None,
                };
            }
        };
        let wire_request = match frozen.to_request(self.notification_url(&request.reference)) {
            Ok(r) => r,
            Err(e) => return SubmitOutcome::NotSent { reason: e, retry_after: None },
        };
        let body = match serde_json::to_vec(&wire_request) {
            Ok(b) => b,
            Err(e) => return SubmitOutcome::NotSent { reason: e.to_string(), retry_after: None },
        };
        let call = self.call("cashout", wire::CASHOUT_PATH);
        // At most two sends: the second only after a 401, which executed nothing.
        for send in 1..=2 {
            let session = match self.new_session().await {
                Ok(s) => s,
                Err(TokenError(e)) => {
                    return SubmitOutcome::NoCredentials { reason: format!("no token: {e}") };
                }
            };
            let answer = match self.send_with(&call, wire::CASHOUT_PATH, body.clone(), &session).await {
                Ok(a) => a,
                Err(e) if !e.kind.may_have_been_sent() => {
                    return SubmitOutcome::NotSent { reason: e.to_string(), retry_after: None };
                }
                Err(e) => return SubmitOutcome::InDoubt { reason: e.to_string() },
            };
            if answer.status == StatusCode::UNAUTHORIZED && send == 1 {
                tracing::info!(account = %self.config.account_name, "88Pay refused the token (401); repeating the same cashout with a new one");
                continue;
            }
            return cashout_outcome(&answer);
        }
        SubmitOutcome::NoCredentials { reason: "401 twice in a row".into() }
    }

    async fn fetch_balance(&self) -> Result<Decimal, ProviderError> {
        let reusable = {
            let guard = self.read_session.lock().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().filter(|s| s.issued.elapsed() < s.lifetime / 2).map(|s| Session {
                token: s.token.clone(),
                session_id: s.session_id.clone(),
                issued: s.issued,
                lifetime: s.lifetime,
            })
        };
        let session = match reusable {
            Some(s) => s,
            None => self
                .new_session()
                .await
                .map_err(|TokenError(e)| ProviderError::NoCredentials { reason: format!("no token: {e}") })?,
        };
        let call = self.call("balance", wire::BALANCE_PATH);
        let answer = self
            .send_with(&call, wire::BALANCE_PATH, b"{}".to_vec(), &session)
            .await
            .map_err(|e| ProviderError::Transient { reason: e.to_string(), retry_after: None })?;
        if answer.status == StatusCode::UNAUTHORIZED {
            *self.read_session.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return Err(ProviderError::NoCredentials { reason: "token refused (401)".into() });
        }
        *self.read_session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
        match answer.status {
            s if s.is_success() => envelope_data::<BalanceData>(&answer.body).map(|d| d.balance).ok_or(
                ProviderError::Transient { reason: "unreadable balance answer".into(), retry_after: None },
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                Err(ProviderError::RateLimited { retry_after: answer.retry_after })
            }
            s if s.is_server_error() => {
                Err(ProviderError::Transient { reason: format!("HTTP {s}"), retry_after: None })
            }
            s => Err(ProviderError::Refused {
                reason: format!("HTTP {s}: {}", envelope_message(&answer.body)),
            }),
        }
    }

    async fn check_balance(&self, payout: &PayoutForProvider) -> Result<CheckOutcome, ProviderError> {
        let balance = self.fetch_balance().await?;
        Ok(if balance >= payout.money.amount() {
            CheckOutcome::Go
        } else {
            CheckOutcome::NotNow { reason: format!("balance {balance} is below {}", payout.money) }
        })
    }

    /// A webhook at a capability URL: accepted only when the URL's token is valid and the body
    /// names the same reference; the store then compares amount and currency with the payout.
    fn verify_webhook(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict {
        let Some(reference) = self.capability.check(&self.config.account_name, callback.path) else {
            return CallbackVerdict::NotOurs { reason: "not a valid capability URL".into() };
        };
        let webhook: Webhook = match serde_json::from_slice(callback.body) {
            Ok(w) => w,
            Err(_) => {
                return CallbackVerdict::Unverifiable {
                    reason: "unreadable webhook body".into(),
                    reference: Some(reference.to_owned()),
                    provider_id: None,
                };
            }
        };
        if webhook.merchant_reference != reference {
            return CallbackVerdict::Unverifiable {
                reason: "webhook names another payout than its URL".into(),
                reference: Some(reference.to_owned()),
                provider_id: None,
            };
        }
        let (status, known) = wire::status_of(&webhook.status, webhook.message.as_deref());
        if !known {
            tracing::warn!(status = %webhook.status, %reference, "88Pay status not in the guides; read as still processing");
        }
        CallbackVerdict::Verified(VerifiedCallback {
            reference: reference.to_owned(),
            amount: webhook.amount,
            currency: Some(webhook.currency.clone()),
            identifying: vec![("reference".to_owned(), webhook.merchant_reference.clone())],
            // The whole content: a webhook that differs in anything is not a redelivery.
            dedupe_key: format!(
                "{reference}:{}:{}:{}:{}",
                webhook.reference, webhook.status, webhook.amount, webhook.currency
            ),
            status,
        })
    }
}

fn envelope_data<T: DeserializeOwned>(body: &str) -> Option<T> {
    serde_json::from_str::<Envelope<T>>(body)
        .ok()
        .filter(|e| e.status == wire::ENVELOPE_SUCCESS)
        .and_then(|e| e.data)
}

fn envelope_message(body: &str) -> String {
    serde_json::from_str::<Envelope<serde_json::Value>>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| "no envelope".into())
}

/// Classifies the cashout answer (DESIGN rule 4).
fn cashout_outcome(answer: &HttpAnswer) -> SubmitOutcome {
    match answer.status {
        s if s.is_success() => {
            let Ok(envelope) = serde_json::from_str::<Envelope<CashoutData>>(&answer.body) else {
                return SubmitOutcome::InDoubt { reason: "unreadable cashout answer".into() };
            };
            if envelope.status == wire::ENVELOPE_ERROR {
                return SubmitOutcome::Rejected {
                    reason: format!("88Pay error {}: {}", envelope.code, envelope.message),
                };
            }
            let Some(data) = envelope.data else {
                return SubmitOutcome::InDoubt { reason: "cashout answer without data".into() };
            };
            let provider_id = Some(data.reference.clone()).filter(|r| !r.is_empty());
            match wire::status_of(&data.status, Some(&envelope.message)).0 {
                ProviderStatus::Paid => SubmitOutcome::Paid { provider_id },
                ProviderStatus::Failed { reason } => SubmitOutcome::Rejected { reason },
                _ => SubmitOutcome::Accepted { provider_id },
            }
        }
        StatusCode::TOO_MANY_REQUESTS => {
            SubmitOutcome::NotSent { reason: "HTTP 429".into(), retry_after: answer.retry_after }
        }
        StatusCode::UNAUTHORIZED => SubmitOutcome::NoCredentials { reason: "HTTP 401".into() },
        s if s.is_server_error() => SubmitOutcome::InDoubt { reason: format!("HTTP {s}") },
        s => SubmitOutcome::Rejected { reason: format!("HTTP {s}: {}", envelope_message(&answer.body)) },
    }
}

impl Connector for EightyEightPay {
    fn name(&self) -> &str {
        &self.config.account_name
    }

    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn account(&self) -> String {
        self.config.merchant_id.clone()
    }

    fn check<'a>(
        &'a self,
        payout: &'a PayoutForProvider,
    ) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>> {
        Box::pin(self.check_balance(payout))
    }

    fn freeze_submit(
        &self,
        payout: &PayoutForProvider,
        reference: &str,
        _now: DateTime<Utc>,
    ) -> FrozenRequest {
        let frozen = FrozenCashout::of(&payout.money, &payout.destination, reference, &self.config.country);
        FrozenRequest {
            reference: reference.to_owned(),
            body: serde_json::to_value(&frozen).unwrap_or(serde_json::Value::Null),
        }
    }

    fn balance(&self) -> Option<BoxFuture<'_, Result<Decimal, ProviderError>>> {
        Some(Box::pin(self.fetch_balance()))
    }

    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome> {
        Box::pin(self.send_cashout(request))
    }

    fn status<'a>(
        &'a self,
        _request: &'a FrozenRequest,
        _provider_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(async { Err(ProviderError::Refused { reason: "88Pay has no status call".into() }) })
    }

    fn status_lookup(&self) -> StatusLookup {
        StatusLookup::None
    }

    fn min_status_interval(&self) -> Duration {
        self.config.min_status_interval
    }

    fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    fn verify_callback(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict {
        self.verify_webhook(callback)
    }

    fn callback_answer(&self, _accepted: bool) -> &'static str {
        ""
    }
}
