//! What the connectors report about their provider calls: a client span per call (method, URL
//! path and template, HTTP status, outcome class), the call duration in seconds and the errors
//! by class, and the W3C `traceparent` of that span sent along with the request.
//!
//! Instruments come from the global meter provider, created on first use; the binary installs
//! the provider before any call is made (a process that never installs one records nothing).
//! Nothing here ever sees a request body, a signature or a secret: only the method, the path
//! (which holds the account id, not a secret) and the answer's status.

use std::sync::LazyLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::Injector;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Bucket boundaries (seconds) for provider calls and engine steps: 5 ms to 30 s. A call is
/// bounded by the request timeout (10 s by default), so the top buckets catch timeouts.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0];

/// The meter every payoutd crate records with.
pub fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("payoutd")
}

struct Instruments {
    call_duration: Histogram<f64>,
    errors: Counter<u64>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = meter();
    Instruments {
        call_duration: meter
            .f64_histogram("payoutd.provider.call.duration")
            .with_unit("s")
            .with_description(
                "Provider HTTP calls, connect to last byte, by provider, operation and outcome class",
            )
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        errors: meter
            .u64_counter("payoutd.provider.errors")
            .with_description("Provider calls that failed, by provider, operation and error class")
            .build(),
    }
});

/// One provider call, as the telemetry names it.
#[derive(Debug, Clone, Copy)]
pub struct CallName<'a> {
    /// The connector's name ("8b_partner").
    pub provider: &'static str,
    /// The provider's operation ("payout", "check", "balance").
    pub operation: &'static str,
    /// The path with its variable parts named, e.g. "/partner/{service_id}/payout".
    pub url_template: &'static str,
    /// The account the call is made for (service id, merchant id; never a credential).
    pub account: &'a str,
}

/// How a call ended, coarsely: what an SRE groups errors by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    /// A 2xx answer (its content may still say no: that is the provider's answer, not an error).
    Ok,
    /// No connection was made: the provider never saw the request.
    ConnectError,
    /// No answer in time: the request may have been executed.
    Timeout,
    /// Reset, broken or oversized answer after connecting.
    TransportError,
    /// 429: the provider asked us to slow down.
    RateLimited,
    /// Another 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// A 2xx answer whose body could not be read as the provider's format.
    Unreadable,
}

impl OutcomeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::TransportError => "transport_error",
            Self::RateLimited => "rate_limited",
            Self::ClientError => "http_4xx",
            Self::ServerError => "http_5xx",
            Self::Unreadable => "unreadable",
        }
    }

    /// The class of an HTTP status.
    pub fn of_status(status: reqwest::StatusCode) -> Self {
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Self::RateLimited
        } else if status.is_server_error() {
            Self::ServerError
        } else if status.is_client_error() || status.is_redirection() || status.is_informational() {
            Self::ClientError
        } else {
            Self::Ok
        }
    }
}

/// Records one finished call: its duration under its outcome class, and an error if it was one.
pub fn record_call(call: &CallName<'_>, class: OutcomeClass, seconds: f64) {
    let attributes = [
        KeyValue::new("provider", call.provider),
        KeyValue::new("operation", call.operation),
        KeyValue::new("outcome", class.as_str()),
    ];
    INSTRUMENTS.call_duration.record(seconds, &attributes);
    if class != OutcomeClass::Ok {
        record_error(call, class);
    }
}

/// Counts a provider error found after the HTTP exchange (e.g. an unreadable answer).
pub fn record_error(call: &CallName<'_>, class: OutcomeClass) {
    INSTRUMENTS.errors.add(
        1,
        &[
            KeyValue::new("provider", call.provider),
            KeyValue::new("operation", call.operation),
            KeyValue::new("class", class.as_str()),
        ],
    );
}

/// Writes propagation fields (`traceparent`, `tracestate`) into outgoing request headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The propagation headers of `span` (empty when no OpenTelemetry layer is installed).
pub fn propagation_headers(span: &tracing::Span) -> HeaderMap {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut headers = HeaderMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers))
    });
    headers
}

/// Makes `span` a child of the W3C `traceparent` stored with a payout (one payout, one trace),
/// and records the trace id as the span's `trace_id` field, so that every log line inside it
/// carries it. Call before the span is first entered. Without an OpenTelemetry layer, or with
/// no (or an unreadable) traceparent, the span keeps its own parent.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(traceparent) = traceparent {
        let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
            let _ = span.set_parent(parent);
        }
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", tracing::field::display(&id));
    }
}

/// The trace id of `span`, if an OpenTelemetry layer gave it a valid one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The W3C `traceparent` of `span`, if it has a valid context (to store with a payout).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut headers = propagation_headers(span);
    headers.remove("traceparent").and_then(|v| v.to_str().ok().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes_of_statuses() {
        use reqwest::StatusCode;
        assert_eq!(OutcomeClass::of_status(StatusCode::OK), OutcomeClass::Ok);
        assert_eq!(OutcomeClass::of_status(StatusCode::TOO_MANY_REQUESTS), OutcomeClass::RateLimited);
        assert_eq!(OutcomeClass::of_status(StatusCode::BAD_GATEWAY), OutcomeClass::ServerError);
        assert_eq!(OutcomeClass::of_status(StatusCode::NOT_FOUND), OutcomeClass::ClientError);
        assert_eq!(OutcomeClass::of_status(StatusCode::FOUND), OutcomeClass::ClientError);
    }
}
