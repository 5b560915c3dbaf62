//! Inserting payouts (idempotently) and reading them back with their timelines.

use chrono::{DateTime, Utc};
use payoutd_core::{NewPayout, PayoutState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::insert_event;
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// Everything needed to store a new payout.
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    pub client_id: &'a str,
    pub idempotency_key: &'a str,
    /// sha256 of the canonical request body.
    pub request_hash: &'a [u8],
    pub account: &'a str,
    pub payout: &'a NewPayout,
    pub traceparent: Option<&'a str>,
}

#[derive(Debug)]
pub enum EnqueueResult {
    Created(PayoutRow),
    /// The same request again, under the same idempotency key or under the same external_id
    /// with another key: the original payout.
    Replayed(PayoutRow),
    /// The same key with a different request.
    Conflict {
        existing_id: Uuid,
    },
    /// Another idempotency key, but the client already has a payout with this external_id and
    /// it was created from a different request.
    ExternalIdConflict {
        existing_id: Uuid,
    },
}

/// Stores a new payout with its first event and wakes a waiting worker, all in one transaction.
///
/// A client's payout is identified twice: by its idempotency key and by its external_id (both
/// unique per client in the schema). When either is taken, nothing is inserted and the
/// existing payout decides the answer: the same request replays it, a different one is a
/// conflict. Two concurrent requests cannot both insert: the insert waits for the other
/// transaction and then sees its row.
pub async fn enqueue(pool: &PgPool, e: &Enqueue<'_>) -> Result<EnqueueResult, StoreError> {
    let tx = pool.begin().await?;
    enqueue_in(pool, tx, e).await
}

/// [`enqueue`] in a transaction the caller opened and may hold locks in (a client's limit
/// lock, see `client_limits::enqueue`); committed here, or rolled back when the payout exists.
pub(crate) async fn enqueue_in(
    pool: &PgPool,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    e: &Enqueue<'_>,
) -> Result<EnqueueResult, StoreError> {
    let id = Uuid::now_v7();
    let destination =
        serde_json::to_value(&e.payout.destination).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    let inserted: Option<RawPayoutRow> = sqlx::query_as(concat!(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider,
                              account, amount, currency, destination, state, next_run_at, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', now(), $11)
         ON CONFLICT DO NOTHING
         RETURNING ",
        payout_columns!(),
        ""
    ))
    .bind(id)
    .bind(e.client_id)
    .bind(&e.payout.external_id)
    .bind(e.idempotency_key)
    .bind(e.request_hash)
    .bind(&e.payout.provider)
    .bind(e.account)
    .bind(e.payout.money.amount())
    .bind(e.payout.money.currency().code())
    .bind(destination)
    .bind(e.traceparent)
    .fetch_optional(&mut *tx)
    .await?;

    let Some(raw) = inserted else {
        tx.rollback().await?;
        return existing(pool, e).await;
    };
    insert_event(&mut tx, id, None, PayoutState::Pending, "api", "payout accepted", None, None).await?;
    sqlx::query(crate::queue::WAKE_IF_IDLE).bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(EnqueueResult::Created(PayoutRow::try_from(raw)?))
}

/// The payout that took the insert's place: the one with the same idempotency key if there is
/// one, else the one with the same external_id.
async fn existing(pool: &PgPool, e: &Enqueue<'_>) -> Result<EnqueueResult, StoreError> {
    let found: Option<(Uuid, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT id, request_hash, idempotency_key = $2 AS same_key
           FROM payouts
          WHERE client_id = $1 AND (idempotency_key = $2 OR external_id = $3)
          ORDER BY same_key DESC, created_at
          LIMIT 1",
    )
    .bind(e.client_id)
    .bind(e.idempotency_key)
    .bind(&e.payout.external_id)
    .fetch_optional(pool)
    .await?;
    let Some((existing_id, hash, same_key)) = found else {
        // Payouts are never deleted, so the row the insert ran into is still there.
        return Err(StoreError::Corrupt(format!(
            "enqueue of external_id {:?} conflicted, but no payout holds its key or external_id",
            e.payout.external_id
        )));
    };
    if hash != e.request_hash {
        return Ok(if same_key {
            EnqueueResult::Conflict { existing_id }
        } else {
            EnqueueResult::ExternalIdConflict { existing_id }
        });
    }
    let row = get(pool, existing_id).await?.ok_or_else(|| StoreError::Corrupt("vanished".into()))?;
    Ok(EnqueueResult::Replayed(row))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<PayoutRow>, StoreError> {
    let raw: Option<RawPayoutRow> =
        sqlx::query_as(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    raw.map(PayoutRow::try_from).transpose()
}

pub async fn get_by_reference(pool: &PgPool, reference: &str) -> Result<Option<PayoutRow>, StoreError> {
    let raw: Option<RawPayoutRow> =
        sqlx::query_as(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE provider_reference = $1"))
            .bind(reference)
            .fetch_optional(pool)
            .await?;
    raw.map(PayoutRow::try_from).transpose()
}

/// One entry of a payout's audit timeline.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Event {
    pub id: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub reason: String,
    pub detail: Option<serde_json::Value>,
    pub fencing_token: Option<i64>,
    pub created_at: DateTime<Utc>,
}

pub async fn timeline(pool: &PgPool, id: Uuid) -> Result<Vec<Event>, StoreError> {
    let events = sqlx::query_as(
        "SELECT id, from_state::text AS from_state, to_state::text AS to_state, actor, reason, detail,
                fencing_token, created_at
           FROM payout_events WHERE payout_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(events)
}

/// The payout a provider reference belongs to and the trace context stored at its enqueue, so
/// that a callback's span joins the payout's trace.
pub async fn trace_by_reference(
    pool: &PgPool,
    provider: &str,
    reference: &str,
) -> Result<Option<(Uuid, Option<String>)>, StoreError> {
    let found: Option<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, traceparent FROM payouts WHERE provider = $1 AND provider_reference = $2")
            .bind(provider)
            .bind(reference)
            .fetch_optional(pool)
            .await?;
    Ok(found)
}
