//! Many payouts' transitions in one commit (group commit). Each payout keeps every rule of a
//! single write: its row changes only if its own fencing token (and state, and hold checks)
//! still match, and its state change, audit events, next run time and webhook outbox rows
//! commit together. What the batch shares is the transaction and the statements: one UPDATE
//! over arrays for all rows, one INSERT for all events, so the database pays one commit and a
//! handful of statements for the whole batch instead of several per payout.
//!
//! A payout whose write does not match (lease taken over, hold in place) is simply not
//! written; the others are. A database error fails the whole batch, and the caller may retry
//! the items one by one to find the one at fault.

use payoutd_core::PayoutState;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::queue::Lease;
use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::{AfterWrite, HoldCheck, Transition, next_run_binds};
use crate::webhooks::{self, PayoutChange};
use crate::{PayoutRow, StoreError};

/// What one item of a batch came to: the payout as its write left it (`None`: written, but
/// the row does not decode), or why nothing was written for it.
pub type ItemResult = Result<Option<PayoutRow>, StoreError>;

/// A written row and the position of its item in the batch.
#[derive(sqlx::FromRow)]
struct WrittenRow {
    u_ord: i32,
    #[sqlx(flatten)]
    raw: RawPayoutRow,
}

/// The columns of the batch UPDATE, one array each, in item order.
#[derive(Default)]
struct Columns {
    ord: Vec<i32>,
    id: Vec<Uuid>,
    token: Vec<i64>,
    from: Vec<&'static str>,
    to: Vec<&'static str>,
    active: Vec<bool>,
    keep: Vec<bool>,
    moved: Vec<bool>,
    last_error: Vec<Option<String>>,
    reference: Vec<Option<String>>,
    request: Vec<Option<Value>>,
    parked: Vec<bool>,
    final_state: Vec<bool>,
    give_back: Vec<bool>,
    delay: Vec<Option<f64>>,
    interval: Vec<Option<f64>>,
    at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    answered: Vec<bool>,
    provider_payout_id: Vec<Option<String>>,
    started: Vec<bool>,
    lease_len: Vec<f64>,
    timeout: Vec<f64>,
    hold_restore: Vec<bool>,
    hold_pause: Vec<bool>,
}

impl Columns {
    fn push(&mut self, ord: usize, lease: &Lease, t: &Transition) {
        let moved = t.from != t.to;
        let (delay, interval, at) = next_run_binds(t.next_run);
        let (reference, request) = match &t.intent {
            Some((r, q)) => (Some(r.clone()), Some(q.clone())),
            None => (None, None),
        };
        self.ord.push(i32::try_from(ord).unwrap_or(i32::MAX));
        self.id.push(lease.payout_id);
        self.token.push(lease.fencing_token);
        self.from.push(t.from.as_str());
        self.to.push(t.to.as_str());
        self.active.push(t.to.is_active());
        self.keep.push(t.after == AfterWrite::Continue && t.to.is_active());
        self.moved.push(moved);
        self.last_error.push(t.last_error.clone());
        self.reference.push(reference);
        self.request.push(request);
        self.parked.push(t.to.is_parked());
        self.final_state.push(t.to.is_final());
        self.give_back.push(t.not_an_attempt && !moved);
        self.delay.push(delay);
        self.interval.push(interval);
        self.at.push(at);
        self.answered.push(t.provider_answered);
        self.provider_payout_id.push(t.provider_payout_id.clone());
        self.started.push(t.submit_start.is_some());
        self.lease_len.push(t.submit_start.map(|s| s.lease.as_secs_f64()).unwrap_or(0.0));
        self.timeout.push(t.submit_start.map(|s| s.request_timeout.as_secs_f64()).unwrap_or(0.0));
        self.hold_restore.push(t.hold_check != HoldCheck::None);
        self.hold_pause.push(t.hold_check == HoldCheck::RestoreMarkOrPause);
    }
}

