//! Mass-payout batches, all their SQL:
//!
//! - [`create`]: a validated file becomes one batch row and one ordinary payout per file row,
//!   in ONE transaction, with multi-row statements (`UNNEST`), or nothing at all: a reference
//!   already used answers with that batch (same content: a replay; other content: a
//!   conflict), and external ids the client already has are reported row by row;
//! - [`approve`] (maker/checker: another client releases a batch that waits for approval) and
//!   [`cancel`] (payouts without an intent are cancelled, the others go on);
//! - [`summary`] (counts and sums per state and currency) and [`report`] (one line per row);
//! - the completion hook: [`after_payout_change`] runs inside the transaction of every final
//!   transition (called by `webhooks::record_payout_change`), and the transition that makes a
//!   batch's last open payout final writes `batch.completed` into the outbox, exactly once.
//!
//! Lock order, to stay free of deadlocks: a final transition locks its payout, then (without
//! waiting) another open payout of the batch, or else the batch row; cancel locks the batch row
//! first and never waits for a payout's row lock (it skips rows that a transition holds at that
//! moment; those go on like any other); approve touches only payouts nobody works on.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payoutd_core::webhook::EventType;
use payoutd_core::{NewPayout, PayoutState};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::payouts::{NewPayoutColumns, new_payout_columns};
use crate::row::{RawPayoutRow, payout_columns};
use crate::webhooks::{PayoutChange, WEBHOOK_CHANNEL};
use crate::{PayoutRow, StoreError, WAKE_CHANNEL, payout_view};

/// Payouts written per statement: large enough that a 10,000-row batch takes two statements,
/// small enough that one statement's arrays stay a few megabytes.
const CHUNK: usize = 5_000;

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Stored; its payouts are not scheduled until another client approves it.
    AwaitingApproval,
    /// Its payouts are being worked on.
    Processing,
    /// Every payout is final (paid, failed or cancelled); `batch.completed` was written.
    Completed,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Processing => "processing",
            Self::Completed => "completed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "awaiting_approval" => Ok(Self::AwaitingApproval),
            "processing" => Ok(Self::Processing),
            "completed" => Ok(Self::Completed),
            other => Err(StoreError::Corrupt(format!("unknown batch state {other:?}"))),
        }
    }
}

