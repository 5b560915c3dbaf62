//! What each state's step does. A step makes at most the provider calls its state needs and
//! returns the [`Transition`] to write; the worker writes it under the lease's fencing token.
//!
//! | state           | step                                                                     |
//! |-----------------|--------------------------------------------------------------------------|
//! | pending         | check: can this payout go (8B partner: balance >= amount); when it can,   |
//! |                 | straight on as below, the check recorded in the same write               |
//! | checked         | intent: allocate our reference, freeze the exact submit request, and     |
//! |                 | commit it together with "submit attempt 1 started" (one write, checked   |
//! |                 | against holds in its own statement), then make the submit call. Waits   |
//! |                 | here, not an attempt, while an operator pauses its account or the        |
//! |                 | database is marked restored (see `payoutd_store::restore`)               |
//! | intent_recorded | submit, after committing "submit started" (a crash mid-call = in doubt);  |
//! |                 | no submit or resubmit while the database is marked restored             |
//! | in_doubt        | status query by our reference FIRST; resubmit only after NOT_FOUND        |
//! |                 | answers one interval apart, long after the last submit started            |
//! |                 | (providers without a lookup by our reference: see [`StatusLookup`])       |
//! | submitted       | status poll, at most once per interval, until final or max_await          |
//!
//! How an outcome is learnt depends on the provider ([`Connector::status_lookup`]):
//! - by our reference (8B partner): as above;
//! - by the provider's id (8B REST): the submit answer carries the id and polling uses it. If
//!   that answer was lost, the payout waits for a webhook naming an id no payout carries, asks
//!   the provider about that id (an authenticated call) and adopts it when the answer carries
//!   our reference, amount and currency. Never a resubmission; parked after `max_await`;
//! - none (88Pay): only the webhook at the payout's capability URL finishes it; parked after
//!   `max_await` for reconciliation, never resubmitted.
//!
//! Every provider call is preceded by a committed, fenced write that re-verifies the lease on
//! the database ("submit started", "status query started"), and every due time is computed on
//! the database's clock. The engine's writes go through the worker's group commit
//! ([`TransitionWriter`]): many payouts per commit, each fenced by its own lease.

use std::time::Duration;

use payoutd_core::{AnswerEffect, PayoutState, RetryPolicy, effect_of_answer};
use payoutd_providers::{
    CheckOutcome, Connector, FrozenRequest, PayoutForProvider, ProviderError, ProviderStatus, StatusLookup,
    SubmitOutcome,
};
use payoutd_store::queue::Lease;
use payoutd_store::transitions::{
    self, AfterWrite, HoldCheck, NextRun, ResubmitGate, StatusStart, SubmitStart, Transition,
};
use payoutd_store::{PayoutRow, PgPool, StoreError};
use payoutd_store::{account_pauses, provider_notifications};

use crate::rate_limit::RateLimiter;
use crate::references::References;
use crate::transition_writer::TransitionWriter;
use crate::{EngineConfig, EngineError};

use PayoutState::*;

/// What a step needs besides the payout.
pub struct StepContext<'a> {
    pub pool: &'a PgPool,
    pub config: &'a EngineConfig,
    pub connector: &'a dyn Connector,
    /// "worker:<id>", written into events.
    pub actor: &'a str,
    /// This worker's share of the providers' call budgets.
    pub limiter: &'a RateLimiter,
    /// This worker's block of provider references.
    pub references: &'a References,
    /// Group commit of this worker's writes (the intent and "submit started" go through it).
    pub writer: &'a TransitionWriter,
}

/// Runs the step of `row`'s current state.
pub async fn run(ctx: &StepContext<'_>, row: &PayoutRow, lease: &Lease) -> Result<Transition, EngineError> {
    match row.state {
        Pending => check(ctx, row, lease).await,
        Checked => intent_and_submit(ctx, row, lease).await,
        IntentRecorded => submit(ctx, row, lease).await,
        InDoubt => resolve_in_doubt(ctx, row, lease).await,
        Submitted => poll_status(ctx, row, lease).await,
        // Final and parked payouts are never scheduled (a CHECK constraint guarantees it); a
        // claim of one means a bug, and writing nothing is the safe answer.
        Paid | Failed | Cancelled | NeedsReview => {
            Err(EngineError::NotActive { payout: row.id, state: row.state })
        }
    }
}

