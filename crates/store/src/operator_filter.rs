//! Finding payouts for operators, across every client: a filter (states, account, client,
//! external id, creation time range, batch) with cursor pagination on (created_at, id), newest
//! first, and the counts and ids bulk actions work on.
//!
//! The batch filter needs the `payouts.batch_id` column of the batches feature; where the
//! schema has none, [`batch_filter_available`] says so and callers decide (a listing ignores
//! it and says so, a bulk action refuses it: acting on more than was asked is not an option).

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::{PayoutRow, StoreError};

/// Which payouts. Every field narrows; an empty filter matches every payout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutFilter {
    /// Any of these states (none: any state).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "state_names")]
    pub states: Vec<PayoutState>,
    /// The configured provider account name (what payouts name as `account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Created at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_to: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
}

impl PayoutFilter {
    /// The filter narrowed to `states` (a bulk action's allowed states): the intersection;
    /// `None` when no state is left, i.e. nothing can match.
    pub fn within(&self, states: &[PayoutState]) -> Option<PayoutFilter> {
        let mut f = self.clone();
        f.states = if self.states.is_empty() {
            states.to_vec()
        } else {
            self.states.iter().copied().filter(|s| states.contains(s)).collect()
        };
        (!f.states.is_empty()).then_some(f)
    }

    fn state_texts(&self) -> Option<Vec<String>> {
        (!self.states.is_empty()).then(|| self.states.iter().map(|s| s.as_str().to_owned()).collect())
    }
}

/// States as their names in JSON.
mod state_names {
    use payoutd_core::PayoutState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(states: &[PayoutState], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(states.iter().map(|st| st.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PayoutState>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names.iter().map(|n| n.parse().map_err(serde::de::Error::custom)).collect()
    }
}

/// Where a page starts: after this (created_at, id), going back in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: hex of "<microseconds>.<id>".
    pub fn encode(&self) -> String {
        let text = format!("{}.{}", self.created_at.timestamp_micros(), self.id.simple());
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        if !text.len().is_multiple_of(2) || text.len() > 200 {
            return None;
        }
        let bytes: Option<Vec<u8>> =
            (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
        let text = String::from_utf8(bytes?).ok()?;
        let (micros, id) = text.split_once('.')?;
        let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Cursor { created_at, id: Uuid::parse_str(id).ok()? })
    }
}

/// A payout as operators see it: the row, and what only operators need.
#[derive(Debug, Clone)]
pub struct OperatorPayout {
    pub row: PayoutRow,
    pub retry_of: Option<Uuid>,
    pub retried_by: Option<Uuid>,
    pub redacted_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RawOperatorPayout {
    #[sqlx(flatten)]
    raw: RawPayoutRow,
    retry_of: Option<Uuid>,
    retried_by: Option<Uuid>,
    redacted_at: Option<DateTime<Utc>>,
}

impl TryFrom<RawOperatorPayout> for OperatorPayout {
    type Error = StoreError;

    fn try_from(r: RawOperatorPayout) -> Result<Self, StoreError> {
        Ok(OperatorPayout {
            row: PayoutRow::try_from(r.raw)?,
            retry_of: r.retry_of,
            retried_by: r.retried_by,
            redacted_at: r.redacted_at,
        })
    }
}

/// The filter's WHERE clause, with or without the batch column. Binds: $1 states, $2 account,
/// $3 client, $4 external id, $5 from, $6 to, $7 batch.
macro_rules! filter_where {
    (with_batch) => {
        concat!(filter_where!(), " AND ($7::uuid IS NULL OR batch_id = $7)")
    };
    (without_batch) => {
        concat!(filter_where!(), " AND ($7::uuid IS NULL OR $7::uuid IS NOT NULL)")
    };
    () => {
        "($1::text[] IS NULL OR state::text = ANY($1))
          AND ($2::text IS NULL OR provider = $2)
          AND ($3::text IS NULL OR client_id = $3)
          AND ($4::text IS NULL OR external_id = $4)
          AND ($5::timestamptz IS NULL OR created_at >= $5)
          AND ($6::timestamptz IS NULL OR created_at < $6)"
    };
}

macro_rules! list_query {
    ($batch:tt) => {
        concat!(
            "SELECT ",
            payout_columns!(),
            ", retry_of, retried_by, redacted_at FROM payouts WHERE ",
            filter_where!($batch),
            " AND ($8::timestamptz IS NULL OR (created_at, id) < ($8, $9))
             ORDER BY created_at DESC, id DESC LIMIT $10"
        )
    };
}

macro_rules! ids_query {
    ($batch:tt) => {
        concat!("SELECT id FROM payouts WHERE ", filter_where!($batch), " ORDER BY created_at, id LIMIT $8")
    };
}

macro_rules! count_query {
    ($batch:tt) => {
        concat!("SELECT count(*) FROM payouts WHERE ", filter_where!($batch))
    };
}

/// Whether the schema has the batches feature's `payouts.batch_id`.
pub async fn batch_filter_available(pool: &PgPool) -> Result<bool, StoreError> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = 'payouts'
                           AND column_name = 'batch_id')",
    )
    .fetch_one(pool)
    .await?;
    Ok(found)
}

