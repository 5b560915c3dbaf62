//! The queue: the payout row is the job. A claim takes due, unleased rows with
//! `FOR UPDATE SKIP LOCKED`, stamps a lease (owner + expiry) and bumps the fencing token, and
//! commits before any work starts. A crashed worker's rows become claimable when the lease
//! expires; there is no separate "running" state to rescue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::{PayoutRow, StoreError, WAKE_CHANNEL};

/// Proof that this worker holds a payout: every engine write must present it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub payout_id: Uuid,
    pub fencing_token: i64,
    pub owner: String,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What one claim took: payouts ready to work on, and leased rows that do not decode (a poison
/// row must not stop the claim of every other payout; the engine counts and parks them).
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub ready: Vec<(PayoutRow, Lease)>,
    pub undecodable: Vec<(Lease, StoreError)>,
}

/// Claims up to `limit` due payouts for `owner`, each leased for `lease`. Rows that do not
/// decode are left leased (they come back when the lease expires); the worker uses
/// [`claim_batch`] instead, which hands them over for counting.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<(PayoutRow, Lease)>, StoreError> {
    Ok(claim_batch(pool, owner, limit, lease).await?.ready)
}

/// A claimed row, and whether its previous lease had expired unreleased (for the metrics).
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    raw: RawPayoutRow,
    took_over: Option<bool>,
}

/// Claims up to `limit` due payouts for `owner`, each leased for `lease`.
pub async fn claim_batch(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<ClaimBatch, StoreError> {
    const CLAIM: &str = concat!(
        "WITH due AS (
             SELECT id, lease_owner IS NOT NULL AS took_over FROM payouts
              WHERE next_run_at <= now()
                AND (lease_expires_at IS NULL OR lease_expires_at < now())
              ORDER BY next_run_at
              LIMIT $1
              FOR UPDATE SKIP LOCKED
         )
         UPDATE payouts
            SET lease_owner = $2,
                lease_expires_at = now() + make_interval(secs => $3),
                fencing_token = fencing_token + 1,
                attempt = attempt + 1,
                total_attempts = total_attempts + 1,
                updated_at = now()
          WHERE id IN (SELECT id FROM due)
      RETURNING (SELECT took_over FROM due WHERE due.id = payouts.id) AS took_over, ",
        payout_columns!()
    );
    let rows: Vec<ClaimedRow> =
        sqlx::query_as(CLAIM).bind(limit).bind(owner).bind(secs(lease)).fetch_all(pool).await?;
    // A lease still named on a due row was never released: its worker died, stalled or gave up.
    crate::telemetry::takeovers(rows.iter().filter(|r| r.took_over.unwrap_or(false)).count() as u64);
    let mut batch = ClaimBatch::default();
    for ClaimedRow { raw, .. } in rows {
        let lease =
            Lease { payout_id: raw.id(), fencing_token: raw.fencing_token(), owner: owner.to_owned() };
        match PayoutRow::try_from(raw) {
            Ok(row) => batch.ready.push((row, lease)),
            Err(e) => batch.undecodable.push((lease, e)),
        }
    }
    Ok(batch)
}

/// Extends a lease during a long step. Fails with [`StoreError::LeaseLost`] when the lease
/// was taken over, which tells the step to stop writing.
pub async fn heartbeat(pool: &PgPool, lease: &Lease, extend: Duration) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE payouts SET lease_expires_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .bind(secs(extend))
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::LeaseLost(lease.payout_id)) }
}

/// Gives a payout back without changing its state (graceful shutdown between steps): it is
/// claimable again at once, by any worker. The attempt the claim counted is given back too.
pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE payouts SET lease_owner = NULL, lease_expires_at = NULL,
                attempt = GREATEST(attempt - 1, 0), updated_at = now()
          WHERE id = $1 AND fencing_token = $2",
    )
    .bind(lease.payout_id)
    .bind(lease.fencing_token)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 {
        notify_wake(pool).await
    } else {
        Err(StoreError::LeaseLost(lease.payout_id))
    }
}

/// When the next unleased payout becomes due, so an idle worker can sleep exactly that long.
/// (Expiring leases are found by the engine's fallback poll.)
pub async fn next_due_at(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT next_run_at FROM payouts
          WHERE next_run_at IS NOT NULL AND lease_expires_at IS NULL
          ORDER BY next_run_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(at)
}

/// Marks `owner` as waiting for work, so that the next enqueue wakes it (see
/// [`WAKE_IF_IDLE`]), and says when the next unleased payout becomes due, so that it can
/// sleep exactly that long. One round trip for both.
pub async fn going_idle(pool: &PgPool, owner: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "WITH mark AS (
             INSERT INTO idle_workers (worker_id, since) VALUES ($1, now())
             ON CONFLICT (worker_id) DO UPDATE SET since = now())
         SELECT next_run_at FROM payouts
          WHERE next_run_at IS NOT NULL AND lease_expires_at IS NULL
          ORDER BY next_run_at LIMIT 1",
    )
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(at)
}

/// Clears `owner`'s idle mark: it is taking work again (or stopping), and enqueues need not
/// wake it.
pub async fn busy_again(pool: &PgPool, owner: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idle_workers WHERE worker_id = $1").bind(owner).execute(pool).await?;
    Ok(())
}

/// Wakes listening workers only when one of them is waiting for work: a NOTIFY serializes the
/// commits of all notifying transactions, so busy workers (which claim again as soon as a slot
/// frees) are not woken at that price. Marks older than a minute (a dead worker's) are ignored.
/// A worker that goes idle just while an enqueue commits may miss this and sleep until its
/// polling fallback (`idle_poll`): the notification only ever shortens the wait.
pub const WAKE_IF_IDLE: &str = "SELECT pg_notify($1, '')
   WHERE EXISTS (SELECT 1 FROM idle_workers WHERE since > now() - interval '1 minute')";

/// Wakes every listening worker.
pub async fn notify_wake(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(pool).await?;
    Ok(())
}
