//! Webhooks to backends, all their SQL:
//!
//! - endpoints: created with a fresh secret (shown once, stored sealed), listed, rotated with
//!   an overlap during which the old secret still signs, enabled again, deleted;
//! - the outbox: [`record_payout_change`] is called INSIDE the transaction of a payout
//!   transition, so an event exists exactly when its transition committed; the same statement
//!   creates one delivery per matching endpoint and wakes the delivery workers;
//! - deliveries, claimed like payouts ([`claim_due`]: `FOR UPDATE SKIP LOCKED`, a lease, a
//!   fencing token), at most a few in flight per endpoint and one while it is failing, none
//!   while it is paused or disabled, so a failing endpoint cannot hold up the others;
//! - [`record_attempt`]: the outcome of one HTTP attempt, its retry time stored in the row, the
//!   endpoint's failure accounting (slow-down, disable after constant failure), and the log;
//! - manual redelivery of one event or of a time range, and the delivery log for reading.

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use payoutd_core::sealing::SealingKey;
use payoutd_core::webhook::{EventType, WebhookSecret};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::row::{RawPayoutRow, payout_columns};
use crate::{PayoutRow, StoreError, payout_view};

/// The channel delivery workers LISTEN on: a new or redelivered event wakes them.
pub const WEBHOOK_CHANNEL: &str = "payoutd_webhooks";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---- endpoints ------------------------------------------------------------------------------

/// An endpoint as operators and its client see it. The secret is never part of it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub client_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    /// Until when the secret before the last rotation still signs (both signatures are sent).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub failing_since: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! endpoint_columns {
    () => {
        "id, client_id, url, event_types, description,
         CASE WHEN previous_expires_at > now() THEN previous_expires_at END AS previous_secret_expires_at,
         consecutive_failures, failing_since, paused_until, disabled_at, disabled_reason, created_at,
         updated_at"
    };
}

/// What a new endpoint needs. The URL has been checked by the caller (scheme, host, address
/// policy for literal addresses); the delivery worker checks the address again on every
/// connection.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    pub client_id: &'a str,
    pub url: &'a str,
    pub event_types: &'a [EventType],
    pub description: &'a str,
}

/// An endpoint together with its secret: the only moment the secret exists in clear outside
/// the delivery worker.
#[derive(Debug)]
pub struct EndpointWithSecret {
    pub endpoint: Endpoint,
    pub secret: WebhookSecret,
}

pub async fn create_endpoint(
    pool: &PgPool,
    key: &SealingKey,
    new: &NewEndpoint<'_>,
) -> Result<EndpointWithSecret, StoreError> {
    let id = Uuid::now_v7();
    let secret = WebhookSecret::generate();
    let sealed = key.seal(secret.expose().as_bytes(), id.as_bytes());
    let types: Vec<&str> = new.event_types.iter().map(|t| t.as_str()).collect();
    let endpoint: Endpoint = sqlx::query_as(concat!(
        "INSERT INTO webhook_endpoints (id, client_id, url, event_types, description, secret_sealed, sealing_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING ",
        endpoint_columns!()
    ))
    .bind(id)
    .bind(new.client_id)
    .bind(new.url)
    .bind(&types)
    .bind(new.description)
    .bind(sealed)
    .bind(key.key_id())
    .fetch_one(pool)
    .await?;
    Ok(EndpointWithSecret { endpoint, secret })
}

/// Endpoints (not deleted), of one client or, for operators, of all.
pub async fn list_endpoints(pool: &PgPool, client_id: Option<&str>) -> Result<Vec<Endpoint>, StoreError> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints
          WHERE deleted_at IS NULL AND ($1::text IS NULL OR client_id = $1)
          ORDER BY client_id, created_at"
    ))
    .bind(client_id)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// One endpoint, if it exists, is not deleted and (when `client_id` is given) is that client's.