/// The batch UPDATE. Per row exactly what a single fenced write does: the row matches only
/// with its own fencing token and expected state; a submit start also needs an unexpired
/// lease; a hold check needs no open restore mark (and no pause of the account or of all
/// accounts). Times are on the database's clock.
const UPDATE: &str = concat!(
    "UPDATE payouts p SET
         state = u.u_to::payout_state,
         next_run_at = CASE WHEN NOT u.u_active THEN NULL
                            WHEN u.u_at IS NOT NULL THEN u.u_at
                            ELSE GREATEST(now() + make_interval(secs => u.u_delay),
                                          (CASE WHEN u.u_answered THEN now() ELSE p.provider_contact_bound END)
                                              + make_interval(secs => u.u_interval)) END,
         provider_contact_bound = CASE WHEN u.u_started
                                           THEN GREATEST(p.provider_contact_bound,
                                                         now() + make_interval(secs => u.u_timeout))
                                       WHEN u.u_answered THEN now()
                                       ELSE p.provider_contact_bound END,
         lease_owner = CASE WHEN u.u_keep THEN p.lease_owner END,
         lease_expires_at = CASE WHEN NOT u.u_keep THEN NULL
                                 WHEN u.u_started
                                     THEN GREATEST(p.lease_expires_at, now() + make_interval(secs => u.u_lease))
                                 ELSE p.lease_expires_at END,
         attempt = CASE WHEN u.u_moved THEN (CASE WHEN u.u_keep THEN 1 ELSE 0 END)
                        WHEN u.u_give_back THEN GREATEST(p.attempt - 1, 0) ELSE p.attempt END,
         total_attempts = p.total_attempts + CASE WHEN u.u_moved AND u.u_keep THEN 1
                                                  WHEN u.u_give_back THEN -1 ELSE 0 END,
         submit_in_flight = u.u_started,
         submit_attempts = p.submit_attempts + CASE WHEN u.u_started THEN 1 ELSE 0 END,
         submitted_at = CASE WHEN u.u_started THEN now() ELSE p.submitted_at END,
         not_found_answers = CASE WHEN u.u_started THEN 0 ELSE p.not_found_answers END,
         failed_steps = 0,
         last_error = u.u_last_error,
         provider_reference = COALESCE(u.u_reference, p.provider_reference),
         submit_request = COALESCE(u.u_request, p.submit_request),
         provider_payout_id = COALESCE(u.u_provider_payout_id, p.provider_payout_id),
         parked_at = CASE WHEN u.u_parked THEN now() ELSE p.parked_at END,
         finalized_at = CASE WHEN u.u_final THEN now() ELSE p.finalized_at END,
         updated_at = now()
       FROM unnest($1::int4[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::bool[], $7::bool[],
                   $8::bool[], $9::text[], $10::text[], $11::jsonb[], $12::bool[], $13::bool[], $14::bool[],
                   $15::float8[], $16::float8[], $17::timestamptz[], $18::bool[], $19::text[], $20::bool[],
                   $21::float8[], $22::float8[], $23::bool[], $24::bool[])
            AS u(u_ord, u_id, u_token, u_from, u_to, u_active, u_keep, u_moved, u_last_error, u_reference,
                 u_request, u_parked, u_final, u_give_back, u_delay, u_interval, u_at, u_answered,
                 u_provider_payout_id, u_started, u_lease, u_timeout, u_hold_restore, u_hold_pause)
      WHERE p.id = u.u_id AND p.fencing_token = u.u_token AND p.state = u.u_from::payout_state
        AND (NOT u.u_started OR (p.lease_owner IS NOT NULL AND p.lease_expires_at > now()))
        AND (NOT u.u_hold_restore OR NOT EXISTS (SELECT 1 FROM restore_marks WHERE cleared_at IS NULL))
        AND (NOT u.u_hold_pause
             OR NOT EXISTS (SELECT 1 FROM account_pauses a WHERE a.account IN (p.provider, '*')))
  RETURNING u.u_ord, ",
    payout_columns!()
);

/// Applies every item whose lease still holds, in one transaction; gives back one result per
/// item, in order. `Err` only when the database failed the whole batch (nothing was written).
#[tracing::instrument(
    name = "transition batch write",
    skip_all,
    fields(otel.kind = "client", db.system.name = "postgresql", batch.size = items.len())
)]
pub async fn apply_batch(
    pool: &PgPool,
    items: &[(&Lease, &Transition)],
) -> Result<Vec<ItemResult>, StoreError> {
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
    let mut columns = Columns::default();
    for (ord, (lease, t)) in items.iter().enumerate() {
        if t.is_legal() {
            columns.push(ord, lease, t);
            results.push(None);
        } else {
            results.push(Some(Err(StoreError::IllegalTransition { from: t.from, to: t.to })));
        }
    }
    if columns.ord.is_empty() {
        return Ok(results.into_iter().flatten().collect());
    }

    let mut tx = pool.begin().await?;
    let written: Vec<WrittenRow> = sqlx::query_as(UPDATE)
        .bind(&columns.ord)
        .bind(&columns.id)
        .bind(&columns.token)
        .bind(&columns.from)
        .bind(&columns.to)
        .bind(&columns.active)
        .bind(&columns.keep)
        .bind(&columns.moved)
        .bind(&columns.last_error)
        .bind(&columns.reference)
        .bind(&columns.request)
        .bind(&columns.parked)
        .bind(&columns.final_state)
        .bind(&columns.give_back)
        .bind(&columns.delay)
        .bind(&columns.interval)
        .bind(&columns.at)
        .bind(&columns.answered)
        .bind(&columns.provider_payout_id)
        .bind(&columns.started)
        .bind(&columns.lease_len)
        .bind(&columns.timeout)
        .bind(&columns.hold_restore)
        .bind(&columns.hold_pause)
        .fetch_all(&mut *tx)
        .await?;

    let mut events = Events::default();
    let mut matched: Vec<(Uuid, String)> = Vec::new();
    let mut announced: Vec<(usize, PayoutState)> = Vec::new();
    let mut rows: Vec<(usize, Option<PayoutRow>)> = Vec::with_capacity(written.len());
    for WrittenRow { u_ord, raw } in written {
        let ord = usize::try_from(u_ord).unwrap_or(usize::MAX);
        let Some((lease, t)) = items.get(ord) else {
            return Err(StoreError::Corrupt(format!("batch write returned an unknown item {u_ord}")));
        };
        // The detail belongs to the transition's own move, the last one.
        let moves = t.moves();
        let last = moves.len().saturating_sub(1);
        for (n, (from, to, reason)) in moves.into_iter().enumerate() {
            events.push(lease, from, to, &t.actor, reason, if n == last { t.detail.clone() } else { None });
        }
        if t.submit_start.is_some() {
            let attempt = raw.submit_attempts();
            events.push(lease, t.to, t.to, &t.actor, &format!("submit attempt {attempt} started"), None);
        }
        if let Some(id) = &t.provider_payout_id {
            matched.push((lease.payout_id, id.clone()));
        }
        if t.from != t.to && (t.to.is_final() || t.to.is_parked()) {
            announced.push((rows.len(), t.to));
        }
        rows.push((ord, PayoutRow::try_from(raw).ok()));
    }
    events.insert(&mut tx).await?;
    // A webhook that named a provider id before the answer carrying it arrived is now matched.
    if !matched.is_empty() {
        let (ids, provider_ids): (Vec<Uuid>, Vec<String>) = matched.into_iter().unzip();
        sqlx::query(
            "DELETE FROM unmatched_provider_notifications n
               USING unnest($1::uuid[], $2::text[]) AS m(payout_id, provider_payout_id), payouts p
              WHERE p.id = m.payout_id AND n.provider = p.provider
                AND n.provider_payout_id = m.provider_payout_id",
        )
        .bind(&ids)
        .bind(&provider_ids)
        .execute(&mut *tx)
        .await?;
    }
    // The webhook outbox: final states and needs_review are announced in this transaction.
    for (at, state) in announced {
        let change = PayoutChange::Entered(state);
        match &rows[at] {
            (_, Some(row)) => webhooks::record_change_of(&mut tx, row, change).await?,
            (ord, None) => webhooks::record_payout_change(&mut tx, items[*ord].0.payout_id, change).await?,
        }
    }
    tx.commit().await?;

    for (ord, row) in rows {
        let (_, t) = items[ord];
        for (from, to, _) in t.moves() {
            crate::telemetry::transition(from, to, &t.actor);
        }
        results[ord] = Some(Ok(row));
    }
    let mut out = Vec::with_capacity(items.len());
    for (ord, result) in results.into_iter().enumerate() {
        out.push(match result {
            Some(result) => result,
            None => Err(why_not_written(pool, items[ord].0, items[ord].1).await),
        });
    }
    Ok(out)
}

