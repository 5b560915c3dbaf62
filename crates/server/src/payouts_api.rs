//! `POST /v1/payouts` and `GET /v1/payouts/{id}`.
//!
//! A payout is found again by its Idempotency-Key (else its external_id) and by its
//! external_id: the same request under either answers 200 with the original payout and
//! `Idempotent-Replayed: true`; a different request is 409 naming the existing payout.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payoutd_store::PayoutRow;
use payoutd_store::client_limits::LimitedEnqueue;
use payoutd_store::payout_view;
use payoutd_store::payouts::{self, EnqueueResult, Event, OwnedEnqueue};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{Authenticated, SCOPE_CREATE, SCOPE_READ};
use crate::error::ApiError;
use crate::{AppState, request};

const MAX_IDEMPOTENCY_KEY: usize = 255;

#[utoipa::path(post, path = "/v1/payouts", tag = "payouts", operation_id = "payouts_create", summary = "Enqueue a payout (idempotent)",
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key with the same body replays the payout; with another body: 409")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "the payout: external_id, amount, currency, account?, destination"),
    responses((status = 200, description = "the payout, replayed (same Idempotency-Key or external_id and request)", body = serde_json::Value), (status = 201, description = "created", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "idempotency key or external_id reused with a different request"), (status = 422, description = "validation failed, naming each field"), (status = 503, description = "database unavailable; retry with the same Idempotency-Key")),
    security(("bearer" = ["payouts.create"])),
)]
pub async fn create(
    State(state): State<AppState>,
    auth: Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_CREATE)?;
    let names = state.connectors.names();
    let payout = request::parse(&body, &names)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => format!("external_id:{}", payout.external_id),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            format!("key:{key}")
        }
    };
    // One payout, one trace: the caller's trace context when it sent one, else this request's
    // own span (when a tracer is installed). Every later span of the payout is its child.
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| valid_traceparent(t))
        .map(str::to_owned)
        .or_else(|| payoutd_providers::telemetry::traceparent(&tracing::Span::current()));
    let connector = state.connectors.get(&payout.provider).ok_or(ApiError::NotFound)?;
    let account = connector.account();
    let hash = request::canonical_hash(&payout);
    // Enqueued under the client's limits, if it has any (checked in the insert's transaction).
    // Stored in the next group commit, and answered only after it.
    let limited = state
        .enqueues
        .enqueue(OwnedEnqueue {
            client_id: caller.client_id.clone(),
            idempotency_key,
            request_hash: hash.to_vec(),
            account: account.to_string(),
            payout,
            traceparent,
        })
        .await?;
    let result = match limited {
        LimitedEnqueue::Done(result) => *result,
        LimitedEnqueue::OverLimit(violation) => return Ok(crate::operator_api::limit_exceeded(&violation)),
    };
    match result {
        EnqueueResult::Created(row) => {
            Ok((StatusCode::CREATED, Json(payout_json(&row, None))).into_response())
        }
        EnqueueResult::Replayed(row) => {
            let mut response = (StatusCode::OK, Json(payout_json(&row, None))).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        EnqueueResult::Conflict { existing_id } => Err(ApiError::IdempotencyConflict { existing_id }),
        EnqueueResult::ExternalIdConflict { existing_id } => {
            Err(ApiError::ExternalIdConflict { existing_id })
        }
    }
}

#[utoipa::path(get, path = "/v1/payouts/{id}", tag = "payouts", operation_id = "payouts_show", summary = "A payout of the caller's client",
    params(("id" = String, Path)),
    responses((status = 200, description = "the payout with its timeline", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["payouts.read"])),
)]
pub async fn show(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = auth.require(SCOPE_READ)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let row = payouts::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    // A client sees only its own payouts; someone else's is indistinguishable from none.
    if row.client_id != caller.client_id {
        return Err(ApiError::NotFound);
    }
    let events = payouts::timeline(&state.pool, id).await?;
    Ok(Json(payout_json(&row, Some(&events))))
}

/// W3C trace context: `00-<32 hex>-<16 hex>-<2 hex>`.
fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The client's view of a payout (the same object webhook events carry, see
/// [`payoutd_store::payout_view`]), with its timeline when `events` is given. The account
/// number is masked: the timeline is for support staff too.
pub fn payout_json(row: &PayoutRow, events: Option<&[Event]>) -> Value {
    let mut v = payout_view::payout_json(row);
    if let Some(events) = events {
        v["events"] = json!(events);
    }
    v
}

#[cfg(test)]
mod tests {
    use payoutd_store::payout_view::mask;

    use super::*;

    #[test]
    fn traceparent_shape() {
        assert!(valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-xyz-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent(""));
    }

    #[test]
    fn masking_keeps_the_last_four() {
        assert_eq!(mask("1234567890"), "******7890");
        assert_eq!(mask("12"), "12");
    }
}