pub async fn get_endpoint(
    pool: &PgPool,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Option<Endpoint>, StoreError> {
    let row = sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR client_id = $2)"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Replaces the secret with a fresh one. The old one keeps signing next to it for `overlap`
/// (zero: it stops at once); a secret older than that is dropped. `None`: no such endpoint.
pub async fn rotate_secret(
    pool: &PgPool,
    key: &SealingKey,
    id: Uuid,
    client_id: Option<&str>,
    overlap: Duration,
) -> Result<Option<EndpointWithSecret>, StoreError> {
    let secret = WebhookSecret::generate();
    let sealed = key.seal(secret.expose().as_bytes(), id.as_bytes());
    let endpoint: Option<Endpoint> = sqlx::query_as(concat!(
        "UPDATE webhook_endpoints SET
                previous_sealed = CASE WHEN $4 > 0 THEN secret_sealed END,
                previous_expires_at = CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END,
                secret_sealed = $3, sealing_key_id = $5, updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR client_id = $2)
      RETURNING ",
        endpoint_columns!()
    ))
    .bind(id)
    .bind(client_id)
    .bind(sealed)
    .bind(secs(overlap))
    .bind(key.key_id())
    .fetch_optional(pool)
    .await?;
    Ok(endpoint.map(|endpoint| EndpointWithSecret { endpoint, secret }))
}

/// Deletes an endpoint: it receives nothing more, its pending deliveries are cancelled, and
/// its delivery log stays. `false`: no such endpoint.
pub async fn delete_endpoint(pool: &PgPool, id: Uuid, client_id: Option<&str>) -> Result<bool, StoreError> {
    // Deliveries first, then the endpoint: the same order as `record_attempt` locks them, so
    // a delete during an attempt waits instead of deadlocking.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries d SET state = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
                lease_expires_at = NULL, fencing_token = d.fencing_token + 1, updated_at = now(),
                last_error = 'endpoint deleted'
           FROM webhook_endpoints e
          WHERE d.endpoint_id = $1 AND d.state = 'pending' AND e.id = d.endpoint_id AND e.deleted_at IS NULL
            AND ($2::text IS NULL OR e.client_id = $2)",
    )
    .bind(id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR client_id = $2)",
    )
    .bind(id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Enables an endpoint again (after it was disabled for constant failure) and forgets its
/// failures: its pending deliveries go out at once. `false`: no such endpoint.
pub async fn enable_endpoint(pool: &PgPool, id: Uuid, client_id: Option<&str>) -> Result<bool, StoreError> {
    // Deliveries first, then the endpoint (see `delete_endpoint`).
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries d SET next_attempt_at = LEAST(d.next_attempt_at, now()), updated_at = now()
           FROM webhook_endpoints e
          WHERE d.endpoint_id = $1 AND d.state = 'pending' AND e.id = d.endpoint_id AND e.deleted_at IS NULL
            AND ($2::text IS NULL OR e.client_id = $2)",
    )
    .bind(id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, consecutive_failures = 0,
                failing_since = NULL, paused_until = NULL, updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR client_id = $2)",
    )
    .bind(id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    notify(&mut tx).await?;
    tx.commit().await?;
    Ok(true)
}

// ---- the outbox -----------------------------------------------------------------------------

/// Who resolved a parked payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBy {
    /// The provider's verified final answer (a callback).
    Provider,
    /// A person, with a reason.
    Operator,
}

impl ResolvedBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Operator => "operator",
        }
    }
}

/// A payout change that backends are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutChange {
    /// The payout entered this state: a final state or needs_review produce an event, any
    /// other state none.
    Entered(PayoutState),
    /// A parked payout was resolved to `to`: `payout.resolved`, then the final state's event
    /// when `to` is final (a retry continues and announces its final state when it gets one).
    Resolved { by: ResolvedBy, to: PayoutState },
}

