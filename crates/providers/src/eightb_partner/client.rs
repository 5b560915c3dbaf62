//! [`EightBPartner`]: the 8B partner [`Connector`]. One HTTP call per method, each answer
//! mapped through [`wire::meaning`].
//!
//! Requests go to `{base_url}/partner/{service_id}/{payout|check|balance}`. Signatures are
//! computed at send time from the secret and never stored, logged or put into an error.

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::Secret;
use reqwest::StatusCode;
use rust_decimal::Decimal;

use super::callback;
use super::format::{format_amount, format_dt};
use super::signature::{sign_balance, sign_check};
use super::wire::{self, Answer, SubmitForm};
use crate::connector::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, FrozenRequest, IncomingCallback, PayoutForProvider,
    ProviderError, ProviderStatus, SubmitOutcome,
};
use crate::http::{self, HttpAnswer, SendError};
use crate::telemetry::{self, CallName, OutcomeClass};

/// How to reach one 8B partner account.
#[derive(Debug, Clone)]
pub struct EightBPartnerConfig {
    /// The account's configured name (payouts, callback route, rate limit); "8b_partner" by
    /// default, the name every payout of a deployment from before accounts carries.
    pub account_name: String,
    /// Scheme and host, e.g. "https://int.8b.world" or a sandbox's "http://127.0.0.1:PORT".
    pub base_url: String,
    /// The partner's service id: part of every URL, and the account payouts leave from.
    pub service_id: String,
    pub secret: Secret,
    /// Upper bound for one call, connect to last byte.
    pub request_timeout: Duration,
    /// The spec asks for status checks "at least one minute after transaction initialization";
    /// tests shorten it.
    pub min_status_interval: Duration,
}

impl EightBPartnerConfig {
    /// A config with the defaults: 10 s per request, 60 s between submit and status.
    pub fn new(base_url: impl Into<String>, service_id: impl Into<String>, secret: Secret) -> Self {
        Self {
            account_name: PROVIDER.to_owned(),
            base_url: base_url.into(),
            service_id: service_id.into(),
            secret,
            // Short enough that status interval (60 s) > timeout + lease + margin holds with the
            // engine's defaults (10 + 15 + 5 s); see the engine's configuration check.
            request_timeout: Duration::from_secs(10),
            min_status_interval: Duration::from_secs(60),
        }
    }
}

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("8B partner base_url must start with http:// or https://")]
    BaseUrl,
    #[error("8B partner service_id must be non-empty letters, digits, '-' or '_'")]
    ServiceId,
    #[error("8B partner secret is empty")]
    EmptySecret,
    #[error(transparent)]
    Http(#[from] http::BuildError),
}

/// The 8B partner connector.
#[derive(Debug, Clone)]
pub struct EightBPartner {
    config: EightBPartnerConfig,
    http: reqwest::Client,
    /// `{base_url}/partner/{service_id}`, without a trailing slash.
    endpoint: String,
}

