//! Fenced writes by the engine. A state change, its audit event and the next run time commit
//! in one transaction, and only if the worker still holds the lease (fencing token matches).
//!
//! Every time that decides when a payout may run again, or whether the provider may be asked
//! again, is computed here on the database's clock (`now()`), never on the worker's: a worker
//! whose clock runs ahead must not poll early (DESIGN rule 7).

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::queue::Lease;
use crate::webhooks::{self, PayoutChange};
use crate::{PayoutRow, StoreError};

/// What to do with the lease after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Keep the lease: the engine runs the next step right away (the claim counts it as a new
    /// attempt of the new state).
    Continue,
    /// Give the payout back to the queue, due at its next run time.
    Release,
}

/// When the next step of a payout is due, on the database's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextRun {
    Now,
    /// `now()` plus this delay.
    After(Duration),
    /// No sooner than `interval` after the provider may last have received a request of ours
    /// (`provider_contact_bound`), and no sooner than `after` from now.
    StatusDue {
        interval: Duration,
        after: Duration,
    },
    /// An absolute time that came from the database (e.g. a due time it computed).
    At(DateTime<Utc>),
}

/// One engine write: a move to `to` (or a stay in the same state, e.g. a retry).
#[derive(Debug, Clone)]
pub struct Transition {
    pub from: PayoutState,
    pub to: PayoutState,
    /// When the next step is due. Ignored for final and parked states (they are not scheduled).
    pub next_run: NextRun,
    pub after: AfterWrite,
    pub actor: String,
    pub reason: String,
    pub detail: Option<serde_json::Value>,
    /// Kept on the row for operators; cleared by a successful move.
    pub last_error: Option<String>,
    /// Set when recording the intent: our provider reference and the frozen submit request.
    pub intent: Option<(String, serde_json::Value)>,
    /// The step did no work (it was woken before it was allowed to act): the attempt the claim
    /// counted is given back.
    pub not_an_attempt: bool,
    /// The step made a provider call that has returned (answered, refused or timed out): the
    /// provider cannot receive that request after now, so `provider_contact_bound` becomes now.
    pub provider_answered: bool,
    /// The provider's own id of the payout, when an answer told it (8B REST's disbursement id).
    pub provider_payout_id: Option<String>,
    /// States passed through on the way to `to`, each with the reason of its event: steps that
    /// run back to back (check passed, intent recorded) commit once.
    pub via: Vec<(PayoutState, String)>,
    /// This write also commits "submit attempt N started" (see [`mark_submit_started`]): the
    /// payout must end in intent_recorded, and the caller makes the submit call once it is
    /// written. A write that only starts a submit records just that event.
    pub submit_start: Option<SubmitStart>,
    /// What may hold this write back (nothing is written then, and the caller learns why).
    pub hold_check: HoldCheck,
}

/// The settings a "submit started" write needs: the lease is extended to cover the call, and
/// `provider_contact_bound` moves to the latest time the provider can receive the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitStart {
    pub lease: Duration,
    pub request_timeout: Duration,
}

/// Holds on new money movement a write checks in its own statement, so that no read before it
/// is needed and no pause committed just before it is missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HoldCheck {
    #[default]
    None,
    /// An open restore mark (nothing is submitted until the restore check has run).
    RestoreMark,
    /// An open restore mark, or a pause of the payout's account or of all accounts (new
    /// intents wait).
    RestoreMarkOrPause,
}

impl Transition {
    pub fn new(from: PayoutState, to: PayoutState, actor: &str, reason: impl Into<String>) -> Self {
        Self {
            from,
            to,
            next_run: NextRun::Now,
            after: AfterWrite::Release,
            actor: actor.to_owned(),
            reason: reason.into(),
            detail: None,
            last_error: None,
            intent: None,
            not_an_attempt: false,
            provider_answered: false,
            provider_payout_id: None,
            via: Vec::new(),
            submit_start: None,
            hold_check: HoldCheck::None,
        }
    }

    /// Every state move this transition makes, in order, with its event's reason: the states
    /// passed through, then `to` (left out when the write only starts a submit).
    pub fn moves(&self) -> Vec<(PayoutState, PayoutState, &str)> {
        let mut moves = Vec::with_capacity(self.via.len() + 1);
        let mut at = self.from;
        for (state, reason) in &self.via {
            moves.push((at, *state, reason.as_str()));
            at = *state;
        }
        if !(self.submit_start.is_some() && self.via.is_empty() && self.from == self.to) {
            moves.push((at, self.to, self.reason.as_str()));
        }
        moves
    }

