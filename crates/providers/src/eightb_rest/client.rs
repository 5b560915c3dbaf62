//! [`EightBRest`]: the 8B REST connector. Every call carries a fleet-shared access token; a 401
//! refreshes once (one refresh per fleet) and repeats the same request; an expired refresh
//! token falls back to the password grant. A token problem never fails a payout: the money
//! call is reported as not sent, a read as transient.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::Secret;
use payoutd_core::credentials::{BoxFuture as CredFuture, CredentialError, CredentialStore, ProviderTokens};
use reqwest::{Method, StatusCode};

use super::wire::{
    self, AuthorizeRequest, CheckAnswer, CheckRequest, DisbursementAnswer, ErrorAnswer, FrozenIntent,
    IntentAnswer, RefreshRequest, TokenAnswer,
};
use crate::connector::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, FrozenRequest, IncomingCallback, PayoutForProvider,
    ProviderError, ProviderRecord, ProviderStatus, StatusLookup, SubmitOutcome,
};
use crate::http::{self, HttpAnswer, SendError};
use crate::telemetry::CallName;
use crate::token_keeper::{TokenKeeper, TokenSource};

/// The provider kind.
pub const PROVIDER: &str = "8b_rest";

/// How to reach one 8B REST account.
#[derive(Debug, Clone)]
pub struct EightBRestConfig {
    /// The account's configured name (payouts, callback route, rate limit, token credential).
    pub account_name: String,
    pub base_url: String,
    pub login: String,
    pub password: Secret,
    /// The refresh path; the guide names two (see the wire module).
    pub refresh_path: String,
    /// The secret path segment of the webhook URL configured in the provider's portal:
    /// `{payoutd}/v1/callbacks/{account}/{webhook_secret}/{transactionId}`.
    pub webhook_secret: Secret,
    pub request_timeout: Duration,
    /// Minimum time between submit and a status query, and between two queries.
    pub min_status_interval: Duration,
    /// A token with less than this left is refreshed before use.
    pub token_margin: Duration,
}

impl EightBRestConfig {
    pub fn new(
        account_name: impl Into<String>,
        base_url: impl Into<String>,
        login: impl Into<String>,
        password: Secret,
        webhook_secret: Secret,
    ) -> Self {
        Self {
            account_name: account_name.into(),
            base_url: base_url.into(),
            login: login.into(),
            password,
            refresh_path: wire::REFRESH_PATH.to_owned(),
            webhook_secret,
            request_timeout: Duration::from_secs(10),
            min_status_interval: Duration::from_secs(60),
            token_margin: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("8B REST base_url must start with http:// or https://")]
    BaseUrl,
    #[error("8B REST login and password must not be empty")]
    Credentials,
    #[error("8B REST webhook secret must be at least 16 URL-safe characters (letters, digits, '-', '_')")]
    WebhookSecret,
    #[error("8B REST refresh path must start with '/'")]
    RefreshPath,
    #[error(transparent)]
    Http(#[from] http::BuildError),
}

pub struct EightBRest {
    config: EightBRestConfig,
    base: String,
    http: reqwest::Client,
    tokens: TokenKeeper,
}

impl std::fmt::Debug for EightBRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EightBRest").field("account", &self.config.account_name).finish_non_exhaustive()
    }
}

/// Why an authorized call got no HTTP answer.
enum CallError {
    /// No valid token could be had: nothing was sent.
    Token(CredentialError),
    Send(SendError),
}