// ---- check -------------------------------------------------------------------------------

async fn check(ctx: &StepContext<'_>, row: &PayoutRow, lease: &Lease) -> Result<Transition, EngineError> {
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, NextRun::After(wait), "waiting for the provider's rate limit"));
    }
    let payout = PayoutForProvider { money: row.money, destination: row.destination.clone() };
    let policy = &ctx.config.check_retry;
    match ctx.connector.check(&payout).await {
        // Straight on: the check, the intent and "submit started" commit as one write.
        Ok(CheckOutcome::Go) => intent_and_submit(ctx, row, lease).await,
        Ok(CheckOutcome::NotNow { reason }) if policy.exhausted(row.attempt) => Ok(move_to(
            ctx,
            row,
            Failed,
            format!("check did not pass after {} attempts: {reason}; nothing was sent", row.attempt),
        )),
        Ok(CheckOutcome::NotNow { reason }) => Ok(retry(ctx, row, policy, None, format!("check: {reason}"))),
        Err(ProviderError::NoCredentials { reason }) => {
            Ok(credentials_wait(ctx, row, NextRun::After(credentials_delay(ctx)), &reason))
        }
        Err(e) => {
            let retry_after = slow_down_if_asked(ctx, &e).await?;
            if policy.exhausted(row.attempt) {
                Ok(move_to(
                    ctx,
                    row,
                    Failed,
                    format!("check failed {} times: {e}; nothing was sent", row.attempt),
                ))
            } else {
                Ok(retry(ctx, row, policy, retry_after, format!("check: {e}")))
            }
        }
    }
}

// ---- intent ----------------------------------------------------------------------------

/// Records the intent (our reference, the exact submit request) and, when the provider's
/// budget allows, "submit attempt 1 started" in the same commit, then makes the submit call.
/// From pending (the check just passed) the same write also records the check. The write
/// checks the holds itself: while an operator pauses the account (or all of them), or the
/// database is marked restored, nothing is written and the payout waits in `checked`, not an
/// attempt. Resuming wakes it at once; the recheck (growing with the hold's age, bounded)
/// only covers a resume that raced this step.
async fn intent_and_submit(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    let wait = permit(ctx).await?;
    if let Some(wait) = wait {
        return Ok(deferred_before_intent(
            ctx,
            row,
            NextRun::After(wait),
            "waiting for the provider's rate limit",
        ));
    }
    let reference = ctx.references.next(ctx.pool).await?;
    let payout = PayoutForProvider { money: row.money, destination: row.destination.clone() };
    let frozen = ctx.connector.freeze_submit(&payout, &reference, ctx.config.clock.now());
    let body = serde_json::to_value(&frozen).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut intent =
        move_to(ctx, row, IntentRecorded, format!("intent recorded under reference {reference}"));
    if row.state == Pending {
        intent.via.push((Checked, "check passed".to_owned()));
    }
    intent.intent = Some((reference, body));
    intent.hold_check = HoldCheck::RestoreMarkOrPause;
    intent.submit_start = Some(submit_start(ctx));
    let written = match ctx.writer.write(lease, intent.continue_now()).await {
        Ok(Some(written)) => written,
        Ok(None) => return Err(StoreError::Corrupt(format!("payout {} does not decode", row.id)).into()),
        Err(StoreError::Held(why)) => return held_before_intent(ctx, row, &why).await,
        // A hold lifted between the write and the look: try again at once.
        Err(StoreError::Refused(why)) => return Ok(not_yet(ctx, row, NextRun::Now, &why)),
        Err(e) => return Err(e.into()),
    };
    call_submit(ctx, &written, &frozen, written.submit_attempts).await
}

/// What a step writes when a hold stopped the intent.
async fn held_before_intent(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    why: &str,
) -> Result<Transition, EngineError> {
    let held_for = account_pauses::intent_hold(ctx.pool, ctx.connector.name())
        .await?
        .map(|h| h.held_for)
        .unwrap_or_default();
    Ok(deferred_before_intent(ctx, row, NextRun::After(pause_recheck(ctx, held_for)), why))
}

