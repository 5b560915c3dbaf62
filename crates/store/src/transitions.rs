//! Fenced writes by the engine. A state change, its audit event and the next run time commit
//! in one transaction, and only if the worker still holds the lease (fencing token matches).

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::StoreError;
use crate::queue::Lease;

/// What to do with the lease after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Keep the lease: the engine runs the next step right away (the claim counts it as a new
    /// attempt of the new state).
    Continue,
    /// Give the payout back to the queue, due at `next_run_at`.
    Release,
}

/// One engine write: a move to `to` (or a stay in the same state, e.g. a retry).
#[derive(Debug, Clone)]
pub struct Transition {
    pub from: PayoutState,
    pub to: PayoutState,
    /// When the next step is due. Ignored (NULL) for final states.
    pub next_run_at: Option<DateTime<Utc>>,
    pub after: AfterWrite,
    pub actor: String,
    pub reason: String,
    pub detail: Option<serde_json::Value>,
    /// Kept on the row for operators; cleared by a successful move.
    pub last_error: Option<String>,
    /// Set when recording the intent: our provider reference and the frozen submit request.
    pub intent: Option<(String, serde_json::Value)>,
    /// Set when the provider was asked for the payout's status in this step.
    pub status_checked: bool,
    /// The step did no work (it was woken before it was allowed to act): the attempt the claim
    /// counted is given back.
    pub not_an_attempt: bool,
}

impl Transition {
    pub fn new(from: PayoutState, to: PayoutState, actor: &str, reason: impl Into<String>) -> Self {
        Self {
            from,
            to,
            next_run_at: None,
            after: AfterWrite::Release,
            actor: actor.to_owned(),
            reason: reason.into(),
            detail: None,
            last_error: None,
            intent: None,
            status_checked: false,
            not_an_attempt: false,
        }
    }
}

/// Applies `t` if `lease` still holds. Returns [`StoreError::LeaseLost`] otherwise, and
/// [`StoreError::IllegalTransition`] for a move the state machine forbids (nothing is written).
pub async fn apply(pool: &PgPool, lease: &Lease, t: &Transition) -> Result<(), StoreError> {
    // A final state never changes, not even into itself (a "retry" of a final payout).
    if t.from.is_final() || (t.from != t.to && !t.from.can_move_to(t.to)) {
        return Err(StoreError::IllegalTransition { from: t.from, to: t.to });
    }
    let final_state = t.to.is_final();
    let next_run_at = if final_state { None } else { t.next_run_at };
    let keep = t.after == AfterWrite::Continue && !final_state;
    let moved = t.from != t.to;
    let (reference, request) = match &t.intent {
        Some((r, q)) => (Some(r.as_str()), Some(q)),
        None => (None, None),
    };

    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE payouts SET
             state = $3::payout_state,
             next_run_at = $4,
             lease_owner = CASE WHEN $5 THEN lease_owner END,
             lease_expires_at = CASE WHEN $5 THEN lease_expires_at END,
             attempt = CASE WHEN $6 THEN (CASE WHEN $5 THEN 1 ELSE 0 END)
                            WHEN $13 THEN GREATEST(attempt - 1, 0) ELSE attempt END,
             total_attempts = total_attempts + CASE WHEN $6 AND $5 THEN 1 WHEN $13 THEN -1 ELSE 0 END,
             submit_in_flight = false,
             last_error = $7,
             provider_reference = COALESCE($8, provider_reference),
             submit_request = COALESCE($9, submit_request),
             last_status_at = CASE WHEN $10 THEN now() ELSE last_status_at END,
             finalized_at = CASE WHEN $11 THEN now() ELSE finalized_at END,
             updated_at = now()
         WHERE id = $1 AND fencing_token = $2 AND state = $12::payout_state",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(t.to.as_str())
    .bind(next_run_at)
    .bind(keep)
    .bind(moved)
    .bind(t.last_error.as_deref())
    .bind(reference)
    .bind(request)
    .bind(t.status_checked)
    .bind(final_state)
    .bind(t.from.as_str())
    .bind(t.not_an_attempt && !moved)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        // Dropping the transaction rolls back; nothing was written.
        return Err(StoreError::LeaseLost(lease.payout_id));
    }
    insert_event(
        &mut tx,
        lease.payout_id,
        Some(t.from),
        t.to,
        &t.actor,
        &t.reason,
        t.detail.as_ref(),
        Some(lease.fencing_token),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Commits "a submit call is starting" before the call is made. If the worker dies during the
/// call, the next worker finds `submit_in_flight` set and treats the payout as in doubt
/// instead of sending again blindly (DESIGN rule 4).
pub async fn mark_submit_started(pool: &PgPool, lease: &Lease, actor: &str) -> Result<u32, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i32, String)> = sqlx::query_as(
        "UPDATE payouts SET submit_attempts = submit_attempts + 1, submit_in_flight = true,
                submitted_at = now(), updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state IN ('intent_recorded', 'in_doubt')
      RETURNING submit_attempts, state::text",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, state)) = row else {
        return Err(StoreError::LeaseLost(lease.payout_id));
    };
    let state: PayoutState =
        state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()))?;
    insert_event(
        &mut tx,
        lease.payout_id,
        Some(state),
        state,
        actor,
        &format!("submit attempt {attempts} started"),
        None,
        Some(lease.fencing_token),
    )
    .await?;
    tx.commit().await?;
    Ok(u32::try_from(attempts).unwrap_or(0))
}

/// Allocates our provider reference: "PO" and 18 digits, 20 characters, the most the 8B
/// partner API takes as a transaction id.
pub async fn allocate_reference(pool: &PgPool) -> Result<String, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT nextval('provider_reference_seq')").fetch_one(pool).await?;
    Ok(format!("PO{n:018}"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    payout_id: Uuid,
    from: Option<PayoutState>,
    to: PayoutState,
    actor: &str,
    reason: &str,
    detail: Option<&serde_json::Value>,
    fencing_token: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason, detail, fencing_token)
         VALUES ($1, $2::payout_state, $3::payout_state, $4, $5, $6, $7)",
    )
    .bind(payout_id)
    .bind(from.map(PayoutState::as_str))
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .bind(detail)
    .bind(fencing_token)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