/// Writes the events `change` produces for `payout_id`, and a delivery for every matching
/// endpoint of the payout's client, inside `tx`: the caller's transition commits them or
/// nobody does. Reads the payout as `tx` sees it (after the transition's update).
pub(crate) async fn record_payout_change(
    tx: &mut Transaction<'_, Postgres>,
    payout_id: Uuid,
    change: PayoutChange,
) -> Result<(), StoreError> {
    let events = events_of(change);
    if events.is_empty() {
        return crate::batches::after_payout_change(tx, payout_id, change).await;
    }
    let raw: RawPayoutRow =
        sqlx::query_as(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
            .bind(payout_id)
            .fetch_one(&mut **tx)
            .await?;
    match PayoutRow::try_from(raw) {
        Ok(row) => record_change_of(tx, &row, change).await,
        // A poison row that does not decode is parked all the same, and announced with what
        // can be read of it: the transition must not fail because its event cannot show more.
        Err(_) => {
            let (client_id, external_id, state, now): (String, String, String, DateTime<Utc>) =
                sqlx::query_as(
                    "SELECT client_id, external_id, state::text, now() FROM payouts WHERE id = $1",
                )
                .bind(payout_id)
                .fetch_one(&mut **tx)
                .await?;
            let view = json!({ "id": payout_id, "external_id": external_id, "state": state, "final": false,
                               "undecodable": true });
            for (event_type, resolution) in events {
                insert_event(tx, payout_id, &client_id, now, &view, event_type, resolution).await?;
            }
            crate::batches::after_payout_change(tx, payout_id, change).await
        }
    }
}

/// [`record_payout_change`] for a payout the caller has just written and read back in `tx`
/// (its `RETURNING`): no second read of the row.
pub(crate) async fn record_change_of(
    tx: &mut Transaction<'_, Postgres>,
    row: &PayoutRow,
    change: PayoutChange,
) -> Result<(), StoreError> {
    let events = events_of(change);
    if !events.is_empty() {
        let view = payout_view::payout_json(row);
        for (event_type, resolution) in events {
            insert_event(tx, row.id, &row.client_id, row.db_now, &view, event_type, resolution).await?;
        }
    }
    // The last payout of a batch to become final completes it (batch.completed), here, in the
    // same transaction.
    crate::batches::after_change_in_batch(tx, row.id, row.batch_id, change).await
}

/// The webhook events a change produces.
fn events_of(change: PayoutChange) -> Vec<(EventType, Option<Value>)> {
    match change {
        PayoutChange::Entered(state) => EventType::for_state(state).map(|t| (t, None)).into_iter().collect(),
        PayoutChange::Resolved { by, to } => {
            let resolution = json!({ "by": by.as_str(), "to": to.as_str() });
            let mut v = vec![(EventType::PayoutResolved, Some(resolution))];
            if to.is_final()
                && let Some(t) = EventType::for_state(to)
            {
                v.push((t, None));
            }
            v
        }
    }
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    payout_id: Uuid,
    client_id: &str,
    now: DateTime<Utc>,
    view: &Value,
    event_type: EventType,
    resolution: Option<Value>,
) -> Result<(), StoreError> {
    let id = Uuid::now_v7();
    let mut data = json!({ "payout": view });
    if let Some(resolution) = resolution {
        data["resolution"] = resolution;
    }
    let payload = json!({
        "id": id,
        "type": event_type.as_str(),
        "created_at": now,
        "data": data,
    });
    // One statement: the event, its deliveries, and (if there are any) the wake-up. Writable
    // CTEs always run to completion, whatever the outer SELECT reads.
    sqlx::query(
        "WITH ev AS (
             INSERT INTO webhook_events (id, client_id, event_type, payout_id, payload)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, client_id, event_type
         ), d AS (
             INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
             SELECT ev.id, ep.id, now() FROM ev
               JOIN webhook_endpoints ep ON ep.client_id = ev.client_id
              WHERE ep.deleted_at IS NULL AND ev.event_type = ANY (ep.event_types)
             RETURNING 1
         )
         SELECT pg_notify($6, '') FROM (SELECT 1 FROM d LIMIT 1) AS any_delivery",
    )
    .bind(id)
    .bind(client_id)
    .bind(event_type.as_str())
    .bind(payout_id)
    .bind(&payload)
    .bind(WEBHOOK_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn notify(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WEBHOOK_CHANNEL).execute(&mut **tx).await?;
    Ok(())
}

// ---- claiming deliveries --------------------------------------------------------------------

/// A claimed delivery: the event, where it goes, and the lease to present with its outcome.
#[derive(Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub delivery_id: i64,
    pub fencing_token: i64,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub event_created_at: DateTime<Utc>,
    pub endpoint_id: Uuid,
    pub url: String,
    secret_sealed: Vec<u8>,
    /// The secret before the last rotation, only while its overlap lasts.
    previous_sealed: Option<Vec<u8>>,
    sealing_key_id: String,
}

impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("delivery_id", &self.delivery_id)
            .field("fencing_token", &self.fencing_token)
            .field("attempt", &self.attempt)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("endpoint_id", &self.endpoint_id)
            .finish_non_exhaustive()
    }
}

impl ClaimedDelivery {
    /// The secrets that sign this attempt: the current one, and the previous one while its
    /// overlap lasts.
    pub fn signing_secrets(&self, key: &SealingKey) -> Result<Vec<WebhookSecret>, StoreError> {
        if self.sealing_key_id != key.key_id() {
            return Err(StoreError::Corrupt(format!(
                "webhook endpoint {}: its secret was sealed under key {}, but the configured sealing key is {}",
                self.endpoint_id,
                self.sealing_key_id,
                key.key_id()
            )));
        }
        let open = |sealed: &[u8]| -> Result<WebhookSecret, StoreError> {
            let plain = key
                .open(sealed, self.endpoint_id.as_bytes())
                .map_err(|e| StoreError::Corrupt(format!("webhook endpoint {}: {e}", self.endpoint_id)))?;
            let text = String::from_utf8(plain).map_err(|_| {
                StoreError::Corrupt(format!(
                    "webhook endpoint {}: sealed secret is not text",
                    self.endpoint_id
                ))
            })?;
            WebhookSecret::parse(&text)
                .map_err(|e| StoreError::Corrupt(format!("webhook endpoint {}: {e}", self.endpoint_id)))
        };
        let mut secrets = vec![open(&self.secret_sealed)?];
        if let Some(previous) = &self.previous_sealed {
            secrets.push(open(previous)?);
        }
        Ok(secrets)
    }

    pub fn lease(&self) -> DeliveryLease {
        DeliveryLease {
            delivery_id: self.delivery_id,
            fencing_token: self.fencing_token,
            endpoint_id: self.endpoint_id,
            attempt: self.attempt,
        }
    }
}

/// Proof that a worker holds a delivery; its outcome is written only under this token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLease {
    pub delivery_id: i64,
    pub fencing_token: i64,
    pub endpoint_id: Uuid,
    pub attempt: i32,
}

/// How many deliveries one endpoint may have in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    /// While the endpoint answers well.
    pub healthy: u32,
    /// While its last attempt failed: one probe at a time, so a dead endpoint holds at most one
    /// worker slot for a timeout's length.
    pub failing: u32,
}

/// Claims up to `limit` due deliveries for `owner`, each leased for `lease`. Endpoints that are
/// disabled, deleted or paused are skipped, and each endpoint gets at most its in-flight limit
/// minus what is already in flight. Endpoints are locked (`FOR NO KEY UPDATE SKIP LOCKED`, which
/// does not block payout transitions inserting deliveries) while their rows are claimed, so two
/// workers cannot both fill one endpoint's room.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
    limits: EndpointLimits,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let rows = sqlx::query_as(
        "WITH eps AS (
             SELECT e.id,
                    (CASE WHEN e.consecutive_failures > 0 THEN $5 ELSE $4 END)
                    - (SELECT count(*) FROM webhook_deliveries f
                        WHERE f.endpoint_id = e.id AND f.lease_expires_at IS NOT NULL
                          AND f.lease_expires_at > now() AND f.next_attempt_at IS NOT NULL) AS room
               FROM webhook_endpoints e
              WHERE e.deleted_at IS NULL AND e.disabled_at IS NULL
                AND (e.paused_until IS NULL OR e.paused_until <= now())
                AND EXISTS (SELECT 1 FROM webhook_deliveries x
                             WHERE x.endpoint_id = e.id AND x.next_attempt_at <= now())
                FOR NO KEY UPDATE OF e SKIP LOCKED
         ), due AS (
             SELECT c.id
               FROM eps CROSS JOIN LATERAL (
                    SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                     WHERE d.endpoint_id = eps.id AND d.next_attempt_at <= now()
                       AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
                     ORDER BY d.next_attempt_at
                     LIMIT GREATEST(eps.room, 0)
                       FOR UPDATE OF d SKIP LOCKED) c
              ORDER BY c.next_attempt_at
              LIMIT $1
         )
         UPDATE webhook_deliveries d
            SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                fencing_token = d.fencing_token + 1, attempts = d.attempts + 1, updated_at = now()
           FROM due, webhook_events ev, webhook_endpoints ep
          WHERE d.id = due.id AND ev.id = d.event_id AND ep.id = d.endpoint_id
      RETURNING d.id AS delivery_id, d.fencing_token, d.attempts AS attempt, ev.id AS event_id,
                ev.event_type, ev.payload, ev.created_at AS event_created_at, ep.id AS endpoint_id, ep.url,
                ep.secret_sealed,
                CASE WHEN ep.previous_expires_at > now() THEN ep.previous_sealed END AS previous_sealed,
                ep.sealing_key_id",
    )
    .bind(limit)
    .bind(owner)
    .bind(secs(lease))
    .bind(i64::from(limits.healthy.max(1)))
    .bind(i64::from(limits.failing.max(1)))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// When the next delivery becomes due (for an idle worker's sleep).