/// The intent may not be written yet: the payout waits in `checked`, not an attempt. From
/// pending, the check that just passed is recorded on the way.
fn deferred_before_intent(ctx: &StepContext<'_>, row: &PayoutRow, at: NextRun, why: &str) -> Transition {
    let mut t = not_yet(ctx, row, at, why);
    if row.state == Pending {
        t.via.push((Checked, "check passed".to_owned()));
        t.to = Checked;
    }
    t
}

fn submit_start(ctx: &StepContext<'_>) -> SubmitStart {
    SubmitStart { lease: ctx.config.lease, request_timeout: ctx.connector.request_timeout() }
}

/// How long a payout held back for `held_for` waits before it looks again: growing with the
/// hold's age, bounded, so a long hold writes few deferral events. Lifting a hold wakes the
/// waiting payouts at once; the recheck only covers a lift that raced the step.
fn pause_recheck(ctx: &StepContext<'_>, held_for: Duration) -> Duration {
    held_for.min(ctx.config.pause_recheck_max).max(ctx.config.pause_recheck_min)
}

// ---- submit ------------------------------------------------------------------------------

async fn submit(ctx: &StepContext<'_>, row: &PayoutRow, lease: &Lease) -> Result<Transition, EngineError> {
    if row.submit_in_flight {
        return Ok(move_to(
            ctx,
            row,
            InDoubt,
            format!(
                "submit attempt {} started but its outcome was never recorded (the worker stopped mid-call); \
                 asking the provider before anything else",
                row.submit_attempts
            ),
        )
        .at(status_due(ctx, Duration::ZERO)));
    }
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, NextRun::After(wait), "waiting for the provider's rate limit"));
    }
    send_submit(ctx, row, lease).await
}

/// Commits "submit started" (re-verifying the lease, and for a resubmit the resubmit rule, on
/// the database), makes the call, and classifies its outcome.
async fn send_submit(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    let frozen = frozen(row)?;
    let started = if row.state == InDoubt {
        transitions::mark_submit_started(
            ctx.pool,
            lease,
            ctx.actor,
            ctx.config.lease,
            resubmit_gate(ctx),
            ctx.connector.request_timeout(),
        )
        .await
    } else {
        let mut start = stay(ctx, row, "submit started");
        start.submit_start = Some(submit_start(ctx));
        start.hold_check = HoldCheck::RestoreMark;
        ctx.writer.write(lease, start.continue_now()).await.and_then(|written| {
            written
                .map(|w| w.submit_attempts)
                .ok_or_else(|| StoreError::Corrupt(format!("payout {} does not decode", row.id)))
        })
    };
    let attempt = match started {
        Ok(attempt) => attempt,
        // A restored database may have forgotten submits made after its backup: nothing is sent
        // until the restore check has compared the open payouts with the provider's registry
        // (checked by the "submit started" write itself). Clearing the mark wakes the payout.
        Err(StoreError::Held(why)) => {
            return Ok(not_yet(ctx, row, NextRun::After(ctx.config.pause_recheck_max), &why));
        }
        Err(StoreError::Refused(why)) if row.state == InDoubt => {
            return Ok(stay(ctx, row, format!("resubmit not allowed yet: {why}"))
                .at(status_due(ctx, Duration::ZERO)));
        }
        // A hold lifted between the write and the look: try again at once.
        Err(StoreError::Refused(why)) => return Ok(not_yet(ctx, row, NextRun::Now, &why)),
        Err(e) => return Err(e.into()),
    };
    call_submit(ctx, row, &frozen, attempt).await
}