    /// Whether the state machine allows this write: an active payout, every move allowed, and
    /// a submit started only from intent_recorded. A final state never changes, not even into
    /// itself (a "retry" of a final payout); a parked one changes only by a recorded
    /// resolution, which is not an engine step.
    pub fn is_legal(&self) -> bool {
        let mut at = self.from;
        for (state, _) in &self.via {
            if !at.is_active() || !at.can_move_to(*state) {
                return false;
            }
            at = *state;
        }
        at.is_active()
            && (at == self.to || at.can_move_to(self.to))
            && (self.submit_start.is_none() || self.to == PayoutState::IntentRecorded)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The binds that express a [`NextRun`] in SQL: (delay secs, status interval secs, absolute).
pub(crate) fn next_run_binds(next: NextRun) -> (Option<f64>, Option<f64>, Option<DateTime<Utc>>) {
    match next {
        NextRun::Now => (Some(0.0), None, None),
        NextRun::After(d) => (Some(secs(d)), None, None),
        NextRun::StatusDue { interval, after } => (Some(secs(after)), Some(secs(interval)), None),
        NextRun::At(at) => (None, None, Some(at)),
    }
}

/// Applies `t` if `lease` still holds. Returns [`StoreError::LeaseLost`] otherwise, and
/// [`StoreError::IllegalTransition`] for a move the state machine forbids (nothing is written).
pub async fn apply(pool: &PgPool, lease: &Lease, t: &Transition) -> Result<(), StoreError> {
    apply_and_read(pool, lease, t).await.map(drop)
}

/// [`apply`], and the payout as this write left it (read by the same statement, so a step
/// that keeps the lease needs no second round trip to see its payout). `None`: written, but
/// the row does not decode.
///
/// A batch of one: the engine's own writes go through its group commit, whose handle opens the
/// "transition write" span of each payout.
pub async fn apply_and_read(
    pool: &PgPool,
    lease: &Lease,
    t: &Transition,
) -> Result<Option<PayoutRow>, StoreError> {
    let mut written = crate::transition_batch::apply_batch(pool, &[(lease, t)]).await?;
    written.pop().unwrap_or(Err(StoreError::LeaseLost(lease.payout_id)))
}

/// The resubmit rule in SQL, on the database's clock: enough NOT_FOUND answers since the last
/// submit started, and long enough after it. Binds `$3` = [`ResubmitGate::not_found_answers`],
/// `$4` = [`ResubmitGate::since_last_submit`] in seconds. One text for every statement that
/// checks the rule, so that counting and sending can never disagree. A macro, so that statements
/// stay `&'static str`.
macro_rules! resubmit_gate_holds {
    () => {
        "(not_found_answers >= $3
          AND (submitted_at IS NULL OR submitted_at + make_interval(secs => $4) <= now()))"
    };
}

/// The conditions under which an in-doubt payout may be sent again (DESIGN rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResubmitGate {
    /// NOT_FOUND answers needed since the last submit started (each one interval apart, as
    /// every status query is).
    pub not_found_answers: u32,
    /// The least time since the last submit started: request timeout + lease + margin, after
    /// which a stalled earlier request can no longer arrive.
    pub since_last_submit: Duration,
}