pub async fn next_due_at(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at = sqlx::query_scalar(
        "SELECT min(GREATEST(d.next_attempt_at, COALESCE(e.paused_until, '-infinity')))
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.next_attempt_at IS NOT NULL AND d.lease_expires_at IS NULL
            AND e.disabled_at IS NULL AND e.deleted_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(at)
}

// ---- outcomes -------------------------------------------------------------------------------

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered,
    /// Any other answer.
    HttpStatus,
    Timeout,
    /// No connection could be made.
    Connect,
    /// The address policy refused every address the host resolved to (SSRF).
    Refused,
    /// The URL cannot be used (scheme, no host).
    InvalidUrl,
    Error,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::HttpStatus => "http_status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Refused => "refused",
            Self::InvalidUrl => "invalid_url",
            Self::Error => "error",
        }
    }
}

/// One attempt as the worker saw it.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub status_code: Option<u16>,
    pub latency: Duration,
    /// The address the request was sent to (as the connection reported it).
    pub remote_addr: Option<String>,
    pub error: Option<String>,
    /// The start of the answer body (bounded by the worker).
    pub response_excerpt: Option<String>,
}

/// What happens after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRules {
    /// When this delivery is tried again (the caller's backoff for this attempt).
    pub retry_in: Duration,
    /// Retries stop once this much time has passed since the delivery was created (or
    /// redelivered by hand).
    pub retry_window: Duration,
    /// The endpoint is paused for `pause_base * 2^(failures in a row - 1)`, at most `pause_max`.
    pub pause_base: Duration,
    pub pause_max: Duration,
    /// An endpoint failing without a single success for this long is disabled.
    pub disable_after: Duration,
}

/// What recording an attempt did.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEffect {
    pub delivery: DeliveryEffect,
    /// The endpoint was disabled by this attempt (failing since the given time).
    pub endpoint_disabled: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeliveryEffect {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// The retry window is over: no more automatic attempts.
    GaveUp,
    /// The lease was taken over meanwhile: only the log entry was written.
    LeaseLost,
}