/// Whether the batch filter can be applied: only asked when the filter names a batch.
async fn with_batch(pool: &PgPool, filter: &PayoutFilter) -> Result<bool, StoreError> {
    match filter.batch {
        Some(_) => batch_filter_available(pool).await,
        None => Ok(false),
    }
}

macro_rules! bind_filter {
    ($query:expr, $f:expr) => {
        $query
            .bind($f.state_texts())
            .bind($f.account.as_deref())
            .bind($f.client.as_deref())
            .bind($f.external_id.as_deref())
            .bind($f.created_from)
            .bind($f.created_to)
            .bind($f.batch)
    };
}

/// One page of payouts matching `filter`, newest first, after `cursor`; and the cursor of the
/// next page when there is one. A batch filter is ignored where the schema has no batches.
pub async fn list(
    pool: &PgPool,
    filter: &PayoutFilter,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<(Vec<OperatorPayout>, Option<Cursor>), StoreError> {
    let sql =
        if with_batch(pool, filter).await? { list_query!(with_batch) } else { list_query!(without_batch) };
    let rows: Vec<RawOperatorPayout> = bind_filter!(sqlx::query_as(sql), filter)
        .bind(cursor.map(|c| c.created_at))
        .bind(cursor.map(|c| c.id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let mut payouts = rows.into_iter().map(OperatorPayout::try_from).collect::<Result<Vec<_>, _>>()?;
    let next = if payouts.len() as i64 > limit {
        payouts.truncate(usize::try_from(limit).unwrap_or(0));
        payouts.last().map(|p| Cursor { created_at: p.row.created_at, id: p.row.id })
    } else {
        None
    };
    Ok((payouts, next))
}

/// How many payouts match `filter`.
pub async fn count(pool: &PgPool, filter: &PayoutFilter) -> Result<i64, StoreError> {
    let sql =
        if with_batch(pool, filter).await? { count_query!(with_batch) } else { count_query!(without_batch) };
    let n = bind_filter!(sqlx::query_scalar(sql), filter).fetch_one(pool).await?;
    Ok(n)
}

/// The ids of at most `limit` payouts matching `filter`, oldest first.
pub async fn ids(pool: &PgPool, filter: &PayoutFilter, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    let sql =
        if with_batch(pool, filter).await? { ids_query!(with_batch) } else { ids_query!(without_batch) };
    let ids = bind_filter!(sqlx::query_scalar(sql), filter).bind(limit).fetch_all(pool).await?;
    Ok(ids)
}

/// One payout as operators see it.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<OperatorPayout>, StoreError> {
    let raw: Option<RawOperatorPayout> = sqlx::query_as(concat!(
        "SELECT ",
        payout_columns!(),
        ", retry_of, retried_by, redacted_at FROM payouts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    raw.map(OperatorPayout::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).expect("t"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("abc"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn a_bulk_filter_is_narrowed_to_the_action_s_states() {
        let any = PayoutFilter::default();
        assert_eq!(any.within(&[PayoutState::Pending]).map(|f| f.states), Some(vec![PayoutState::Pending]));
        let paid =
            PayoutFilter { states: vec![PayoutState::Paid, PayoutState::Pending], ..Default::default() };
        let narrowed = paid.within(&[PayoutState::Pending, PayoutState::Checked]).map(|f| f.states);
        assert_eq!(narrowed, Some(vec![PayoutState::Pending]));
        let only_paid = PayoutFilter { states: vec![PayoutState::Paid], ..Default::default() };
        assert_eq!(only_paid.within(&[PayoutState::Pending]), None, "nothing can match, not everything");
        let json = serde_json::to_value(&paid).expect("json");
        assert_eq!(json, serde_json::json!({"states": ["paid", "pending"]}));
        assert_eq!(serde_json::from_value::<PayoutFilter>(json).expect("back"), paid);
    }
}
