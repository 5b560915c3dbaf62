//! Aggregate figures over all payouts: the demo's closing summary and operators' overview.

use sqlx::PgPool;

use crate::StoreError;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub total: i64,
    pub paid: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub needs_review: i64,
    pub open: i64,
    /// Step attempts beyond the first of each step.
    pub retries: i64,
    /// Payouts that went through in_doubt and came out with the provider's answer.
    pub in_doubt_resolved: i64,
    pub duplicate_callbacks_ignored: i64,
    pub unverifiable_callbacks: i64,
    pub p50_seconds_to_final: Option<f64>,
    pub p99_seconds_to_final: Option<f64>,
}

pub async fn summary(pool: &PgPool) -> Result<Summary, StoreError> {
    let mut s = Summary::default();
    let (total, paid, failed, cancelled, needs_review, open): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*),
                count(*) FILTER (WHERE state = 'paid'),
                count(*) FILTER (WHERE state = 'failed'),
                count(*) FILTER (WHERE state = 'cancelled'),
                count(*) FILTER (WHERE state = 'needs_review'),
                count(*) FILTER (WHERE next_run_at IS NOT NULL)
           FROM payouts",
        )
        .fetch_one(pool)
        .await?;
    (s.total, s.paid, s.failed, s.cancelled, s.needs_review, s.open) =
        (total, paid, failed, cancelled, needs_review, open);
    s.retries = sqlx::query_scalar(
        "SELECT count(*) FROM payout_events WHERE from_state = to_state AND reason LIKE 'retry%'",
    )
    .fetch_one(pool)
    .await?;
    s.in_doubt_resolved = sqlx::query_scalar(
        "SELECT count(DISTINCT payout_id) FROM payout_events
          WHERE from_state = 'in_doubt' AND to_state IN ('paid', 'failed', 'submitted')",
    )
    .fetch_one(pool)
    .await?;
    (s.duplicate_callbacks_ignored, s.unverifiable_callbacks) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE duplicate), count(*) FILTER (WHERE NOT verified) FROM provider_callbacks",
    )
    .fetch_one(pool)
    .await?;
    (s.p50_seconds_to_final, s.p99_seconds_to_final) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at))::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at))::float8
           FROM payouts WHERE finalized_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(s)
}

/// Payouts still open (scheduled), by state: read from the partial index of open payouts
/// (`payouts_state_open`), so a progress display polling it costs the same with a million
/// final payouts in the table as with none.
pub async fn open_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT state::text, count(*) FROM payouts WHERE next_run_at IS NOT NULL GROUP BY state ORDER BY state",
    )
    .fetch_all(pool)
    .await?)
}

/// Unfinished and parked payouts of one provider account in one state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateCount {
    pub provider: String,
    pub account: String,
    pub state: String,
    pub payouts: i64,
}

/// What the metrics gauges show of the queue, on the database's clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueFigures {
    /// Payouts in every state that is not final (final ones are counted by the transitions
    /// counter instead: counting them here would read the whole table on every tick).
    pub by_state: Vec<StateCount>,
    /// Payouts that are due and that no live lease holds: work waiting for a worker.
    pub due: i64,
    /// Seconds since the oldest of those became due; 0 when there is none.
    pub oldest_due_age_secs: f64,
}

/// The figures behind the queue gauges. Reads only unfinished payouts (the partial indexes
/// `payouts_due` and `payouts_needs_review`), however many final ones the table holds.
pub async fn queue_figures(pool: &PgPool) -> Result<QueueFigures, StoreError> {
    let by_state: Vec<StateCount> = sqlx::query_as(
        "SELECT provider, account, state::text AS state, count(*) AS payouts FROM payouts
          WHERE next_run_at IS NOT NULL OR state = 'needs_review'
          GROUP BY provider, account, state",
    )
    .fetch_all(pool)
    .await?;
    let (due, oldest_due_age_secs): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(extract(epoch FROM now() - min(next_run_at)), 0)::float8
           FROM payouts
          WHERE next_run_at <= now() AND (lease_expires_at IS NULL OR lease_expires_at < now())",
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueFigures { by_state, due, oldest_due_age_secs: oldest_due_age_secs.max(0.0) })
}
