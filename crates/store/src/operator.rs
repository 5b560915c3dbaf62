//! What an operator does to one payout: resolve a parked payout, retry, cancel, force a status
//! query. Each action checks the state under a row lock, writes its change, its audit event
//! (actor and reason) and, where a state changes, the webhook outbox, in one transaction; a state
//! change moves the fencing token on, so a worker holding a stale lease cannot write afterwards.
//! A refusal writes nothing and says why.
//!
//! Resolving and retrying a parked payout are [`crate::review`]'s recorded resolutions; this
//! module adds the operator's checks and the actions review does not have.

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::review::{self, Resolution};
use crate::transitions::insert_event;
use crate::webhooks::{self, PayoutChange};
use crate::{StoreError, WAKE_CHANNEL};

/// The longest reason an operator may give.
pub const MAX_REASON_CHARS: usize = 500;

/// Why an operator acted: required, non-empty, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    /// Trims `text`; refuses it empty or longer than [`MAX_REASON_CHARS`], saying which.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a reason is required".to_owned());
        }
        let n = text.chars().count();
        if n > MAX_REASON_CHARS {
            return Err(format!("at most {MAX_REASON_CHARS} characters (got {n})"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an operator action did not happen. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no payout {0}")]
    NotFound(Uuid),
    /// The state (or another fact) forbids the action; the text says which and why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ActionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

/// The actor written into events for an API token: `operator:<client>/<label>` (the token id
/// when the token has no label).
pub async fn actor_for_token(pool: &PgPool, token_id: Uuid, client_id: &str) -> Result<String, StoreError> {
    let label: Option<String> = sqlx::query_scalar("SELECT label FROM api_tokens WHERE id = $1")
        .bind(token_id)
        .fetch_optional(pool)
        .await?;
    let label = label.filter(|l| !l.trim().is_empty()).unwrap_or_else(|| token_id.to_string());
    Ok(format!("operator:{client_id}/{label}"))
}

async fn locked_state(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<PayoutState, ActionError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state::text FROM payouts WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let state = state.ok_or(ActionError::NotFound(id))?;
    state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()).into())
}

async fn current_state(pool: &PgPool, id: Uuid) -> Result<PayoutState, ActionError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state::text FROM payouts WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let state = state.ok_or(ActionError::NotFound(id))?;
    state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()).into())
}

/// The status interval of an account (by its configured name), or why it cannot be asked.
pub type IntervalOf<'a> = dyn Fn(&str) -> Result<std::time::Duration, String> + Send + Sync + 'a;

/// How an operator resolves a parked payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveTo {
    Paid,
    Failed,
}

/// Resolves a needs_review payout to paid or failed (DESIGN "Parked state"). Refused in every
/// other state.
pub async fn resolve(
    pool: &PgPool,
    id: Uuid,
    to: ResolveTo,
    actor: &str,
    reason: &Reason,
) -> Result<PayoutState, ActionError> {
    let state = current_state(pool, id).await?;
    if state != PayoutState::NeedsReview {
        return Err(ActionError::Refused(format!("payout is {state}; only needs_review can be resolved")));
    }
    let resolution = match to {
        ResolveTo::Paid => Resolution::Paid,
        ResolveTo::Failed => Resolution::Failed,
    };
    // review::resolve re-checks the state under its row lock: a payout resolved by a callback
    // meanwhile is refused there.
    review::resolve(pool, id, resolution, actor, reason.as_str()).await.map_err(refusal)
}

fn refusal(e: StoreError) -> ActionError {
    match e {
        StoreError::Refused(why) => ActionError::Refused(why),
        e => ActionError::Store(e),
    }
}

/// What a retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// A parked payout runs again: in_doubt when its intent was recorded (the provider is asked
    /// first), pending when it was parked before (nothing was sent).
    Requeued(PayoutState),
    /// A failed payout stays failed; this new payout (new id, new reference at its intent) sends
    /// the money again.
    NewPayout(Uuid),
}

/// Retries a payout: needs_review runs again (asking the provider first), failed gets a new
/// payout linked both ways (`retry_of` / `retried_by`). Refused in every other state, for a
/// failed payout that was retried already, and for one whose destination was redacted.
pub async fn retry(pool: &PgPool, id: Uuid, actor: &str, reason: &Reason) -> Result<Retried, ActionError> {
    match current_state(pool, id).await? {
        PayoutState::NeedsReview => {
            let to = review::resolve(pool, id, Resolution::Retry, actor, reason.as_str())
                .await
                .map_err(refusal)?;
            Ok(Retried::Requeued(to))
        }
        PayoutState::Failed => retry_failed(pool, id, actor, reason).await.map(Retried::NewPayout),
        state => Err(ActionError::Refused(format!(
            "payout is {state}; only needs_review (asks the provider first) or failed (creates a new payout) \
             can be retried"
        ))),
    }
}

