//! The review queue: payouts parked in needs_review, and the recorded ways out of it
//! (DESIGN rule 11). The provider's own verified answer resolves a parked payout through the
//! callback path ([`crate::callbacks`]); this module holds what a person does: resolve to paid
//! or failed with a reason, or retry, which asks the provider before anything else.

use payoutd_core::PayoutState;
use sqlx::PgPool;
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::insert_event;
use crate::webhooks::{self, PayoutChange, ResolvedBy};
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// What a person decided about a parked payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The provider paid it (the operator checked with the provider or the bank).
    Paid,
    /// The provider did not pay it, and never will.
    Failed,
    /// Run it again. A payout whose intent was recorded goes to in_doubt, so the provider is
    /// asked by our reference before anything could be sent (rule 4); one parked before its
    /// intent (a poison row) starts again from pending.
    Retry,
}

/// Payouts waiting for a person, oldest first.
pub async fn queue(pool: &PgPool, limit: i64) -> Result<Vec<PayoutRow>, StoreError> {
    let rows: Vec<RawPayoutRow> = sqlx::query_as(concat!(
        "SELECT ",
        payout_columns!(),
        " FROM payouts WHERE state = 'needs_review' ORDER BY parked_at NULLS FIRST, id LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(PayoutRow::try_from).collect()
}

/// Resolves a parked payout, recording who and why in the same transaction. Refused (nothing
/// written) unless the payout is in needs_review and a reason is given. The fencing token moves
/// on, so nothing that held the payout before can write it.
pub async fn resolve(
    pool: &PgPool,
    payout_id: Uuid,
    resolution: Resolution,
    actor: &str,
    reason: &str,
) -> Result<PayoutState, StoreError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(StoreError::Refused("a resolution needs a reason".to_owned()));
    }
    let mut tx = pool.begin().await?;
    let current: Option<(String, bool)> = sqlx::query_as(
        "SELECT state::text, provider_reference IS NOT NULL FROM payouts WHERE id = $1 FOR UPDATE",
    )
    .bind(payout_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, has_intent)) = current else {
        return Err(StoreError::Refused(format!("no payout {payout_id}")));
    };
    if state != PayoutState::NeedsReview.as_str() {
        return Err(StoreError::Refused(format!("payout {payout_id} is {state}, not needs_review")));
    }
    let to = match resolution {
        Resolution::Paid => PayoutState::Paid,
        Resolution::Failed => PayoutState::Failed,
        Resolution::Retry if has_intent => PayoutState::InDoubt,
        Resolution::Retry => PayoutState::Pending,
    };
    let active = to.is_active();
    sqlx::query(
        "UPDATE payouts SET state = $2::payout_state,
                next_run_at = CASE WHEN $3 THEN now() END,
                fencing_token = fencing_token + 1, lease_owner = NULL, lease_expires_at = NULL,
                attempt = 0, failed_steps = 0, not_found_answers = 0, last_error = NULL,
                finalized_at = CASE WHEN $3 THEN NULL ELSE now() END, updated_at = now()
          WHERE id = $1",
    )
    .bind(payout_id)
    .bind(to.as_str())
    .bind(active)
    .execute(&mut *tx)
    .await?;
    let text = format!("resolved from needs_review by {actor}: {reason}");
    insert_event(&mut tx, payout_id, Some(PayoutState::NeedsReview), to, actor, &text, None, None).await?;
    let change = PayoutChange::Resolved { by: ResolvedBy::Operator, to };
    webhooks::record_payout_change(&mut tx, payout_id, change).await?;
    if active {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    crate::telemetry::transition(PayoutState::NeedsReview, to, actor);
    Ok(to)
}

/// Why each of `ids` was parked: the reason of its latest event into needs_review (one query
/// for a whole page of the review queue). Payouts without such an event are left out.
pub async fn park_reasons(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (payout_id) payout_id, reason FROM payout_events
          WHERE payout_id = ANY($1) AND to_state = 'needs_review'
          ORDER BY payout_id, id DESC",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
