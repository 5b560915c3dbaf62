//! What each state's step does. A step makes at most the provider calls its state needs and
//! returns the [`Transition`] to write; the worker writes it under the lease's fencing token.
//!
//! | state           | step                                                                     |
//! |-----------------|--------------------------------------------------------------------------|
//! | pending         | check: can this payout go (8B partner: balance >= amount)                 |
//! | checked         | intent: allocate our reference, freeze the exact submit request           |
//! | intent_recorded | submit, after committing "submit started" (a crash mid-call = in doubt)   |
//! | in_doubt        | status query by our reference FIRST; resubmit only on NOT_FOUND            |
//! | submitted       | status poll, at most once per interval, until final or max_await          |

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::{PayoutState, RetryPolicy};
use payoutd_providers::{
    CheckOutcome, Connector, FrozenRequest, PayoutForProvider, ProviderError, ProviderStatus, SubmitOutcome,
};
use payoutd_store::queue::Lease;
use payoutd_store::transitions::{self, AfterWrite, Transition};
use payoutd_store::{PayoutRow, PgPool};

use crate::rate_limit;
use crate::{EngineConfig, EngineError};

use PayoutState::*;

/// What a step needs besides the payout.
pub struct StepContext<'a> {
    pub pool: &'a PgPool,
    pub config: &'a EngineConfig,
    pub connector: &'a dyn Connector,
    /// "worker:<id>", written into events.
    pub actor: &'a str,
}

/// Runs the step of `row`'s current state.
pub async fn run(ctx: &StepContext<'_>, row: &PayoutRow, lease: &Lease) -> Result<Transition, EngineError> {
    match row.state {
        Pending => check(ctx, row).await,
        Checked => record_intent(ctx, row).await,
        IntentRecorded => submit(ctx, row, lease).await,
        InDoubt => resolve_in_doubt(ctx, row, lease).await,
        Submitted => poll_status(ctx, row).await,
        Paid | Failed | Cancelled | NeedsReview => {
            // Final payouts are never scheduled (a CHECK constraint guarantees it); a claim of
            // one means a bug, and writing nothing is the safe answer.
            Err(EngineError::Store(payoutd_store::StoreError::Corrupt(format!(
                "final payout {} was claimed",
                row.id
            ))))
        }
    }
}

// ---- check -------------------------------------------------------------------------------

async fn check(ctx: &StepContext<'_>, row: &PayoutRow) -> Result<Transition, EngineError> {
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, wait, "waiting for the provider's rate limit"));
    }
    let payout = PayoutForProvider { money: row.money, destination: row.destination.clone() };
    let policy = &ctx.config.check_retry;
    match ctx.connector.check(&payout).await {
        Ok(CheckOutcome::Go) => Ok(move_to(ctx, row, Checked, "check passed").continue_now()),
        Ok(CheckOutcome::NotNow { reason }) if policy.exhausted(row.attempt) => Ok(move_to(
            ctx,
            row,
            Failed,
            format!("check did not pass after {} attempts: {reason}; nothing was sent", row.attempt),
        )),
        Ok(CheckOutcome::NotNow { reason }) => Ok(retry(ctx, row, policy, None, format!("check: {reason}"))),
        Err(e) => {
            slow_down_if_asked(ctx, &e).await?;
            if policy.exhausted(row.attempt) {
                Ok(move_to(
                    ctx,
                    row,
                    Failed,
                    format!("check failed {} times: {e}; nothing was sent", row.attempt),
                ))
            } else {
                Ok(retry(ctx, row, policy, e.retry_after(), format!("check: {e}")))
            }
        }
    }
}

// ---- intent ------------------------------------------------------------------------------

async fn record_intent(ctx: &StepContext<'_>, row: &PayoutRow) -> Result<Transition, EngineError> {
    let reference = transitions::allocate_reference(ctx.pool).await?;
    let payout = PayoutForProvider { money: row.money, destination: row.destination.clone() };
    let frozen = ctx.connector.freeze_submit(&payout, &reference, Utc::now());
    let body =
        serde_json::to_value(&frozen).map_err(|e| payoutd_store::StoreError::Corrupt(e.to_string()))?;
    let mut t = move_to(ctx, row, IntentRecorded, format!("intent recorded under reference {reference}"));
    t.intent = Some((reference, body));
    Ok(t.continue_now())
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
        .at(status_due(ctx, row)));
    }
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, wait, "waiting for the provider's rate limit"));
    }
    send_submit(ctx, row, lease).await
}

