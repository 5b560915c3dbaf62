//! All of payoutd's SQL, in one place. Runtime code elsewhere never writes SQL.
//!
//! - [`queue`]: claiming due payouts (`FOR UPDATE SKIP LOCKED`), lease heartbeats and release.
//! - [`transitions`]: fenced state changes, each with its audit event, in one transaction.
//! - [`payouts`]: inserting (idempotently) and reading payouts and their timelines.
//! - [`callbacks`]: storing and applying provider callbacks in one transaction.
//! - [`api_tokens`]: payoutd's own client tokens, stored hashed.
//! - [`rate_limits`]: the per-provider call budget shared by all workers.
//! - [`stats`]: aggregate figures for the demo and operators.

pub mod api_tokens;
pub mod callbacks;
mod error;
pub mod payouts;
pub mod queue;
pub mod rate_limits;
mod row;
pub mod stats;
pub mod transitions;

use std::time::Duration;

pub use error::StoreError;
pub use row::PayoutRow;
pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The channel the engine LISTENs on: new payouts, callbacks and releases wake workers.
pub const WAKE_CHANNEL: &str = "payoutd_wake";

/// The embedded migrations (the top-level `migrations/` folder).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool. `max_connections` should cover the engine's concurrency plus the API.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
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
