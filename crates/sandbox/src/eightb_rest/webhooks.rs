//! Webhook delivery as the guide describes it: `POST {url}/{disbursementId}` with the JSON
//! `Webhook` body, final statuses only. The guide names no retry policy; like most providers
//! (and like the 8B partner sandbox) a webhook not answered 2xx is redelivered on a schedule.

use std::sync::Arc;

use crate::callbacks::retry_delays;
use crate::eightb_rest::ledger::Final;
use crate::eightb_rest::server::RestSandbox;

/// Whether the webhooks of one disbursement are sent, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub drop: bool,
    pub duplicate: bool,
}

/// How one webhook POST went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Any 2xx: done.
    Acknowledged,
    /// Anything else, or no answer: try again on schedule.
    Failed,
    /// No webhook URL is configured (any more): nothing to send, nothing to count.
    NoReceiver,
}

impl Answer {
    fn is_final(self) -> bool {
        !matches!(self, Self::Failed)
    }
}

/// Delivers the first attempt now (and the duplicate, if planned), and reports whether the
/// schedule is done. Used directly by the early-webhook fault, before the intent answer.
pub(crate) async fn first_attempt(sandbox: &RestSandbox, last: &Final, plan: Plan) -> bool {
    if sandbox.webhook_base_url().is_none() {
        return true;
    }
    if plan.drop {
        sandbox.with_books(|b| b.stats.webhooks_dropped += 1);
        return true;
    }
    let answer = post(sandbox, last).await;
    if plan.duplicate {
        sandbox.with_books(|b| b.stats.duplicate_webhooks_sent += 1);
        let again = post(sandbox, last).await;
        return answer.is_final() || again.is_final();
    }
    answer.is_final()
}

/// The redeliveries after a first attempt that was not acknowledged.
pub(crate) async fn redeliver(sandbox: Arc<RestSandbox>, last: Final) {
    let schedule = retry_delays(sandbox.webhook_schedule_scale());
    let attempt = || async { post(&sandbox, &last).await.is_final() };
    if sandbox.runtime.redeliver(schedule, attempt).await {
        let id = &last.disbursement_id;
        tracing::warn!(%id, "8B REST sandbox webhook schedule exhausted without a 2xx");
    }
}

/// The whole delivery: first attempt, then the schedule.
pub(crate) async fn deliver(sandbox: Arc<RestSandbox>, last: Final, plan: Plan) {
    if !first_attempt(&sandbox, &last, plan).await {
        redeliver(sandbox, last).await;
    }
}

/// One POST to the current webhook URL. Without a URL nothing is sent and the schedule ends.
async fn post(sandbox: &RestSandbox, last: &Final) -> Answer {
    let Some(base) = sandbox.webhook_base_url() else {
        return Answer::NoReceiver;
    };
    let url = format!("{}/{}", base.trim_end_matches('/'), last.disbursement_id);
    let _slot = sandbox.runtime.delivery_slot().await;
    sandbox.with_books(|b| b.stats.webhooks_sent += 1);
    let answer = match sandbox.runtime.http().post(&url).json(&last.webhook).send().await {
        Ok(response) if response.status().is_success() => Answer::Acknowledged,
        Ok(_) | Err(_) => Answer::Failed,
    };
    sandbox.with_books(|b| match answer {
        Answer::Acknowledged => {
            b.stats.webhooks_acknowledged += 1;
            b.mark_acknowledged(&last.disbursement_id);
        }
        Answer::Failed => b.stats.webhooks_failed += 1,
        Answer::NoReceiver => {}
    });
    tracing::debug!(id = %last.disbursement_id, ?answer, "8B REST sandbox webhook");
    answer
}
