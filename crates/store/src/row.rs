//! The payout row as the engine and the API read it.

use chrono::{DateTime, Utc};
use payoutd_core::{Currency, Destination, Money, PayoutState};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::StoreError;

/// Columns selected wherever a whole payout is read (state cast to text, mirrored by
/// [`PayoutState`]). A macro, so that statements stay `&'static str` (sqlx refuses dynamic SQL).
macro_rules! payout_columns {
    () => {
        "id, client_id, external_id, provider, account, amount, currency, destination, \
         state::text AS state, next_run_at, lease_owner, lease_expires_at, fencing_token, attempt, \
         total_attempts, submit_attempts, submit_in_flight, provider_reference, submit_request, \
         submitted_at, last_status_at, last_error, traceparent, created_at, updated_at, finalized_at, \
         status_queries, not_found_answers, failed_steps, parked_at, provider_contact_bound, \
         provider_payout_id, batch_id, now() AS db_now"
    };
}
pub(crate) use payout_columns;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawPayoutRow {
    id: Uuid,
    client_id: String,
    external_id: String,
    provider: String,
    account: String,
    amount: Decimal,
    currency: String,
    destination: serde_json::Value,
    state: String,
    next_run_at: Option<DateTime<Utc>>,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    fencing_token: i64,
    attempt: i32,
    total_attempts: i32,
    submit_attempts: i32,
    submit_in_flight: bool,
    provider_reference: Option<String>,
    submit_request: Option<serde_json::Value>,
    submitted_at: Option<DateTime<Utc>>,
    last_status_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    traceparent: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finalized_at: Option<DateTime<Utc>>,
    status_queries: i32,
    not_found_answers: i32,
    failed_steps: i32,
    parked_at: Option<DateTime<Utc>>,
    provider_contact_bound: Option<DateTime<Utc>>,
    provider_payout_id: Option<String>,
    batch_id: Option<Uuid>,
    db_now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PayoutRow {
    pub id: Uuid,
    pub client_id: String,
    pub external_id: String,
    pub provider: String,
    pub account: String,
    pub money: Money,
    pub destination: Destination,
    pub state: PayoutState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub fencing_token: i64,
    pub attempt: u32,
    pub total_attempts: u32,
    pub submit_attempts: u32,
    /// A submit call was started and its outcome never written: a worker died mid-call.
    pub submit_in_flight: bool,
    pub provider_reference: Option<String>,
    pub submit_request: Option<serde_json::Value>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub last_status_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    /// Status queries started (each committed before its call).
    pub status_queries: u32,
    /// NOT_FOUND answers since the last submit started.
    pub not_found_answers: u32,
    /// Steps in a row that failed for a reason retrying cannot fix (poison row).
    pub failed_steps: u32,
    /// When the payout was last parked in needs_review.
    pub parked_at: Option<DateTime<Utc>>,
    /// The latest moment the provider may have received one of our requests (see the
    /// migration); the next status query is due one interval after it.
    pub provider_contact_bound: Option<DateTime<Utc>>,
    /// The provider's own id of the payout, where its status call needs one (8B REST).
    pub provider_payout_id: Option<String>,
    /// The mass-payout batch the payout came in, if any.
    pub batch_id: Option<Uuid>,
    /// The database's clock when the row was read. Due times are compared with this, never
    /// with the worker's own clock, which may run ahead or behind (DESIGN rule 7).
    pub db_now: DateTime<Utc>,
}

impl RawPayoutRow {
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn fencing_token(&self) -> i64 {
        self.fencing_token
    }

    pub fn submit_attempts(&self) -> i32 {
        self.submit_attempts
    }
}

impl TryFrom<RawPayoutRow> for PayoutRow {
    type Error = StoreError;

    fn try_from(r: RawPayoutRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("payout {}: {what}", r.id));
        let currency = Currency::parse(&r.currency).map_err(|e| corrupt(e.to_string()))?;
        let money = Money::new(r.amount, currency).map_err(|e| corrupt(e.to_string()))?;
        let destination: Destination =
            serde_json::from_value(r.destination.clone()).map_err(|e| corrupt(e.to_string()))?;
        let state = r.state.parse().map_err(|e: payoutd_core::state::UnknownState| corrupt(e.to_string()))?;
        let count = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(PayoutRow {
            id: r.id,
            client_id: r.client_id,
            external_id: r.external_id,
            provider: r.provider,
            account: r.account,
            money,
            destination,
            state,
            next_run_at: r.next_run_at,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            fencing_token: r.fencing_token,
            attempt: count(r.attempt),
            total_attempts: count(r.total_attempts),
            submit_attempts: count(r.submit_attempts),
            submit_in_flight: r.submit_in_flight,
            provider_reference: r.provider_reference,
            submit_request: r.submit_request,
            submitted_at: r.submitted_at,
            last_status_at: r.last_status_at,
            last_error: r.last_error,
            traceparent: r.traceparent,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finalized_at: r.finalized_at,
            status_queries: count(r.status_queries),
            not_found_answers: count(r.not_found_answers),
            failed_steps: count(r.failed_steps),
            parked_at: r.parked_at,
            provider_contact_bound: r.provider_contact_bound,
            provider_payout_id: r.provider_payout_id,
            batch_id: r.batch_id,
            db_now: r.db_now,
        })
    }
}
