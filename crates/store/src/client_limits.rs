//! What one API client may send, so that a leaked client token cannot drain an account: a
//! maximum amount per payout and a maximum total per UTC day, both per currency, and optional
//! allow-lists of destination codes and of account numbers. Changing them is an operator action.
//!
//! [`check_payout`] is the one decision (pure, no I/O; batches use it row by row). [`enqueue`]
//! applies it at enqueue inside the payout's own transaction, holding a lock per client and
//! currency, so two concurrent requests cannot both fit under the same daily total.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payoutd_core::{Destination, Money};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::operator::Reason;
use crate::payouts::{self, Enqueue, EnqueueResult};
use crate::{StoreError, operator_events};

/// The amount limits of one currency. `None`: unlimited. `0` forbids the currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CurrencyLimits {
    pub max_amount_per_payout: Option<Decimal>,
    /// Bounds the sum of the client's payouts created in one UTC day that are not failed or
    /// cancelled (parked ones count: their money may have moved).
    pub max_total_per_day: Option<Decimal>,
}

/// Everything that bounds one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientLimits {
    pub client_id: String,
    /// By currency code ("IDR"); a currency not listed has no amount limits.
    pub currencies: BTreeMap<String, CurrencyLimits>,
    /// `Some`: the destination code (`destination.destination`) must be one of these.
    pub allowed_destination_codes: Option<Vec<String>>,
    /// `Some`: the account number (`destination.client`) must be one of these, exactly.
    pub allowed_accounts: Option<Vec<String>>,
}

/// The limit a payout broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    MaxAmountPerPayout,
    MaxTotalPerDay,
    DestinationAllowList,
    AccountAllowList,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAmountPerPayout => "max_amount_per_payout",
            Self::MaxTotalPerDay => "max_total_per_day",
            Self::DestinationAllowList => "destination_allow_list",
            Self::AccountAllowList => "account_allow_list",
        }
    }
}

/// Why a payout is over a limit: which one, and the figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{limit:?}: {detail}")]
pub struct LimitViolation {
    pub limit: Limit,
    pub detail: String,
}