/// Commits "a submit call is starting" before the call is made, and re-verifies the lease on
/// the way: the write succeeds only while this worker holds an unexpired lease, which it
/// extends by `lease` so that it covers the call. `provider_contact_bound` moves to now +
/// `request_timeout`, the latest the provider can receive this request. If the worker dies
/// during the call, the next worker finds `submit_in_flight` set and treats the payout as in doubt instead of sending
/// again blindly. A resubmit (state in_doubt) is refused unless `gate` holds, on the database's
/// clock.
#[tracing::instrument(
    name = "submit started write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", payout.id = %lease.payout_id, payout.fencing_token = lease.fencing_token)
)]
pub async fn mark_submit_started(
    pool: &PgPool,
    lease: &Lease,
    actor: &str,
    lease_len: Duration,
    gate: ResubmitGate,
    request_timeout: Duration,
) -> Result<u32, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i32, String)> = sqlx::query_as(concat!(
        "UPDATE payouts SET submit_attempts = submit_attempts + 1, submit_in_flight = true,
                submitted_at = now(), not_found_answers = 0,
                provider_contact_bound = GREATEST(provider_contact_bound, now() + make_interval(secs => $6)),
                lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => $5)),
                updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL AND lease_expires_at > now()
            AND NOT EXISTS (SELECT 1 FROM restore_marks WHERE cleared_at IS NULL)
            AND (state = 'intent_recorded' OR (state = 'in_doubt' AND ",
        resubmit_gate_holds!(),
        "))
      RETURNING submit_attempts, state::text"
    ))
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(i32::try_from(gate.not_found_answers).unwrap_or(i32::MAX))
    .bind(secs(gate.since_last_submit))
    .bind(secs(lease_len))
    .bind(secs(request_timeout))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, state)) = row else {
        drop(tx);
        return Err(why_refused(pool, lease, "submit").await);
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

/// Tells a lost lease from a restore mark and from a refused precondition after a guarded
/// write matched no row.
async fn why_refused(pool: &PgPool, lease: &Lease, what: &str) -> StoreError {
    let held: Result<Option<(bool, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT fencing_token = $2 AND lease_owner IS NOT NULL AND lease_expires_at > now(),
                EXISTS (SELECT 1 FROM restore_marks WHERE cleared_at IS NULL)
           FROM payouts WHERE id = $1",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .fetch_optional(pool)
    .await;
    match held {
        Ok(Some((true, true))) => match crate::restore::open_mark(pool).await {
            Ok(Some(mark)) => {
                StoreError::Held(crate::restore::hold_reason(mark.backup_taken_at, &mark.marked_by))
            }
            Ok(None) => {
                StoreError::Refused(format!("{what} of payout {} refused: try again", lease.payout_id))
            }
            Err(e) => e,
        },
        Ok(Some((true, false))) => StoreError::Refused(format!(
            "{what} of payout {} refused: its preconditions do not hold on the database clock",
            lease.payout_id
        )),
        Ok(_) => StoreError::LeaseLost(lease.payout_id),
        Err(e) => StoreError::Database(e),
    }
}

/// Whether a status query may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusStart {
    /// "Status query started" is committed; make the call.
    Started,
    /// Too soon: the earliest allowed time, on the database's clock.
    NotBefore(DateTime<Utc>),
}

/// Commits "a status query is starting" before the call (DESIGN rule 7), so a worker that dies
/// after asking cannot hide the query: `provider_contact_bound` moves to now + `request_timeout`
/// and the next query waits a full interval from there. Allowed only one interval after the
/// provider may last have received a request of ours, on the database's clock, and only while
/// this worker holds an unexpired lease (extended by `lease_len`).
#[tracing::instrument(
    name = "status query started write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", payout.id = %lease.payout_id, payout.fencing_token = lease.fencing_token)
)]
pub async fn mark_status_started(
    pool: &PgPool,
    lease: &Lease,
    interval: Duration,
    lease_len: Duration,
    request_timeout: Duration,
) -> Result<StatusStart, StoreError> {
    let started: Option<i32> = sqlx::query_scalar(
        "UPDATE payouts SET last_status_at = now(), status_queries = status_queries + 1,
                provider_contact_bound =
                    GREATEST(provider_contact_bound, now() + make_interval(secs => $5)),
                lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => $4)),
                updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL AND lease_expires_at > now()
            AND COALESCE(provider_contact_bound + make_interval(secs => $3), '-infinity') <= now()
      RETURNING status_queries",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(secs(interval))
    .bind(secs(lease_len))
    .bind(secs(request_timeout))
    .fetch_optional(pool)
    .await?;
    if started.is_some() {
        return Ok(StatusStart::Started);
    }
    let due: Option<(bool, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT fencing_token = $2 AND lease_owner IS NOT NULL AND lease_expires_at > now(),
                provider_contact_bound + make_interval(secs => $3)
           FROM payouts WHERE id = $1",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(secs(interval))
    .fetch_optional(pool)
    .await?;
    match due {
        Some((true, Some(at))) => Ok(StatusStart::NotBefore(at)),
        _ => Err(StoreError::LeaseLost(lease.payout_id)),
    }
}

/// NOT_FOUND answers so far, and whether a resubmit is allowed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFoundTally {
    pub answers: u32,
    pub resubmit_allowed: bool,
}

