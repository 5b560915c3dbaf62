//! After a database restore. A database restored from a backup forgets every intent and submit
//! made after the backup was taken, and its reference sequence goes back in time: a worker
//! would send those payouts again, under new references the provider cannot tie to the old ones.
//!
//! So the operator marks a restored database before any worker runs ([`mark`]): the reference
//! sequence jumps past every reference that may have been used since, and while the mark is
//! open the engine records no intent and sends no submit ([`open_mark`]). The restore check
//! (`payoutd_engine::restore_check`) compares every open payout with the provider's registry
//! for the window since the backup, settles what it finds with the writes below, and clears
//! the mark ([`clear`]). The procedure is in docs/restore.md.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use payoutd_core::{Currency, Destination, Money, PayoutState};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::operator::{ActionError, Reason};
use crate::transitions::insert_event;
use crate::webhooks::{self, PayoutChange};
use crate::{StoreError, WAKE_CHANNEL, operator_events};

/// The actor of every write the restore check makes.
pub const ACTOR: &str = "restore-check";

/// An open restore mark: no intent and no submit until it is cleared.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RestoreMark {
    pub id: Uuid,
    pub backup_taken_at: DateTime<Utc>,
    pub marked_at: DateTime<Utc>,
    pub marked_by: String,
    pub reason: String,
    pub reference_floor: i64,
}

macro_rules! mark_columns {
    () => {
        "id, backup_taken_at, marked_at, marked_by, reason, reference_floor"
    };
}

/// The open mark, if any. The engine never asks this on its own: the intent step reads the mark
/// with the account pauses (`account_pauses::intent_hold`), and the "submit started" write
/// refuses while a mark is open (`transitions::mark_submit_started`).
pub async fn open_mark(pool: &PgPool) -> Result<Option<RestoreMark>, StoreError> {
    let mark = sqlx::query_as(concat!(
        "SELECT ",
        mark_columns!(),
        " FROM restore_marks WHERE cleared_at IS NULL LIMIT 1"
    ))
    .fetch_optional(pool)
    .await?;
    Ok(mark)
}

/// Why a payout waits while a mark is open, as its timeline says it (before an intent:
/// `account_pauses::intent_hold`; before a submit: `transitions::mark_submit_started`).
pub fn hold_reason(backup_taken_at: DateTime<Utc>, marked_by: &str) -> String {
    format!(
        "the database was restored from a backup of {} (marked by {marked_by}); nothing is sent until the restore check has run",
        backup_taken_at.format("%Y-%m-%dT%H:%M:%SZ"),
    )
}