/// Records one attempt: the log entry (always, so every request that went out is on record),
/// the delivery's outcome or next attempt (only under the lease's token), and the endpoint's
/// failure accounting, in one transaction.
pub async fn record_attempt(
    pool: &PgPool,
    lease: &DeliveryLease,
    worker: &str,
    report: &AttemptReport,
    rules: &FailureRules,
) -> Result<AttemptEffect, StoreError> {
    let delivered = report.outcome == AttemptOutcome::Delivered;
    let status = report.status_code.map(i32::from);
    let error = report.error.as_deref().map(|e| cut(e, 1000));
    let mut tx = pool.begin().await?;
    let updated: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "UPDATE webhook_deliveries SET
                state = CASE WHEN $3 THEN 'delivered'
                             WHEN window_start + make_interval(secs => $7) <= now() THEN 'gave_up'
                             ELSE 'pending' END::webhook_delivery_state,
                next_attempt_at = CASE WHEN $3 THEN NULL
                                       WHEN window_start + make_interval(secs => $7) <= now() THEN NULL
                                       ELSE now() + make_interval(secs => $6) END,
                delivered_at = CASE WHEN $3 THEN now() ELSE delivered_at END,
                lease_owner = NULL, lease_expires_at = NULL,
                last_status = $4, last_error = $5, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'pending'
      RETURNING state::text, next_attempt_at",
    )
    .bind(lease.delivery_id)
    .bind(lease.fencing_token)
    .bind(delivered)
    .bind(status)
    .bind(if delivered { None } else { error.as_deref() })
    .bind(secs(rules.retry_in))
    .bind(secs(rules.retry_window))
    .fetch_optional(&mut *tx)
    .await?;
    let delivery = match updated {
        None => DeliveryEffect::LeaseLost,
        Some((state, _)) if state == "delivered" => DeliveryEffect::Delivered,
        Some((_, Some(at))) => DeliveryEffect::RetryAt(at),
        Some((_, None)) => DeliveryEffect::GaveUp,
    };
    let latency_ms = i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, worker, fencing_token, started_at, latency_ms,
                                       outcome, status_code, remote_addr, error, response_excerpt, lease_lost)
         VALUES ($1, $2, $3, $4, clock_timestamp() - make_interval(secs => $5), $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(lease.delivery_id)
    .bind(lease.attempt)
    .bind(worker)
    .bind(lease.fencing_token)
    .bind(secs(report.latency))
    .bind(latency_ms)
    .bind(report.outcome.as_str())
    .bind(status)
    .bind(report.remote_addr.as_deref())
    .bind(error.as_deref())
    .bind(report.response_excerpt.as_deref().map(|e| cut(e, 1000)))
    .bind(delivery == DeliveryEffect::LeaseLost)
    .execute(&mut *tx)
    .await?;
    let endpoint_disabled = if delivered {
        // Only a change is written: a healthy endpoint's row is not touched on every success.
        sqlx::query(
            "UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL, paused_until = NULL,
                    updated_at = now()
              WHERE id = $1 AND (consecutive_failures <> 0 OR failing_since IS NOT NULL OR paused_until IS NOT NULL)",
        )
        .bind(lease.endpoint_id)
        .execute(&mut *tx)
        .await?;
        None
    } else {
        let reason = format!(
            "disabled after constant failure since the first failed attempt; last: {}",
            error.as_deref().unwrap_or(report.outcome.as_str())
        );
        let disabled: Option<(bool, Option<DateTime<Utc>>)> = sqlx::query_as(
            "UPDATE webhook_endpoints SET
                    consecutive_failures = consecutive_failures + 1,
                    failing_since = COALESCE(failing_since, now()),
                    paused_until = now() + LEAST(make_interval(secs => $2 * power(2, LEAST(consecutive_failures, 30))),
                                                 make_interval(secs => $3)),
                    disabled_at = CASE WHEN disabled_at IS NULL
                                        AND COALESCE(failing_since, now()) + make_interval(secs => $4) <= now()
                                       THEN now() ELSE disabled_at END,
                    disabled_reason = CASE WHEN disabled_at IS NULL
                                            AND COALESCE(failing_since, now()) + make_interval(secs => $4) <= now()
                                           THEN $5 ELSE disabled_reason END,
                    updated_at = now()
              WHERE id = $1
          RETURNING disabled_at IS NOT NULL AND disabled_at = now(), failing_since",
        )
        .bind(lease.endpoint_id)
        .bind(secs(rules.pause_base))
        .bind(secs(rules.pause_max))
        .bind(secs(rules.disable_after))
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        match disabled {
            Some((true, since)) => since,
            _ => None,
        }
    };
    tx.commit().await?;
    Ok(AttemptEffect { delivery, endpoint_disabled })
}

fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max_chars).collect();
    s.push('…');
    s
}

// ---- manual redelivery ----------------------------------------------------------------------

/// What a redelivery request scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Redelivery {
    /// Events that matched.
    pub events: u64,
    /// Deliveries (event x endpoint) made due now, created where an endpoint did not exist yet
    /// when the event was written.
    pub deliveries: u64,
}

/// Sends one event again to every current endpoint of its client that takes its type (or to
/// `endpoint_id` only), with a fresh retry window. `None`: no such event (for this client).
pub async fn redeliver_event(
    pool: &PgPool,
    event_id: Uuid,
    client_id: Option<&str>,
    endpoint_id: Option<Uuid>,
) -> Result<Option<Redelivery>, StoreError> {
    let exists: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_events WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)",
    )
    .bind(event_id)
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let deliveries = schedule(pool, Some(event_id), client_id, None, None, endpoint_id, 1).await?;
    Ok(Some(Redelivery { events: 1, deliveries }))
}

