//! Keeping data no longer than needed. One pass:
//!
//! 1. masks the destination details (phone, account number, receiver name, BIC) of final
//!    payouts finalized more than `destination_after` ago, in the payout's destination, in its
//!    frozen submit request, and in the payouts' webhook event payloads ([`redact_value`]); the
//!    masked form stays (numbers as the API shows them, all but the last four characters; names
//!    as initials), as do the destination code, amounts, references, states and the whole
//!    event timeline;
//! 2. prunes the bodies of provider callbacks received more than `callbacks_after` ago (the row
//!    stays: when, from whom, verified or not, what it did), never those of a payout that is not
//!    final.
//!
//! Both walk their rows in batches of `batch_size`, one short transaction each, skipping rows
//! locked at that moment (they are done next time), so a pass never holds long locks. One pass
//! runs at a time across the fleet (a session advisory lock on a connection of its own, which
//! ends with the connection if the process dies). Every pass is an operator event.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::{StoreError, operator_events, payout_view};

const ONE_DAY: Duration = Duration::from_secs(24 * 3600);

/// How long what is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Destination details of a final payout are masked this long after it became final.
    pub destination_after: Duration,
    /// Callback bodies are pruned this long after they were received (final payouts only).
    pub callbacks_after: Duration,
    /// Rows per statement.
    pub batch_size: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { destination_after: 90 * ONE_DAY, callbacks_after: 30 * ONE_DAY, batch_size: 5_000 }
    }
}

impl RetentionPolicy {
    /// Refuses a policy that would remove what reconciliation needs or keep details longer
    /// than asked, naming the settings.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.destination_after < ONE_DAY || self.callbacks_after < ONE_DAY {
            problems.push("retention periods must be at least one day".to_owned());
        }
        if self.callbacks_after > self.destination_after {
            problems.push(format!(
                "callback_days ({}) must not exceed destination_days ({}): callback bodies carry destination details",
                self.callbacks_after.as_secs() / ONE_DAY.as_secs(),
                self.destination_after.as_secs() / ONE_DAY.as_secs()
            ));
        }
        if !(1..=50_000).contains(&self.batch_size) {
            problems.push(format!("batch_size ({}) must be between 1 and 50000", self.batch_size));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub redacted_payouts: u64,
    pub redacted_webhook_events: u64,
    pub pruned_callbacks: u64,
    pub statements: u64,
    /// Time spent masking, pruning, and in all.
    pub redact_ms: u64,
    pub prune_ms: u64,
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionRun {
    Done(RetentionReport),
    /// Not run: another process holds the pass, or one ran within the requested gap.
    Skipped(String),
}

/// Runs one pass with `policy`, unless another process is running one, or (with `min_gap`) one
/// finished less than `min_gap` ago.
pub async fn run(
    pool: &PgPool,
    policy: &RetentionPolicy,
    actor: &str,
    reason: &str,
    min_gap: Option<Duration>,
) -> Result<RetentionRun, StoreError> {
    policy.validate().map_err(StoreError::Refused)?;
    // A connection of its own, detached from the pool: if this future is dropped, the
    // connection closes and the session lock with it, instead of going back to the pool held.
    let mut lock = pool.acquire().await?.detach();
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('payoutd.retention', 0))")
            .fetch_one(&mut lock)
            .await?;
    if !got {
        let _ = lock.close().await;
        return Ok(RetentionRun::Skipped("another process is running a retention pass".to_owned()));
    }
    let result = locked_pass(pool, policy, actor, reason, min_gap).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended('payoutd.retention', 0))")
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
    result
}