/// Commits "submit started", makes the call, and classifies its outcome.
async fn send_submit(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    let frozen = frozen(row)?;
    let attempt = transitions::mark_submit_started(ctx.pool, lease, ctx.actor).await?;
    let outcome = ctx.connector.submit(&frozen).await;
    let now = Utc::now();
    let interval = ctx.connector.min_status_interval();
    Ok(match outcome {
        SubmitOutcome::Accepted => {
            move_to(ctx, row, Submitted, format!("provider accepted submit attempt {attempt}"))
                .at(now + interval)
        }
        SubmitOutcome::Paid => move_to(ctx, row, Paid, "provider answered PAID to the submit"),
        SubmitOutcome::Rejected { reason } => {
            move_to(ctx, row, Failed, format!("provider rejected the payout: {reason}"))
        }
        SubmitOutcome::NotSent { reason, retry_after } => {
            if retry_after.is_some() {
                rate_limit::provider_said_slow_down(ctx.pool, ctx.connector.name(), retry_after).await?;
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
        SubmitOutcome::InDoubt { reason } => {
            tracing::warn!(payout_id = %row.id, %reason, "submit outcome unknown; payout is in doubt");
            let mut t =
                move_to(ctx, row, InDoubt, format!("submit attempt {attempt} outcome unknown: {reason}"));
            t.last_error = Some(reason);
            t.at(now + interval)
        }
    })
}

// ---- in doubt ----------------------------------------------------------------------------

async fn resolve_in_doubt(
    ctx: &StepContext<'_>,
    row: &PayoutRow,
    lease: &Lease,
) -> Result<Transition, EngineError> {
    let due = status_due(ctx, row);
    if Utc::now() < due {
        return Ok(not_yet_until(ctx, row, due, "status query not allowed yet (minimum interval)"));
    }
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, wait, "waiting for the provider's rate limit"));
    }
    let frozen = frozen(row)?;
    let status = ctx.connector.status(&frozen).await;
    let mut t = match status {
        Ok(ProviderStatus::NotFound) => {
            // The provider never got it: send the same frozen request, same reference, again.
            if let Some(wait) = permit(ctx).await? {
                not_yet(ctx, row, wait, "provider reports NOT_FOUND; resubmit waits for the rate limit")
            } else {
                send_submit(ctx, row, lease).await?
            }
        }
        Ok(status) => apply_status(ctx, row, status),
        Err(e) => {
            slow_down_if_asked(ctx, &e).await?;
            if row.attempt >= ctx.config.in_doubt_max_attempts {
                park(ctx, row, format!("in doubt after {} status queries, last: {e}", row.attempt))
            } else {
                retry_status(ctx, row, &e)
            }
        }
    };
    t.status_checked = true;
    Ok(t)
}

// ---- await -------------------------------------------------------------------------------

async fn poll_status(ctx: &StepContext<'_>, row: &PayoutRow) -> Result<Transition, EngineError> {
    let due = status_due(ctx, row);
    if Utc::now() < due {
        return Ok(not_yet_until(ctx, row, due, "status poll not allowed yet (minimum interval)"));
    }
    if let Some(wait) = permit(ctx).await? {
        return Ok(not_yet(ctx, row, wait, "waiting for the provider's rate limit"));
    }
    let waited = row.submitted_at.map(|s| (Utc::now() - s).to_std().unwrap_or_default()).unwrap_or_default();
    let overdue = waited > ctx.config.max_await;
    let frozen = frozen(row)?;
    let mut t = match ctx.connector.status(&frozen).await {
        Ok(ProviderStatus::NotFound) if row.attempt >= 3 || overdue => park(
            ctx,
            row,
            format!("provider accepted the payout but reports NOT_FOUND on {} queries", row.attempt),
        ),
        Ok(ProviderStatus::NotFound) => {
            // Accepted payouts are never resubmitted: a provider that briefly loses track of one
            // is asked again; a person decides if it keeps saying so.
            stay(ctx, row, "provider reports NOT_FOUND for an accepted payout; asking again")
                .at(Utc::now() + ctx.connector.min_status_interval())
        }
        Ok(ProviderStatus::Processing) if overdue => {
            park(ctx, row, format!("no final answer {}s after submit", waited.as_secs()))
        }
        Ok(status) => apply_status(ctx, row, status),
        Err(e) => {
            slow_down_if_asked(ctx, &e).await?;
            if overdue {
                park(ctx, row, format!("no final answer {}s after submit, last query: {e}", waited.as_secs()))
            } else {
                retry_status(ctx, row, &e)
            }
        }
    };
    t.status_checked = true;
    Ok(t)
}