/// Sends again every event of `client_id` created in `[from, to)`, at most `max_events` of them
/// (oldest first), as [`redeliver_event`] does for one.
pub async fn redeliver_range(
    pool: &PgPool,
    client_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    endpoint_id: Option<Uuid>,
    max_events: i64,
) -> Result<Redelivery, StoreError> {
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_events
                                WHERE client_id = $1 AND created_at >= $2 AND created_at < $3 LIMIT $4) AS e",
    )
    .bind(client_id)
    .bind(from)
    .bind(to)
    .bind(max_events)
    .fetch_one(pool)
    .await?;
    let deliveries =
        schedule(pool, None, Some(client_id), Some(from), Some(to), endpoint_id, max_events).await?;
    Ok(Redelivery { events: u64::try_from(events).unwrap_or(0), deliveries })
}

#[allow(clippy::too_many_arguments)]
async fn schedule(
    pool: &PgPool,
    event_id: Option<Uuid>,
    client_id: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    endpoint_id: Option<Uuid>,
    max_events: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let n: i64 = sqlx::query_scalar(
        "WITH ev AS (
             SELECT id, client_id, event_type FROM webhook_events
              WHERE ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR client_id = $2)
                AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
              ORDER BY created_at LIMIT $6
         ), up AS (
             INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
             SELECT ev.id, ep.id, now() FROM ev
               JOIN webhook_endpoints ep ON ep.client_id = ev.client_id
              WHERE ep.deleted_at IS NULL AND ev.event_type = ANY (ep.event_types)
                AND ($5::uuid IS NULL OR ep.id = $5)
             ON CONFLICT (event_id, endpoint_id) DO UPDATE
                SET state = 'pending', next_attempt_at = now(), window_start = now(), updated_at = now()
             RETURNING 1
         )
         SELECT count(*) FROM up",
    )
    .bind(event_id)
    .bind(client_id)
    .bind(from)
    .bind(to)
    .bind(endpoint_id)
    .bind(max_events)
    .fetch_one(&mut *tx)
    .await?;
    if n > 0 {
        notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- reading the log ------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRecord {
    pub id: Uuid,
    pub client_id: String,
    pub event_type: String,
    pub payout_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// One event, if it exists (and belongs to `client_id` when given).
pub async fn event(
    pool: &PgPool,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Option<EventRecord>, StoreError> {
    let row = sqlx::query_as(
        "SELECT id, client_id, event_type, payout_id, payload, created_at FROM webhook_events
          WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)",
    )
    .bind(id)
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Events, newest first, filtered by client and payout.
pub async fn events(
    pool: &PgPool,
    client_id: Option<&str>,
    payout_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<EventRecord>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, client_id, event_type, payout_id, payload, created_at FROM webhook_events
          WHERE ($1::text IS NULL OR client_id = $1) AND ($2::uuid IS NULL OR payout_id = $2)
          ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(client_id)
    .bind(payout_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// One delivery of an event, with its attempts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub url: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub log: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    #[serde(skip)]
    pub delivery_id: i64,
    pub attempt: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub outcome: String,
    pub status_code: Option<i32>,
    pub remote_addr: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub lease_lost: bool,
}

/// The delivery log of an event: every delivery and every attempt, oldest first.
pub async fn deliveries_of_event(pool: &PgPool, event_id: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut deliveries: Vec<DeliveryRecord> = sqlx::query_as(
        "SELECT d.id, d.endpoint_id, e.url, d.state::text AS state, d.attempts, d.next_attempt_at, d.delivered_at,
                d.last_status, d.last_error, d.created_at
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.event_id = $1 ORDER BY d.id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
    let attempts: Vec<AttemptRecord> = sqlx::query_as(
        "SELECT delivery_id, attempt, worker, started_at, latency_ms, outcome, status_code, remote_addr, error,
                response_excerpt, lease_lost
           FROM webhook_attempts WHERE delivery_id = ANY ($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for a in attempts {
        if let Some(d) = deliveries.iter_mut().find(|d| d.id == a.delivery_id) {
            d.log.push(a);
        }
    }
    Ok(deliveries)
}
