//! HTTP plumbing shared by the connectors: building a client, sending a form, classifying
//! failures, and reading `Retry-After`.
//!
//! The classification matters for money: a connection that was never made means the request
//! provably did not reach the provider (safe to send again), while a timeout or a reset after
//! connecting leaves the outcome unknown. Error texts built here never include the URL or the
//! request body, because bodies carry signatures and some providers put credentials in URLs.
//!
//! Every call is a client span (method, URL path without query, template, status, outcome
//! class) whose `traceparent` travels with the request, and is timed and counted by outcome
//! class (see [`crate::telemetry`]).

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tracing::Instrument;

use crate::telemetry::{self, CallName, OutcomeClass};

/// Provider answers are a few hundred bytes; anything far larger is not an answer we can trust.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Builds a client whose every request (connect, send, read the answer) ends within `timeout`.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("payoutd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuildError::Client(describe(&e)))
}

/// How far a failed request got, which decides whether it may have been executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection was made: the provider never saw the request.
    Connect,
    /// The request may have been sent; no answer came in time.
    Timeout,
    /// Anything else after connecting (reset, broken answer): the request may have been sent.
    Other,
}

impl FailureKind {
    /// Whether the provider may have received (and executed) the request.
    pub fn may_have_been_sent(self) -> bool {
        !matches!(self, Self::Connect)
    }

    /// The telemetry's name for how far the request got.
    pub fn class(self) -> OutcomeClass {
        match self {
            Self::Connect => OutcomeClass::ConnectError,
            Self::Timeout => OutcomeClass::Timeout,
            Self::Other => OutcomeClass::TransportError,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "could not connect",
            Self::Timeout => "timed out",
            Self::Other => "request failed",
        })
    }
}

/// A request that got no HTTP answer. `detail` carries no URL and no body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct SendError {
    pub kind: FailureKind,
    pub detail: String,
}

impl SendError {
    fn from_reqwest(err: &reqwest::Error) -> Self {
        Self { kind: classify(err), detail: describe(err) }
    }
}

/// Classifies a reqwest error. A connect failure is checked first: even when it is a connect
/// *timeout*, nothing was sent.
pub fn classify(err: &reqwest::Error) -> FailureKind {
    if err.is_connect() {
        FailureKind::Connect
    } else if err.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Other
    }
}

/// Describes a reqwest error by its cause chain only. reqwest's own `Display` names the URL,
/// so it is deliberately not used.
pub fn describe(err: &reqwest::Error) -> String {
    let mut text = String::from(if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else if err.is_body() || err.is_decode() {
        "error reading the answer"
    } else if err.is_builder() {
        "invalid request"
    } else {
        "transport error"
    });
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// POSTs `fields` as `application/x-www-form-urlencoded` and reads the whole answer, inside a
/// client span named after `call` whose trace context goes out as `traceparent`.
pub async fn post_form(
    client: &reqwest::Client,
    call: &CallName<'_>,
    url: &str,
    fields: &[(&str, &str)],
) -> Result<HttpAnswer, SendError> {
    send(client, call, reqwest::Method::POST, url, |r| r.form(fields)).await
}

/// Sends one request (`build` adds headers and body) and reads the whole answer, inside a
/// client span named after `call` whose trace context goes out as `traceparent`. The span
/// carries the method, the URL path (never the query), the status and the outcome class.
pub async fn send(
    client: &reqwest::Client,
    call: &CallName<'_>,
    method: reqwest::Method,
    url: &str,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Result<HttpAnswer, SendError> {
    // Only the path: a query string could carry credentials with some providers.
    let parsed = reqwest::Url::parse(url).ok();
    let span = tracing::info_span!(
        "provider call",
        otel.name = format!("{method} {}", call.url_template),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method.as_str(),
        url.path = parsed.as_ref().map(|u| u.path()).unwrap_or(""),
        url.template = call.url_template,
        server.address = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or(""),
        server.port = parsed.as_ref().and_then(|u| u.port_or_known_default()).unwrap_or(0),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        payout.provider = call.provider,
        payout.account = call.account,
        provider.operation = call.operation,
        outcome = tracing::field::Empty,
    );
    let started = Instant::now();
    let request = build(client.request(method, url).headers(telemetry::propagation_headers(&span)));
    let result = read_answer(request).instrument(span.clone()).await;
    let class = match &result {
        Ok(answer) => OutcomeClass::of_status(answer.status),
        Err(e) => e.kind.class(),
    };
    if let Ok(answer) = &result {
        span.record("http.response.status_code", answer.status.as_u16());
    }
    span.record("outcome", class.as_str());
    if class != OutcomeClass::Ok {
        span.record("error.type", class.as_str());
        span.record("otel.status_code", "ERROR");
    }
    telemetry::record_call(call, class, started.elapsed().as_secs_f64());
    result
}

async fn read_answer(request: reqwest::RequestBuilder) -> Result<HttpAnswer, SendError> {
    let mut response = request.send().await.map_err(|e| SendError::from_reqwest(&e))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| SendError::from_reqwest(&e))? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(SendError {
                kind: FailureKind::Other,
                detail: format!("answer longer than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(HttpAnswer { status, retry_after, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// Reads `Retry-After` from answer headers (delay in seconds, or an HTTP date).
/// Why a bounded body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The transport failed (described without the URL).
    Transport(String),
    /// The body is longer than the bound.
    TooLong(usize),
}

/// Reads a response body of at most `max` bytes, chunk by chunk, so a huge answer is refused
/// before it is held whole. For the large reconciliation answers (registry, statement).
pub async fn bounded_body(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Transport(describe(&e)))? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLong(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

/// Parses a `Retry-After` value: delta seconds ("120") or an HTTP date
/// ("Wed, 21 Oct 2026 07:28:00 GMT"); a date in the past means "now".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn test_call() -> CallName<'static> {
        CallName { provider: "test", operation: "op", url_template: "/x", account: "acct" }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 21, 7, 28, 0).single().expect("valid date")
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after("1", now()), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 ", now()), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_http_date() {
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now()), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        assert_eq!(parse_retry_after("", now()), None);
        assert_eq!(parse_retry_after("-5", now()), None);
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now()), None);
    }

    #[test]
    fn retry_after_header_is_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("valid header value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_failure_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = build_client(Duration::from_secs(2)).expect("client");
        let url = format!("http://{addr}/partner/secret-path/payout");
        let err = post_form(&client, &test_call(), &url, &[("hash", "abc")]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Connect);
        assert!(!err.kind.may_have_been_sent());
        assert!(!err.to_string().contains("secret-path"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // Accept and hold the connection open without answering.
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(conn);
        });
        let client = build_client(Duration::from_millis(200)).expect("client");
        let err = post_form(&client, &test_call(), &format!("http://{addr}/x"), &[]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Timeout);
        assert!(err.kind.may_have_been_sent());
        server.abort();
    }
}