impl EightBRest {
    pub fn new(config: EightBRestConfig, store: Arc<dyn CredentialStore>) -> Result<Self, ConfigError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::BaseUrl);
        }
        if config.login.is_empty() || config.password.is_empty() {
            return Err(ConfigError::Credentials);
        }
        let secret = config.webhook_secret.expose();
        if secret.len() < 16 || !secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::WebhookSecret);
        }
        if !config.refresh_path.starts_with('/') {
            return Err(ConfigError::RefreshPath);
        }
        let http = http::build_client(config.request_timeout)?;
        let tokens =
            TokenKeeper::new(format!("{PROVIDER}:{}", config.account_name), store, config.token_margin);
        Ok(Self { config, base, http, tokens })
    }

    fn call<'a>(&'a self, operation: &'static str, url_template: &'static str) -> CallName<'a> {
        CallName { provider: PROVIDER, operation, url_template, account: &self.config.login }
    }

    /// Sends with the current token; on 401 refreshes once (fleet-wide single flight) and
    /// repeats the same request.
    async fn authorized(
        &self,
        call: &CallName<'_>,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpAnswer, CallError> {
        let tokens = self.tokens.current(self).await.map_err(CallError::Token)?;
        let answer =
            self.send_with(call, method.clone(), path, body, &tokens).await.map_err(CallError::Send)?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        tracing::info!(account = %self.config.account_name, "8B REST answered 401; refreshing the token once");
        let tokens = self.tokens.refresh(self, Some(tokens.version)).await.map_err(CallError::Token)?;
        self.send_with(call, method, path, body, &tokens).await.map_err(CallError::Send)
    }

    async fn send_with(
        &self,
        call: &CallName<'_>,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        tokens: &ProviderTokens,
    ) -> Result<HttpAnswer, SendError> {
        let url = format!("{}{path}", self.base);
        http::send(&self.http, call, method, &url, |r| {
            let r = r.bearer_auth(tokens.access_token.expose());
            match body {
                Some(b) => r.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_vec()),
                None => r,
            }
        })
        .await
    }

    /// The password grant, or the refresh grant when the stored refresh token is still good
    /// (falling back to the password grant when the provider refuses it).
    async fn grant(&self, current: Option<ProviderTokens>) -> Result<ProviderTokens, CredentialError> {
        let refresh = current.and_then(|c| {
            let good = c.refresh_expires_at.is_none_or(|at| at > Utc::now() + chrono::Duration::seconds(5));
            c.refresh_token.filter(|_| good)
        });
        if let Some(refresh_token) = refresh {
            let body =
                serde_json::to_vec(&RefreshRequest { refresh_token: refresh_token.expose().to_owned() })
                    .map_err(|e| CredentialError::Refresh(e.to_string()))?;
            let call = self.call("refresh", "/api/v1/admin-accounts/oauth/refresh-token");
            match self.token_call(&call, &self.config.refresh_path, body, Some(&refresh_token)).await {
                Ok(tokens) => return Ok(tokens),
                Err(TokenCallError::Refused) => {
                    tracing::info!(account = %self.config.account_name, "refresh token refused; using the password grant");
                }
                Err(TokenCallError::Other(e)) => return Err(e),
            }
        }
        let body = serde_json::to_vec(&AuthorizeRequest {
            login: self.config.login.clone(),
            password: self.config.password.expose().to_owned(),
        })
        .map_err(|e| CredentialError::Refresh(e.to_string()))?;
        let call = self.call("authorize", wire::AUTHORIZE_PATH);
        self.token_call(&call, wire::AUTHORIZE_PATH, body, None).await.map_err(|e| match e {
            TokenCallError::Refused => {
                CredentialError::Refresh("the provider refused the login and password".into())
            }
            TokenCallError::Other(e) => e,
        })
    }

    async fn token_call(
        &self,
        call: &CallName<'_>,
        path: &str,
        body: Vec<u8>,
        previous_refresh: Option<&Secret>,
    ) -> Result<ProviderTokens, TokenCallError> {
        let url = format!("{}{path}", self.base);
        let answer = http::send(&self.http, call, Method::POST, &url, |r| {
            r.header(reqwest::header::CONTENT_TYPE, "application/json").body(body)
        })
        .await
        .map_err(|e| TokenCallError::Other(CredentialError::Refresh(e.to_string())))?;
        if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
            return Err(TokenCallError::Refused);
        }
        if !answer.status.is_success() {
            return Err(TokenCallError::Other(CredentialError::Refresh(format!("HTTP {}", answer.status))));
        }
        let parsed: TokenAnswer = serde_json::from_str(&answer.body)
            .map_err(|_| TokenCallError::Other(CredentialError::Refresh("unreadable token answer".into())))?;
        let now = Utc::now();
        let secs = |s: Option<u64>, default: u64| {
            chrono::Duration::seconds(i64::try_from(s.unwrap_or(default)).unwrap_or(i64::MAX / 2_000))
        };
        let refresh_token = parsed.refresh_token.map(Secret::new).or_else(|| previous_refresh.cloned());
        Ok(ProviderTokens {
            access_token: Secret::new(parsed.access_token),
            obtained_at: now,
            access_expires_at: now + secs(parsed.expires_in, wire::ACCESS_TOKEN_SECS),
            refresh_expires_at: refresh_token
                .as_ref()
                .map(|_| now + secs(parsed.refresh_expires_in, wire::REFRESH_TOKEN_SECS)),
            refresh_token,
            version: 0,
        })
    }

    async fn check_disbursement(&self, payout: &PayoutForProvider) -> Result<CheckOutcome, ProviderError> {
        let body = serde_json::to_vec(&CheckRequest::of(&payout.money, &payout.destination))
            .map_err(|e| ProviderError::Refused { reason: e.to_string() })?;
        let call = self.call("check", wire::CHECK_PATH);
        let answer = self.authorized(&call, Method::POST, wire::CHECK_PATH, Some(&body)).await;
        let answer = read_error(answer)?;
        let parsed: CheckAnswer = serde_json::from_str(&answer.body).map_err(|_| {
            ProviderError::Transient { reason: "unreadable check answer".into(), retry_after: None }
        })?;
        Ok(if parsed.available {
            CheckOutcome::Go
        } else {
            CheckOutcome::NotNow { reason: parsed.reason.unwrap_or_else(|| "not available".into()) }
        })
    }

    async fn send_intent(&self, request: &FrozenRequest) -> SubmitOutcome {
        let frozen: FrozenIntent = match serde_json::from_value(request.body.clone()) {
            Ok(f) => f,
            Err(e) => {
                return SubmitOutcome::NotSent {
                    reason: format!("frozen intent unreadable: {e}"),
                    retry_after: None,
                };
            }
        };
        let body = match frozen.to_request().and_then(|r| serde_json::to_vec(&r).map_err(|e| e.to_string())) {
            Ok(b) => b,
            Err(e) => return SubmitOutcome::NotSent { reason: e, retry_after: None },
        };
        let call = self.call("intent", wire::INTENTS_PATH);
        let answer = match self.authorized(&call, Method::POST, wire::INTENTS_PATH, Some(&body)).await {
            Ok(a) => a,
            Err(CallError::Token(e)) => return SubmitOutcome::NoCredentials { reason: e.to_string() },
            Err(CallError::Send(e)) if !e.kind.may_have_been_sent() => {
                return SubmitOutcome::NotSent { reason: e.to_string(), retry_after: None };
            }
            Err(CallError::Send(e)) => return SubmitOutcome::InDoubt { reason: e.to_string() },
        };
        submit_outcome(&answer, &request.reference)
    }

    async fn get_disbursement(&self, id: &str) -> Result<Option<DisbursementAnswer>, ProviderError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ProviderError::Refused {
                reason: "provider id has characters a path cannot carry".into(),
            });
        }
        let path = format!("{}/{id}", wire::DISBURSEMENT_PATH);
        let call = self.call("status", "/api/v1/disbursements/{id}");
        let answer = self.authorized(&call, Method::GET, &path, None).await;
        let answer = match answer {
            Ok(a) if a.status == StatusCode::NOT_FOUND => return Ok(None),
            other => read_error(other)?,
        };
        serde_json::from_str(&answer.body).map(Some).map_err(|_| ProviderError::Transient {
            reason: "unreadable disbursement answer".into(),
            retry_after: None,
        })
    }
}