/// A batch row.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    pub id: Uuid,
    pub client_id: String,
    pub reference: String,
    #[serde(skip)]
    pub content_hash: Vec<u8>,
    pub format: String,
    pub state: BatchState,
    pub rows: i32,
    pub approved_by_client: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub cancelled_by_client: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RawBatch {
    id: Uuid,
    client_id: String,
    reference: String,
    content_hash: Vec<u8>,
    format: String,
    state: String,
    row_count: i32,
    approved_by_client: Option<String>,
    approved_at: Option<DateTime<Utc>>,
    cancelled_by_client: Option<String>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
    completed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

macro_rules! batch_columns {
    () => {
        "id, client_id, reference, content_hash, format, state::text AS state, row_count, approved_by_client,
         approved_at, cancelled_by_client, cancelled_at, cancel_reason, completed_at, created_at, updated_at"
    };
}

impl TryFrom<RawBatch> for Batch {
    type Error = StoreError;

    fn try_from(r: RawBatch) -> Result<Self, StoreError> {
        Ok(Batch {
            id: r.id,
            client_id: r.client_id,
            reference: r.reference,
            content_hash: r.content_hash,
            format: r.format,
            state: BatchState::parse(&r.state)?,
            rows: r.row_count,
            approved_by_client: r.approved_by_client,
            approved_at: r.approved_at,
            cancelled_by_client: r.cancelled_by_client,
            cancelled_at: r.cancelled_at,
            cancel_reason: r.cancel_reason,
            completed_at: r.completed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// One validated row, ready to be stored.
#[derive(Debug, Clone)]
pub struct BatchPayout<'a> {
    /// The row number in the file.
    pub row: u32,
    pub payout: &'a NewPayout,
    /// sha256 of the canonical request, as `POST /v1/payouts` computes it, so that the same
    /// payout sent alone later (same external_id, same content) replays this one.
    pub request_hash: Vec<u8>,
    /// The provider's own id of the account (the connector's `account()`).
    pub account: String,
}

/// Everything a new batch needs.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub client_id: &'a str,
    pub reference: &'a str,
    pub content_hash: &'a [u8],
    pub format: &'a str,
    pub token_id: Option<Uuid>,
    /// The batch waits for another client's approval; its payouts are not scheduled.
    pub awaiting_approval: bool,
    pub rows: &'a [BatchPayout<'a>],
    /// The client's daily maximum per currency (operator controls). Rows were checked against
    /// it before; here the batch's total is checked again under the same per-client, per-currency
    /// lock single payouts take, so concurrent enqueues cannot both fit under one maximum.
    pub daily_caps: &'a [(String, Decimal)],
}

/// An external id of the file that the client already used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TakenExternalId {
    pub row: u32,
    pub external_id: String,
    pub existing_payout_id: Uuid,
}

#[derive(Debug)]
pub enum CreateBatch {
    Created(Batch),
    /// The same reference with the same content: the batch stored before.
    Replayed(Batch),
    /// The same reference with other content.
    ReferenceConflict {
        existing_id: Uuid,
    },
    /// Rows whose external id the client already has (nothing was stored).
    ExternalIdsTaken(Vec<TakenExternalId>),
    /// With what the client sent meanwhile, the batch no longer fits its daily maximum in this
    /// currency (nothing was stored).
    OverDailyLimit {
        currency: String,
        max: Decimal,
        spent_today: Decimal,
        batch_total: Decimal,
    },
}

/// The batch this client stored under `reference`, if any.
pub async fn by_reference(
    pool: &PgPool,
    client_id: &str,
    reference: &str,
) -> Result<Option<Batch>, StoreError> {
    let raw: Option<RawBatch> = sqlx::query_as(concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE client_id = $1 AND reference = $2"
    ))
    .bind(client_id)
    .bind(reference)
    .fetch_optional(pool)
    .await?;
    raw.map(Batch::try_from).transpose()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Batch>, StoreError> {
    let raw: Option<RawBatch> =
        sqlx::query_as(concat!("SELECT ", batch_columns!(), " FROM batches WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    raw.map(Batch::try_from).transpose()
}

fn replay_or_conflict(existing: Batch, hash: &[u8]) -> CreateBatch {
    if existing.content_hash == hash {
        CreateBatch::Replayed(existing)
    } else {
        CreateBatch::ReferenceConflict { existing_id: existing.id }
    }
}

/// Rows of `rows` whose external id the client already has.
async fn taken(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    client_id: &str,
    rows: &[BatchPayout<'_>],
) -> Result<Vec<TakenExternalId>, StoreError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.payout.external_id.as_str()).collect();
    let found: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT external_id, id FROM payouts WHERE client_id = $1 AND external_id = ANY ($2)")
            .bind(client_id)
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
    let found: BTreeMap<String, Uuid> = found.into_iter().collect();
    Ok(rows
        .iter()
        .filter_map(|r| {
            found.get(&r.payout.external_id).map(|id| TakenExternalId {
                row: r.row,
                external_id: r.payout.external_id.clone(),
                existing_payout_id: *id,
            })
        })
        .collect())
}

/// Stores a batch and all its payouts in one transaction, or nothing (see the module docs).
pub async fn create(pool: &PgPool, new: &NewBatch<'_>) -> Result<CreateBatch, StoreError> {
    if let Some(existing) = by_reference(pool, new.client_id, new.reference).await? {
        return Ok(replay_or_conflict(existing, new.content_hash));
    }
    let row_count = i32::try_from(new.rows.len()).map_err(|_| StoreError::Refused("too many rows".into()))?;
    let id = Uuid::now_v7();
    let state = if new.awaiting_approval { BatchState::AwaitingApproval } else { BatchState::Processing };
    let mut tx = pool.begin().await?;
    // Two uploads under one reference at once: the second waits here for the first to commit
    // and then inserts nothing, and answers as a replay or a conflict.
    let inserted: Option<RawBatch> = sqlx::query_as(concat!(
        "INSERT INTO batches (id, client_id, reference, content_hash, format, state, row_count, created_by_token)
         VALUES ($1, $2, $3, $4, $5, $6::batch_state, $7, $8)
         ON CONFLICT (client_id, reference) DO NOTHING
         RETURNING ",
        batch_columns!()
    ))
    .bind(id)
    .bind(new.client_id)
    .bind(new.reference)
    .bind(new.content_hash)
    .bind(new.format)
    .bind(state.as_str())
    .bind(row_count)
    .bind(new.token_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(raw) = inserted else {
        drop(tx);
        let existing = by_reference(pool, new.client_id, new.reference).await?.ok_or_else(|| {
            StoreError::Corrupt("a batch reference conflicted but no batch holds it".into())
        })?;
        return Ok(replay_or_conflict(existing, new.content_hash));
    };
    // Checked only now, under the reference's row lock: an identical upload racing this one
    // waits at the insert above and then answers as a replay, not with these ids as "taken".
    let already = taken(&mut tx, new.client_id, new.rows).await?;
    if !already.is_empty() {
        return Ok(CreateBatch::ExternalIdsTaken(already));
    }
    for (currency, max) in new.daily_caps {
        crate::client_limits::lock_client_currency(&mut tx, new.client_id, currency).await?;
        let spent_today = crate::client_limits::spent_today(&mut *tx, new.client_id, currency).await?;
        let batch_total: Decimal = new
            .rows
            .iter()
            .filter(|r| r.payout.money.currency().code() == currency)
            .map(|r| r.payout.money.amount())
            .sum();
        if spent_today + batch_total > *max {
            return Ok(CreateBatch::OverDailyLimit {
                currency: currency.clone(),
                max: *max,
                spent_today,
                batch_total,
            });
        }
    }
    let reason = if new.awaiting_approval {
        "payout accepted in a batch; it waits for the batch's approval"
    } else {
        "payout accepted in a batch"
    };
    for chunk in new.rows.chunks(CHUNK) {
        let n = chunk.len();
        let mut columns = NewPayoutColumns::default();
        let mut rows = Vec::with_capacity(n);
        for r in chunk {
            columns.push(r.payout, &r.request_hash, &r.account)?;
            rows.push(i32::try_from(r.row).unwrap_or(i32::MAX));
        }
        let stored: Vec<(i32,)> = columns
            .bind(sqlx::query_as(concat!(
                "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account,
                                      amount, currency, destination, state, next_run_at, batch_id, batch_row)
                 SELECT u.id, $9, u.external_id, 'external_id:' || u.external_id, u.request_hash, u.provider,
                        u.account, u.amount, u.currency, u.destination, 'pending',
                        CASE WHEN $11 THEN NULL ELSE now() END, $10, r.row
                   FROM ",
                new_payout_columns!(),
                " JOIN unnest($12::int4[]) WITH ORDINALITY AS r(row, n) USING (n)
                 ON CONFLICT DO NOTHING
                 RETURNING batch_row"
            )))
            .bind(new.client_id)
            .bind(id)
            .bind(new.awaiting_approval)
            .bind(&rows)
            .fetch_all(&mut *tx)
            .await?;
        if stored.len() != n {
            // A payout with one of these external ids was stored since the check above (a
            // single payout or another batch): nothing of this batch is kept.
            drop(tx);
            let mut fresh = pool.begin().await?;
            let already = taken(&mut fresh, new.client_id, new.rows).await?;
            drop(fresh);
            if already.is_empty() {
                return Err(StoreError::Corrupt(
                    "batch rows conflicted, but no payout holds their ids".into(),
                ));
            }
            return Ok(CreateBatch::ExternalIdsTaken(already));
        }
        sqlx::query(
            "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason, detail)
             SELECT u.id, NULL, 'pending', 'api', $2, jsonb_build_object('batch_id', $1::uuid, 'row', u.row)
               FROM UNNEST($3::uuid[], $4::int4[]) AS u (id, row)",
        )
        .bind(id)
        .bind(reason)
        .bind(&columns.ids)
        .bind(&rows)
        .execute(&mut *tx)
        .await?;
    }
    if !new.awaiting_approval {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(CreateBatch::Created(Batch::try_from(raw)?))
}

/// What an approval did.
#[derive(Debug)]
pub enum Approval {
    /// Released: its payouts are scheduled now.
    Approved(Batch),
    /// The uploader's own client cannot approve its batch.
    SameClient,
    /// Nothing waits for approval (approved before, or never needed it).
    NotAwaiting(Batch),
    NotFound,
}

/// Releases a batch that waits for approval. `approver_client` must differ from the
/// uploader's client (maker/checker): another token of the same client is the same identity.
pub async fn approve(
    pool: &PgPool,
    id: Uuid,
    approver_client: &str,
    approver_token: Option<Uuid>,
) -> Result<Approval, StoreError> {
    let mut tx = pool.begin().await?;
    let raw: Option<RawBatch> =
        sqlx::query_as(concat!("SELECT ", batch_columns!(), " FROM batches WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(batch) = raw.map(Batch::try_from).transpose()? else {
        return Ok(Approval::NotFound);
    };
    if batch.client_id == approver_client {
        return Ok(Approval::SameClient);
    }
    if batch.state != BatchState::AwaitingApproval {
        return Ok(Approval::NotAwaiting(batch));
    }
    let raw: RawBatch = sqlx::query_as(concat!(
        "UPDATE batches SET state = 'processing', approved_by_client = $2, approved_by_token = $3,
                approved_at = now(), updated_at = now()
          WHERE id = $1
      RETURNING ",
        batch_columns!()
    ))
    .bind(id)
    .bind(approver_client)
    .bind(approver_token)
    .fetch_one(&mut *tx)
    .await?;
    let reason = format!("batch approved by client {approver_client}; scheduled");
    sqlx::query(
        "WITH released AS (
             UPDATE payouts SET next_run_at = now(), updated_at = now()
              WHERE batch_id = $1 AND state = 'pending' AND next_run_at IS NULL
          RETURNING id
         )
         INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason)
         SELECT id, 'pending', 'pending', $2, $3 FROM released",
    )
    .bind(id)
    .bind(format!("approver:{approver_client}"))
    .bind(&reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Approval::Approved(Batch::try_from(raw)?))
}

/// What a cancel did.
#[derive(Debug)]
pub enum Cancellation {
    /// `cancelled` payouts were cancelled now; `continuing` have an intent (or a step being
    /// written at this moment) and go on.
    Done {
        batch: Batch,
        cancelled: u64,
        continuing: u64,
    },
    /// The batch is complete: there is nothing left to cancel.
    AlreadyCompleted(Batch),
    NotFound,
}

/// Cancels every payout of the batch that has no intent yet (pending or checked; the design's
/// rule: cancelled only before the intent is recorded). The others continue, and the report
/// says which is which. Safe against a worker holding such a payout's lease: the fencing token
/// moves on, so its next write (the intent) is refused and nothing is sent. Can be repeated.
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    client_id: &str,
    reason: &str,
) -> Result<Cancellation, StoreError> {
    let reason = reason.trim();
    let reason = if reason.is_empty() { "cancelled with its batch" } else { reason };
    let mut tx = pool.begin().await?;
    let raw: Option<RawBatch> =
        sqlx::query_as(concat!("SELECT ", batch_columns!(), " FROM batches WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(batch) = raw.map(Batch::try_from).transpose()? else {
        return Ok(Cancellation::NotFound);
    };
    if batch.state == BatchState::Completed {
        return Ok(Cancellation::AlreadyCompleted(batch));
    }
    let text = format!("cancelled with batch {}: {reason}", batch.id);
    // Rows a transition holds at this moment are skipped (and go on): waiting for them while
    // holding the batch row could deadlock with that transition's completion hook.
    let before: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, state::text FROM payouts
          WHERE batch_id = $1 AND state IN ('pending', 'checked')
          ORDER BY batch_row
          FOR UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = before.iter().map(|(id, _)| *id).collect();
    let from: Vec<&str> = before.iter().map(|(_, state)| state.as_str()).collect();
    let cancelled: Vec<RawPayoutRow> = sqlx::query_as(concat!(
        "UPDATE payouts SET state = 'cancelled', next_run_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                fencing_token = fencing_token + 1, finalized_at = now(), updated_at = now(), last_error = $2
          WHERE id = ANY ($1)
      RETURNING ",
        payout_columns!()
    ))
    .bind(&ids)
    .bind(&text)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason)
         SELECT u.id, u.from_state::payout_state, 'cancelled', $3, $4
           FROM UNNEST($1::uuid[], $2::text[]) AS u (id, from_state)",
    )
    .bind(&ids)
    .bind(&from)
    .bind(format!("client:{client_id}"))
    .bind(&text)
    .execute(&mut *tx)
    .await?;
    // Backends hear of each cancelled payout as of any other final state: one statement for
    // all of them instead of one per payout.
    let mut views = Vec::with_capacity(cancelled.len());
    for raw in cancelled {
        let row = PayoutRow::try_from(raw)?;
        views.push((row.id, row.client_id.clone(), row.db_now, payout_view::payout_json(&row)));
    }
    outbox_payout_events(&mut tx, EventType::PayoutCancelled, &views).await?;
    let raw: RawBatch = sqlx::query_as(concat!(
        "UPDATE batches SET cancelled_by_client = $2, cancelled_at = now(), cancel_reason = $3, updated_at = now()
          WHERE id = $1
      RETURNING ",
        batch_columns!()
    ))
    .bind(id)
    .bind(client_id)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    complete_if_done(&mut tx, id).await?;
    let continuing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payouts WHERE batch_id = $1 AND state NOT IN ('paid', 'failed', 'cancelled')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let batch = get(pool, id).await?.map_or(Batch::try_from(raw), Ok)?;
    Ok(Cancellation::Done {
        batch,
        cancelled: u64::try_from(ids.len()).unwrap_or(0),
        continuing: u64::try_from(continuing).unwrap_or(0),
    })
}

