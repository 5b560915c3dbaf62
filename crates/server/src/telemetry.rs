//! Telemetry of the HTTP surface: a server span per request (continuing the caller's W3C trace
//! context), and the callback counters by result.
//!
//! The span names the route template, never the query string, and records no header and no
//! body: bearer tokens and callback signatures stay out of traces.

use std::sync::LazyLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry::propagation::Extractor;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How a provider callback ended, as counted by `payoutd_callbacks_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackResult {
    /// Verified, stored and taken into account (applied, or nothing left to change).
    Accepted,
    /// A redelivery of a callback already stored.
    Duplicate,
    /// Verified, but contradicting the payout's final state (paid after failed or the reverse).
    Conflicting,
    /// Not applied: bad signature, a mismatching field or an unknown reference.
    Rejected,
    /// Could not be stored (database trouble); the provider is asked to deliver it again.
    Error,
}

impl CallbackResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Conflicting => "conflicting",
            Self::Rejected => "rejected",
            Self::Error => "error",
        }
    }
}

static CALLBACKS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    payoutd_providers::telemetry::meter()
        .u64_counter("payoutd.callbacks")
        .with_description("Provider callbacks received, by provider, result and (for rejected ones) reason")
        .build()
});

static BATCH_UPLOADS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    payoutd_providers::telemetry::meter()
        .u64_counter("payoutd.batch.uploads")
        .with_description(
            "Batch uploads answered, by result: accepted, replayed, rejected (bad rows, limits), conflict, too_large, error",
        )
        .build()
});

static BATCH_ROWS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    payoutd_providers::telemetry::meter()
        .u64_counter("payoutd.batch.rows")
        .with_description("Payouts stored by accepted batch uploads")
        .build()
});

/// Counts one answered batch upload; `result` is one of a few fixed words.
pub fn count_batch_upload(result: &'static str) {
    BATCH_UPLOADS.add(1, &[KeyValue::new("result", result)]);
}

/// Counts the rows of an accepted batch.
pub fn count_batch_rows(rows: i32) {
    BATCH_ROWS.add(u64::try_from(rows).unwrap_or(0), &[]);
}

/// Counts one callback. `reason` is one of a few fixed words (never text from the sender).
pub fn count_callback(provider: &str, result: CallbackResult, reason: &'static str) {
    CALLBACKS.add(
        1,
        &[
            KeyValue::new("provider", provider.to_owned()),
            KeyValue::new("result", result.as_str()),
            KeyValue::new("reason", reason),
        ],
    );
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The request path as spans and logs may carry it. Below `/v1/callbacks/{account}` a path holds
/// credentials (8B REST's secret segment, 88Pay's capability token): only the account stays.
pub fn redacted_path(path: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = path.strip_prefix("/v1/callbacks/") else { return path.into() };
    match rest.split_once('/') {
        Some((account, _)) => format!("/v1/callbacks/{account}/[redacted]").into(),
        None => path.into(),
    }
}

/// A server span around every request, child of the caller's `traceparent` when it sent one.
pub async fn trace_request(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http request",
        otel.name = format!("{method} {}", route.as_deref().unwrap_or("(unmatched)")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref().unwrap_or(""),
        url.path = %redacted_path(request.uri().path()),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
        let _ = span.set_parent(parent);
    }
    if let Some(id) = payoutd_providers::telemetry::trace_id(&span) {
        span.record("trace_id", tracing::field::display(&id));
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::redacted_path;

    #[test]
    fn callback_paths_keep_only_the_account() {
        assert_eq!(redacted_path("/v1/callbacks/8b_partner"), "/v1/callbacks/8b_partner");
        assert_eq!(redacted_path("/v1/callbacks/rest-a/s3cret/d-1"), "/v1/callbacks/rest-a/[redacted]");
        assert_eq!(redacted_path("/v1/callbacks/pay-a/n/PO1/tok"), "/v1/callbacks/pay-a/[redacted]");
        assert_eq!(redacted_path("/v1/payouts/abc"), "/v1/payouts/abc");
    }
}
