//! The per-provider call budget, shared by every worker through one row per provider:
//! a one-second fixed window counter, and a pause set when the provider answers 429.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::StoreError;

/// Takes one call from `provider`'s budget of `per_second`. `None`: go now. `Some(d)`: the budget
/// is spent or the provider asked us to pause; try again after `d`.
pub async fn acquire(pool: &PgPool, provider: &str, per_second: u32) -> Result<Option<Duration>, StoreError> {
    // Every provider call of every worker updates this one row, so its row lock must be held
    // briefly: the counter need not survive a crash, so its commit does not wait for fsync.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let (calls, window_start, paused_until, now): (i32, DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as(
            "INSERT INTO provider_rate_limits AS r (provider, window_start, calls)
             VALUES ($1, date_trunc('second', clock_timestamp()), 1)
             ON CONFLICT (provider) DO UPDATE SET
                 calls = CASE WHEN r.window_start = date_trunc('second', clock_timestamp())
                              THEN r.calls + 1 ELSE 1 END,
                 window_start = date_trunc('second', clock_timestamp())
             RETURNING calls, window_start, paused_until, clock_timestamp()",
        )
        .bind(provider)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if let Some(until) = paused_until
        && until > now
    {
        return Ok(Some((until - now).to_std().unwrap_or(Duration::from_millis(100))));
    }
    if calls > i32::try_from(per_second).unwrap_or(i32::MAX) {
        let next_window = window_start + chrono::Duration::seconds(1);
        return Ok(Some((next_window - now).to_std().unwrap_or(Duration::from_millis(10))));
    }
    Ok(None)
}

/// Pauses all calls to `provider` for `for_how_long` (a 429's Retry-After), for every worker.
pub async fn pause(pool: &PgPool, provider: &str, for_how_long: Duration) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO provider_rate_limits AS r (provider, paused_until)
         VALUES ($1, clock_timestamp() + make_interval(secs => $2))
         ON CONFLICT (provider) DO UPDATE SET
             paused_until = GREATEST(COALESCE(r.paused_until, EXCLUDED.paused_until), EXCLUDED.paused_until)",
    )
    .bind(provider)
    .bind(for_how_long.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// A block of calls taken from a provider's budget at once ([`acquire_block`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Calls granted: up to the number asked for, fewer (or none) when the window's budget is
    /// nearly spent.
    pub granted: u32,
    /// Time left in the window the calls belong to, on the database's clock. Calls not made
    /// by then are lost: they never carry over into the next window.
    pub window_left: Duration,
    /// The provider asked every worker to pause (a 429), for this long from now.
    pub paused_for: Option<Duration>,
}

/// The shared row as [`acquire_block`] reads it, with the current window on the database's clock.
#[derive(sqlx::FromRow)]
struct BudgetRow {
    calls: i32,
    window_start: DateTime<Utc>,
    paused_until: Option<DateTime<Utc>>,
    window: DateTime<Utc>,
    now: DateTime<Utc>,
}

/// Takes up to `want` calls of `provider`'s budget of `per_second` in the current one-second
/// window (database clock) at once, so that a worker touches the shared row once per block
/// instead of once per call. The sum granted in one window never exceeds `per_second`,
/// however many workers ask. Nothing is granted while the provider is paused.
pub async fn acquire_block(
    pool: &PgPool,
    provider: &str,
    per_second: u32,
    want: u32,
) -> Result<Block, StoreError> {
    const READ: &str =
        "SELECT calls, window_start, paused_until, date_trunc('second', clock_timestamp()) AS window,
                clock_timestamp() AS now
           FROM provider_rate_limits WHERE provider = $1 FOR UPDATE";
    let mut tx = pool.begin().await?;
    let row: Option<BudgetRow> = sqlx::query_as(READ).bind(provider).fetch_optional(&mut *tx).await?;
    let row = match row {
        Some(row) => row,
        // The provider's first call ever: create its row, then lock it like any other.
        None => {
            sqlx::query(
                "INSERT INTO provider_rate_limits (provider, calls) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            )
            .bind(provider)
            .execute(&mut *tx)
            .await?;
            sqlx::query_as(READ).bind(provider).fetch_one(&mut *tx).await?
        }
    };
    let BudgetRow { calls, window_start, paused_until, window, now } = row;
    let window_left = (window + chrono::Duration::seconds(1) - now).to_std().unwrap_or_default();
    if let Some(until) = paused_until
        && until > now
    {
        tx.commit().await?;
        let paused_for = (until - now).to_std().unwrap_or(Duration::from_millis(100));
        return Ok(Block { granted: 0, window_left, paused_for: Some(paused_for) });
    }
    let used = if window_start == window { i64::from(calls) } else { 0 };
    let granted = i64::from(want).min(i64::from(per_second) - used).max(0);
    sqlx::query("UPDATE provider_rate_limits SET calls = $2, window_start = $3 WHERE provider = $1")
        .bind(provider)
        .bind(i32::try_from(used + granted).unwrap_or(i32::MAX))
        .bind(window)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Block { granted: u32::try_from(granted).unwrap_or(0), window_left, paused_for: None })
}