async fn locked_pass(
    pool: &PgPool,
    policy: &RetentionPolicy,
    actor: &str,
    reason: &str,
    min_gap: Option<Duration>,
) -> Result<RetentionRun, StoreError> {
    if let Some(gap) = min_gap {
        let last: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT max(created_at) FROM operator_events
              WHERE action = 'retention_run' AND created_at > now() - make_interval(secs => $1)",
        )
        .bind(gap.as_secs_f64())
        .fetch_one(pool)
        .await?;
        if let Some(at) = last {
            return Ok(RetentionRun::Skipped(format!(
                "a pass finished at {}",
                at.format("%Y-%m-%dT%H:%M:%SZ")
            )));
        }
    }
    let started = Instant::now();
    let mut report = RetentionReport::default();
    let ms = |since: Instant| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    loop {
        let (payouts, events) = redact_batch(pool, policy).await?;
        report.statements += 1;
        report.redacted_payouts += payouts;
        report.redacted_webhook_events += events;
        if payouts < policy.batch_size as u64 {
            break;
        }
    }
    report.redact_ms = ms(started);
    let pruning = Instant::now();
    loop {
        let pruned = prune_batch(pool, policy).await?;
        report.statements += 1;
        report.pruned_callbacks += pruned;
        if pruned < policy.batch_size as u64 {
            break;
        }
    }
    report.prune_ms = ms(pruning);
    report.took_ms = ms(started);
    let mut tx = pool.begin().await?;
    let detail = json!({
        "report": report,
        "destination_days": policy.destination_after.as_secs_f64() / ONE_DAY.as_secs_f64(),
        "callback_days": policy.callbacks_after.as_secs_f64() / ONE_DAY.as_secs_f64(),
    });
    operator_events::record(&mut tx, "retention_run", "retention", actor, reason, Some(&detail)).await?;
    tx.commit().await?;
    Ok(RetentionRun::Done(report))
}

/// Keys whose string values are account numbers, phones or bank codes of a person: masked like
/// the API masks account numbers (all but the last four characters).
const NUMBER_KEYS: [&str; 5] = ["phone", "client", "account_number", "receiver_bic", "bic"];
/// Keys whose string values are names: each word keeps its first letter.
const NAME_KEYS: [&str; 4] = ["receiver_name", "receiver_fio", "holder_name", "name"];

/// "Budi Santoso" -> "B*** S***". Idempotent, like [`payout_view::mask`].
pub fn mask_name(name: &str) -> String {
    let words: Vec<String> = name
        .split_whitespace()
        .map(|w| w.chars().next().map(|c| format!("{c}***")).unwrap_or_default())
        .collect();
    words.join(" ")
}

/// Masks destination details wherever they sit in a JSON document: the payout's destination
/// and every provider's frozen submit request (8B partner: phone, client, receiver_fio,
/// receiver_bic; 8B REST: recipient.{account_number, name, phone, bic}; 88Pay: account_number,
/// holder_name, phone). Destination codes (destination, bank_code), amounts, references and
/// every other key are kept. Masking twice changes nothing more.
pub fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(text) if NUMBER_KEYS.contains(&key.as_str()) => {
                        *text = payout_view::mask(text)
                    }
                    Value::String(text) if NAME_KEYS.contains(&key.as_str()) => *text = mask_name(text),
                    Value::Object(_) | Value::Array(_) => redact_value(v),
                    _ => {}
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

fn redacted(mut value: Value) -> Value {
    redact_value(&mut value);
    value
}

