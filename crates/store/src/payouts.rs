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
    /// The same key with the same request: the original payout.
    Replayed(PayoutRow),
    /// The same key with a different request.
    Conflict {
        existing_id: Uuid,
    },
}

/// Stores a new payout with its first event and wakes the workers, all in one transaction.
pub async fn enqueue(pool: &PgPool, e: &Enqueue<'_>) -> Result<EnqueueResult, StoreError> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let destination =
        serde_json::to_value(&e.payout.destination).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    let inserted: Option<RawPayoutRow> = sqlx::query_as(concat!(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider,
                              account, amount, currency, destination, state, next_run_at, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', now(), $11)
         ON CONFLICT (client_id, idempotency_key) DO NOTHING
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
        let (existing_id, hash): (Uuid, Vec<u8>) = sqlx::query_as(
            "SELECT id, request_hash FROM payouts WHERE client_id = $1 AND idempotency_key = $2",
        )
        .bind(e.client_id)
        .bind(e.idempotency_key)
        .fetch_one(pool)
        .await?;
        if hash != e.request_hash {
            return Ok(EnqueueResult::Conflict { existing_id });
        }
        let row = get(pool, existing_id).await?.ok_or_else(|| StoreError::Corrupt("vanished".into()))?;
        return Ok(EnqueueResult::Replayed(row));
    };
    insert_event(&mut tx, id, None, PayoutState::Pending, "api", "payout accepted", None, None).await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(EnqueueResult::Created(PayoutRow::try_from(raw)?))
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