impl EightBPartner {
    pub fn new(config: EightBPartnerConfig) -> Result<Self, ConfigError> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::BaseUrl);
        }
        // The service id goes into the URL path unescaped, so only plain characters pass.
        if config.service_id.is_empty()
            || !config.service_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::ServiceId);
        }
        if config.secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let http = http::build_client(config.request_timeout)?;
        let endpoint = format!("{base}/partner/{}", config.service_id);
        Ok(Self { config, http, endpoint })
    }

    pub fn config(&self) -> &EightBPartnerConfig {
        &self.config
    }

    fn url(&self, method: &str) -> String {
        format!("{}/{method}", self.endpoint)
    }

    /// How the telemetry names a call of `operation` ("payout", "check" or "balance").
    fn call(&self, operation: &'static str) -> CallName<'_> {
        let url_template = match operation {
            "payout" => "/partner/{service_id}/payout",
            "check" => "/partner/{service_id}/check",
            _ => "/partner/{service_id}/balance",
        };
        CallName { provider: PROVIDER, operation, url_template, account: &self.config.service_id }
    }

    /// The check call for one frozen payout, signed with `now` as `dt`.
    async fn check_status(
        &self,
        request: &FrozenRequest,
        now: DateTime<Utc>,
    ) -> Result<ProviderStatus, ProviderError> {
        let form = SubmitForm::from_json(&request.body)
            .map_err(|e| ProviderError::Refused { reason: e.to_string() })?;
        let dt = format_dt(now);
        let hash = sign_check(&form.id, &dt, &form.amount, &form.destination, &self.config.secret);
        let fields = [
            ("id", form.id.as_str()),
            ("dt", dt.as_str()),
            ("amount", form.amount.as_str()),
            ("destination", form.destination.as_str()),
            ("service_id", self.config.service_id.as_str()),
            ("hash", hash.as_str()),
        ];
        let call = self.call("check");
        let answer = http::post_form(&self.http, &call, &self.url("check"), &fields).await;
        let status = read_status_answer(&call, &form.id, answer);
        tracing::debug!(reference = %form.id, ?status, "8B partner check");
        status
    }

    /// The account's balance, by the balance call.
    async fn fetch_balance(&self, now: DateTime<Utc>) -> Result<Decimal, ProviderError> {
        let dt = format_dt(now);
        let hash = sign_balance(&dt, &self.config.secret);
        let fields = [("dt", dt.as_str()), ("hash", hash.as_str())];
        let call = self.call("balance");
        let answer =
            ok_answer(&call, http::post_form(&self.http, &call, &self.url("balance"), &fields).await)?;
        // A refused balance call (bad signature) answers with a result code instead.
        if let Ok(code) = answer.result_code()
            && let Err(refused) = wire::meaning(code, &answer.detail()).status
        {
            return Err(refused);
        }
        answer.balance().map_err(|e| {
            telemetry::record_error(&call, OutcomeClass::Unreadable);
            transient(e.to_string())
        })
    }

    async fn check_balance(
        &self,
        payout: &PayoutForProvider,
        now: DateTime<Utc>,
    ) -> Result<CheckOutcome, ProviderError> {
        let balance = self.fetch_balance(now).await?;
        let amount = payout.money.amount();
        Ok(if balance >= amount {
            CheckOutcome::Go
        } else {
            CheckOutcome::NotNow { reason: format!("balance {balance} below amount {amount}") }
        })
    }

    async fn send_payout(&self, request: &FrozenRequest) -> SubmitOutcome {
        let form = match SubmitForm::from_json(&request.body) {
            Ok(form) if form.id == request.reference => form,
            // A frozen request never changes, so it could never have been sent either.
            Ok(_) => {
                return SubmitOutcome::Rejected {
                    reason: "frozen payout body id differs from its reference".to_owned(),
                };
            }
            Err(e) => return SubmitOutcome::Rejected { reason: e.to_string() },
        };
        let hash = form.hash(&self.config.secret);
        let mut fields = form.unsigned_fields();
        fields.push(("hash", hash.as_str()));
        let call = self.call("payout");
        let answer = http::post_form(&self.http, &call, &self.url("payout"), &fields).await;
        let outcome = read_submit_answer(&call, &form.id, answer);
        tracing::info!(reference = %form.id, ?outcome, "8B partner payout");
        outcome
    }
}

fn transient(reason: String) -> ProviderError {
    ProviderError::Transient { reason, retry_after: None }
}

/// Turns a read-only call's HTTP result into a parsed 200 answer, or the matching error.
fn ok_answer(call: &CallName<'_>, answer: Result<HttpAnswer, SendError>) -> Result<Answer, ProviderError> {
    let answer = answer.map_err(|e| transient(format!("8B partner: {e}")))?;
    match answer.status {
        StatusCode::OK => parse(call, &answer.body).map_err(|e| transient(e.to_string())),
        StatusCode::TOO_MANY_REQUESTS => Err(ProviderError::RateLimited { retry_after: answer.retry_after }),
        status => Err(ProviderError::Transient {
            reason: format!("8B partner answered HTTP {status}"),
            retry_after: answer.retry_after,
        }),
    }
}