/// Marks the database restored from a backup taken at `backup_taken_at`, and moves the
/// reference sequence past every reference the database knows plus `reference_gap` (the
/// references handed out after the backup are unknown here; the check moves it past those
/// the registry shows too). Refused while a mark is open, or with a backup time in the future.
pub async fn mark(
    pool: &PgPool,
    backup_taken_at: DateTime<Utc>,
    actor: &str,
    reason: &Reason,
    reference_gap: i64,
) -> Result<RestoreMark, ActionError> {
    let mut tx = pool.begin().await?;
    // One marker at a time, even with two operators at once.
    sqlx::query("LOCK TABLE restore_marks IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    let open: Option<RestoreMark> = sqlx::query_as(concat!(
        "SELECT ",
        mark_columns!(),
        " FROM restore_marks WHERE cleared_at IS NULL LIMIT 1"
    ))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(open) = open {
        return Err(ActionError::Refused(format!(
            "the database is marked restored already (by {} at {}, backup of {}); run the restore check",
            open.marked_by,
            open.marked_at.format("%Y-%m-%dT%H:%M:%SZ"),
            open.backup_taken_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )));
    }
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    if backup_taken_at > now {
        return Err(ActionError::Refused(format!(
            "backup_taken_at {} is in the future (database time {})",
            backup_taken_at.format("%Y-%m-%dT%H:%M:%SZ"),
            now.format("%Y-%m-%dT%H:%M:%SZ")
        )));
    }
    if reference_gap < 0 {
        return Err(ActionError::Refused("reference_gap must not be negative".into()));
    }
    let highest = highest_known_reference(&mut tx).await?;
    let floor = highest.saturating_add(reference_gap);
    advance_sequence(&mut tx, floor).await?;
    let mark: RestoreMark = sqlx::query_as(concat!(
        "INSERT INTO restore_marks (id, backup_taken_at, marked_by, reason, reference_floor)
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        mark_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(backup_taken_at)
    .bind(actor)
    .bind(reason.as_str())
    .bind(floor)
    .fetch_one(&mut *tx)
    .await?;
    let detail = json!({ "backup_taken_at": backup_taken_at, "reference_floor": floor });
    operator_events::record(&mut tx, "restore_mark", "*", actor, reason.as_str(), Some(&detail)).await?;
    tx.commit().await?;
    Ok(mark)
}

/// The number in the highest "PO…" reference of any payout, or the sequence's own position.
async fn highest_known_reference(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<i64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT GREATEST(
                    (SELECT last_value FROM provider_reference_seq),
                    COALESCE((SELECT max(substring(provider_reference FROM '^PO([0-9]{1,18})$')::bigint)
                                FROM payouts WHERE provider_reference ~ '^PO[0-9]{1,18}$'), 0))",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(n)
}

async fn advance_sequence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    at_least: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT setval('provider_reference_seq', GREATEST($1, (SELECT last_value FROM provider_reference_seq)))",
    )
    .bind(at_least.max(1))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves the reference sequence to at least `at_least` (the highest reference the registry
/// showed), so no new payout can take a reference the provider has seen.
pub async fn advance_references_past(pool: &PgPool, at_least: i64) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    advance_sequence(&mut tx, at_least).await?;
    tx.commit().await?;
    Ok(())
}

/// An open payout as the check needs it.
#[derive(Debug, Clone)]
pub struct OpenPayout {
    pub id: Uuid,
    pub state: PayoutState,
    pub reference: Option<String>,
    pub money: Money,
    pub destination: Destination,
}

/// Every payout of `account` that is neither final nor parked.
pub async fn open_payouts(pool: &PgPool, account: &str) -> Result<Vec<OpenPayout>, StoreError> {
    let rows: Vec<(Uuid, String, Option<String>, Decimal, String, Value)> = sqlx::query_as(
        "SELECT id, state::text, provider_reference, amount, currency, destination FROM payouts
          WHERE provider = $1 AND state IN ('pending', 'checked', 'intent_recorded', 'in_doubt', 'submitted')
          ORDER BY created_at, id",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, state, reference, amount, currency, destination)| {
            let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                StoreError::Corrupt(format!("payout {id}: {what}: {e}"))
            };
            let currency = Currency::parse(&currency).map_err(|e| corrupt("currency", &e))?;
            let money = Money::new(amount, currency).map_err(|e| corrupt("amount", &e))?;
            let destination = serde_json::from_value(destination).map_err(|e| corrupt("destination", &e))?;
            Ok(OpenPayout { id, state: parse_state(&state)?, reference, money, destination })
        })
        .collect()
}

/// Which of `references` payouts of `account` carry (in any state).
pub async fn known_references(
    pool: &PgPool,
    account: &str,
    references: &[String],
) -> Result<HashSet<String>, StoreError> {
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT provider_reference FROM payouts WHERE provider = $1 AND provider_reference = ANY($2)",
    )
    .bind(account)
    .bind(references)
    .fetch_all(pool)
    .await?;
    Ok(known.into_iter().collect())
}

fn parse_state(text: &str) -> Result<PayoutState, StoreError> {
    text.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()))
}

/// What the provider's registry says became of a payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Paid,
    NotPaid,
    Processing,
}

