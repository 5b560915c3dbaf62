//! Stopping the money tap: an operator pauses one provider account, or all of them (`*`),
//! without stopping any process. While a pause stops a payout's account, the engine's intent
//! step defers it: nothing new is sent. Status queries, callbacks and every other step go on,
//! so payouts already sent still finish. Resuming wakes the waiting payouts at once.
//!
//! A pause and a resume are operator events (actor, reason), written in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::operator::{ActionError, Reason};
use crate::{StoreError, WAKE_CHANNEL, operator_events};

/// The account name that pauses every account.
pub const ALL_ACCOUNTS: &str = "*";

/// One paused account (or `*`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Pause {
    pub account: String,
    pub actor: String,
    pub reason: String,
    pub paused_at: DateTime<Utc>,
}

/// Every pause, `*` first.
pub async fn list(pool: &PgPool) -> Result<Vec<Pause>, StoreError> {
    let pauses = sqlx::query_as(
        "SELECT account, actor, reason, paused_at FROM account_pauses ORDER BY account <> '*', account",
    )
    .fetch_all(pool)
    .await?;
    Ok(pauses)
}

/// What holds back a new intent: an open restore mark (`crate::restore`), else a pause.
#[derive(Debug, Clone)]
pub struct IntentHold {
    /// The payout's timeline says this.
    pub why: String,
    /// How long the hold has lasted (on the database's clock).
    pub held_for: Duration,
}

/// The hold on new intents of `account`, if any: an open restore mark first, then the account's
/// own pause, then the pause of all accounts. One query, since it runs before every intent.
pub async fn intent_hold(pool: &PgPool, account: &str) -> Result<Option<IntentHold>, StoreError> {
    type Row = (bool, String, String, String, f64, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT restore, target, actor, reason, GREATEST(extract(epoch FROM now() - since), 0)::float8, backup
           FROM (SELECT true AS restore, 0 AS rank, '*' AS target, marked_by AS actor, reason,
                        marked_at AS since, backup_taken_at AS backup
                   FROM restore_marks WHERE cleared_at IS NULL
                 UNION ALL
                 SELECT false, CASE WHEN account = '*' THEN 2 ELSE 1 END, account, actor, reason,
                        paused_at, NULL::timestamptz
                   FROM account_pauses WHERE account IN ($1, '*')) holds
          ORDER BY rank LIMIT 1",
    )
    .bind(account)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(restore, target, actor, reason, secs, backup)| IntentHold {
        why: match backup {
            Some(backup) if restore => crate::restore::hold_reason(backup, &actor),
            _ => format!("account {target} is paused by {actor}: {reason}"),
        },
        held_for: Duration::try_from_secs_f64(secs).unwrap_or_default(),
    }))
}

/// Pauses `account` (or every account with [`ALL_ACCOUNTS`]). Refused when it is paused already.
pub async fn pause(pool: &PgPool, account: &str, actor: &str, reason: &Reason) -> Result<Pause, ActionError> {
    let mut tx = pool.begin().await?;
    let inserted: Option<Pause> = sqlx::query_as(
        "INSERT INTO account_pauses (account, actor, reason) VALUES ($1, $2, $3)
         ON CONFLICT (account) DO NOTHING
         RETURNING account, actor, reason, paused_at",
    )
    .bind(account)
    .bind(actor)
    .bind(reason.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(pause) = inserted else {
        let existing: Option<Pause> =
            sqlx::query_as("SELECT account, actor, reason, paused_at FROM account_pauses WHERE account = $1")
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(ActionError::Refused(match existing {
            Some(p) => format!(
                "account {account} is paused already (by {} since {}: {})",
                p.actor,
                p.paused_at.format("%Y-%m-%dT%H:%M:%SZ"),
                p.reason
            ),
            None => format!("account {account} is paused already"),
        }));
    };
    operator_events::record(&mut tx, "pause", account, actor, reason.as_str(), None).await?;
    tx.commit().await?;
    Ok(pause)
}

/// Resumes `account`: its payouts waiting before their intent are due at once and the workers
/// are woken. Resuming `*` lifts only the pause of all accounts; accounts paused on their own
/// stay paused. Returns how many payouts were woken. Refused when `account` is not paused.
pub async fn resume(pool: &PgPool, account: &str, actor: &str, reason: &Reason) -> Result<u64, ActionError> {
    let mut tx = pool.begin().await?;
    let removed: Option<Pause> = sqlx::query_as(
        "DELETE FROM account_pauses WHERE account = $1 RETURNING account, actor, reason, paused_at",
    )
    .bind(account)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(pause) = removed else {
        return Err(ActionError::Refused(format!("account {account} is not paused")));
    };
    // Payouts that waited for the pause are in `checked` with a recheck time ahead; due now,
    // unless another pause still stops their account. A worker holding one at this moment
    // writes its own next run time, at most one recheck period later.
    let woken = sqlx::query(
        "UPDATE payouts SET next_run_at = now()
          WHERE state = 'checked' AND next_run_at > now()
            AND ($1 = '*' OR provider = $1)
            AND NOT EXISTS (SELECT 1 FROM account_pauses p WHERE p.account IN (payouts.provider, '*'))",
    )
    .bind(account)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let detail = json!({ "paused_by": pause.actor, "paused_at": pause.paused_at, "paused_reason": pause.reason,
                         "payouts_woken": woken });
    operator_events::record(&mut tx, "resume", account, actor, reason.as_str(), Some(&detail)).await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(woken)
}