/// Checks one payout against `limits`, given what the client has already sent today (UTC) in
/// the payout's currency, not counting this payout. A batch checks its rows one after another,
/// adding each accepted row's amount to `spent_today`.
pub fn check_payout(
    limits: &ClientLimits,
    money: &Money,
    destination: &Destination,
    spent_today: Decimal,
) -> Result<(), LimitViolation> {
    if let Some(codes) = &limits.allowed_destination_codes
        && !codes.iter().any(|c| c == &destination.destination)
    {
        return Err(LimitViolation {
            limit: Limit::DestinationAllowList,
            detail: format!(
                "destination code {:?} is not on the client's allow-list",
                destination.destination
            ),
        });
    }
    if let Some(accounts) = &limits.allowed_accounts
        && !accounts.iter().any(|a| a == &destination.client)
    {
        return Err(LimitViolation {
            limit: Limit::AccountAllowList,
            detail: format!(
                "account {} is not on the client's allow-list",
                crate::payout_view::mask(&destination.client)
            ),
        });
    }
    let currency = money.currency().code();
    let Some(l) = limits.currencies.get(currency) else { return Ok(()) };
    let amount = money.amount();
    if let Some(max) = l.max_amount_per_payout
        && amount > max
    {
        return Err(LimitViolation {
            limit: Limit::MaxAmountPerPayout,
            detail: format!("{amount} {currency} is more than the maximum per payout, {max} {currency}"),
        });
    }
    if let Some(max) = l.max_total_per_day
        && spent_today + amount > max
    {
        return Err(LimitViolation {
            limit: Limit::MaxTotalPerDay,
            detail: format!(
                "{spent_today} {currency} sent today (UTC) + {amount} {currency} is more than the daily maximum, \
                 {max} {currency}"
            ),
        });
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct LimitsRow {
    client_id: String,
    allowed_destination_codes: Option<Vec<String>>,
    allowed_accounts: Option<Vec<String>>,
}

#[derive(sqlx::FromRow)]
struct CurrencyRow {
    currency: String,
    max_amount_per_payout: Option<Decimal>,
    max_total_per_day: Option<Decimal>,
}

async fn load(conn: &mut PgConnection, client_id: &str) -> Result<Option<ClientLimits>, StoreError> {
    let row: Option<LimitsRow> = sqlx::query_as(
        "SELECT client_id, allowed_destination_codes, allowed_accounts FROM client_limits WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let currencies: Vec<CurrencyRow> = sqlx::query_as(
        "SELECT currency, max_amount_per_payout, max_total_per_day FROM client_currency_limits
          WHERE client_id = $1 ORDER BY currency",
    )
    .bind(client_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(ClientLimits {
        client_id: row.client_id,
        currencies: currencies
            .into_iter()
            .map(|c| {
                let limits = CurrencyLimits {
                    max_amount_per_payout: c.max_amount_per_payout,
                    max_total_per_day: c.max_total_per_day,
                };
                (c.currency, limits)
            })
            .collect(),
        allowed_destination_codes: row.allowed_destination_codes,
        allowed_accounts: row.allowed_accounts,
    }))
}

/// The limits of `client_id`, if it has any.
pub async fn get(pool: &PgPool, client_id: &str) -> Result<Option<ClientLimits>, StoreError> {
    load(&mut *pool.acquire().await?, client_id).await
}

/// Limits with who set them and when, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedLimits {
    #[serde(flatten)]
    pub limits: ClientLimits,
    pub updated_by: String,
    pub reason: String,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_recorded(pool: &PgPool, client_id: &str) -> Result<Option<RecordedLimits>, StoreError> {
    let Some(limits) = load(&mut *pool.acquire().await?, client_id).await? else { return Ok(None) };
    let (updated_by, reason, updated_at): (String, String, DateTime<Utc>) =
        sqlx::query_as("SELECT updated_by, reason, updated_at FROM client_limits WHERE client_id = $1")
            .bind(client_id)
            .fetch_one(pool)
            .await?;
    Ok(Some(RecordedLimits { limits, updated_by, reason, updated_at }))
}

/// Replaces every limit of `limits.client_id`, recording who and why.
pub async fn set(
    pool: &PgPool,
    limits: &ClientLimits,
    actor: &str,
    reason: &Reason,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let before = load(&mut tx, &limits.client_id).await?;
    sqlx::query(
        "INSERT INTO client_limits (client_id, allowed_destination_codes, allowed_accounts, updated_by, reason)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (client_id) DO UPDATE SET allowed_destination_codes = $2, allowed_accounts = $3,
                updated_by = $4, reason = $5, updated_at = now()",
    )
    .bind(&limits.client_id)
    .bind(&limits.allowed_destination_codes)
    .bind(&limits.allowed_accounts)
    .bind(actor)
    .bind(reason.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM client_currency_limits WHERE client_id = $1")
        .bind(&limits.client_id)
        .execute(&mut *tx)
        .await?;
    for (currency, l) in &limits.currencies {
        sqlx::query(
            "INSERT INTO client_currency_limits (client_id, currency, max_amount_per_payout, max_total_per_day)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&limits.client_id)
        .bind(currency)
        .bind(l.max_amount_per_payout)
        .bind(l.max_total_per_day)
        .execute(&mut *tx)
        .await?;
    }
    let detail = json!({ "before": before, "after": limits });
    operator_events::record(&mut tx, "limits_set", &limits.client_id, actor, reason.as_str(), Some(&detail))
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes every limit of `client_id`; `false` if it had none.
pub async fn clear(pool: &PgPool, client_id: &str, actor: &str, reason: &Reason) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(before) = load(&mut tx, client_id).await? else { return Ok(false) };
    sqlx::query("DELETE FROM client_limits WHERE client_id = $1").bind(client_id).execute(&mut *tx).await?;
    let detail = json!({ "before": before });
    operator_events::record(&mut tx, "limits_cleared", client_id, actor, reason.as_str(), Some(&detail))
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// What the client has sent today (UTC) in `currency`: payouts created since midnight UTC that
/// are not failed or cancelled.
pub async fn spent_today<'e, E>(conn: E, client_id: &str, currency: &str) -> Result<Decimal, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let total: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM payouts
          WHERE client_id = $1 AND currency = $2
            AND created_at >= date_trunc('day', now(), 'UTC')
            AND state NOT IN ('failed', 'cancelled')",
    )
    .bind(client_id)
    .bind(currency)
    .fetch_one(conn)
    .await?;
    Ok(total)
}

/// The outcome of an enqueue under limits.
#[derive(Debug)]
pub enum LimitedEnqueue {
    /// Within limits (or a replay or conflict of an existing payout): as [`payouts::enqueue`].
    Done(Box<EnqueueResult>),
    /// Over a limit: nothing was stored.
    OverLimit(LimitViolation),
}

/// [`payouts::enqueue`] for a client that may have limits. The limits are read, and the
/// payout checked and inserted, in one transaction; when the currency has a daily maximum, the
/// transaction first takes a lock per client and currency, held until it commits, so the next
/// request of that client in that currency sums today's payouts only after this one is stored.
/// A request for a payout that exists already (same idempotency key or external_id) is not
/// checked again: it replays or conflicts as without limits.
pub async fn enqueue(pool: &PgPool, e: &Enqueue<'_>) -> Result<LimitedEnqueue, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(limits) = load(&mut tx, e.client_id).await? else {
        return Ok(LimitedEnqueue::Done(Box::new(payouts::enqueue_in(pool, tx, e).await?)));
    };
    let currency = e.payout.money.currency().code();
    if limits.currencies.get(currency).is_some_and(|l| l.max_total_per_day.is_some()) {
        lock_client_currency(&mut tx, e.client_id, currency).await?;
    }
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payouts WHERE client_id = $1 AND (idempotency_key = $2 OR external_id = $3))",
    )
    .bind(e.client_id)
    .bind(e.idempotency_key)
    .bind(&e.payout.external_id)
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        let spent = spent_today(&mut *tx, e.client_id, currency).await?;
        if let Err(violation) = check_payout(&limits, &e.payout.money, &e.payout.destination, spent) {
            return Ok(LimitedEnqueue::OverLimit(violation));
        }
    }
    Ok(LimitedEnqueue::Done(Box::new(payouts::enqueue_in(pool, tx, e).await?)))
}