/// Parses a 200 answer; one that does not parse is counted as an unreadable answer.
fn parse(call: &CallName<'_>, body: &str) -> Result<Answer, wire::WireError> {
    wire::parse_answer(body).inspect_err(|_| telemetry::record_error(call, OutcomeClass::Unreadable))
}

/// Maps the answer to a check call.
fn read_status_answer(
    call: &CallName<'_>,
    reference: &str,
    answer: Result<HttpAnswer, SendError>,
) -> Result<ProviderStatus, ProviderError> {
    let answer = ok_answer(call, answer)?;
    if let Some(id) = answer.id.as_deref().map(str::trim)
        && id != reference
    {
        return Err(transient(format!("check answer is about {id:?}, not {reference:?}")));
    }
    let code = answer.result_code().map_err(|e| transient(e.to_string()))?;
    wire::meaning(code, &answer.detail()).status
}

/// Maps the answer to a payout call (DESIGN rule 4): anything that does not prove the payout
/// was or was not taken is in doubt.
fn read_submit_answer(
    call: &CallName<'_>,
    reference: &str,
    answer: Result<HttpAnswer, SendError>,
) -> SubmitOutcome {
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) if !e.kind.may_have_been_sent() => {
            return SubmitOutcome::NotSent { reason: format!("8B partner: {e}"), retry_after: None };
        }
        Err(e) => return SubmitOutcome::InDoubt { reason: format!("8B partner: {e}") },
    };
    match answer.status {
        StatusCode::OK => {}
        // A rate limiter answers before the payout logic runs.
        StatusCode::TOO_MANY_REQUESTS => {
            return SubmitOutcome::NotSent {
                reason: "8B partner answered HTTP 429".to_owned(),
                retry_after: answer.retry_after,
            };
        }
        status => {
            return SubmitOutcome::InDoubt { reason: format!("8B partner answered HTTP {status}") };
        }
    }
    let parsed = match parse(call, &answer.body) {
        Ok(parsed) => parsed,
        Err(e) => return SubmitOutcome::InDoubt { reason: e.to_string() },
    };
    if let Some(id) = parsed.id.as_deref().map(str::trim)
        && id != reference
    {
        return SubmitOutcome::InDoubt {
            reason: format!("payout answer is about {id:?}, not {reference:?}"),
        };
    }
    match parsed.result_code() {
        Ok(code) => wire::meaning(code, &parsed.detail()).submit,
        Err(e) => SubmitOutcome::InDoubt { reason: e.to_string() },
    }
}

/// The provider kind, and the default account name.
pub const PROVIDER: &str = "8b_partner";

impl Connector for EightBPartner {
    fn name(&self) -> &str {
        &self.config.account_name
    }

    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn account(&self) -> String {
        self.config.service_id.clone()
    }

    fn check<'a>(
        &'a self,
        payout: &'a PayoutForProvider,
    ) -> BoxFuture<'a, Result<CheckOutcome, ProviderError>> {
        Box::pin(self.check_balance(payout, Utc::now()))
    }

    fn freeze_submit(
        &self,
        payout: &PayoutForProvider,
        reference: &str,
        now: DateTime<Utc>,
    ) -> FrozenRequest {
        let d = &payout.destination;
        let form = SubmitForm {
            id: reference.to_owned(),
            dt: format_dt(now),
            amount: format_amount(&payout.money),
            currency: payout.money.currency().code().to_owned(),
            phone: d.phone.clone(),
            client: d.client.clone(),
            destination: d.destination.clone(),
            receiver_fio: d.receiver_name.clone(),
            receiver_bic: d.receiver_bic.clone(),
        };
        FrozenRequest { reference: reference.to_owned(), body: form.to_json() }
    }

    fn balance(&self) -> Option<BoxFuture<'_, Result<Decimal, ProviderError>>> {
        Some(Box::pin(self.fetch_balance(Utc::now())))
    }

    fn submit<'a>(&'a self, request: &'a FrozenRequest) -> BoxFuture<'a, SubmitOutcome> {
        Box::pin(self.send_payout(request))
    }

    fn status<'a>(
        &'a self,
        request: &'a FrozenRequest,
        _provider_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ProviderStatus, ProviderError>> {
        Box::pin(self.check_status(request, Utc::now()))
    }

    fn min_status_interval(&self) -> Duration {
        self.config.min_status_interval
    }

    fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    fn verify_callback(&self, callback: &IncomingCallback<'_>) -> CallbackVerdict {
        if !callback.path.is_empty() {
            return CallbackVerdict::NotOurs {
                reason: "8B partner callbacks have no path below the account".into(),
            };
        }
        callback::verify_callback(&self.config.secret, callback.body)
    }

    fn callback_answer(&self, accepted: bool) -> &'static str {
        callback::callback_answer(accepted)
    }
}

