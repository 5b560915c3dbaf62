//! Final statuses and their webhooks: after the processing delay a cashout becomes COMPLETED
//! (or REJECTED), and a JSON [`Webhook`] is POSTed to the cashout's `notification_url`,
//! redelivered on the scaled schedule until a 2xx answer.
//!
//! 88Pay has no status call, so the webhook is the only way a client learns the outcome. That
//! is why the drop fault here loses only the FIRST attempt and the redeliveries still happen: a
//! payout can still finish, late. (The 8B sandbox's drop fault sends nothing at all, because
//! there the client can poll.) To cut a client off completely, switch
//! [`PaySandbox::set_drop_all_webhooks`] on: every attempt is lost while it is on.

use std::sync::Arc;

use chrono::Utc;
use payoutd_providers::eightyeight_pay::wire::Webhook;

use super::server::PaySandbox;
use crate::callbacks::retry_delays;

/// Whether the webhooks of one cashout are sent, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The first attempt is lost; redeliveries follow on schedule.
    pub drop_first: bool,
    /// The first attempt is sent twice.
    pub duplicate: bool,
}

/// One webhook, serialized once: every attempt sends the same bytes.
pub(crate) struct Delivery {
    reference: String,
    url: String,
    body: Vec<u8>,
}

impl Delivery {
    pub(crate) fn new(url: String, webhook: &Webhook) -> Option<Self> {
        match serde_json::to_vec(webhook) {
            Ok(body) => Some(Self { reference: webhook.reference.clone(), url, body }),
            Err(e) => {
                tracing::error!(reference = %webhook.reference, error = %e, "sandbox cannot write a webhook");
                None
            }
        }
    }
}

/// Finalizes one execution after the processing delay and delivers its webhooks.
pub(crate) fn finish_later(sandbox: &Arc<PaySandbox>, reference: String, declined: bool, plan: Plan) {
    let task = sandbox.clone();
    sandbox.runtime.spawn_after(sandbox.config().processing_delay, async move {
        if let Some(delivery) = finalize(&task, &reference, declined) {
            deliver(task, delivery, plan).await;
        }
    });
}

/// Makes one execution final now; the webhook to send, if it was still pending.
pub(crate) fn finalize(sandbox: &PaySandbox, reference: &str, declined: bool) -> Option<Delivery> {
    let (webhook, url) = sandbox.with_ledger(|l| l.finalize(reference, declined, Utc::now()))?;
    Delivery::new(url, &webhook)
}

/// The first attempt (and its duplicate, if planned); true if one was acknowledged. Used
/// directly by the early-webhook fault, before the cashout answer.
pub(crate) async fn first_attempt(sandbox: &PaySandbox, delivery: &Delivery, plan: Plan) -> bool {
    if plan.drop_first {
        sandbox.with_ledger(|l| l.stats.webhooks_dropped += 1);
        return false;
    }
    let acknowledged = post(sandbox, delivery).await;
    if plan.duplicate {
        sandbox.with_ledger(|l| l.stats.duplicate_webhooks_sent += 1);
        let again = post(sandbox, delivery).await;
        return acknowledged || again;
    }
    acknowledged
}

/// The redeliveries after a first attempt that was not acknowledged.
pub(crate) async fn redeliver(sandbox: Arc<PaySandbox>, delivery: Delivery) {
    let schedule = retry_delays(sandbox.config().webhook_schedule_scale);
    if sandbox.runtime.redeliver(schedule, || post(&sandbox, &delivery)).await {
        tracing::warn!(reference = %delivery.reference, "sandbox webhook schedule exhausted without a 2xx");
    }
}

/// The whole delivery: first attempt, then the schedule.
pub(crate) async fn deliver(sandbox: Arc<PaySandbox>, delivery: Delivery, plan: Plan) {
    if !first_attempt(&sandbox, &delivery, plan).await {
        redeliver(sandbox, delivery).await;
    }
}

/// One POST; true if answered 2xx. Lost on purpose while `drop_all_webhooks` is on.
async fn post(sandbox: &PaySandbox, delivery: &Delivery) -> bool {
    if sandbox.drop_all_webhooks() {
        sandbox.with_ledger(|l| l.stats.webhooks_dropped += 1);
        return false;
    }
    let _slot = sandbox.runtime.delivery_slot().await;
    sandbox.with_ledger(|l| l.stats.webhooks_sent += 1);
    let request = sandbox
        .runtime
        .http()
        .post(&delivery.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(delivery.body.clone())
        .send();
    let acknowledged = match sandbox.runtime.unless_shutdown(request).await {
        Some(Ok(response)) => response.status().is_success(),
        Some(Err(_)) | None => false,
    };
    sandbox.with_ledger(|l| {
        if acknowledged {
            l.stats.webhooks_acknowledged += 1;
            l.mark_acknowledged(&delivery.reference);
        } else {
            l.stats.webhooks_failed += 1;
        }
    });
    tracing::debug!(reference = %delivery.reference, acknowledged, "sandbox webhook");
    acknowledged
}