/// Makes the submit call whose start is committed, and classifies its outcome. `row` is the
/// payout as the start left it (intent_recorded, or in_doubt for a resubmit).
async fn call_submit(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    frozen: &FrozenRequest,
    attempt: u32,
) -> Result<Transition, EngineError> {
    let resubmit = row.state == InDoubt;
    // The one call that moves money: its start is on record, so say so in the log too.
    tracing::info!(attempt, resubmit, reference = ?row.provider_reference, "submit call starting");
    let outcome = ctx.connector.submit(frozen).await;
    Ok(answered(match outcome {
        SubmitOutcome::Accepted { provider_id } => {
            let mut t = move_to(ctx, row, Submitted, format!("provider accepted submit attempt {attempt}"))
                .at(first_await(ctx));
            t.provider_payout_id = provider_id;
            t
        }
        SubmitOutcome::Paid { provider_id } => {
            let mut t = move_to(ctx, row, Paid, "provider answered PAID to the submit");
            t.provider_payout_id = provider_id;
            t
        }
        SubmitOutcome::Rejected { reason } if resubmit => {
            // The first submit's fate is unknown: an error now may mean "that id exists". Never
            // fail an in-doubt payout automatically (DESIGN rule 4).
            park(ctx, row, format!("resubmit attempt {attempt} of an in-doubt payout was answered: {reason}"))
        }
        SubmitOutcome::Rejected { reason } => {
            move_to(ctx, row, Failed, format!("provider rejected the payout: {reason}"))
        }
        SubmitOutcome::NotSent { reason, retry_after } => {
            let retry_after = capped(ctx, retry_after);
            if retry_after.is_some() {
                ctx.limiter.provider_said_slow_down(ctx.pool, ctx.connector.name(), retry_after).await?;
            }
            if ctx.config.call_retry.exhausted(row.attempt) {
                park(
                    ctx,
                    row,
                    format!("submit could not reach the provider after {} attempts: {reason}", row.attempt),
                )
            } else {
                retry(ctx, row, &ctx.config.call_retry, retry_after, format!("submit not sent: {reason}"))
            }
        }
        SubmitOutcome::NoCredentials { reason } => {
            credentials_wait(ctx, row, NextRun::After(credentials_delay(ctx)), &reason)
        }
        SubmitOutcome::InDoubt { reason } => {
            tracing::warn!(payout_id = %row.id, %reason, "submit outcome unknown; payout is in doubt");
            let mut t =
                move_to(ctx, row, InDoubt, format!("submit attempt {attempt} outcome unknown: {reason}"));
            t.last_error = Some(reason);
            t.at(first_await(ctx))
        }
    }))
}

/// Marks a transition written after a provider call returned (see
/// [`Transition::provider_answered`]).
fn answered(mut t: Transition) -> Transition {
    t.provider_answered = true;
    t
}

fn resubmit_gate(ctx: &StepContext<'_>) -> ResubmitGate {
    ResubmitGate {
        not_found_answers: ctx.config.resubmit_after_not_found,
        since_last_submit: ctx.config.stall_window(ctx.connector.request_timeout()),
    }
}

// ---- in doubt ----------------------------------------------------------------------------

async fn resolve_in_doubt(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    match (ctx.connector.status_lookup(), row.provider_payout_id.as_deref()) {
        (StatusLookup::ByReference, _) => resolve_by_reference(ctx, row, lease).await,
        // The id came from a webhook the provider confirmed: poll it like a submitted payout.
        (StatusLookup::ByProviderId, Some(_)) => poll_status(ctx, row, lease).await,
        (StatusLookup::ByProviderId, None) => find_provider_id(ctx, row, lease).await,
        (StatusLookup::None, _) => await_webhook(ctx, row),
    }
}

async fn resolve_by_reference(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    if let Some(not_yet) = start_status_query(ctx, row, lease).await? {
        return Ok(not_yet);
    }
    let frozen = frozen(row)?;
    Ok(answered(match ctx.connector.status(&frozen, None).await {
        Ok(ProviderStatus::NotFound) => {
            let gate = resubmit_gate(ctx);
            let tally = transitions::record_not_found(ctx.pool, lease, gate).await?;
            if !tally.resubmit_allowed {
                stay(
                    ctx,
                    row,
                    format!(
                        "provider reports NOT_FOUND ({} of {} answers, one interval apart, needed before a \
                         resubmit); asking again",
                        tally.answers, gate.not_found_answers
                    ),
                )
                .at(status_due(ctx, Duration::ZERO))
            } else if row.submit_attempts >= ctx.config.call_retry.max_attempts {
                park(
                    ctx,
                    row,
                    format!(
                        "provider reports NOT_FOUND after {} submit attempts; not sending again",
                        row.submit_attempts
                    ),
                )
            } else if let Some(wait) = permit(ctx).await? {
                not_yet(
                    ctx,
                    row,
                    NextRun::After(wait),
                    "provider reports NOT_FOUND; resubmit waits for the rate limit",
                )
            } else {
                // The provider never got it: send the same frozen request, same reference, again.
                send_submit(ctx, row, lease).await?
            }
        }
        Ok(status) => apply_status(ctx, row, status),
        Err(ProviderError::NoCredentials { reason }) => {
            credentials_wait(ctx, row, status_due(ctx, credentials_delay(ctx)), &reason)
        }
        Err(e) => {
            slow_down_if_asked(ctx, &e).await?;
            if row.attempt >= ctx.config.in_doubt_max_attempts {
                park(ctx, row, format!("in doubt after {} status queries, last: {e}", row.attempt))
            } else {
                retry_status(ctx, row, &e)
            }
        }
    }))
}

