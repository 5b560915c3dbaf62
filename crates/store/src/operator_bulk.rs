//! Bulk operator actions: one action on every payout a filter matches, in two steps.
//!
//! 1. [`preview`] counts the payouts the action would touch (the filter narrowed to the states
//!    the action allows) and, within the cap, issues a confirmation token: random, shown once,
//!    stored as SHA-256, short-lived, single use, bound to the operator token that asked, the
//!    action and its filter, and the count it matched. Nothing is done.
//! 2. [`confirm`] takes that token back with the same request: it is consumed only if the filter
//!    still matches exactly as many payouts, and hands out their ids. [`act`] then applies the
//!    action to each, each payout in its own transaction with its own event (a payout whose
//!    state changed meanwhile is refused and reported, the others go on), and writes one
//!    summary operator event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::operator::{self, ActionError, IntervalOf, Reason, ResolveTo, Retried};
use crate::operator_filter::{self, PayoutFilter};
use crate::{StoreError, operator_events};

/// The action of a bulk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    ResolvePaid,
    ResolveFailed,
    Retry,
    Cancel,
    StatusQuery,
}

impl BulkAction {
    /// The states the action applies to; the filter is narrowed to them.
    pub fn states(self) -> &'static [PayoutState] {
        match self {
            Self::ResolvePaid | Self::ResolveFailed => &[PayoutState::NeedsReview],
            Self::Retry => &[PayoutState::NeedsReview, PayoutState::Failed],
            Self::Cancel => &[PayoutState::Pending, PayoutState::Checked],
            Self::StatusQuery => &[PayoutState::InDoubt, PayoutState::Submitted],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResolvePaid => "resolve_paid",
            Self::ResolveFailed => "resolve_failed",
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::StatusQuery => "status_query",
        }
    }
}

/// What a confirmation token is bound to (besides the operator token and the count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRequest {
    pub action: BulkAction,
    pub filter: PayoutFilter,
}

/// Why a bulk request was not carried out. Nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("the filter matches {count} payouts, more than the bulk cap of {cap}")]
    OverCap { cap: i64, count: i64 },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BulkError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

/// A confirmation token, shown once.
#[derive(Debug, Clone)]
pub struct Confirmation {
    pub token: payoutd_core::Secret,
    pub expires_at: DateTime<Utc>,
}

/// What a preview found.
#[derive(Debug, Clone)]
pub struct Preview {
    pub count: i64,
    /// `None` when nothing matches (there is nothing to confirm).
    pub confirmation: Option<Confirmation>,
}

/// Every confirmation token starts with this.
pub const CONFIRMATION_PREFIX: &str = "pyc_";

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

async fn matching(pool: &PgPool, request: &BulkRequest) -> Result<Option<PayoutFilter>, BulkError> {
    if request.filter.batch.is_some() && !operator_filter::batch_filter_available(pool).await? {
        return Err(BulkError::Refused(
            "this database has no batches: a bulk action cannot filter by batch".to_owned(),
        ));
    }
    Ok(request.filter.within(request.action.states()))
}

