//! `POST /v1/callbacks/{provider}`: verified over the exact bytes received, stored and applied
//! in one transaction, answered at once in the provider's words ("OK" / "ERROR" for 8B).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use payoutd_providers::CallbackVerdict;
use payoutd_store::callbacks::{self, CallbackEffect};

use crate::AppState;

pub async fn receive(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(connector) = state.connectors.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider");
    };
    let text = String::from_utf8_lossy(&body);
    let accepted = match connector.verify_callback(&body) {
        CallbackVerdict::Verified(cb) => {
            match callbacks::apply_verified(&state.pool, connector.name(), &text, &cb).await {
                Ok(CallbackEffect::UnknownReference) => {
                    tracing::warn!(%provider, reference = %cb.reference, "callback for an unknown reference");
                    false
                }
                Ok(effect) => {
                    if let CallbackEffect::Mismatch(why) = &effect {
                        tracing::error!(%provider, reference = %cb.reference, %why, alert = true, "callback does not match its payout; parked in needs_review");
                    }
                    tracing::info!(%provider, reference = %cb.reference, ?effect, "callback applied");
                    true
                }
                Err(e) => {
                    // Not stored: a non-OK answer makes the provider deliver it again.
                    tracing::error!(%provider, error = %e, "callback could not be stored");
                    return (StatusCode::SERVICE_UNAVAILABLE, connector.callback_answer(false));
                }
            }
        }
        CallbackVerdict::Unverifiable { reason, reference } => {
            tracing::warn!(%provider, %reason, ?reference, "unverifiable callback: changes nothing, status query brought forward");
            if let Err(e) = callbacks::record_unverifiable(
                &state.pool,
                connector.name(),
                &text,
                reference.as_deref(),
                &reason,
            )
            .await
            {
                tracing::error!(%provider, error = %e, "unverifiable callback could not be stored");
            }
            false
        }
    };
    (StatusCode::OK, connector.callback_answer(accepted))
}