/// Serializes the enqueues of one client in one currency until the transaction ends.
pub async fn lock_client_currency(
    tx: &mut Transaction<'_, Postgres>,
    client_id: &str,
    currency: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('payoutd.client_limit/' || $1 || '/' || $2, 0))",
    )
    .bind(client_id)
    .bind(currency)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`enqueue`] for many payouts at once (the API's group commit): the payouts of clients
/// without limits are stored together by [`payouts::enqueue_batch`]; a client with limits
/// keeps its own transaction per payout, under its limit lock. One result per item, in order;
/// `Err` only when the database failed the whole group (nothing of it stored).
pub async fn enqueue_many(
    pool: &PgPool,
    items: &[Enqueue<'_>],
) -> Result<Vec<Result<LimitedEnqueue, StoreError>>, StoreError> {
    let clients: Vec<&str> = items.iter().map(|e| e.client_id).collect();
    let with_limits: Vec<String> =
        sqlx::query_scalar("SELECT client_id FROM client_limits WHERE client_id = ANY($1)")
            .bind(&clients)
            .fetch_all(pool)
            .await?;
    let limited = |e: &Enqueue<'_>| with_limits.iter().any(|c| c == e.client_id);
    let free: Vec<Enqueue<'_>> = items.iter().filter(|e| !limited(e)).cloned().collect();
    let mut stored = if free.is_empty() { Vec::new() } else { payouts::enqueue_batch(pool, &free).await? };
    stored.reverse();
    let mut results = Vec::with_capacity(items.len());
    for e in items {
        results.push(if limited(e) {
            enqueue(pool, e).await
        } else {
            // One result per item of the batch, in order.
            let stored =
                stored.pop().ok_or_else(|| StoreError::Corrupt("enqueue batch lost an item".into()))?;
            stored.map(|r| LimitedEnqueue::Done(Box::new(r)))
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use payoutd_core::Currency;

    use super::*;

    fn idr(amount: i64) -> Money {
        Money::new(Decimal::from(amount), Currency::parse("IDR").expect("IDR")).expect("money")
    }

    fn to(code: &str, account: &str) -> Destination {
        Destination {
            phone: "622851280".into(),
            client: account.into(),
            destination: code.into(),
            receiver_name: "Budi Santoso".into(),
            receiver_bic: None,
        }
    }

    fn limits() -> ClientLimits {
        let mut currencies = BTreeMap::new();
        currencies.insert(
            "IDR".to_owned(),
            CurrencyLimits {
                max_amount_per_payout: Some(Decimal::from(1_000)),
                max_total_per_day: Some(Decimal::from(2_500)),
            },
        );
        ClientLimits { client_id: "c".into(), currencies, ..Default::default() }
    }

    #[test]
    fn each_limit_is_named_when_broken() {
        let l = limits();
        let d = to("bank_bca", "1234567890");
        assert_eq!(check_payout(&l, &idr(1_000), &d, Decimal::ZERO), Ok(()));
        let e = check_payout(&l, &idr(1_001), &d, Decimal::ZERO).unwrap_err();
        assert_eq!(e.limit, Limit::MaxAmountPerPayout);
        assert!(e.detail.contains("1001 IDR") && e.detail.contains("1000 IDR"), "{}", e.detail);
        assert_eq!(
            check_payout(&l, &idr(1_000), &d, Decimal::from(1_500)),
            Ok(()),
            "exactly the maximum fits"
        );
        let e = check_payout(&l, &idr(1_000), &d, Decimal::from(1_501)).unwrap_err();
        assert_eq!(e.limit, Limit::MaxTotalPerDay);

        let mut listed = limits();
        listed.allowed_destination_codes = Some(vec!["bank_bca".into()]);
        listed.allowed_accounts = Some(vec!["1234567890".into()]);
        assert_eq!(check_payout(&listed, &idr(10), &d, Decimal::ZERO), Ok(()));
        let e =
            check_payout(&listed, &idr(10), &to("bank_mandiri", "1234567890"), Decimal::ZERO).unwrap_err();
        assert_eq!(e.limit, Limit::DestinationAllowList);
        let e = check_payout(&listed, &idr(10), &to("bank_bca", "9999999999"), Decimal::ZERO).unwrap_err();
        assert_eq!(e.limit, Limit::AccountAllowList);
        assert!(!e.detail.contains("9999999999"), "account numbers are masked: {}", e.detail);
    }

    #[test]
    fn an_unlisted_currency_is_unlimited_and_zero_forbids_one() {
        let mut l = limits();
        let usd = Money::new(Decimal::from(1_000_000), Currency::parse("USD").expect("USD")).expect("money");
        assert_eq!(check_payout(&l, &usd, &to("x", "1"), Decimal::ZERO), Ok(()));
        l.currencies.insert(
            "USD".into(),
            CurrencyLimits { max_amount_per_payout: Some(Decimal::ZERO), max_total_per_day: None },
        );
        assert_eq!(
            check_payout(&l, &usd, &to("x", "1"), Decimal::ZERO).unwrap_err().limit,
            Limit::MaxAmountPerPayout
        );
    }
}
