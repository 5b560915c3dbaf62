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