/// Writes one webhook event of `event_type` per payout, with a delivery for each matching
/// endpoint, in one statement (the shape `webhooks::record_payout_change` writes one by one).
async fn outbox_payout_events(
    tx: &mut Transaction<'_, Postgres>,
    event_type: EventType,
    views: &[(Uuid, String, DateTime<Utc>, Value)],
) -> Result<(), StoreError> {
    if views.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(views.len());
    let mut clients = Vec::with_capacity(views.len());
    let mut payouts = Vec::with_capacity(views.len());
    let mut payloads = Vec::with_capacity(views.len());
    for (payout_id, client_id, now, view) in views {
        let id = Uuid::now_v7();
        ids.push(id);
        clients.push(client_id.as_str());
        payouts.push(*payout_id);
        payloads.push(
            json!({ "id": id, "type": event_type.as_str(), "created_at": now, "data": { "payout": view } })
                .to_string(),
        );
    }
    sqlx::query(
        "WITH ev AS (
             INSERT INTO webhook_events (id, client_id, event_type, payout_id, payload)
             SELECT u.id, u.client_id, $5, u.payout_id, u.payload::jsonb
               FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[]) AS u (id, client_id, payout_id, payload)
             RETURNING id, client_id, event_type
         ), d AS (
             INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
             SELECT ev.id, ep.id, now() FROM ev
               JOIN webhook_endpoints ep ON ep.client_id = ev.client_id
              WHERE ep.deleted_at IS NULL AND ev.event_type = ANY (ep.event_types)
             RETURNING 1
         )
         SELECT pg_notify($6, '') FROM (SELECT 1 FROM d LIMIT 1) AS any_delivery",
    )
    .bind(&ids)
    .bind(&clients)
    .bind(&payouts)
    .bind(&payloads)
    .bind(event_type.as_str())
    .bind(WEBHOOK_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ---- completion -----------------------------------------------------------------------------

/// The completion hook, called by `webhooks::record_payout_change` inside the transaction of
/// every announced payout change. A change that made a batch payout final completes its batch
/// when no payout of it is open any more.
pub(crate) async fn after_payout_change(
    tx: &mut Transaction<'_, Postgres>,
    payout_id: Uuid,
    change: PayoutChange,
) -> Result<(), StoreError> {
    if !becomes_final(change) {
        return Ok(());
    }
    let batch: Option<Option<Uuid>> = sqlx::query_scalar("SELECT batch_id FROM payouts WHERE id = $1")
        .bind(payout_id)
        .fetch_optional(&mut **tx)
        .await?;
    after_change_in_batch(tx, payout_id, batch.flatten(), change).await
}

fn becomes_final(change: PayoutChange) -> bool {
    match change {
        PayoutChange::Entered(state) => state.is_final(),
        PayoutChange::Resolved { to, .. } => to.is_final(),
    }
}

/// [`after_payout_change`] when the caller knows the payout's batch (`None`: not in a batch).
pub(crate) async fn after_change_in_batch(
    tx: &mut Transaction<'_, Postgres>,
    payout_id: Uuid,
    batch_id: Option<Uuid>,
    change: PayoutChange,
) -> Result<(), StoreError> {
    let Some(batch_id) = batch_id.filter(|_| becomes_final(change)) else { return Ok(()) };
    // The fast path, taken by every final transition but the last few: lock another open
    // payout of the batch that no transaction holds right now. It is certainly open, and
    // whoever makes it final later has to wait for this transaction to commit, so it will see
    // this payout final: this one is not the last and need not touch the batch row. Rows are
    // tried from the end of the file, the ones workers reach last. Without this, every final
    // transition of a batch would queue on the batch row until its commit, one at a time
    // (measured: most of the database waits of a 5,000-row batch were on that row).
    let another_open: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM payouts
          WHERE batch_id = $1 AND id <> $2 AND state NOT IN ('paid', 'failed', 'cancelled')
          ORDER BY batch_row DESC
          LIMIT 1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(batch_id)
    .bind(payout_id)
    .fetch_optional(&mut **tx)
    .await?;
    if another_open.is_some() {
        return Ok(());
    }
    complete_if_done(tx, batch_id).await
}

/// Marks the batch completed and writes `batch.completed` if none of its payouts is open.
///
/// Exactly once, even when its last two payouts become final in two transactions at the same
/// moment: each takes the batch row's lock first, and under READ COMMITTED the question "is any
/// payout still open?" is asked by a statement that starts after the lock is held, so it sees
/// everything the transaction that held the lock before committed. The first of the two sees
/// the other's payout still open; the second sees none and completes the batch; `completed_at`
/// being set makes any later call a no-op. (The fast path in [`after_payout_change`] skips this
/// only when it holds another open payout, which then cannot become final before it commits.)
async fn complete_if_done(tx: &mut Transaction<'_, Postgres>, batch_id: Uuid) -> Result<(), StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state::text FROM batches WHERE id = $1 FOR UPDATE")
            .bind(batch_id)
            .fetch_optional(&mut **tx)
            .await?;
    if state.as_deref() != Some(BatchState::Processing.as_str())
        && state.as_deref() != Some(BatchState::AwaitingApproval.as_str())
    {
        return Ok(());
    }
    let open: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payouts
                         WHERE batch_id = $1 AND state NOT IN ('paid', 'failed', 'cancelled'))",
    )
    .bind(batch_id)
    .fetch_one(&mut **tx)
    .await?;
    if open {
        return Ok(());
    }
    let raw: Option<RawBatch> = sqlx::query_as(concat!(
        "UPDATE batches SET state = 'completed', completed_at = now(), updated_at = now()
          WHERE id = $1 AND completed_at IS NULL
      RETURNING ",
        batch_columns!()
    ))
    .bind(batch_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(raw) = raw else { return Ok(()) };
    let batch = Batch::try_from(raw)?;
    let totals = totals_in(&mut **tx, batch_id).await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut **tx).await?;
    let id = Uuid::now_v7();
    let payload = json!({
        "id": id,
        "type": EventType::BatchCompleted.as_str(),
        "created_at": now,
        "data": { "batch": summary_json(&batch, &totals) },
    });
    sqlx::query(
        "WITH ev AS (
             INSERT INTO webhook_events (id, client_id, event_type, payout_id, payload)
             VALUES ($1, $2, $3, NULL, $4)
             RETURNING id, client_id, event_type
         ), d AS (
             INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
             SELECT ev.id, ep.id, now() FROM ev
               JOIN webhook_endpoints ep ON ep.client_id = ev.client_id
              WHERE ep.deleted_at IS NULL AND ev.event_type = ANY (ep.event_types)
             RETURNING 1
         )
         SELECT pg_notify($5, '') FROM (SELECT 1 FROM d LIMIT 1) AS any_delivery",
    )
    .bind(id)
    .bind(&batch.client_id)
    .bind(EventType::BatchCompleted.as_str())
    .bind(&payload)
    .bind(WEBHOOK_CHANNEL)
    .execute(&mut **tx)
    .await?;
    tracing::info!(batch.id = %batch_id, rows = batch.rows, "batch completed");
    Ok(())
}