#[cfg(test)]
mod tests {
    //! The connector against a canned one-shot HTTP server on loopback; the full round trips
    //! against the simulator live in the sandbox crate's tests.
    use super::*;
    use chrono::TimeZone;
    use payoutd_core::{Currency, Destination, Money};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SECRET: &str = "s3cr3t-key";

    fn payout(amount: &str, currency: &str) -> PayoutForProvider {
        PayoutForProvider {
            money: Money::parse(amount, Currency::parse(currency).expect("currency")).expect("money"),
            destination: Destination {
                phone: "622851280".into(),
                client: "123456789".into(),
                destination: "bank_bca".into(),
                receiver_name: "Budi Santoso".into(),
                receiver_bic: None,
            },
        }
    }

    fn connector(base_url: &str) -> EightBPartner {
        let mut config = EightBPartnerConfig::new(base_url, "1234", Secret::new(SECRET));
        config.request_timeout = Duration::from_millis(500);
        EightBPartner::new(config).expect("valid config")
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 0).single().expect("valid")
    }

    /// Serves one connection with `response` and hands back the raw request it read.
    async fn one_shot(response: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            loop {
                let n = socket.read(&mut buf).await.expect("read");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            socket.write_all(response.as_bytes()).await.expect("write");
            socket.shutdown().await.ok();
            String::from_utf8_lossy(&request).to_string()
        });
        (base, task)
    }

    fn http(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
            body.len()
        )
    }

    fn frozen(c: &EightBPartner) -> FrozenRequest {
        c.freeze_submit(&payout("150000", "IDR"), "ord-42", at())
    }

    async fn submit_with(response: String) -> (SubmitOutcome, String) {
        let (base, server) = one_shot(response).await;
        let c = connector(&base);
        let outcome = c.submit(&frozen(&c)).await;
        (outcome, server.await.expect("server"))
    }

    #[test]
    fn names_and_config_checks() {
        let c = connector("http://127.0.0.1:9/");
        assert_eq!(c.name(), "8b_partner");
        assert_eq!(c.account(), "1234");
        assert_eq!(c.min_status_interval(), Duration::from_secs(60));
        assert_eq!(c.url("payout"), "http://127.0.0.1:9/partner/1234/payout");
        assert!(!format!("{c:?}").contains(SECRET));

        let bad = |f: fn(&mut EightBPartnerConfig)| {
            let mut config = EightBPartnerConfig::new("https://int.8b.world", "1234", Secret::new("k"));
            f(&mut config);
            EightBPartner::new(config).is_err()
        };
        assert!(bad(|c| c.base_url = "int.8b.world".into()));
        assert!(bad(|c| c.service_id = "12/34".into()));
        assert!(bad(|c| c.secret = Secret::new("")));
        assert!(!bad(|_| ()));
    }

    #[test]
    fn freeze_builds_the_form_without_a_hash() {
        let c = connector("http://127.0.0.1:9");
        let mut p = payout("10.5", "USD");
        p.destination.receiver_bic = Some("CENAIDJA".into());
        let frozen = c.freeze_submit(&p, "ord-42", at());
        assert_eq!(frozen.reference, "ord-42");
        assert_eq!(
            frozen.body,
            serde_json::json!({
                "id": "ord-42", "dt": "2026-11-21 10:15:00", "amount": "10.50", "currency": "USD",
                "phone": "622851280", "client": "123456789", "destination": "bank_bca",
                "receiver_fio": "Budi Santoso", "receiver_bic": "CENAIDJA",
            })
        );
        let idr = frozen_idr();
        assert_eq!(idr.body["amount"], "150000");
        assert!(idr.body.get("receiver_bic").is_none());
    }

    fn frozen_idr() -> FrozenRequest {
        frozen(&connector("http://127.0.0.1:9"))
    }

    #[tokio::test]
    async fn submit_sends_the_signed_form() {
        let body = "<response><id>ord-42</id><result>OK</result></response>";
        let (outcome, request) = submit_with(http("200 OK", "", body)).await;
        assert_eq!(outcome, SubmitOutcome::Accepted { provider_id: None });
        assert!(request.starts_with("POST /partner/1234/payout HTTP/1.1"), "{request}");
        assert!(request.to_ascii_lowercase().contains("content-type: application/x-www-form-urlencoded"));
        let form_body = request.split("\r\n\r\n").nth(1).expect("body");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(form_body).expect("form");
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("dt"), Some("2026-11-21 10:15:00"));
        assert_eq!(get("receiver_fio"), Some("Budi Santoso"));
        // The payout vector from signature.rs (md5sum): same fields, same secret.
        assert_eq!(get("hash"), Some("88f70b74635c683c29ffce076abd7e09"));
    }

    #[tokio::test]
    async fn submit_result_codes() {
        let answer = |code: &str| {
            http(
                "200 OK",
                "",
                &format!(
                    "<response><id>ord-42</id><result>{code}</result><error>no funds</error></response>"
                ),
            )
        };
        assert_eq!(submit_with(answer("PROCESSING")).await.0, SubmitOutcome::Accepted { provider_id: None });
        assert_eq!(submit_with(answer("PAID")).await.0, SubmitOutcome::Paid { provider_id: None });
        assert!(
            matches!(submit_with(answer("NOT_PAID")).await.0, SubmitOutcome::Rejected { ref reason } if reason.contains("no funds"))
        );
        assert!(
            matches!(submit_with(answer("ERROR")).await.0, SubmitOutcome::Rejected { ref reason } if reason.contains("no funds"))
        );
        assert!(matches!(submit_with(answer("WHATEVER")).await.0, SubmitOutcome::InDoubt { .. }));
    }

    #[tokio::test]
    async fn submit_in_doubt_cases() {
        let in_doubt = |o: &SubmitOutcome| matches!(o, SubmitOutcome::InDoubt { .. });
        assert!(in_doubt(&submit_with(http("500 Internal Server Error", "", "oops")).await.0));
        assert!(in_doubt(&submit_with(http("502 Bad Gateway", "", "<html>")).await.0));
        assert!(in_doubt(&submit_with(http("404 Not Found", "", "")).await.0));
        assert!(in_doubt(&submit_with(http("200 OK", "", "<html><body>hello")).await.0));
        let other_id = http("200 OK", "", "<response><id>ord-43</id><result>OK</result></response>");
        assert!(in_doubt(&submit_with(other_id).await.0));
        // The connection is closed without any answer: the request may have been executed.
        assert!(in_doubt(&submit_with(String::new()).await.0));
    }

    #[tokio::test]
    async fn submit_not_sent_cases() {
        let (outcome, _) = submit_with(http("429 Too Many Requests", "Retry-After: 3\r\n", "")).await;
        assert_eq!(
            outcome,
            SubmitOutcome::NotSent {
                reason: "8B partner answered HTTP 429".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let c = connector(&format!("http://{addr}"));
        let outcome = c.submit(&frozen(&c)).await;
        assert!(matches!(outcome, SubmitOutcome::NotSent { retry_after: None, .. }), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_broken_frozen_body_is_rejected_without_a_call() {
        let c = connector("http://127.0.0.1:9");
        let request = FrozenRequest { reference: "ord-42".into(), body: serde_json::json!({"id": 1}) };
        assert!(matches!(c.submit(&request).await, SubmitOutcome::Rejected { .. }));
        let mut request = frozen(&c);
        request.reference = "other".into();
        assert!(matches!(c.submit(&request).await, SubmitOutcome::Rejected { .. }));
    }

    async fn status_with(response: String) -> (Result<ProviderStatus, ProviderError>, String) {
        let (base, server) = one_shot(response).await;
        let c = connector(&base);
        let status = c.check_status(&frozen(&c), at()).await;
        (status, server.await.expect("server"))
    }

    #[tokio::test]
    async fn status_sends_the_signed_check() {
        let (status, request) =
            status_with(http("200 OK", "", "<response><id>ord-42</id><result>PAID</result></response>"))
                .await;
        assert_eq!(status, Ok(ProviderStatus::Paid));
        assert!(request.starts_with("POST /partner/1234/check HTTP/1.1"), "{request}");
        let form_body = request.split("\r\n\r\n").nth(1).expect("body");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(form_body).expect("form");
        let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["id", "dt", "amount", "destination", "service_id", "hash"]);
        // The check vector from signature.rs (md5sum).
        assert_eq!(pairs[5].1, "8849dfd377b7a9760b5b724f22fbfd0d");
    }

    #[tokio::test]
    async fn status_mapping() {
        let answer = |code: &str| http("200 OK", "", &format!("<r><result>{code}</result></r>"));
        assert_eq!(status_with(answer("PROCESSING")).await.0, Ok(ProviderStatus::Processing));
        assert_eq!(status_with(answer("OK")).await.0, Ok(ProviderStatus::Processing));
        assert_eq!(status_with(answer("NOT_FOUND")).await.0, Ok(ProviderStatus::NotFound));
        assert!(matches!(status_with(answer("NOT_PAID")).await.0, Ok(ProviderStatus::Failed { .. })));
        assert!(matches!(status_with(answer("ERROR")).await.0, Err(ProviderError::Refused { .. })));
        assert!(matches!(status_with(answer("HUH")).await.0, Err(ProviderError::Transient { .. })));
        assert!(matches!(
            status_with(http("503 Service Unavailable", "Retry-After: 5\r\n", "")).await.0,
            Err(ProviderError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(5)
        ));
        assert_eq!(
            status_with(http("429 Too Many Requests", "Retry-After: 1\r\n", "")).await.0,
            Err(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(1)) })
        );
    }

    #[tokio::test]
    async fn balance_check() {
        let (base, server) =
            one_shot(http("200 OK", "", "<response><balance>150000.00</balance></response>")).await;
        let c = connector(&base);
        assert_eq!(c.check_balance(&payout("150000", "IDR"), at()).await, Ok(CheckOutcome::Go));
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /partner/1234/balance HTTP/1.1"), "{request}");
        // The balance vector from signature.rs (md5sum).
        assert!(request.ends_with("hash=a97104d9e26a83699c4f160933c6ffc2"), "{request}");

        let (base, _server) =
            one_shot(http("200 OK", "", "<response><balance>10.00</balance></response>")).await;
        let outcome = connector(&base).check_balance(&payout("10.5", "USD"), at()).await;
        assert_eq!(outcome, Ok(CheckOutcome::NotNow { reason: "balance 10.00 below amount 10.50".into() }));

        let (base, _server) = one_shot(http(
            "200 OK",
            "",
            "<response><result>ERROR</result><error>bad hash</error></response>",
        ))
        .await;
        let outcome = connector(&base).check_balance(&payout("10.5", "USD"), at()).await;
        assert!(
            matches!(outcome, Err(ProviderError::Refused { ref reason }) if reason.contains("bad hash")),
            "{outcome:?}"
        );

        let (base, _server) = one_shot(http("200 OK", "", "<response></response>")).await;
        let outcome = connector(&base).check_balance(&payout("10.5", "USD"), at()).await;
        assert!(matches!(outcome, Err(ProviderError::Transient { .. })), "{outcome:?}");
    }
}
