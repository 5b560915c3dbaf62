//! The audit log of operator actions that are not payout transitions: pausing and resuming
//! accounts, changing a client's limits, bulk actions, retention runs. Append-only (a trigger
//! refuses updates and deletes). Payout actions are written to `payout_events` like every other
//! transition; a bulk action writes one event per payout there and one summary here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::StoreError;

/// One operator action.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OperatorEvent {
    pub id: i64,
    /// `pause`, `resume`, `limits_set`, `limits_cleared`, `bulk_<action>`, `retention_run`.
    pub action: String,
    /// What it was about: an account, a client, a filter, `retention`.
    pub target: String,
    pub actor: String,
    pub reason: String,
    pub detail: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// Writes one event inside the transaction of the action it records.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    action: &str,
    target: &str,
    actor: &str,
    reason: &str,
    detail: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO operator_events (action, target, actor, reason, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(action)
    .bind(target)
    .bind(actor)
    .bind(reason)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Events newest first, optionally of one action only, before the event id `before` (paging).
pub async fn list(
    pool: &PgPool,
    action: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<OperatorEvent>, StoreError> {
    let events = sqlx::query_as(
        "SELECT id, action, target, actor, reason, detail, created_at FROM operator_events
          WHERE ($1::text IS NULL OR action = $1) AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(action)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(events)
}