// ---- reading --------------------------------------------------------------------------------

/// Payouts of one state in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StateTotal {
    pub state: String,
    pub currency: String,
    pub count: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

async fn totals_in<'e, E>(executor: E, batch_id: Uuid) -> Result<Vec<StateTotal>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows = sqlx::query_as(
        "SELECT state::text AS state, currency, count(*) AS count, sum(amount) AS amount
           FROM payouts WHERE batch_id = $1 GROUP BY state, currency ORDER BY state, currency",
    )
    .bind(batch_id)
    .fetch_all(executor)
    .await?;
    Ok(rows)
}

/// Counts and sums per state and currency.
pub async fn totals(pool: &PgPool, batch_id: Uuid) -> Result<Vec<StateTotal>, StoreError> {
    totals_in(pool, batch_id).await
}

/// The batch as clients see it: what `GET /v1/batches/{id}` answers and `batch.completed`
/// carries.
pub fn summary_json(batch: &Batch, totals: &[StateTotal]) -> Value {
    let mut by_state: BTreeMap<&str, i64> = PayoutState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut by_currency: BTreeMap<&str, (i64, Decimal)> = BTreeMap::new();
    let mut final_count = 0;
    for t in totals {
        *by_state.entry(t.state.as_str()).or_default() += t.count;
        let c = by_currency.entry(t.currency.as_str()).or_default();
        c.0 += t.count;
        c.1 += t.amount;
        if t.state.parse::<PayoutState>().is_ok_and(PayoutState::is_final) {
            final_count += t.count;
        }
    }
    let currencies: Vec<Value> = by_currency
        .into_iter()
        .map(|(currency, (count, amount))| json!({ "currency": currency, "count": count, "amount": amount.to_string() }))
        .collect();
    json!({
        "id": batch.id,
        "reference": batch.reference,
        "state": batch.state.as_str(),
        "format": batch.format,
        "rows": batch.rows,
        "final_payouts": final_count,
        "open_payouts": i64::from(batch.rows) - final_count,
        "counts": by_state,
        "currencies": currencies,
        "totals": totals,
        "approved_by_client": batch.approved_by_client,
        "approved_at": batch.approved_at,
        "cancelled_at": batch.cancelled_at,
        "cancel_reason": batch.cancel_reason,
        "completed_at": batch.completed_at,
        "created_at": batch.created_at,
    })
}