/// Paid, failed and processing mean the same from an in-doubt or a submitted payout.
fn apply_status(ctx: &StepContext<'_>, row: &PayoutRow, status: ProviderStatus) -> Transition {
    let next_poll = Utc::now() + ctx.connector.min_status_interval();
    match status {
        ProviderStatus::Paid => move_to(ctx, row, Paid, "provider reports PAID"),
        ProviderStatus::Failed { reason } => {
            move_to(ctx, row, Failed, format!("provider reports NOT_PAID: {reason}"))
        }
        ProviderStatus::Processing if row.state == Submitted => {
            stay(ctx, row, "provider reports PROCESSING").at(next_poll)
        }
        ProviderStatus::Processing => {
            move_to(ctx, row, Submitted, "provider reports PROCESSING").at(next_poll)
        }
        ProviderStatus::NotFound => stay(ctx, row, "provider reports NOT_FOUND").at(next_poll),
    }
}

fn retry_status(ctx: &StepContext<'_>, row: &PayoutRow, e: &ProviderError) -> Transition {
    let mut t = retry(ctx, row, &ctx.config.call_retry, e.retry_after(), format!("status query: {e}"));
    // A failed query still counts against the one-query-per-interval rule.
    let earliest = Utc::now() + ctx.connector.min_status_interval();
    if t.next_run_at.is_some_and(|at| at < earliest) {
        t.next_run_at = Some(earliest);
    }
    t
}

// ---- helpers -----------------------------------------------------------------------------

/// The earliest time the provider may be asked about this payout: one interval after the last
/// submit and after the last status query (DESIGN rule 7; 8B: "at least one minute after").
fn status_due(ctx: &StepContext<'_>, row: &PayoutRow) -> DateTime<Utc> {
    let interval = ctx.connector.min_status_interval();
    [row.submitted_at, row.last_status_at]
        .into_iter()
        .flatten()
        .map(|t| t + interval)
        .max()
        .unwrap_or_else(Utc::now)
}

fn frozen(row: &PayoutRow) -> Result<FrozenRequest, EngineError> {
    let body = row.submit_request.clone().ok_or(EngineError::MissingIntent(row.id))?;
    serde_json::from_value(body).map_err(|_| EngineError::MissingIntent(row.id))
}

async fn permit(ctx: &StepContext<'_>) -> Result<Option<Duration>, EngineError> {
    Ok(rate_limit::permit(ctx.pool, ctx.connector.name(), ctx.config.provider_calls_per_second).await?)
}

async fn slow_down_if_asked(ctx: &StepContext<'_>, e: &ProviderError) -> Result<(), EngineError> {
    if let ProviderError::RateLimited { retry_after } = e {
        rate_limit::provider_said_slow_down(ctx.pool, ctx.connector.name(), *retry_after).await?;
    }
    Ok(())
}

fn move_to(ctx: &StepContext<'_>, row: &PayoutRow, to: PayoutState, reason: impl Into<String>) -> Transition {
    let mut t = Transition::new(row.state, to, ctx.actor, reason);
    t.next_run_at = Some(Utc::now());
    t
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
    let delay = policy.delay(row.attempt.max(1), retry_after, &mut rand::rng());
    let mut t = stay(ctx, row, format!("retry after attempt {}: {why}", row.attempt)).after(delay);
    t.last_error = Some(why);
    t
}

/// The step was not allowed to act yet: reschedule without counting an attempt.
fn not_yet(ctx: &StepContext<'_>, row: &PayoutRow, wait: Duration, why: &str) -> Transition {
    not_yet_until(ctx, row, Utc::now() + wait, why)
}

fn not_yet_until(ctx: &StepContext<'_>, row: &PayoutRow, at: DateTime<Utc>, why: &str) -> Transition {
    let mut t = stay(ctx, row, format!("deferred: {why}")).at(at);
    t.not_an_attempt = true;
    t
}

trait TransitionExt {
    fn at(self, at: DateTime<Utc>) -> Self;
    fn after(self, delay: Duration) -> Self;
    fn continue_now(self) -> Self;
}

impl TransitionExt for Transition {
    fn at(mut self, at: DateTime<Utc>) -> Self {
        self.next_run_at = Some(at);
        self
    }

    fn after(self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(1));
        self.at(Utc::now() + delay)
    }

    fn continue_now(mut self) -> Self {
        self.after = AfterWrite::Continue;
        self.next_run_at = Some(Utc::now());
        self
    }
}
