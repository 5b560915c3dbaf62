//! Provider callbacks: stored as received and applied to the payout in the same transaction.
//! A callback is not a worker: it takes the row lock, and when it changes the state it bumps
//! the fencing token, so a worker still busy with that payout can no longer write it.

use payoutd_core::{AnswerEffect, PayoutState, VerifiedCallback, effect_of_answer};
use sqlx::PgPool;

use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::insert_event;
use crate::webhooks::{self, PayoutChange, ResolvedBy};
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// What applying a callback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackEffect {
    /// The payout moved to this final state.
    Finalized(PayoutState),
    /// A parked payout was resolved by the provider's verified final answer (DESIGN rule 11).
    Resolved(PayoutState),
    /// A redelivery of a callback already stored: nothing changed.
    Duplicate,
    /// The payout is already final; the callback changed nothing (states only move forward).
    /// A conflicting answer (paid after failed or the reverse) is recorded as an event and
    /// raised as an alert by the caller.
    AlreadyFinal { state: PayoutState, conflicting: bool },
    /// The provider reports the payout as still processing, or the payout is parked and the
    /// answer is not final: nothing to change.
    NoChange,
    /// A signed field does not match what we sent (amount, currency, destination): the
    /// callback changes nothing, an event and an alert record it, and the payout's status
    /// query is brought forward so that the provider's own answer decides.
    Mismatch(String),
    /// No payout carries this reference.
    UnknownReference,
}

impl CallbackEffect {
    fn outcome(&self) -> String {
        match self {
            Self::Finalized(s) => format!("applied:{s}"),
            Self::Resolved(s) => format!("resolved:{s}"),
            Self::Duplicate => "duplicate_ignored".into(),
            Self::AlreadyFinal { state, conflicting } => {
                format!("ignored_final:{state}{}", if *conflicting { ":conflicting" } else { "" })
            }
            Self::NoChange => "no_change".into(),
            Self::Mismatch(_) => "mismatch:not_applied".into(),
            Self::UnknownReference => "unknown_reference".into(),
        }
    }

    /// Whether the provider should stop delivering this callback (it was stored and taken
    /// into account, whatever it did to the payout).
    pub fn accepted(&self) -> bool {
        !matches!(self, Self::Mismatch(_) | Self::UnknownReference)
    }
}

/// Stores a verified callback and applies it, in one transaction.
#[tracing::instrument(
    name = "callback write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", payout.provider = provider)
)]
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
    // For the transitions counter, once the transaction has committed.
    let mut from_state = None;
    // The payout the callback names, if we have it.
    let mut matched = None;
    let effect = match raw {
        None => CallbackEffect::UnknownReference,
        Some(raw) => {
            let payout = PayoutRow::try_from(raw)?;
            from_state = Some(payout.state);
            let effect = decide(&payout, cb);
            let actor = format!("callback:{provider}");
            let detail = serde_json::json!({ "callback_id": callback_id });
            match &effect {
                CallbackEffect::Finalized(to) | CallbackEffect::Resolved(to) => {
                    let written: RawPayoutRow = sqlx::query_as(concat!(
                        "UPDATE payouts SET state = $2::payout_state, next_run_at = NULL, lease_owner = NULL,
                                lease_expires_at = NULL, fencing_token = fencing_token + 1,
                                submit_in_flight = false, finalized_at = now(), updated_at = now(),
                                last_error = NULL
                          WHERE id = $1
                      RETURNING ",
                        payout_columns!()
                    ))
                    .bind(payout.id)
                    .bind(to.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    let reason = if matches!(effect, CallbackEffect::Resolved(_)) {
                        format!(
                            "resolved from needs_review by the provider's verified callback: {}",
                            status_word(&cb.status)
                        )
                    } else {
                        format!("provider callback: {}", status_word(&cb.status))
                    };
                    insert_event(
                        &mut tx,
                        payout.id,
                        Some(payout.state),
                        *to,
                        &actor,
                        &reason,
                        Some(&detail),
                        None,
                    )
                    .await?;
                    let change = if matches!(effect, CallbackEffect::Resolved(_)) {
                        PayoutChange::Resolved { by: ResolvedBy::Provider, to: *to }
                    } else {
                        PayoutChange::Entered(*to)
                    };
                    match PayoutRow::try_from(written) {
                        Ok(row) => webhooks::record_change_of(&mut tx, &row, change).await?,
                        Err(_) => webhooks::record_payout_change(&mut tx, payout.id, change).await?,
                    }
                }
                CallbackEffect::AlreadyFinal { state, conflicting: true } => {
                    let reason = format!(
                        "CONFLICT: the provider's verified callback says {} but the payout is {state}; \
                         nothing changed, a person must look",
                        status_word(&cb.status)
                    );
                    insert_event(
                        &mut tx,
                        payout.id,
                        Some(*state),
                        *state,
                        &actor,
                        &reason,
                        Some(&detail),
                        None,
                    )
                    .await?;
                }
                CallbackEffect::Mismatch(why) => {
                    let reason = format!("callback not applied: {why}; status query brought forward");
                    insert_event(
                        &mut tx,
                        payout.id,
                        Some(payout.state),
                        payout.state,
                        &actor,
                        &reason,
                        Some(&detail),
                        None,
                    )
                    .await?;
                    bring_status_query_forward(&mut tx, provider, &cb.reference).await?;
                }
                _ => {}
            }
            matched = Some(payout.id);
            effect
        }
    };
    sqlx::query("UPDATE provider_callbacks SET payout_id = $2, outcome = $3 WHERE id = $1")
        .bind(callback_id)
        .bind(matched)
        .bind(effect.outcome())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if let (Some(from), CallbackEffect::Finalized(to) | CallbackEffect::Resolved(to)) = (from_state, &effect)
    {
        crate::telemetry::transition(from, *to, "callback");
    }
    Ok(effect)
}

