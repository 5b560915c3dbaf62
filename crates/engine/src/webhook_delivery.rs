//! The webhook delivery service: its own claim loop next to the payout [`crate::Worker`].
//!
//! Deliveries are jobs like payouts: claimed with a lease and a fencing token
//! ([`webhooks::claim_due`]), worked on outside the claim's transaction, and their outcome
//! written only under the token ([`webhooks::record_attempt`]). A worker that dies between
//! the claim and the write leaves the lease to expire; the next claim takes the delivery again.
//! So delivery is at least once: a receiver may see an event twice and deduplicates on the
//! `webhook-id` header (the event id). Order between events is not promised, not even per
//! endpoint (retries and parallel workers reorder them); an event carries the payout's state
//! and `updated_at`, so a receiver can tell an older state from a newer one.
//!
//! Retry times live in the database (`next_attempt_at`), backing off exponentially up to
//! `retry.max_delay`, for `retry_window` (at least three days) after the event. A failing
//! endpoint is slowed down without holding up the others: while it fails it gets one delivery
//! in flight at a time and is paused between attempts (growing to `pause_max`), and after
//! `disable_after` of failure without a single success it is disabled, with an error-level
//! alert in the log. Its deliveries wait (nothing is dropped) until it is enabled again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use payoutd_core::RetryPolicy;
use payoutd_core::sealing::SealingKey;
use payoutd_core::webhook::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature_header};
use payoutd_store::webhooks::{
    self, AttemptOutcome, AttemptReport, ClaimedDelivery, DeliveryEffect, EndpointLimits, FailureRules,
    WEBHOOK_CHANNEL,
};
use payoutd_store::{PgPool, StoreError};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ConfigError;
use crate::wakeup;
use crate::webhook_http::{ClientSettings, SendError, WebhookClient};

/// The shortest retry window the service accepts: backends that are down for a weekend still
/// get every event.
pub const MIN_RETRY_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// The shortest sleep of an idle claim loop.
const MIN_IDLE_SLEEP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Names this process in leases and in the delivery log.
    pub worker_id: String,
    /// Deliveries in flight in this process (default 16).
    pub concurrency: usize,
    /// Deliveries in flight per endpoint while it answers well (default 4); one while it fails.
    pub per_endpoint: u32,
    /// How long a claim holds a delivery (default 30 s). Must outlast a request, so that no
    /// other worker takes a delivery whose request is still under way.
    pub lease: Duration,
    /// Timeouts, answer bound and the address policy (SSRF) of the HTTP client.
    pub client: ClientSettings,
    /// Backoff between attempts of one delivery (default 5 s doubling to 1 h, jittered).
    pub retry: RetryPolicy,
    /// How long a delivery is retried (default and minimum: 3 days).
    pub retry_window: Duration,
    /// An endpoint's pause after a failure: `pause_base * 2^(failures in a row - 1)` up to
    /// `pause_max` (defaults 1 s and 5 min).
    pub pause_base: Duration,
    pub pause_max: Duration,
    /// An endpoint failing for this long without a success is disabled (default 3 days).
    pub disable_after: Duration,
    /// The fallback poll when no notification arrives (default 1 s).
    pub idle_poll: Duration,
    /// On shutdown, how long in-flight requests may take before they are abandoned to lease
    /// expiry (default 15 s).
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            worker_id: crate::config::default_worker_id(),
            concurrency: 16,
            per_endpoint: 4,
            lease: Duration::from_secs(30),
            client: ClientSettings::default(),
            retry: RetryPolicy {
                base: Duration::from_secs(5),
                max_delay: Duration::from_secs(3600),
                max_attempts: u32::MAX,
            },
            retry_window: MIN_RETRY_WINDOW,
            pause_base: Duration::from_secs(1),
            pause_max: Duration::from_secs(300),
            disable_after: Duration::from_secs(3 * 24 * 3600),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

impl DeliveryConfig {
    /// Refuses settings that would lose events or send them twice needlessly, naming them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.concurrency == 0 || self.per_endpoint == 0 {
            problems.push("webhook concurrency and per_endpoint must be at least 1".to_owned());
        }
        if self.client.timeout.is_zero() || self.client.connect_timeout.is_zero() {
            problems.push("webhook timeouts must be positive".to_owned());
        }
        let margin = Duration::from_millis(500);
        if self.lease < self.client.timeout + margin {
            problems.push(format!(
                "webhook lease ({:?}) must be longer than the request timeout ({:?}) + 0.5 s, so that no \
                 other worker takes a delivery whose request is still under way",
                self.lease, self.client.timeout
            ));
        }
        if self.retry_window < MIN_RETRY_WINDOW {
            problems.push(format!(
                "webhook retry window ({:?}) must be at least 3 days ({:?})",
                self.retry_window, MIN_RETRY_WINDOW
            ));
        }
        if self.client.max_response_bytes == 0 || self.client.max_response_bytes > 64 * 1024 {
            problems.push("webhook max_response_bytes must be between 1 and 65536".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems.join("; "))) }
    }

    fn failure_rules(&self, attempt: i32) -> FailureRules {
        let attempt = u32::try_from(attempt).unwrap_or(1).max(1);
        FailureRules {
            retry_in: self.retry.delay(attempt, None, &mut rand::rng()),
            retry_window: self.retry_window,
            pause_base: self.pause_base,
            pause_max: self.pause_max,
            disable_after: self.disable_after,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] crate::webhook_http::BuildError),
}

