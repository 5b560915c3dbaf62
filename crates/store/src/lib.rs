//! All of payoutd's SQL, in one place. Runtime code elsewhere never writes SQL.
//!
//! - [`queue`]: claiming due payouts (`FOR UPDATE SKIP LOCKED`), lease heartbeats and release.
//! - [`transitions`]: fenced state changes, each with its audit event, in one transaction;
//!   [`transition_batch`]: many payouts' transitions in one commit (group commit);
//!   [`group_commit`]: the lanes that collect writes for such commits.
//! - [`payouts`]: inserting (idempotently) and reading payouts and their timelines.
//! - [`callbacks`]: storing and applying provider callbacks in one transaction.
//! - [`api_tokens`]: payoutd's own client tokens, stored hashed.
//! - [`console_sessions`]: operator console sign-ins (only hashes of the session ids).
//! - [`credentials`]: provider tokens shared by the fleet, sealed, refreshed one at a time.
//! - [`provider_notifications`]: unsigned webhooks naming a provider id no payout carries yet.
//! - [`rate_limits`]: the per-provider call budget shared by all workers.
//! - [`review`]: the needs_review queue and the recorded ways out of it.
//! - [`stats`]: aggregate figures for the demo and operators, and the queue figures the
//!   metrics gauges are computed from.
//! - [`health`]: what the readiness probe asks (database answers, migrations applied).
//! - `telemetry`: counters of committed transitions and of leases taken over.
//! - [`webhooks`]: webhook endpoints, the outbox written inside transitions, delivery claims
//!   (leases, fencing) and the delivery log.
//! - [`payout_view`]: the client's (masked) view of a payout, for the API and webhook events.
//! - [`batches`]: mass-payout batches (one transaction per upload), approval, cancel, reports,
//!   and the completion hook that writes `batch.completed`.
//! - [`reconciliation`]: our payouts of a period against the provider's registry; stored reports.
//! - Operator controls: [`operator`] (resolve, retry, cancel, force a status query: one payout),
//!   [`operator_filter`] (finding payouts across clients, cursor pages), [`operator_bulk`]
//!   (bulk actions behind confirmation tokens), [`operator_events`] (their audit log),
//!   [`account_pauses`] (stopping the money tap), [`client_limits`] (what a client may send),
//!   [`retention`] (masking old destination details, pruning old callback bodies).

pub mod account_pauses;
pub mod api_tokens;
pub mod batches;
pub mod callbacks;
pub mod client_limits;
pub mod console_sessions;
pub mod credentials;
mod error;
pub mod group_commit;
pub mod health;
pub mod operator;
pub mod operator_bulk;
pub mod operator_events;
pub mod operator_filter;
pub mod payout_view;
pub mod payouts;
pub mod provider_notifications;
pub mod queue;
pub mod rate_limits;
pub mod reconciliation;
pub mod restore;
pub mod retention;
pub mod review;
mod row;
pub mod stats;
mod telemetry;
pub mod transition_batch;
pub mod transitions;
pub mod webhooks;

use std::time::Duration;

pub use error::StoreError;
pub use row::PayoutRow;
pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The channel the engine LISTENs on: new payouts, callbacks and releases wake workers.
pub const WAKE_CHANNEL: &str = "payoutd_wake";

/// The embedded migrations (the top-level `migrations/` folder).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How long a query waits for a pooled connection. In a database outage this bounds how long
/// an API request waits before it is answered 503 and how long a worker step waits before it
/// gives up (its payout is then retried after the lease expires).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a pool. `max_connections` should cover the engine's concurrency plus the API.
///
/// The pool retries a refused connection until [`ACQUIRE_TIMEOUT`] and then reports only "pool
/// timed out"; a caller that wants the cause at start-up connects once directly first (the
/// binary does, see `payoutd::database`).
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Applies pending migrations. Safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