/// One line of a batch's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ReportLine {
    pub row: i32,
    pub external_id: String,
    pub state: String,
    pub account: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub provider_reference: Option<String>,
    /// Why it failed, was cancelled or parked (the last error, else the last event's reason).
    pub error: Option<String>,
}

/// Every row of the batch, in file order.
pub async fn report(pool: &PgPool, batch_id: Uuid) -> Result<Vec<ReportLine>, StoreError> {
    let lines = sqlx::query_as(
        "SELECT p.batch_row AS row, p.external_id, p.state::text AS state, p.provider AS account, p.amount,
                p.currency, p.provider_reference,
                CASE WHEN p.state IN ('failed', 'cancelled', 'needs_review')
                     THEN COALESCE(p.last_error, e.reason) END AS error
           FROM payouts p
           LEFT JOIN LATERAL (SELECT reason FROM payout_events WHERE payout_id = p.id ORDER BY id DESC LIMIT 1) e
             ON p.state IN ('failed', 'cancelled', 'needs_review')
          WHERE p.batch_id = $1
          ORDER BY p.batch_row",
    )
    .bind(batch_id)
    .fetch_all(pool)
    .await?;
    Ok(lines)
}

/// Batches of a client, newest first.
pub async fn list(pool: &PgPool, client_id: &str, limit: i64) -> Result<Vec<Batch>, StoreError> {
    let raws: Vec<RawBatch> = sqlx::query_as(concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE client_id = $1 ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(client_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    raws.into_iter().map(Batch::try_from).collect()
}

/// Batches not yet completed, for the gauges.
#[derive(Debug, Clone, Default)]
pub struct OpenBatchFigures {
    /// (state, batches) for `awaiting_approval` and `processing`.
    pub by_state: Vec<(String, i64)>,
    /// Payouts of batches that are not final yet (the partial index on open batch payouts).
    pub open_payouts: i64,
}

pub async fn open_figures(pool: &PgPool) -> Result<OpenBatchFigures, StoreError> {
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM batches WHERE state <> 'completed' GROUP BY state")
            .fetch_all(pool)
            .await?;
    let open_payouts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payouts WHERE batch_id IS NOT NULL AND state NOT IN ('paid', 'failed', 'cancelled')",
    )
    .fetch_one(pool)
    .await?;
    Ok(OpenBatchFigures { by_state, open_payouts })
}

/// Batches of every client that wait for a second person's approval, oldest first: what an
/// approver (scope `batches.approve`) has to look at.
pub async fn awaiting_approval(pool: &PgPool, limit: i64) -> Result<Vec<Batch>, StoreError> {
    let raws: Vec<RawBatch> = sqlx::query_as(concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE state = 'awaiting_approval' ORDER BY created_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    raws.into_iter().map(Batch::try_from).collect()
}
