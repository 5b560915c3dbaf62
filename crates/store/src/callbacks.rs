//! Provider callbacks: stored as received and applied to the payout in the same transaction.
//! A callback is not a worker: it takes the row lock, and when it changes the state it bumps
//! the fencing token, so a worker still busy with that payout can no longer write it.

use payoutd_core::PayoutState;
use payoutd_providers::{ProviderStatus, VerifiedCallback};
use sqlx::PgPool;

use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::insert_event;
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// What applying a callback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackEffect {
    /// The payout moved to this final state.
    Finalized(PayoutState),
    /// A redelivery of a callback already stored: nothing changed.
    Duplicate,
    /// The payout is already final; the callback changed nothing (states only move forward).
    AlreadyFinal { state: PayoutState, conflicting: bool },
    /// The provider reports the payout as still processing: nothing to change.
    NoChange,
    /// Amount or currency differ from the payout: parked in needs_review.
    Mismatch(String),
    /// No payout carries this reference.
    UnknownReference,
}

impl CallbackEffect {
    fn outcome(&self) -> String {
        match self {
            Self::Finalized(s) => format!("applied:{s}"),
            Self::Duplicate => "duplicate_ignored".into(),
            Self::AlreadyFinal { state, conflicting } => {
                format!("ignored_final:{state}{}", if *conflicting { ":conflicting" } else { "" })
            }
            Self::NoChange => "no_change".into(),
            Self::Mismatch(_) => "mismatch:needs_review".into(),
            Self::UnknownReference => "unknown_reference".into(),
        }
    }
}

/// Stores a verified callback and applies it, in one transaction.
pub async fn apply_verified(
    pool: &PgPool,
    provider: &str,
    body: &str,
    cb: &VerifiedCallback,
) -> Result<CallbackEffect, StoreError> {
    let mut tx = pool.begin().await?;
    let stored: Option<i64> = sqlx::query_scalar(
        "INSERT INTO provider_callbacks (provider, provider_reference, verified, dedupe_key, body, outcome)
         VALUES ($1, $2, true, $3, $4, 'received')
         ON CONFLICT (provider, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(provider)
    .bind(&cb.reference)
    .bind(&cb.dedupe_key)
    .bind(body)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(callback_id) = stored else {
        sqlx::query(
            "INSERT INTO provider_callbacks (provider, provider_reference, verified, duplicate, body, outcome)
             VALUES ($1, $2, true, true, $3, 'duplicate_ignored')",
        )
        .bind(provider)
        .bind(&cb.reference)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(CallbackEffect::Duplicate);
    };

    let raw: Option<RawPayoutRow> = sqlx::query_as(concat!(
        "SELECT ",
        payout_columns!(),
        " FROM payouts WHERE provider = $1 AND provider_reference = $2 FOR UPDATE"
    ))
    .bind(provider)
    .bind(&cb.reference)
    .fetch_optional(&mut *tx)
    .await?;
    let effect = match raw {
        None => CallbackEffect::UnknownReference,
        Some(raw) => {
            let payout = PayoutRow::try_from(raw)?;
            let effect = decide(&payout, cb);
            let target = match &effect {
                CallbackEffect::Finalized(to) => {
                    Some((*to, format!("provider callback: {}", status_word(&cb.status))))
                }
                CallbackEffect::Mismatch(why) => Some((PayoutState::NeedsReview, why.clone())),
                _ => None,
            };
            if let Some((to, reason)) = target {
                sqlx::query(
                    "UPDATE payouts SET state = $2::payout_state, next_run_at = NULL, lease_owner = NULL,
                            lease_expires_at = NULL, fencing_token = fencing_token + 1,
                            finalized_at = now(), updated_at = now(), last_error = $3
                      WHERE id = $1",
                )
                .bind(payout.id)
                .bind(to.as_str())
                .bind(matches!(effect, CallbackEffect::Mismatch(_)).then_some(reason.as_str()))
                .execute(&mut *tx)
                .await?;
                let detail = serde_json::json!({ "callback_id": callback_id });
                insert_event(
                    &mut tx,
                    payout.id,
                    Some(payout.state),
                    to,
                    &format!("callback:{provider}"),
                    &reason,
                    Some(&detail),
                    None,
                )
                .await?;
            }
            sqlx::query("UPDATE provider_callbacks SET payout_id = $2 WHERE id = $1")
                .bind(callback_id)
                .bind(payout.id)
                .execute(&mut *tx)
                .await?;
            effect
        }
    };
    sqlx::query("UPDATE provider_callbacks SET outcome = $2 WHERE id = $1")
        .bind(callback_id)
        .bind(effect.outcome())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(effect)
}

fn status_word(s: &ProviderStatus) -> String {
    match s {
        ProviderStatus::Paid => "paid".into(),
        ProviderStatus::Failed { reason } => format!("failed ({reason})"),
        ProviderStatus::Processing => "processing".into(),
        ProviderStatus::NotFound => "not found".into(),
    }
}

/// The pure decision: what a verified callback does to a payout in its current state.
fn decide(payout: &PayoutRow, cb: &VerifiedCallback) -> CallbackEffect {
    let wanted = match &cb.status {
        ProviderStatus::Paid => Some(PayoutState::Paid),
        ProviderStatus::Failed { .. } => Some(PayoutState::Failed),
        ProviderStatus::Processing | ProviderStatus::NotFound => None,
    };
    if payout.state.is_final() {
        return CallbackEffect::AlreadyFinal {
            state: payout.state,
            conflicting: wanted.is_some_and(|w| w != payout.state),
        };
    }
    if cb.amount != payout.money.amount() {
        return CallbackEffect::Mismatch(format!(
            "callback amount {} differs from payout amount {}",
            cb.amount,
            payout.money.amount()
        ));
    }
    if let Some(cur) = &cb.currency
        && cur != payout.money.currency().code()
    {
        return CallbackEffect::Mismatch(format!(
            "callback currency {cur} differs from payout currency {}",
            payout.money.currency()
        ));
    }
    match wanted {
        Some(to) if payout.state.can_move_to(to) => CallbackEffect::Finalized(to),
        _ => CallbackEffect::NoChange,
    }
}

/// Stores a callback that failed verification. It changes nothing, but if it names one of our
/// unfinished payouts, that payout's status query is brought forward (the engine still keeps
/// the minimum interval between queries).
pub async fn record_unverifiable(
    pool: &PgPool,
    provider: &str,
    body: &str,
    reference: Option<&str>,
    reason: &str,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO provider_callbacks (provider, provider_reference, verified, body, outcome)
         VALUES ($1, $2, false, $3, $4)",
    )
    .bind(provider)
    .bind(reference)
    .bind(body)
    .bind(format!("unverifiable: {reason}"))
    .execute(&mut *tx)
    .await?;
    let mut scheduled = false;
    if let Some(reference) = reference {
        let hit = sqlx::query(
            "UPDATE payouts SET next_run_at = LEAST(next_run_at, now()), updated_at = now()
              WHERE provider = $1 AND provider_reference = $2 AND state IN ('submitted', 'in_doubt')",
        )
        .bind(provider)
        .bind(reference)
        .execute(&mut *tx)
        .await?;
        scheduled = hit.rows_affected() > 0;
        if scheduled {
            sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(scheduled)
}