/// Counts what `request` would act on and, within `cap`, issues a confirmation token for the
/// operator token `api_token_id` (the CLI uses the nil id), valid for `ttl`.
pub async fn preview(
    pool: &PgPool,
    request: &BulkRequest,
    api_token_id: Uuid,
    cap: i64,
    ttl: Duration,
) -> Result<Preview, BulkError> {
    let count = match matching(pool, request).await? {
        Some(filter) => operator_filter::count(pool, &filter).await?,
        None => 0,
    };
    if count > cap {
        return Err(BulkError::OverCap { cap, count });
    }
    if count == 0 {
        return Ok(Preview { count, confirmation: None });
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = std::iter::once(CONFIRMATION_PREFIX.to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let action = serde_json::to_value(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO operator_confirmations (token_hash, api_token_id, action, payouts, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         RETURNING expires_at",
    )
    .bind(hash(&token))
    .bind(api_token_id)
    .bind(&action)
    .bind(count)
    .bind(ttl.as_secs_f64())
    .fetch_one(pool)
    .await?;
    // Spent and expired tokens are of no use to anyone; the table stays small.
    sqlx::query("DELETE FROM operator_confirmations WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(Preview {
        count,
        confirmation: Some(Confirmation { token: payoutd_core::Secret::new(token), expires_at }),
    })
}

/// Consumes the confirmation `token` for `request` by `api_token_id`, and returns the ids of
/// the payouts to act on. Refused (the token left as it was) unless the token exists, is
/// unused and unexpired, was issued to the same operator token for the same request, and the
/// filter still matches the count it matched then.
pub async fn confirm(
    pool: &PgPool,
    request: &BulkRequest,
    api_token_id: Uuid,
    token: &str,
) -> Result<Vec<Uuid>, BulkError> {
    let mut tx = pool.begin().await?;
    let found: Option<(Uuid, Value, i64, bool)> = sqlx::query_as(
        "SELECT api_token_id, action, payouts, used_at IS NULL AND expires_at > now()
           FROM operator_confirmations WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash(token.trim()))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((issued_to, action, count, _)) = found.filter(|f| f.3) else {
        return Err(BulkError::Refused(
            "the confirmation token is unknown, expired or used already; ask for a new one".to_owned(),
        ));
    };
    if issued_to != api_token_id {
        return Err(BulkError::Refused(
            "the confirmation token was issued to another operator token".to_owned(),
        ));
    }
    let issued_for: BulkRequest =
        serde_json::from_value(action).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if &issued_for != request {
        return Err(BulkError::Refused(
            "the confirmation token was issued for another action or filter; send the same request again"
                .to_owned(),
        ));
    }
    let ids = match matching(pool, request).await? {
        Some(filter) => operator_filter::ids(pool, &filter, count + 1).await?,
        None => Vec::new(),
    };
    if ids.len() as i64 != count {
        let now = if ids.len() as i64 > count { format!("more than {count}") } else { ids.len().to_string() };
        return Err(BulkError::Refused(format!(
            "the filter matches {now} payouts now, {count} when the token was issued; ask for a new confirmation"
        )));
    }
    sqlx::query("UPDATE operator_confirmations SET used_at = now() WHERE token_hash = $1")
        .bind(hash(token.trim()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids)
}

/// What the action did to one payout.
#[derive(Debug, Clone, Serialize)]
pub struct BulkResult {
    pub payout_id: Uuid,
    /// The payout's state afterwards (for a status query: unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A failed payout's retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_payout_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_query_at: Option<DateTime<Utc>>,
}

/// A payout the action could not be applied to, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BulkRefusal {
    pub payout_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BulkOutcome {
    pub done: Vec<BulkResult>,
    pub refused: Vec<BulkRefusal>,
}

/// Applies `request.action` to each of `ids` (from [`confirm`]), each payout in its own
/// transaction, and records one summary operator event.
pub async fn act(
    pool: &PgPool,
    request: &BulkRequest,
    ids: &[Uuid],
    interval_of: &IntervalOf<'_>,
    actor: &str,
    reason: &Reason,
) -> Result<BulkOutcome, StoreError> {
    let mut outcome = BulkOutcome::default();
    for &id in ids {
        let mut result =
            BulkResult { payout_id: id, state: None, new_payout_id: None, status_query_at: None };
        let done = match request.action {
            BulkAction::ResolvePaid => operator::resolve(pool, id, ResolveTo::Paid, actor, reason)
                .await
                .map(|s| result.state = Some(s.as_str().to_owned())),
            BulkAction::ResolveFailed => operator::resolve(pool, id, ResolveTo::Failed, actor, reason)
                .await
                .map(|s| result.state = Some(s.as_str().to_owned())),
            BulkAction::Retry => operator::retry(pool, id, actor, reason).await.map(|r| match r {
                Retried::Requeued(s) => result.state = Some(s.as_str().to_owned()),
                Retried::NewPayout(new) => {
                    result.state = Some(PayoutState::Failed.as_str().to_owned());
                    result.new_payout_id = Some(new);
                }
            }),
            BulkAction::Cancel => operator::cancel(pool, id, actor, reason)
                .await
                .map(|()| result.state = Some(PayoutState::Cancelled.as_str().to_owned())),
            BulkAction::StatusQuery => operator::force_status_query(pool, id, interval_of, actor, reason)
                .await
                .map(|at| result.status_query_at = Some(at)),
        };
        match done {
            Ok(()) => outcome.done.push(result),
            Err(ActionError::Store(e)) => return Err(e),
            Err(e) => outcome.refused.push(BulkRefusal { payout_id: id, reason: e.to_string() }),
        }
    }
    let mut tx = pool.begin().await?;
    let target = serde_json::to_string(&request.filter).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let detail = json!({ "payouts": ids.len(), "done": outcome.done.len(), "refused": outcome.refused });
    let action = format!("bulk_{}", request.action.as_str());
    operator_events::record(&mut tx, &action, &target, actor, reason.as_str(), Some(&detail)).await?;
    tx.commit().await?;
    Ok(outcome)
}
