//! Inserting payouts (idempotently) and reading them back with their timelines.

use chrono::{DateTime, Utc};
use payoutd_core::{NewPayout, PayoutState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::transitions::insert_event;
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// The unnest of [`NewPayoutColumns`] as `$1` .. `$8`, with the row number `n` (1-based, in push
/// order): `u(id, external_id, request_hash, provider, account, amount, currency, destination, n)`.
/// A macro, so that statements stay `&'static str`.
macro_rules! new_payout_columns {
    () => {
        "unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::numeric[], $7::text[],
                $8::jsonb[]) WITH ORDINALITY
            AS u(id, external_id, request_hash, provider, account, amount, currency, destination, n)"
    };
}
pub(crate) use new_payout_columns;

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

/// An [`Enqueue`] that owns its data, for handing it to another task (the API's group commit).
#[derive(Debug, Clone)]
pub struct OwnedEnqueue {
    pub client_id: String,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub account: String,
    pub payout: NewPayout,
    pub traceparent: Option<String>,
}

impl OwnedEnqueue {
    pub fn as_enqueue(&self) -> Enqueue<'_> {
        Enqueue {
            client_id: &self.client_id,
            idempotency_key: &self.idempotency_key,
            request_hash: &self.request_hash,
            account: &self.account,
            payout: &self.payout,
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// Stores many new payouts in one transaction (group commit): one INSERT for the payouts, one
/// for their first events, one wake-up, one commit. Each payout is inserted exactly as by
/// [`enqueue`]; an item whose idempotency key or external_id is taken (by an older payout or
/// by an earlier item of the same batch) is not inserted and gets [`enqueue`]'s answer for it
/// after the commit. `Err` only when the database failed the whole batch (nothing stored).
pub async fn enqueue_batch(
    pool: &PgPool,
    items: &[Enqueue<'_>],
) -> Result<Vec<Result<EnqueueResult, StoreError>>, StoreError> {
    let mut columns = NewPayoutColumns::default();
    let mut clients = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut traceparents = Vec::with_capacity(items.len());
    for e in items {
        columns.push(e.payout, e.request_hash, e.account)?;
        clients.push(e.client_id);
        keys.push(e.idempotency_key);
        traceparents.push(e.traceparent);
    }
    let mut tx = pool.begin().await?;
    // In item order, so that of two items with the same key the earlier one is stored.
    let inserted: Vec<RawPayoutRow> = columns
        .bind(sqlx::query_as(concat!(
            "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider,
                                  account, amount, currency, destination, state, next_run_at, traceparent)
             SELECT u.id, c.client_id, u.external_id, c.idempotency_key, u.request_hash, u.provider, u.account,
                    u.amount, u.currency, u.destination, 'pending', now(), c.traceparent
               FROM ",
            new_payout_columns!(),
            " JOIN unnest($9::text[], $10::text[], $11::text[]) WITH ORDINALITY
                    AS c(client_id, idempotency_key, traceparent, n) USING (n)
              ORDER BY n
             ON CONFLICT DO NOTHING
             RETURNING ",
            payout_columns!()
        )))
        .bind(&clients)
        .bind(&keys)
        .bind(&traceparents)
        .fetch_all(&mut *tx)
        .await?;
    let stored: Vec<Uuid> = inserted.iter().map(RawPayoutRow::id).collect();
    if !stored.is_empty() {
        sqlx::query(
            "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason)
             SELECT id, NULL, 'pending', 'api', 'payout accepted' FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)
              ORDER BY n",
        )
        .bind(&stored)
        .execute(&mut *tx)
        .await?;
        sqlx::query(crate::queue::WAKE_IF_IDLE).bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;

    let mut rows: std::collections::HashMap<Uuid, RawPayoutRow> =
        inserted.into_iter().map(|raw| (raw.id(), raw)).collect();
    let mut results = Vec::with_capacity(items.len());
    for (e, id) in items.iter().zip(&columns.ids) {
        results.push(match rows.remove(id) {
            Some(raw) => PayoutRow::try_from(raw).map(EnqueueResult::Created),
            None => existing(pool, e).await,
        });
    }
    Ok(results)
}

/// New payouts as one array per column, for the inserts that store many in one statement (the
/// API's group commit, batch uploads). Bound as `$1` .. `$8` (see [`new_payout_columns`]).
#[derive(Default)]
pub(crate) struct NewPayoutColumns<'a> {
    pub ids: Vec<Uuid>,
    external_ids: Vec<&'a str>,
    hashes: Vec<Vec<u8>>,
    providers: Vec<&'a str>,
    accounts: Vec<&'a str>,
    amounts: Vec<rust_decimal::Decimal>,
    currencies: Vec<&'static str>,
    destinations: Vec<serde_json::Value>,
}

impl<'a> NewPayoutColumns<'a> {
    /// Adds a payout under a new id.
    pub fn push(
        &mut self,
        payout: &'a NewPayout,
        request_hash: &[u8],
        account: &'a str,
    ) -> Result<(), StoreError> {
        self.ids.push(Uuid::now_v7());
        self.external_ids.push(payout.external_id.as_str());
        self.hashes.push(request_hash.to_vec());
        self.providers.push(payout.provider.as_str());
        self.accounts.push(account);
        self.amounts.push(payout.money.amount());
        self.currencies.push(payout.money.currency().code());
        self.destinations
            .push(serde_json::to_value(&payout.destination).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        Ok(())
    }

    /// Binds the arrays as the statement's first eight parameters.
    pub fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.external_ids)
            .bind(&self.hashes)
            .bind(&self.providers)
            .bind(&self.accounts)
            .bind(&self.amounts)
            .bind(&self.currencies)
            .bind(&self.destinations)
    }
}