enum TokenCallError {
    /// 401/403: the credential (or refresh token) was refused.
    Refused,
    Other(CredentialError),
}

impl TokenSource for EightBRest {
    fn obtain<'a>(
        &'a self,
        current: Option<ProviderTokens>,
    ) -> CredFuture<'a, Result<ProviderTokens, CredentialError>> {
        Box::pin(self.grant(current))
    }
}

/// A read's answer, or the error class its failure belongs to.
fn read_error(answer: Result<HttpAnswer, CallError>) -> Result<HttpAnswer, ProviderError> {
    let answer = match answer {
        Ok(a) => a,
        Err(CallError::Token(e)) => return Err(ProviderError::NoCredentials { reason: e.to_string() }),
        Err(CallError::Send(e)) => {
            return Err(ProviderError::Transient { reason: e.to_string(), retry_after: None });
        }
    };
    match answer.status {
        s if s.is_success() => Ok(answer),
        StatusCode::TOO_MANY_REQUESTS => Err(ProviderError::RateLimited { retry_after: answer.retry_after }),
        StatusCode::UNAUTHORIZED => {
            Err(ProviderError::NoCredentials { reason: "401 after a token refresh".into() })
        }
        s if s.is_server_error() => {
            Err(ProviderError::Transient { reason: format!("HTTP {s}"), retry_after: answer.retry_after })
        }
        s => Err(ProviderError::Refused { reason: format!("HTTP {s}: {}", error_text(&answer.body)) }),
    }
}