/// Counts one NOT_FOUND answer (since the last submit started) and says, on the database's
/// clock, whether `gate` now allows a resubmit. The status call has returned, so
/// `provider_contact_bound` becomes now.
#[tracing::instrument(
    name = "not found write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", payout.id = %lease.payout_id, payout.fencing_token = lease.fencing_token)
)]
pub async fn record_not_found(
    pool: &PgPool,
    lease: &Lease,
    gate: ResubmitGate,
) -> Result<NotFoundTally, StoreError> {
    let row: Option<(i32, bool)> = sqlx::query_as(concat!(
        "UPDATE payouts SET not_found_answers = not_found_answers + 1, provider_contact_bound = now(),
                updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL
      RETURNING not_found_answers, ",
        resubmit_gate_holds!()
    ))
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(i32::try_from(gate.not_found_answers).unwrap_or(i32::MAX))
    .bind(secs(gate.since_last_submit))
    .fetch_optional(pool)
    .await?;
    let (answers, resubmit_allowed) = row.ok_or(StoreError::LeaseLost(lease.payout_id))?;
    Ok(NotFoundTally { answers: u32::try_from(answers).unwrap_or(0), resubmit_allowed })
}

/// What happened to a payout whose step failed for a reason retrying cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepFailure {
    /// Counted; retried after the given delay.
    Retried { failed_steps: u32 },
    /// The bound was reached: parked in needs_review.
    Parked { failed_steps: u32 },
}

/// Records a failed step of a poison row (unknown provider, missing intent, a row that does
/// not decode) and gives the payout back: retried after `retry_in`, or parked in needs_review
/// once `max_failed_steps` steps in a row have failed (DESIGN rule 13). Leaves
/// `submit_in_flight` alone: if a submit may have happened, whoever resolves the payout must
/// still see it.
#[tracing::instrument(
    name = "step failure write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", payout.id = %lease.payout_id, payout.fencing_token = lease.fencing_token)
)]
pub async fn record_step_failure(
    pool: &PgPool,
    lease: &Lease,
    actor: &str,
    reason: &str,
    max_failed_steps: u32,
    retry_in: Duration,
) -> Result<StepFailure, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, i32)> = sqlx::query_as(
        "SELECT state::text, failed_steps + 1 FROM payouts
          WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL
            AND state NOT IN ('paid', 'failed', 'cancelled', 'needs_review')
          FOR UPDATE",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, failed)) = row else {
        return Err(StoreError::LeaseLost(lease.payout_id));
    };
    let state: PayoutState =
        state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()))?;
    let failed_steps = u32::try_from(failed).unwrap_or(0);
    let park = failed_steps >= max_failed_steps;
    let to = if park { PayoutState::NeedsReview } else { state };
    sqlx::query(
        "UPDATE payouts SET failed_steps = $2, last_error = $3, state = $4::payout_state,
                next_run_at = CASE WHEN $5 THEN NULL ELSE now() + make_interval(secs => $6) END,
                parked_at = CASE WHEN $5 THEN now() ELSE parked_at END,
                attempt = 0, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(lease.payout_id)
    .bind(failed)
    .bind(reason)
    .bind(to.as_str())
    .bind(park)
    .bind(secs(retry_in))
    .execute(&mut *tx)
    .await?;
    let text = if park {
        format!("parked after {failed_steps} failed steps in a row: {reason}")
    } else {
        format!("step failed ({failed_steps} of {max_failed_steps} before review): {reason}")
    };
    insert_event(&mut tx, lease.payout_id, Some(state), to, actor, &text, None, Some(lease.fencing_token))
        .await?;
    if park {
        webhooks::record_payout_change(&mut tx, lease.payout_id, PayoutChange::Entered(to)).await?;
    }
    tx.commit().await?;
    crate::telemetry::transition(state, to, actor);
    Ok(if park { StepFailure::Parked { failed_steps } } else { StepFailure::Retried { failed_steps } })
}

/// Our provider reference for the sequence value `n`: "PO" and 18 digits, 20 characters, the
/// most the 8B partner API takes as a transaction id.
pub fn reference(n: i64) -> String {
    format!("PO{n:018}")
}

/// Reserves a block of reference numbers: `(first, count)`, the values `first .. first +
/// count`. The sequence's increment is the block size (see the reference-blocks migration), so
/// no other call, in this process or another, ever gets a value of the block.
pub async fn allocate_reference_block(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    let (first, count): (i64, i64) = sqlx::query_as(
        "SELECT nextval('provider_reference_seq'),
                (SELECT increment_by FROM pg_sequences
                  WHERE schemaname = current_schema() AND sequencename = 'provider_reference_seq')",
    )
    .fetch_one(pool)
    .await?;
    Ok((first, count.max(1)))
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