// ---- await -------------------------------------------------------------------------------

async fn poll_status(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    match (ctx.connector.status_lookup(), row.provider_payout_id.as_deref()) {
        (StatusLookup::ByReference, _) | (StatusLookup::ByProviderId, Some(_)) => {}
        // Accepted without an id (a connector keeps these in doubt, so this is defensive).
        (StatusLookup::ByProviderId, None) => return find_provider_id(ctx, row, lease).await,
        (StatusLookup::None, _) => return await_webhook(ctx, row),
    }
    if let Some(not_yet) = start_status_query(ctx, row, lease).await? {
        return Ok(not_yet);
    }
    let (waited, overdue) = waited_since_submit(ctx, row);
    let frozen = frozen(row)?;
    Ok(answered(match ctx.connector.status(&frozen, row.provider_payout_id.as_deref()).await {
        Ok(ProviderStatus::NotFound) => {
            let tally = transitions::record_not_found(ctx.pool, lease, resubmit_gate(ctx)).await?;
            if tally.answers >= ctx.config.not_found_before_review || overdue {
                park(
                    ctx,
                    row,
                    format!(
                        "provider accepted the payout but has answered NOT_FOUND {} times since",
                        tally.answers
                    ),
                )
            } else {
                // Accepted payouts are never resubmitted: a provider that briefly loses track of
                // one is asked again; a person decides if it keeps saying so.
                stay(
                    ctx,
                    row,
                    format!(
                        "provider reports NOT_FOUND for an accepted payout ({} of {} before review); asking again",
                        tally.answers, ctx.config.not_found_before_review
                    ),
                )
                .at(status_due(ctx, Duration::ZERO))
            }
        }
        Ok(ProviderStatus::Processing) if overdue => {
            park(ctx, row, format!("no final answer {}s after submit", waited.as_secs()))
        }
        Ok(status) => apply_status(ctx, row, status),
        Err(ProviderError::NoCredentials { reason }) => {
            credentials_wait(ctx, row, status_due(ctx, credentials_delay(ctx)), &reason)
        }
        Err(e) => {
            slow_down_if_asked(ctx, &e).await?;
            if overdue {
                park(ctx, row, format!("no final answer {}s after submit, last query: {e}", waited.as_secs()))
            } else {
                retry_status(ctx, row, &e)
            }
        }
    }))
}

/// What a status answer does, decided by the one rule shared with callbacks
/// ([`effect_of_answer`]).
fn apply_status(ctx: &StepContext<'_>, row: &PayoutRow, status: ProviderStatus) -> Transition {
    let next_poll = status_due(ctx, Duration::ZERO);
    let said = match &status {
        ProviderStatus::Paid => "PAID".to_owned(),
        ProviderStatus::Failed { reason } => format!("NOT_PAID: {reason}"),
        ProviderStatus::Processing => "PROCESSING".to_owned(),
        ProviderStatus::NotFound => "NOT_FOUND".to_owned(),
    };
    let reason = format!("provider reports {said}");
    match effect_of_answer(row.state, &status) {
        AnswerEffect::Finalize(to) => move_to(ctx, row, to, reason),
        AnswerEffect::StillProcessing { known_submitted: true } => {
            move_to(ctx, row, Submitted, reason).at(next_poll)
        }
        // Steps never run on final or parked payouts; what is left is "ask again later".
        AnswerEffect::StillProcessing { .. }
        | AnswerEffect::NotFound
        | AnswerEffect::Ignored
        | AnswerEffect::Resolve(_)
        | AnswerEffect::AlreadyFinal { .. } => stay(ctx, row, reason).at(next_poll),
    }
}