/// The audit events of a batch, one array per column, inserted by one statement in order.
#[derive(Default)]
struct Events {
    payout_id: Vec<Uuid>,
    from: Vec<&'static str>,
    to: Vec<&'static str>,
    actor: Vec<String>,
    reason: Vec<String>,
    detail: Vec<Option<Value>>,
    fencing_token: Vec<i64>,
}

impl Events {
    fn push(
        &mut self,
        lease: &Lease,
        from: PayoutState,
        to: PayoutState,
        actor: &str,
        reason: &str,
        detail: Option<Value>,
    ) {
        self.payout_id.push(lease.payout_id);
        self.from.push(from.as_str());
        self.to.push(to.as_str());
        self.actor.push(actor.to_owned());
        self.reason.push(reason.to_owned());
        self.detail.push(detail);
        self.fencing_token.push(lease.fencing_token);
    }

    async fn insert(self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), StoreError> {
        if self.payout_id.is_empty() {
            return Ok(());
        }
        // WITH ORDINALITY keeps the events' ids in the order of the moves.
        sqlx::query(
            "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason, detail, fencing_token)
             SELECT e.payout_id, e.from_state::payout_state, e.to_state::payout_state, e.actor, e.reason,
                    e.detail, e.fencing_token
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::int8[])
                    WITH ORDINALITY AS e(payout_id, from_state, to_state, actor, reason, detail, fencing_token, n)
              ORDER BY e.n",
        )
        .bind(&self.payout_id)
        .bind(&self.from)
        .bind(&self.to)
        .bind(&self.actor)
        .bind(&self.reason)
        .bind(&self.detail)
        .bind(&self.fencing_token)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Why a legal item matched no row: its lease is gone (or its state moved on), or a hold
/// stopped it. Asked after the batch committed, only for items that were not written.
async fn why_not_written(pool: &PgPool, lease: &Lease, t: &Transition) -> StoreError {
    if t.hold_check == HoldCheck::None && t.submit_start.is_none() {
        return StoreError::LeaseLost(lease.payout_id);
    }
    let held: Result<Option<(bool, String)>, sqlx::Error> = sqlx::query_as(
        "SELECT fencing_token = $2 AND state = $3::payout_state AND lease_owner IS NOT NULL
                AND lease_expires_at > now(), provider
           FROM payouts WHERE id = $1",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(t.from.as_str())
    .fetch_optional(pool)
    .await;
    let account = match held {
        Ok(Some((true, account))) => account,
        Ok(_) => return StoreError::LeaseLost(lease.payout_id),
        Err(e) => return StoreError::Database(e),
    };
    let hold = match t.hold_check {
        HoldCheck::None => Ok(None),
        HoldCheck::RestoreMark => crate::restore::open_mark(pool)
            .await
            .map(|m| m.map(|m| crate::restore::hold_reason(m.backup_taken_at, &m.marked_by))),
        HoldCheck::RestoreMarkOrPause => {
            crate::account_pauses::intent_hold(pool, &account).await.map(|h| h.map(|h| h.why))
        }
    };
    match hold {
        Ok(Some(why)) => StoreError::Held(why),
        // The hold was lifted, or the lease expired, between the write and this look.
        Ok(None) => StoreError::Refused(format!("write of payout {} refused: try again", lease.payout_id)),
        Err(e) => e,
    }
}