fn status_word(s: &payoutd_core::ProviderStatus) -> String {
    s.describe()
}

/// What a verified callback does to a payout in its current state: the shared decision of
/// [`effect_of_answer`], after the identifying fields were compared.
fn decide(payout: &PayoutRow, cb: &VerifiedCallback) -> CallbackEffect {
    if let Some(why) = mismatch(payout, cb) {
        return CallbackEffect::Mismatch(why);
    }
    match effect_of_answer(payout.state, &cb.status) {
        AnswerEffect::Finalize(to) => CallbackEffect::Finalized(to),
        AnswerEffect::Resolve(to) => CallbackEffect::Resolved(to),
        AnswerEffect::AlreadyFinal { state, conflicting } => {
            CallbackEffect::AlreadyFinal { state, conflicting }
        }
        AnswerEffect::Ignored if payout.state.is_final() => {
            CallbackEffect::AlreadyFinal { state: payout.state, conflicting: false }
        }
        // A "still processing" callback leaves the state to the next status query.
        AnswerEffect::StillProcessing { .. } | AnswerEffect::NotFound | AnswerEffect::Ignored => {
            CallbackEffect::NoChange
        }
    }
}

/// Compares every signed field that identifies the payout with what was sent (DESIGN rule 6):
/// the amount numerically (a provider may echo "150000.00" for "150000"), the currency and
/// every other identifying field exactly, against the frozen submit request.
fn mismatch(payout: &PayoutRow, cb: &VerifiedCallback) -> Option<String> {
    if cb.amount != payout.money.amount() {
        return Some(format!(
            "callback amount {} differs from payout amount {}",
            cb.amount,
            payout.money.amount()
        ));
    }
    if let Some(cur) = &cb.currency
        && cur != payout.money.currency().code()
    {
        return Some(format!(
            "callback currency {cur:?} differs from payout currency {}",
            payout.money.currency()
        ));
    }
    for (name, value) in &cb.identifying {
        let sent =
            payout.submit_request.as_ref().and_then(|r| r.get("body")).and_then(|b| b.get(name.as_str()));
        match sent.and_then(|v| v.as_str()) {
            Some(sent) if sent == value => {}
            Some(sent) => {
                return Some(format!("callback {name} {value:?} differs from the {name} sent, {sent:?}"));
            }
            None => {
                return Some(format!(
                    "callback {name} {value:?} cannot be compared: nothing was sent under that name"
                ));
            }
        }
    }
    None
}