async fn retry_failed(pool: &PgPool, id: Uuid, actor: &str, reason: &Reason) -> Result<Uuid, ActionError> {
    let mut tx = pool.begin().await?;
    let state = locked_state(&mut tx, id).await?;
    if state != PayoutState::Failed {
        return Err(ActionError::Refused(format!(
            "payout is {state}; only needs_review or failed can be retried"
        )));
    }
    let (retried_by, redacted_at, client_id, request_hash): (
        Option<Uuid>,
        Option<DateTime<Utc>>,
        String,
        Vec<u8>,
    ) = sqlx::query_as("SELECT retried_by, redacted_at, client_id, request_hash FROM payouts WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(new) = retried_by {
        return Err(ActionError::Refused(format!(
            "payout was retried already as {new}; retry that one if it failed too"
        )));
    }
    if redacted_at.is_some() {
        return Err(ActionError::Refused(
            "the payout's destination details were redacted by retention; enqueue a new payout instead"
                .to_owned(),
        ));
    }
    // The retry's external_id is the first payout's, numbered: "<external_id>:retry:<n>".
    let (root_external_id, depth): (String, i32) = sqlx::query_as(
        "WITH RECURSIVE chain AS (
             SELECT id, retry_of, external_id, 0 AS depth FROM payouts WHERE id = $1
             UNION ALL
             SELECT p.id, p.retry_of, p.external_id, c.depth + 1
               FROM payouts p JOIN chain c ON p.id = c.retry_of
              WHERE c.depth < 10000
         )
         SELECT external_id, depth FROM chain ORDER BY depth DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let external_id = format!("{root_external_id}:retry:{}", depth + 1);
    let new_id = Uuid::now_v7();
    let mut hash = Sha256::new();
    hash.update(b"operator retry\0");
    hash.update(id.as_bytes());
    hash.update(&request_hash);
    let inserted = sqlx::query(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account,
                              amount, currency, destination, state, next_run_at, traceparent, retry_of)
         SELECT $1, client_id, $2, $3, $4, provider, account, amount, currency, destination, 'pending', now(),
                traceparent, id
           FROM payouts WHERE id = $5
         ON CONFLICT DO NOTHING",
    )
    .bind(new_id)
    .bind(&external_id)
    .bind(format!("operator-retry:{id}"))
    .bind(hash.finalize().to_vec())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() != 1 {
        return Err(ActionError::Refused(format!(
            "client {client_id} already has a payout with external_id {external_id:?}"
        )));
    }
    sqlx::query("UPDATE payouts SET retried_by = $2 WHERE id = $1")
        .bind(id)
        .bind(new_id)
        .execute(&mut *tx)
        .await?;
    let text = format!("retried by {actor} as new payout {new_id}: {}", reason.as_str());
    insert_event(&mut tx, id, Some(PayoutState::Failed), PayoutState::Failed, actor, &text, None, None)
        .await?;
    let text = format!("created by {actor} as a retry of failed payout {id}: {}", reason.as_str());
    insert_event(&mut tx, new_id, None, PayoutState::Pending, actor, &text, None, None).await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(new_id)
}

/// Cancels a payout whose intent was not recorded (pending, checked): nothing can have been
/// sent. The fencing token moves on, so a worker in the middle of the check or intent step
/// cannot write its result afterwards. Produces `payout.cancelled`.
pub async fn cancel(pool: &PgPool, id: Uuid, actor: &str, reason: &Reason) -> Result<(), ActionError> {
    let mut tx = pool.begin().await?;
    let state = locked_state(&mut tx, id).await?;
    if !matches!(state, PayoutState::Pending | PayoutState::Checked) {
        return Err(ActionError::Refused(format!(
            "payout is {state}; only pending or checked payouts (no intent recorded, nothing sent) can be cancelled"
        )));
    }
    sqlx::query(
        "UPDATE payouts SET state = 'cancelled', next_run_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                fencing_token = fencing_token + 1, last_error = NULL, finalized_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let text = format!("cancelled by {actor}: {}", reason.as_str());
    insert_event(&mut tx, id, Some(state), PayoutState::Cancelled, actor, &text, None, None).await?;
    webhooks::record_payout_change(&mut tx, id, PayoutChange::Entered(PayoutState::Cancelled)).await?;
    tx.commit().await?;
    crate::telemetry::transition(state, PayoutState::Cancelled, actor);
    Ok(())
}

/// Brings the status query of an in_doubt or submitted payout forward, to the earliest moment
/// the interval rule allows (DESIGN rule 7): one `interval` after the provider may last have
/// received a request of ours (`provider_contact_bound`), and not before now; never sooner,
/// and never later than it was due already. Returns that moment. The state does not change.
///
/// `interval_of` gives the status interval of a payout's account (its configured name), or why
/// the account cannot be asked (unknown here, or a provider without a status call).
pub async fn force_status_query(
    pool: &PgPool,
    id: Uuid,
    interval_of: &IntervalOf<'_>,
    actor: &str,
    reason: &Reason,
) -> Result<DateTime<Utc>, ActionError> {
    let mut tx = pool.begin().await?;
    let state = locked_state(&mut tx, id).await?;
    if !matches!(state, PayoutState::InDoubt | PayoutState::Submitted) {
        return Err(ActionError::Refused(format!(
            "payout is {state}; a status query can be forced only for in_doubt or submitted payouts"
        )));
    }
    let account: String =
        sqlx::query_scalar("SELECT provider FROM payouts WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
    let interval = interval_of(&account).map_err(ActionError::Refused)?;
    let (due, next_run_at): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH due AS (
             SELECT GREATEST(now(), COALESCE(provider_contact_bound, now()) + make_interval(secs => $2)) AS at
               FROM payouts WHERE id = $1
         )
         UPDATE payouts p SET next_run_at = LEAST(p.next_run_at, due.at)
           FROM due WHERE p.id = $1
         RETURNING due.at, p.next_run_at",
    )
    .bind(id)
    .bind(interval.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    let text = format!(
        "status query requested by {actor}: {}; due at {} (the earliest the status interval allows)",
        reason.as_str(),
        due.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    insert_event(&mut tx, id, Some(state), state, actor, &text, None, None).await?;
    if next_run_at.is_some_and(|at| at <= due) {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert!(Reason::parse("  ").is_err());
        assert_eq!(
            Reason::parse(" bank confirmed ").map(|r| r.as_str().to_owned()),
            Ok("bank confirmed".into())
        );
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(Reason::parse(&long).unwrap_err().contains("at most 500"));
        assert!(Reason::parse(&"é".repeat(MAX_REASON_CHARS)).is_ok(), "characters, not bytes");
    }
}