/// Masks one batch of final payouts past the period, and the destination in their webhook
/// event payloads: read under row locks, masked here (the one masking, shared with the API's
/// view), written back by id, in one transaction. Returns (payouts, events).
async fn redact_batch(pool: &PgPool, policy: &RetentionPolicy) -> Result<(u64, u64), StoreError> {
    let mut tx = pool.begin().await?;
    // The one exception webhook_events' append-only trigger makes (see the migration).
    sqlx::query("SELECT set_config('payoutd.retention', 'on', true)").execute(&mut *tx).await?;
    let rows: Vec<(Uuid, Value, Option<Value>)> = sqlx::query_as(
        "SELECT id, destination, submit_request FROM payouts
          WHERE redacted_at IS NULL AND finalized_at IS NOT NULL
            AND finalized_at < now() - make_interval(secs => $1)
            AND state IN ('paid', 'failed', 'cancelled')
          ORDER BY finalized_at
          LIMIT $2
          FOR UPDATE SKIP LOCKED",
    )
    .bind(policy.destination_after.as_secs_f64())
    .bind(policy.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut destinations = Vec::with_capacity(rows.len());
    let mut requests = Vec::with_capacity(rows.len());
    for (id, destination, request) in rows {
        ids.push(id);
        destinations.push(redacted(destination));
        requests.push(request.map(redacted).unwrap_or(Value::Null));
    }
    let payouts = sqlx::query(
        "UPDATE payouts p SET destination = u.destination,
                submit_request = CASE WHEN p.submit_request IS NULL THEN NULL ELSE u.submit_request END,
                redacted_at = now()
           FROM unnest($1::uuid[], $2::jsonb[], $3::jsonb[]) AS u(id, destination, submit_request)
          WHERE p.id = u.id",
    )
    .bind(&ids)
    .bind(&destinations)
    .bind(&requests)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let events: Vec<(Uuid, Value)> = sqlx::query_as(
        "SELECT id, payload #> '{data,payout,destination}' FROM webhook_events
          WHERE payout_id = ANY($1) AND payload #> '{data,payout,destination}' IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let (event_ids, event_destinations): (Vec<Uuid>, Vec<Value>) =
        events.into_iter().map(|(id, d)| (id, redacted(d))).unzip();
    let events = sqlx::query(
        "UPDATE webhook_events e SET payload = jsonb_set(e.payload, '{data,payout,destination}', u.destination)
           FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, destination)
          WHERE e.id = u.id",
    )
    .bind(&event_ids)
    .bind(&event_destinations)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok((payouts, events))
}

/// Prunes one batch of callback bodies past the period whose payout (by id or by reference) is
/// final, or that name no payout of ours.
async fn prune_batch(pool: &PgPool, policy: &RetentionPolicy) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "WITH batch AS (
             SELECT c.id FROM provider_callbacks c
              WHERE c.pruned_at IS NULL AND c.received_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.id = c.payout_id
                                   AND p.state NOT IN ('paid', 'failed', 'cancelled'))
                AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.provider_reference = c.provider_reference
                                   AND p.state NOT IN ('paid', 'failed', 'cancelled'))
              ORDER BY c.received_at
              LIMIT $2
              FOR UPDATE SKIP LOCKED
         )
         UPDATE provider_callbacks c SET body = '[pruned]', pruned_at = now()
           FROM batch WHERE c.id = batch.id",
    )
    .bind(policy.callbacks_after.as_secs_f64())
    .bind(policy.batch_size)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_s_destination_details_are_masked_and_the_rest_kept() {
        let mut v = json!({
            "id": "PO000000000000000001", "amount": "150000", "destination": "bank_bca",
            "phone": "622851280", "client": "1234567890", "receiver_fio": "Budi Santoso", "receiver_bic": "CENAIDJA",
            "recipient": {"account_number": "1234567890", "bank_code": "014", "name": "Budi", "bic": null},
            "holder_name": "Ana María López", "account_number": "55"
        });
        redact_value(&mut v);
        assert_eq!(
            v,
            json!({
                "id": "PO000000000000000001", "amount": "150000", "destination": "bank_bca",
                "phone": "*****1280", "client": "******7890", "receiver_fio": "B*** S***", "receiver_bic": "****IDJA",
                "recipient": {"account_number": "******7890", "bank_code": "014", "name": "B***", "bic": null},
                "holder_name": "A*** M*** L***", "account_number": "55"
            })
        );
        let once = v.clone();
        redact_value(&mut v);
        assert_eq!(v, once, "masking twice changes nothing");
    }

    #[test]
    fn the_defaults_pass_and_bad_policies_are_named() {
        RetentionPolicy::default().validate().expect("defaults");
        let longer_callbacks = RetentionPolicy { callbacks_after: 100 * ONE_DAY, ..Default::default() };
        assert!(longer_callbacks.validate().unwrap_err().contains("callback_days (100)"));
        let zero = RetentionPolicy { destination_after: Duration::ZERO, ..Default::default() };
        assert!(zero.validate().unwrap_err().contains("at least one day"));
        let huge = RetentionPolicy { batch_size: 1_000_000, ..Default::default() };
        assert!(huge.validate().unwrap_err().contains("batch_size"));
    }
}