fn error_text(body: &str) -> String {
    serde_json::from_str::<ErrorAnswer>(body).map(|e| e.describe()).unwrap_or_else(|_| "no error body".into())
}

/// Classifies the answer to `POST /api/v1/intents` (DESIGN rule 4).
fn submit_outcome(answer: &HttpAnswer, reference: &str) -> SubmitOutcome {
    match answer.status {
        s if s.is_success() => {
            let Ok(parsed) = serde_json::from_str::<IntentAnswer>(&answer.body) else {
                return SubmitOutcome::InDoubt { reason: "unreadable intent answer".into() };
            };
            let Some(payment) = parsed.payments.into_iter().find(|p| p.external_id == reference) else {
                return SubmitOutcome::InDoubt {
                    reason: "intent answer names no payment with our reference".into(),
                };
            };
            let provider_id = Some(payment.id);
            match payment.status.as_deref().map(|s| wire::status_of(s, None, None).0) {
                Some(ProviderStatus::Paid) => SubmitOutcome::Paid { provider_id },
                Some(ProviderStatus::Failed { reason }) => SubmitOutcome::Rejected { reason },
                _ => SubmitOutcome::Accepted { provider_id },
            }
        }
        StatusCode::TOO_MANY_REQUESTS => {
            SubmitOutcome::NotSent { reason: "HTTP 429".into(), retry_after: answer.retry_after }
        }
        // Refused twice (the second time right after a refresh): nothing was executed.
        StatusCode::UNAUTHORIZED => {
            SubmitOutcome::NoCredentials { reason: "401 after a token refresh".into() }
        }
        s if s.is_server_error() => SubmitOutcome::InDoubt { reason: format!("HTTP {s}") },
        s => SubmitOutcome::Rejected { reason: format!("HTTP {s}: {}", error_text(&answer.body)) },
    }
}

impl Connector for EightBRest {
    fn name(&self) -> &str {
        &self.config.account_name
    }

    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn account(&self) -> String {
        self.config.login.clone()
    }

    fn check<'a>(
        &'a self,
        payout: &'a PayoutForProvider,
    ) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>> {
        Box::pin(self.check_disbursement(payout))
    }

    fn freeze_submit(
        &self,
        payout: &PayoutForProvider,
        reference: &str,
        _now: DateTime<Utc>,
    ) -> FrozenRequest {
        let frozen = FrozenIntent::of(&payout.money, &payout.destination, reference);
        FrozenRequest {
            reference: reference.to_owned(),
            body: serde_json::to_value(&frozen).unwrap_or(serde_json::Value::Null),
        }
    }

    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome> {
        Box::pin(self.send_intent(request))
    }

    fn status<'a>(
        &'a self,
        _request: &'a FrozenRequest,
        provider_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(async move {
            let Some(id) = provider_id else {
                return Err(ProviderError::Refused {
                    reason: "8B REST has no status call by our reference".into(),
                });
            };
            Ok(match self.get_disbursement(id).await? {
                None => ProviderStatus::NotFound,
                Some(d) => status_logged(&d),
            })
        })
    }

    fn status_lookup(&self) -> StatusLookup {
        StatusLookup::ByProviderId
    }

    fn find_by_provider_id<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<ProviderRecord>, ProviderError>>> {
        Some(Box::pin(async move {
            Ok(self.get_disbursement(provider_id).await?.map(|d| ProviderRecord {
                status: status_logged(&d),
                provider_id: d.id,
                reference: d.external_id,
                amount: d.amount,
                currency: d.currency,
            }))
        }))
    }

    fn min_status_interval(&self) -> Duration {
        self.config.min_status_interval
    }

    fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    fn verify_callback(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict {
        super::callback::verify(self.config.webhook_secret.expose(), callback)
    }

    fn callback_answer(&self, _accepted: bool) -> &'static str {
        ""
    }
}

fn status_logged(d: &DisbursementAnswer) -> ProviderStatus {
    let (status, known) = wire::status_of(&d.status, d.error_code.as_deref(), d.error_message.as_deref());
    if !known {
        tracing::warn!(status = %d.status, provider_id = %d.id, "8B REST status not in the guide; read as still processing");
    }
    status
}