/// Time since the last submit started, on the database's clock, and whether it is past
/// `max_await`.
fn waited_since_submit(ctx: &StepContext<'_>, row: &PayoutRow) -> (Duration, bool) {
    let waited = row.submitted_at.map(|s| (row.db_now - s).to_std().unwrap_or_default()).unwrap_or_default();
    (waited, waited > ctx.config.max_await)
}

/// When an accepted or in-doubt payout is next looked at: the first status query for a
/// provider that has one; for a webhook-only provider, the end of the wait for its webhook.
fn first_await(ctx: &StepContext<'_>) -> NextRun {
    match ctx.connector.status_lookup() {
        StatusLookup::None => NextRun::After(ctx.config.max_await),
        StatusLookup::ByReference | StatusLookup::ByProviderId => status_due(ctx, Duration::ZERO),
    }
}

/// A provider with no status call (88Pay): the webhook at the payout's capability URL finishes
/// it; a payout still unanswered after `max_await` is parked for reconciliation. Never
/// resubmitted: the provider may have executed it.
fn await_webhook(ctx: &StepContext<'_>, row: &PayoutRow) -> Result<Transition, EngineError> {
    let (waited, overdue) = waited_since_submit(ctx, row);
    if overdue {
        return Ok(park(
            ctx,
            row,
            format!(
                "no webhook {}s after submit and {} has no status call: reconcile with the provider's \
                 statement (never resubmitted)",
                waited.as_secs(),
                ctx.connector.kind()
            ),
        ));
    }
    let left = ctx.config.max_await.saturating_sub(waited) + Duration::from_secs(1);
    Ok(not_yet(ctx, row, NextRun::After(left), "waiting for the provider's webhook"))
}

/// Most unmatched provider ids one step asks the provider about.
const IDS_PER_STEP: i64 = 10;

/// An in-doubt payout of a provider whose status call needs the provider's id, whose submit
/// answer (and so the id) was lost. Webhooks name ids; an id no payout carries may be ours:
/// the provider is asked about it (authenticated), and the answer decides whose it is.
async fn find_provider_id(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    let (waited, overdue) = waited_since_submit(ctx, row);
    let reference = row.provider_reference.clone().ok_or(EngineError::MissingIntent(row.id))?;
    let account = ctx.connector.name();
    let interval = ctx.connector.min_status_interval().as_secs_f64();
    let candidates = provider_notifications::unmatched(ctx.pool, account, interval, IDS_PER_STEP).await?;
    let asked = !candidates.is_empty();
    if asked {
        if let Some(not_yet) = start_status_query(ctx, row, lease).await? {
            return Ok(not_yet);
        }
        for id in candidates {
            let Some(lookup) = ctx.connector.find_by_provider_id(&id) else { break };
            match lookup.await {
                Ok(Some(record)) if record.reference == reference => {
                    if record.amount != row.money.amount() || record.currency != row.money.currency().code() {
                        return Ok(answered(park(
                            ctx,
                            row,
                            format!(
                                "provider's payout {id} carries our reference but {} {} instead of {}",
                                record.amount, record.currency, row.money
                            ),
                        )));
                    }
                    provider_notifications::forget(ctx.pool, account, &id).await?;
                    let mut t = apply_status(ctx, row, record.status);
                    t.reason = format!("{} (provider id {id} found through its webhook)", t.reason);
                    t.provider_payout_id = Some(id);
                    return Ok(answered(t));
                }
                Ok(found) => {
                    provider_notifications::settle(
                        ctx.pool,
                        account,
                        &id,
                        found.as_ref().map(|r| r.reference.as_str()),
                    )
                    .await?;
                }
                Err(ProviderError::NoCredentials { reason }) => {
                    let wait = status_due(ctx, credentials_delay(ctx));
                    return Ok(answered(credentials_wait(ctx, row, wait, &reason)));
                }
                Err(e) => {
                    slow_down_if_asked(ctx, &e).await?;
                    return Ok(answered(retry_status(ctx, row, &e)));
                }
            }
        }
    }
    if overdue {
        return Ok(park(
            ctx,
            row,
            format!(
                "submit outcome unknown for {}s and {} has no status call by our reference; no webhook \
                 identified it: reconcile with the provider (never resubmitted)",
                waited.as_secs(),
                ctx.connector.kind()
            ),
        ));
    }
    let waiting = "waiting for a webhook naming the provider's id of this payout";
    if asked {
        Ok(answered(stay(ctx, row, waiting).at(status_due(ctx, Duration::ZERO))))
    } else {
        Ok(not_yet(ctx, row, status_due(ctx, Duration::ZERO), waiting))
    }
}