/// A payout the registry shows: it takes `reference` (and the request rebuilt for it, when it
/// had none) and the state the registry implies: paid, failed, or submitted (polled by the
/// engine from now on). False if the payout moved in between (nothing written).
pub async fn adopt(
    pool: &PgPool,
    payout_id: Uuid,
    expected: PayoutState,
    reference: &str,
    request: Option<&Value>,
    found: Found,
    reason: &str,
) -> Result<bool, StoreError> {
    let to = match found {
        Found::Paid => PayoutState::Paid,
        Found::NotPaid => PayoutState::Failed,
        Found::Processing => PayoutState::Submitted,
    };
    let mut tx = pool.begin().await?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state::text FROM payouts WHERE id = $1 FOR UPDATE")
            .bind(payout_id)
            .fetch_optional(&mut *tx)
            .await?;
    if state.as_deref().map(parse_state).transpose()? != Some(expected) {
        return Ok(false);
    }
    let is_final = to.is_final();
    sqlx::query(
        "UPDATE payouts SET state = $2::payout_state,
                provider_reference = $3, submit_request = COALESCE($4, submit_request),
                submitted_at = COALESCE(submitted_at, now()), submit_in_flight = false,
                next_run_at = CASE WHEN $5 THEN NULL ELSE now() END,
                finalized_at = CASE WHEN $5 THEN now() END,
                lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1,
                attempt = 0, last_error = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(payout_id)
    .bind(to.as_str())
    .bind(reference)
    .bind(request)
    .bind(is_final)
    .execute(&mut *tx)
    .await?;
    insert_event(&mut tx, payout_id, Some(expected), to, ACTOR, reason, None, None).await?;
    webhooks::record_payout_change(&mut tx, payout_id, PayoutChange::Entered(to)).await?;
    if !is_final {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Parks an open payout the check cannot settle (a person decides); false if it moved in
/// between. The fencing token moves on, so no worker that held it can still write it.
pub async fn park(
    pool: &PgPool,
    payout_id: Uuid,
    expected: PayoutState,
    reason: &str,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE payouts SET state = 'needs_review', next_run_at = NULL, lease_owner = NULL,
                lease_expires_at = NULL, fencing_token = fencing_token + 1, submit_in_flight = false,
                parked_at = now(), last_error = $3, updated_at = now()
          WHERE id = $1 AND state = $2::payout_state",
    )
    .bind(payout_id)
    .bind(expected.as_str())
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if moved {
        insert_event(&mut tx, payout_id, Some(expected), PayoutState::NeedsReview, ACTOR, reason, None, None)
            .await?;
        webhooks::record_payout_change(&mut tx, payout_id, PayoutChange::Entered(PayoutState::NeedsReview))
            .await?;
    }
    tx.commit().await?;
    Ok(moved)
}

/// An event on the payout's timeline saying what the check found; the state does not change.
pub async fn note(
    pool: &PgPool,
    payout_id: Uuid,
    state: PayoutState,
    reason: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    insert_event(&mut tx, payout_id, Some(state), state, ACTOR, reason, None, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Clears the open mark with the check's report; payouts waiting for it are due at once.
/// Refused when no mark is open.
pub async fn clear(pool: &PgPool, actor: &str, report: &Value) -> Result<RestoreMark, ActionError> {
    let mut tx = pool.begin().await?;
    let cleared: Option<RestoreMark> = sqlx::query_as(concat!(
        "UPDATE restore_marks SET cleared_at = now(), cleared_by = $1, report = $2
          WHERE cleared_at IS NULL RETURNING ",
        mark_columns!()
    ))
    .bind(actor)
    .bind(report)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mark) = cleared else {
        return Err(ActionError::Refused("the database is not marked restored".into()));
    };
    sqlx::query(
        "UPDATE payouts SET next_run_at = now()
          WHERE state IN ('checked', 'intent_recorded', 'in_doubt') AND next_run_at > now()",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    operator_events::record(&mut tx, "restore_clear", "*", actor, "restore check completed", Some(report))
        .await?;
    tx.commit().await?;
    Ok(mark)
}
