//! Enqueueing over the HTTP API while the API process may be killed at any moment.
//!
//! Every payout has its own Idempotency-Key (its external id); a request that got no answer,
//! or a 5xx, is simply repeated under the same key, which the API guarantees is safe: the
//! repeat either creates the payout or answers 200 with the one created before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use payoutd_core::Secret;
use reqwest::StatusCode;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::SoakError;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(250);
const AMOUNTS: [(&str, &str); 4] =
    [("IDR", "150000"), ("USD", "12.50"), ("EUR", "99.99"), ("IDR", "2500000")];

/// What the enqueueing achieved.
#[derive(Debug, Default, Clone)]
pub struct Enqueued {
    /// external id -> payout id, for every payout the API accepted.
    pub accepted: BTreeMap<String, Uuid>,
    /// External ids the API never accepted before the deadline.
    pub not_accepted: Vec<String>,
    /// Requests repeated (no answer, 5xx, 429).
    pub retries: u64,
    /// Repeats answered with the payout created before (`Idempotent-Replayed: true`).
    pub replays: u64,
}

/// The enqueueing task, running beside the killer.
pub struct Enqueuer {
    task: JoinHandle<Result<Enqueued, SoakError>>,
    accepted: Arc<AtomicUsize>,
}

impl Enqueuer {
    /// Starts sending `n` payouts, at most `concurrency` at a time, the i-th not before
    /// `span * i / n` from now; gives up on a payout at `deadline`.
    pub fn start(
        api: String,
        token: Secret,
        n: usize,
        concurrency: usize,
        span: Duration,
        deadline: Instant,
    ) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            enqueue_all(api, token, n, concurrency.max(1), span, deadline, counter).await
        });
        Self { task, accepted }
    }

    /// Payouts accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn done(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn finish(self) -> Result<Enqueued, SoakError> {
        self.task.await.map_err(|e| SoakError::Enqueue(format!("the enqueue task failed: {e}")))?
    }
}

/// How one payout's enqueueing ended.
struct One {
    external_id: String,
    id: Option<Uuid>,
    retries: u64,
    replayed: bool,
}

async fn enqueue_all(
    api: String,
    token: Secret,
    n: usize,
    concurrency: usize,
    span: Duration,
    deadline: Instant,
    accepted: Arc<AtomicUsize>,
) -> Result<Enqueued, SoakError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| SoakError::Enqueue(format!("cannot build an HTTP client: {e}")))?;
    let run = Uuid::new_v4().simple().to_string();
    let token = Arc::new(token);
    let started = Instant::now();
    let mut out = Enqueued::default();
    let mut in_flight = JoinSet::new();
    let mut next = 0;
    while next < n || !in_flight.is_empty() {
        while next < n && in_flight.len() < concurrency {
            let due = started + span.mul_f64(next as f64 / n as f64);
            if due > Instant::now() && !in_flight.is_empty() {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let external_id = format!("soak-{}-{next:06}", &run[..8]);
            let body = body(&external_id, next);
            let (client, api, token) = (client.clone(), api.clone(), token.clone());
            in_flight
                .spawn(async move { enqueue_one(&client, &api, &token, external_id, body, deadline).await });
            next += 1;
        }
        // With room for more but the next one not due yet, wake up when it is.
        let wait_for_next = next < n && in_flight.len() < concurrency;
        let joined = if wait_for_next {
            let due = started + span.mul_f64(next as f64 / n as f64);
            tokio::select! {
                joined = in_flight.join_next() => joined,
                () = tokio::time::sleep_until(due.into()) => continue,
            }
        } else {
            in_flight.join_next().await
        };
        let Some(joined) = joined else { continue };
        let one = joined.map_err(|e| SoakError::Enqueue(format!("an enqueue task failed: {e}")))??;
        out.retries += one.retries;
        out.replays += u64::from(one.replayed);
        match one.id {
            Some(id) => {
                out.accepted.insert(one.external_id, id);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            None => out.not_accepted.push(one.external_id),
        }
    }
    Ok(out)
}

fn body(external_id: &str, n: usize) -> serde_json::Value {
    let (currency, amount) = AMOUNTS[n % AMOUNTS.len()];
    serde_json::json!({
        "external_id": external_id,
        "amount": amount,
        "currency": currency,
        "destination": {
            "phone": "622851280",
            "client": format!("{:010}", 1_000_000 + n),
            "destination": "bank_transfer",
            "receiver_name": "Soak Receiver",
        }
    })
}

/// Sends one payout until the API accepts it (or the deadline passes). A 4xx other than 429
/// is a bug in the soak or the API and ends the run.
async fn enqueue_one(
    client: &reqwest::Client,
    api: &str,
    token: &Secret,
    external_id: String,
    body: serde_json::Value,
    deadline: Instant,
) -> Result<One, SoakError> {
    let mut one = One { external_id, id: None, retries: 0, replayed: false };
    loop {
        let sent = client
            .post(format!("{api}/v1/payouts"))
            .bearer_auth(token.expose())
            .header("Idempotency-Key", &one.external_id)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status();
            let replayed = response.headers().get("Idempotent-Replayed").is_some_and(|v| v == "true");
            if status == StatusCode::CREATED || status == StatusCode::OK {
                // An unreadable answer is repeated like no answer: the key makes it safe.
                if let Ok(answer) = response.json::<serde_json::Value>().await
                    && let Some(id) = answer.get("id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok())
                {
                    one.id = Some(id);
                    one.replayed = replayed;
                    return Ok(one);
                }
            } else if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                let text = response.text().await.unwrap_or_default();
                return Err(SoakError::Enqueue(format!(
                    "payout {} was answered {status}: {text}",
                    one.external_id
                )));
            }
        }
        if Instant::now() >= deadline {
            return Ok(one);
        }
        one.retries += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