fn retry_status(ctx: &StepContext<'_>, row: &PayoutRow, e: &ProviderError) -> Transition {
    let delay =
        ctx.config.call_retry.delay(row.attempt.max(1), capped(ctx, e.retry_after()), &mut rand::rng());
    retry_decided(ctx, row, delay, "status query failed");
    // A failed query still counts against the one-query-per-interval rule.
    let mut t = stay(ctx, row, format!("retry after attempt {}: status query: {e}", row.attempt))
        .at(status_due(ctx, delay));
    t.last_error = Some(format!("status query: {e}"));
    t
}

/// Takes the rate-limit permit and commits "status query started", which the database allows
/// only one interval after the last submit and the last query (on its own clock) and only
/// under a live lease. `Some(transition)` when the query may not happen yet.
async fn start_status_query(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Option<Transition>, EngineError> {
    let interval = ctx.connector.min_status_interval();
    // A cheap pre-check with the database time read with the row, so that an early wake-up
    // does not spend rate-limit budget; the database decides below either way.
    let due = row.provider_contact_bound.map(|t| t + interval);
    if let Some(due) = due
        && row.db_now < due
    {
        return Ok(Some(not_yet(
            ctx,
            row,
            NextRun::At(due),
            "status query not allowed yet (minimum interval)",
        )));
    }
    if let Some(wait) = permit(ctx).await? {
        return Ok(Some(not_yet(ctx, row, NextRun::After(wait), "waiting for the provider's rate limit")));
    }
    let timeout = ctx.connector.request_timeout();
    match transitions::mark_status_started(ctx.pool, lease, interval, ctx.config.lease, timeout).await? {
        StatusStart::Started => Ok(None),
        StatusStart::NotBefore(at) => {
            Ok(Some(not_yet(ctx, row, NextRun::At(at), "status query not allowed yet (minimum interval)")))
        }
    }
}

// ---- helpers -----------------------------------------------------------------------------

/// The next status query: one interval after the provider may last have received a request of
/// ours, and no sooner than `after` from now (database clock).
fn status_due(ctx: &StepContext<'_>, after: Duration) -> NextRun {
    NextRun::StatusDue { interval: ctx.connector.min_status_interval(), after }
}

fn frozen(row: &PayoutRow) -> Result<FrozenRequest, EngineError> {
    let body = row.submit_request.clone().ok_or(EngineError::MissingIntent(row.id))?;
    serde_json::from_value(body).map_err(|_| EngineError::MissingIntent(row.id))
}

async fn permit(ctx: &StepContext<'_>) -> Result<Option<Duration>, EngineError> {
    let name = ctx.connector.name();
    let per_second = ctx
        .config
        .account_calls_per_second
        .get(name)
        .copied()
        .unwrap_or(ctx.config.provider_calls_per_second);
    Ok(ctx.limiter.permit(ctx.pool, name, per_second).await?)
}

/// A provider's Retry-After, capped at `max_retry_after` (DESIGN rule 13): one answer must not
/// pause every payout of a provider for a day.
fn capped(ctx: &StepContext<'_>, retry_after: Option<Duration>) -> Option<Duration> {
    let cap = ctx.config.max_retry_after;
    retry_after.map(|ra| {
        if ra > cap {
            tracing::warn!(
                provider = ctx.connector.name(),
                asked_secs = ra.as_secs(),
                cap_secs = cap.as_secs(),
                "provider's Retry-After is longer than max_retry_after; capped"
            );
            cap
        } else {
            ra
        }
    })
}

/// Pauses the provider for every worker when it answered 429; gives back the (capped) wait.
async fn slow_down_if_asked(
    ctx: &StepContext<'_>,
    e: &ProviderError,
) -> Result<Option<Duration>, EngineError> {
    let retry_after = capped(ctx, e.retry_after());
    if let ProviderError::RateLimited { .. } = e {
        ctx.limiter.provider_said_slow_down(ctx.pool, ctx.connector.name(), retry_after).await?;
    }
    Ok(retry_after)
}

fn move_to(ctx: &StepContext<'_>, row: &PayoutRow, to: PayoutState, reason: impl Into<String>) -> Transition {
    Transition::new(row.state, to, ctx.actor, reason)
}

fn stay(ctx: &StepContext<'_>, row: &PayoutRow, reason: impl Into<String>) -> Transition {
    move_to(ctx, row, row.state, reason)
}

/// Parks a payout for a person and raises the alarm. Used whenever money may have moved and
/// the outcome is unknown: such a payout is never failed automatically.
fn park(ctx: &StepContext<'_>, row: &PayoutRow, reason: String) -> Transition {
    tracing::error!(payout_id = %row.id, state = %row.state, %reason, alert = true, "payout parked in needs_review");
    let mut t = move_to(ctx, row, NeedsReview, reason.clone());
    t.last_error = Some(reason);
    t
}

fn retry(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    policy: &RetryPolicy,
    retry_after: Option<Duration>,
    why: String,
) -> Transition {
    let delay = policy.delay(row.attempt.max(1), capped(ctx, retry_after), &mut rand::rng());
    retry_decided(ctx, row, delay, "step failed");
    let mut t =
        stay(ctx, row, format!("retry after attempt {}: {why}", row.attempt)).at(NextRun::After(delay));
    t.last_error = Some(why);
    t
}

/// Records a retry decision: a short span under the step (attempt, delay, why) and the counter.
/// The reason words are fixed: a provider's error text stays in the transition's event.
fn retry_decided(ctx: &StepContext<'_>, row: &PayoutRow, delay: Duration, why: &'static str) {
    let _decision = tracing::info_span!(
        "retry decision",
        payout.id = %row.id,
        payout.state = %row.state,
        payout.attempt = row.attempt,
        retry.delay_s = delay.as_secs_f64(),
        retry.reason = why,
    )
    .entered();
    crate::telemetry::retry_scheduled(ctx.connector.name(), row.state);
}

/// A credential problem (no valid token, a fresh token refused) never fails or parks a payout
/// (DESIGN rule 8): nothing was sent, so the step waits without counting an attempt.
fn credentials_wait(ctx: &StepContext<'_>, row: &PayoutRow, at: NextRun, reason: &str) -> Transition {
    tracing::warn!(payout_id = %row.id, account = ctx.connector.name(), %reason, "no valid provider credentials; waiting");
    let mut t = not_yet(ctx, row, at, &format!("no valid provider credentials ({reason}); nothing was sent"));
    t.last_error = Some(format!("provider credentials: {reason}"));
    t
}

/// How long a step waits for credentials before trying again.
fn credentials_delay(ctx: &StepContext<'_>) -> Duration {
    ctx.config.call_retry.max_delay.min(Duration::from_secs(30))
}

/// The step was not allowed to act yet: reschedule without counting an attempt.
fn not_yet(ctx: &StepContext<'_>, row: &PayoutRow, at: NextRun, why: &str) -> Transition {
    let mut t = stay(ctx, row, format!("deferred: {why}")).at(at);
    t.not_an_attempt = true;
    t
}

trait TransitionExt {
    fn at(self, at: NextRun) -> Self;
    fn continue_now(self) -> Self;
}

impl TransitionExt for Transition {
    fn at(mut self, at: NextRun) -> Self {
        self.next_run = at;
        self
    }

    fn continue_now(mut self) -> Self {
        self.after = AfterWrite::Continue;
        self.next_run = NextRun::Now;
        self
    }
}