/// Counts kept by one delivery service, for logs and tests.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    pub claimed: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub refused: AtomicU64,
    pub gave_up: AtomicU64,
    pub leases_lost: AtomicU64,
    pub endpoints_disabled: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub claimed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub refused: u64,
    pub gave_up: u64,
    pub leases_lost: u64,
    pub endpoints_disabled: u64,
    pub errors: u64,
}

impl DeliveryCounters {
    pub fn report(&self) -> DeliveryReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeliveryReport {
            claimed: get(&self.claimed),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            refused: get(&self.refused),
            gave_up: get(&self.gave_up),
            leases_lost: get(&self.leases_lost),
            endpoints_disabled: get(&self.endpoints_disabled),
            errors: get(&self.errors),
        }
    }
}

/// Everything one delivery task needs.
#[derive(Clone)]
struct Shared {
    pool: PgPool,
    key: Arc<SealingKey>,
    client: WebhookClient,
    config: Arc<DeliveryConfig>,
    counters: Arc<DeliveryCounters>,
}

pub struct WebhookDelivery {
    shared: Shared,
    wake: Arc<Notify>,
}

impl WebhookDelivery {
    /// Refuses settings that break a rule (see [`DeliveryConfig::validate`]).
    pub fn new(pool: PgPool, key: SealingKey, config: DeliveryConfig) -> Result<Self, DeliveryError> {
        config.validate()?;
        let client = WebhookClient::new(&config.client)?;
        Ok(Self {
            shared: Shared {
                pool,
                key: Arc::new(key),
                client,
                config: Arc::new(config),
                counters: Arc::default(),
            },
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn counters(&self) -> Arc<DeliveryCounters> {
        self.shared.counters.clone()
    }

    fn limits(&self) -> EndpointLimits {
        EndpointLimits { healthy: self.shared.config.per_endpoint, failing: 1 }
    }

    /// Claims what is due (up to `limit`), delivers it and waits for every attempt to be
    /// recorded. Returns how many deliveries were attempted. Tests drive the service with this.
    pub async fn run_once(&self, limit: usize) -> Result<usize, StoreError> {
        let c = &self.shared.config;
        let claimed =
            webhooks::claim_due(&self.shared.pool, &c.worker_id, limit as i64, c.lease, self.limits())
                .await?;
        let n = claimed.len();
        let mut tasks = JoinSet::new();
        for d in claimed {
            self.shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            tasks.spawn(async move { deliver(&shared, d).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Runs until `shutdown`, then lets in-flight requests finish within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> DeliveryReport {
        let config = self.shared.config.clone();
        let listener_stop = CancellationToken::new();
        // Aborted on every way out of `run` (an aborted service task included), so a LISTEN
        // connection never outlives its service.
        let mut listener = AbortOnDrop(tokio::spawn(wakeup::listen_on(
            self.shared.pool.clone(),
            WEBHOOK_CHANNEL,
            self.wake.clone(),
            listener_stop.clone(),
        )));
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let mut tasks = JoinSet::new();
        tracing::info!(worker = %config.worker_id, concurrency = config.concurrency, "webhook delivery started");
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match webhooks::claim_due(
                    &self.shared.pool,
                    &config.worker_id,
                    free as i64,
                    config.lease,
                    self.limits(),
                )
                .await
                {
                    Ok(batch) => {
                        claimed = batch.len();
                        for d in batch {
                            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                            self.shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
                            let shared = self.shared.clone();
                            tasks.spawn(async move {
                                deliver(&shared, d).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "webhook claim failed; backing off");
                    }
                }
            }
            if claimed > 0 && claimed == free {
                continue;
            }
            // A claim that found nothing although something is due (its endpoint is at its
            // in-flight limit in another process, or locked by another claim) must not spin:
            // wait at least a little, unless a notification or a finished delivery comes first.
            let sleep = if tasks.is_empty() {
                self.idle_sleep().await.max(MIN_IDLE_SLEEP.min(config.idle_poll))
            } else {
                config.idle_poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                // A finished delivery frees a slot and its endpoint's room.
                Some(_) = tasks.join_next() => {}
            }
        }
        let drained =
            tokio::time::timeout(config.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "webhook grace period over; abandoning deliveries to lease expiry"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        listener_stop.cancel();
        let _ = (&mut listener.0).await;
        let report = self.shared.counters.report();
        tracing::info!(?report, "webhook delivery stopped");
        report
    }

    async fn idle_sleep(&self) -> Duration {
        let poll = self.shared.config.idle_poll;
        match webhooks::next_due_at(&self.shared.pool).await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(poll),
            _ => poll,
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One attempt: sign, send, record.
async fn deliver(shared: &Shared, d: ClaimedDelivery) {
    let lease = d.lease();
    let started = Instant::now();
    let report = attempt(shared, &d).await;
    let report = AttemptReport { latency: started.elapsed(), ..report };
    let counters = &shared.counters;
    match report.outcome {
        AttemptOutcome::Delivered => counters.delivered.fetch_add(1, Ordering::Relaxed),
        AttemptOutcome::Refused => counters.refused.fetch_add(1, Ordering::Relaxed),
        _ => counters.failed.fetch_add(1, Ordering::Relaxed),
    };
    let rules = shared.config.failure_rules(d.attempt);
    match webhooks::record_attempt(&shared.pool, &lease, &shared.config.worker_id, &report, &rules).await {
        Ok(effect) => {
            match effect.delivery {
                DeliveryEffect::LeaseLost => {
                    counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event_id = %d.event_id, endpoint_id = %d.endpoint_id, "webhook lease lost during an attempt; logged only");
                }
                DeliveryEffect::GaveUp => {
                    counters.gave_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(event_id = %d.event_id, endpoint_id = %d.endpoint_id, attempts = d.attempt, alert = true,
                        "webhook delivery gave up after its retry window; redeliver it by hand once the endpoint works");
                }
                DeliveryEffect::RetryAt(at) => {
                    tracing::info!(event_id = %d.event_id, endpoint_id = %d.endpoint_id, attempt = d.attempt,
                        outcome = report.outcome.as_str(), retry_at = %at, "webhook attempt failed; retry scheduled");
                }
                DeliveryEffect::Delivered => {}
            }
            if let Some(since) = effect.endpoint_disabled {
                counters.endpoints_disabled.fetch_add(1, Ordering::Relaxed);
                tracing::error!(endpoint_id = %d.endpoint_id, failing_since = %since, alert = true,
                    "webhook endpoint disabled after constant failure; its events wait until it is enabled again");
            }
        }
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_id = %d.event_id, error = %e, "could not record a webhook attempt; the delivery is retried after its lease expires");
        }
    }
}

fn failed(outcome: AttemptOutcome, error: String) -> AttemptReport {
    AttemptReport {
        outcome,
        status_code: None,
        latency: Duration::ZERO,
        remote_addr: None,
        error: Some(error),
        response_excerpt: None,
    }
}

async fn attempt(shared: &Shared, d: &ClaimedDelivery) -> AttemptReport {
    let secrets = match d.signing_secrets(&shared.key) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(endpoint_id = %d.endpoint_id, error = %e, alert = true, "webhook secret cannot be opened");
            return failed(AttemptOutcome::Error, e.to_string());
        }
    };
    let body = match serde_json::to_vec(&d.payload) {
        Ok(body) => body,
        Err(e) => return failed(AttemptOutcome::Error, format!("payload does not serialise: {e}")),
    };
    let id = d.event_id.to_string();
    let timestamp = Utc::now().timestamp();
    let signature = signature_header(&secrets, &id, timestamp, &body);
    let headers = [(HEADER_ID, id), (HEADER_TIMESTAMP, timestamp.to_string()), (HEADER_SIGNATURE, signature)];
    match shared.client.post(&d.url, &headers, body).await {
        Ok(answer) => {
            let ok = (200..300).contains(&answer.status);
            AttemptReport {
                outcome: if ok { AttemptOutcome::Delivered } else { AttemptOutcome::HttpStatus },
                status_code: Some(answer.status),
                latency: Duration::ZERO,
                remote_addr: answer.remote_addr.map(|a| a.to_string()),
                error: (!ok).then(|| format!("answered {}", answer.status)),
                response_excerpt: Some(answer.excerpt).filter(|e| !e.is_empty()),
            }
        }
        Err(e) => {
            let outcome = match &e {
                SendError::InvalidUrl(_) => AttemptOutcome::InvalidUrl,
                SendError::Refused(_) => AttemptOutcome::Refused,
                SendError::Timeout => AttemptOutcome::Timeout,
                SendError::Connect(_) => AttemptOutcome::Connect,
                SendError::Other(_) => AttemptOutcome::Error,
            };
            if outcome == AttemptOutcome::Refused {
                tracing::warn!(event_id = %d.event_id, endpoint_id = %d.endpoint_id, error = %e, "webhook refused by the address policy");
            }
            failed(outcome, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_settings_that_lose_events_or_double_send_are_refused() {
        DeliveryConfig::default().validate().expect("defaults pass");
        let short =
            DeliveryConfig { retry_window: Duration::from_secs(24 * 3600), ..DeliveryConfig::default() };
        assert!(short.validate().unwrap_err().to_string().contains("at least 3 days"));
        let mut lease = DeliveryConfig { lease: Duration::from_secs(10), ..DeliveryConfig::default() };
        lease.client.timeout = Duration::from_secs(10);
        assert!(lease.validate().unwrap_err().to_string().contains("lease"));
    }
}
