//! `POST /v1/callbacks/{account}[/{path}]`: verified over the path and the exact bytes received, stored and applied
//! in one transaction, answered at once in the provider's words ("OK" / "ERROR" for 8B).
//!
//! The endpoint needs no token, so what it stores is bounded: the body is at most
//! `HttpLimits::max_callback_body_bytes` (larger is refused with 413 before this handler runs),
//! and an unverifiable body is stored cut to [`MAX_STORED_UNVERIFIABLE`] bytes.
//!
//! A callback that could not be stored is answered 503 with [`RETRY_BODY`], never with the
//! provider's refusal word: 8B reads "ERROR" as "stop sending", and the callback would be lost.
//!
//! A verified callback is applied inside a "callback receipt" span that joins the payout's own
//! trace (the context stored at enqueue) and links to the HTTP request's span; every callback
//! is counted by result (accepted, duplicate, conflicting, rejected, error).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use payoutd_providers::{CallbackVerdict, IncomingCallback};
use payoutd_store::callbacks::{self, CallbackEffect};
use payoutd_store::payouts;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{CallbackResult, count_callback};

use crate::AppState;

/// How much of an unverifiable callback is kept (anyone can send one).
pub const MAX_STORED_UNVERIFIABLE: usize = 2 * 1024;
/// How much of the reference and of the rejection reason of an unverifiable callback is kept.
const MAX_STORED_FIELD: usize = 256;
/// The answer when a callback could not be stored: not the provider's "ERROR", so it delivers
/// the callback again.
pub const RETRY_BODY: &str = "RETRY";