/// Makes an active payout's next step due now (the engine still keeps the minimum interval
/// between status queries), and wakes the workers.
async fn bring_status_query_forward(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: &str,
    reference: &str,
) -> Result<bool, StoreError> {
    let hit = sqlx::query(
        "UPDATE payouts SET next_run_at = LEAST(next_run_at, now()), updated_at = now()
          WHERE provider = $1 AND provider_reference = $2 AND state IN ('submitted', 'in_doubt')",
    )
    .bind(provider)
    .bind(reference)
    .execute(&mut **tx)
    .await?;
    let scheduled = hit.rows_affected() > 0;
    if scheduled {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut **tx).await?;
    }
    Ok(scheduled)
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
    let scheduled = match reference {
        Some(reference) => bring_status_query_forward(&mut tx, provider, reference).await?,
        None => false,
    };
    tx.commit().await?;
    Ok(scheduled)
}

/// What an unsigned notification naming a provider id (8B REST) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationEffect {
    /// A payout carries that id: its status query was brought forward.
    BroughtForward,
    /// No payout carries it yet: kept for the account's in-doubt payouts to look up.
    KeptUnmatched,
    /// A payout carries it but is not waiting for an answer (final, parked): nothing to do.
    NothingToDo,
}

/// Most unmatched provider ids kept per account: the notifications are unsigned, so anyone
/// could send them; past this, new ones are stored as callbacks but not kept for lookup.
pub const MAX_UNMATCHED_PER_ACCOUNT: i64 = 10_000;

/// Stores an unsigned notification that names the provider's id of a payout (8B REST's
/// `POST {url}/{transactionId}`). Its content is never trusted: it only makes the payout's
/// next status query due now, or, when no payout carries the id yet, keeps the id so that an
/// in-doubt payout whose submit answer was lost can ask the provider whether it is theirs.
pub async fn record_provider_notification(
    pool: &PgPool,
    provider: &str,
    provider_payout_id: &str,
    body: &str,
) -> Result<NotificationEffect, StoreError> {
    let mut tx = pool.begin().await?;
    let known: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT state::text, provider_reference FROM payouts WHERE provider = $1 AND provider_payout_id = $2",
    )
    .bind(provider)
    .bind(provider_payout_id)
    .fetch_optional(&mut *tx)
    .await?;
    let effect = match known {
        Some((_, Some(reference))) => {
            if bring_status_query_forward(&mut tx, provider, &reference).await? {
                NotificationEffect::BroughtForward
            } else {
                NotificationEffect::NothingToDo
            }
        }
        Some((_, None)) => NotificationEffect::NothingToDo,
        None => {
            let kept = sqlx::query(
                "INSERT INTO unmatched_provider_notifications (provider, provider_payout_id)
                 SELECT $1, $2
                  WHERE (SELECT count(*) FROM unmatched_provider_notifications WHERE provider = $1) < $3
                 ON CONFLICT (provider, provider_payout_id)
                 DO UPDATE SET deliveries = unmatched_provider_notifications.deliveries + 1",
            )
            .bind(provider)
            .bind(provider_payout_id)
            .bind(MAX_UNMATCHED_PER_ACCOUNT)
            .execute(&mut *tx)
            .await?;
            if kept.rows_affected() > 0 {
                // Wake the account's in-doubt payouts that have no provider id yet; each still
                // keeps its own minimum interval between provider queries.
                let woken = sqlx::query(
                    "UPDATE payouts SET next_run_at = LEAST(next_run_at, now()), updated_at = now()
                      WHERE provider = $1 AND state = 'in_doubt' AND provider_payout_id IS NULL",
                )
                .bind(provider)
                .execute(&mut *tx)
                .await?;
                if woken.rows_affected() > 0 {
                    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
                }
            }
            NotificationEffect::KeptUnmatched
        }
    };
    sqlx::query(
        "INSERT INTO provider_callbacks (provider, provider_reference, verified, body, outcome)
         VALUES ($1, NULL, false, $2, $3)",
    )
    .bind(provider)
    .bind(body)
    .bind(format!("unsigned notification for provider id {provider_payout_id}: {effect:?}"))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(effect)
}