/// `POST /v1/callbacks/{account}`.
#[utoipa::path(post, path = "/v1/callbacks/{provider}", tag = "callbacks", operation_id = "callbacks_receive", summary = "A provider's callback",
    params(("provider" = String, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the provider's callback, verified over the exact bytes"),
    responses((status = 200, description = "stored (or a duplicate); 8B partner: OK"), (status = 400, description = "unverifiable: nothing changes, a status query is scheduled"), (status = 404, description = "unknown provider account"), (status = 413, description = "body over the callback limit"), (status = 503, description = "could not be stored; the provider retries")),
    security(()),
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    receive_at(state, provider, String::new(), headers, body).await
}

/// `POST /v1/callbacks/{account}/{*rest}`: 8B REST's `{secret}/{transactionId}`, 88Pay's
/// capability path.
#[utoipa::path(post, path = "/v1/callbacks/{provider}/{rest}", tag = "callbacks", operation_id = "callbacks_receive_with_path", summary = "A provider's callback at a capability path",
    params(("provider" = String, Path), ("rest" = String, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the provider's callback (capability URL with a path)"),
    responses((status = 200, description = "stored (or a duplicate)"), (status = 404, description = "unknown provider account or path"), (status = 503, description = "could not be stored; the provider retries")),
    security(()),
)]
pub async fn receive_with_path(
    State(state): State<AppState>,
    Path((provider, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    receive_at(state, provider, rest, headers, body).await
}

async fn receive_at(
    state: AppState,
    provider: String,
    rest: String,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(connector) = state.connectors.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider");
    };
    let text = String::from_utf8_lossy(&body);
    let name = connector.name();
    let incoming = IncomingCallback { path: &rest, headers: &headers, body: &body };
    let accepted = match connector.verify_callback(&incoming) {
        CallbackVerdict::Verified(cb) => {
            let span = receipt_span(&state, name, &cb.reference).await;
            let applied =
                callbacks::apply_verified(&state.pool, name, &text, &cb).instrument(span.clone()).await;
            let (result, reason) = match &applied {
                Ok(CallbackEffect::Duplicate) => (CallbackResult::Duplicate, ""),
                Ok(CallbackEffect::AlreadyFinal { conflicting: true, .. }) => {
                    (CallbackResult::Conflicting, "")
                }
                Ok(CallbackEffect::Mismatch(_)) => (CallbackResult::Rejected, "mismatch"),
                Ok(CallbackEffect::UnknownReference) => (CallbackResult::Rejected, "unknown_reference"),
                Ok(_) => (CallbackResult::Accepted, ""),
                Err(_) => (CallbackResult::Error, "not_stored"),
            };
            count_callback(name, result, reason);
            span.record("callback.result", result.as_str());
            if let Ok(effect) = &applied {
                span.record("callback.effect", effect_name(effect));
            }
            match applied {
                Ok(effect) => {
                    match &effect {
                        CallbackEffect::UnknownReference => {
                            tracing::warn!(%provider, reference = %cb.reference, "callback for an unknown reference");
                        }
                        CallbackEffect::Mismatch(why) => {
                            tracing::error!(%provider, reference = %cb.reference, %why, alert = true, "callback does not match what was sent; not applied, status query brought forward");
                        }
                        CallbackEffect::AlreadyFinal { state: final_state, conflicting: true } => {
                            tracing::error!(%provider, reference = %cb.reference, %final_state, alert = true, "callback contradicts the payout's final state; recorded, nothing changed");
                        }
                        _ => {
                            tracing::info!(%provider, reference = %cb.reference, ?effect, "callback applied")
                        }
                    }
                    // Stored either way; "ERROR" only for what was not taken into account.
                    effect.accepted()
                }
                Err(e) => {
                    // Not stored: a non-200 answer that is not "ERROR" makes the provider
                    // deliver it again.
                    tracing::error!(%provider, error = %e, "callback could not be stored; asking for redelivery");
                    return (StatusCode::SERVICE_UNAVAILABLE, RETRY_BODY);
                }
            }
        }
        CallbackVerdict::NotOurs { reason } => {
            // A wrong secret path segment or capability token: nothing is stored (anyone can
            // send these), and the answer does not say which part was wrong.
            tracing::warn!(%provider, %reason, "callback at an invalid URL: refused");
            count_callback(name, CallbackResult::Rejected, "not_ours");
            return (StatusCode::NOT_FOUND, "not found");
        }
        CallbackVerdict::Unverifiable { reason, reference: None, provider_id: Some(provider_id) } => {
            // Unsigned notification naming the provider's id (8B REST): never trusted for its
            // content; it brings that payout's status query forward.
            let provider_id = bounded(&provider_id, MAX_STORED_FIELD);
            let stored = bounded(&text, MAX_STORED_UNVERIFIABLE);
            tracing::info!(%provider, %reason, %provider_id, "unsigned notification: status query brought forward");
            match callbacks::record_provider_notification(&state.pool, name, &provider_id, &stored).await {
                Ok(effect) => {
                    count_callback(name, CallbackResult::Accepted, "");
                    tracing::debug!(%provider, ?effect, "notification recorded");
                    true
                }
                Err(e) => {
                    tracing::error!(%provider, error = %e, "notification could not be stored; asking for redelivery");
                    return (StatusCode::SERVICE_UNAVAILABLE, RETRY_BODY);
                }
            }
        }
        CallbackVerdict::Unverifiable { reason, reference, .. } => {
            // The reason and reference quote the sender's fields: bounded too.
            let reason = bounded(&reason, MAX_STORED_FIELD);
            let reference = reference.as_deref().map(|r| bounded(r, MAX_STORED_FIELD));
            tracing::warn!(%provider, %reason, ?reference, "unverifiable callback: changes nothing, status query brought forward");
            count_callback(name, CallbackResult::Rejected, "unverifiable");
            let stored = bounded(&text, MAX_STORED_UNVERIFIABLE);
            if let Err(e) = callbacks::record_unverifiable(
                &state.pool,
                connector.name(),
                &stored,
                reference.as_deref(),
                &reason,
            )
            .await
            {
                // Neither recorded nor has its status query been brought forward: ask again.
                tracing::error!(%provider, error = %e, "unverifiable callback could not be stored; asking for redelivery");
                return (StatusCode::SERVICE_UNAVAILABLE, RETRY_BODY);
            }
            false
        }
    };
    (StatusCode::OK, connector.callback_answer(accepted))
}

/// The effect's name only: a mismatch's text quotes the sender's fields.
fn effect_name(effect: &CallbackEffect) -> &'static str {
    match effect {
        CallbackEffect::Finalized(_) => "finalized",
        CallbackEffect::Resolved(_) => "resolved",
        CallbackEffect::Duplicate => "duplicate",
        CallbackEffect::AlreadyFinal { conflicting: true, .. } => "already_final_conflicting",
        CallbackEffect::AlreadyFinal { .. } => "already_final",
        CallbackEffect::NoChange => "no_change",
        CallbackEffect::Mismatch(_) => "mismatch",
        CallbackEffect::UnknownReference => "unknown_reference",
    }
}

/// The span a verified callback is applied in: a child of the payout's stored trace context
/// (found by the reference), linked to the HTTP request's span.
async fn receipt_span(state: &AppState, provider: &str, reference: &str) -> tracing::Span {
    let found = payouts::trace_by_reference(&state.pool, provider, reference).await.ok().flatten();
    let span = tracing::info_span!(
        "callback receipt",
        otel.kind = "consumer",
        payout.id = tracing::field::Empty,
        payout.provider = provider,
        callback.result = tracing::field::Empty,
        callback.effect = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let request = tracing::Span::current().context();
    let request_span = opentelemetry::trace::TraceContextExt::span(&request).span_context().clone();
    if let Some((id, _)) = &found {
        span.record("payout.id", tracing::field::display(id));
    }
    // Links and the parent must be set before the span starts (continue_trace starts it).
    if request_span.is_valid() {
        span.add_link(request_span);
    }
    payoutd_providers::telemetry::continue_trace(&span, found.as_ref().and_then(|(_, tp)| tp.as_deref()));
    span
}

/// `text` cut to at most `max` bytes (on a character boundary) plus a marker saying how long it
/// was; unchanged when it fits.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}...[truncated by payoutd: {} bytes received]",
        &text[..cut],
        text.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("id=1", 8), "id=1");
        let long = "é".repeat(10); // 20 bytes
        let cut = bounded(&long, 5);
        assert!(cut.starts_with("éé...[truncated by payoutd: 20 bytes received]"), "{cut}");
    }
}
