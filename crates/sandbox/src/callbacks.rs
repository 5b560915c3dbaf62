//! Signed callback delivery, as the provider does it: a form-urlencoded POST with
//! `hash = md5(id + dt + amount + result + destination + secret)`, repeated on the spec's
//! schedule until the answer is HTTP 200 "OK" (or "ERROR", which ends the interaction).

use std::sync::Arc;
use std::time::Duration;

use payoutd_core::Secret;
use payoutd_providers::eightb_partner::format::format_dt;
use payoutd_providers::eightb_partner::signature::sign_callback;

use crate::ledger::Finalized;
use crate::server::Sandbox;

/// The spec's redelivery intervals in seconds, after the first attempt.
pub const SPEC_CALLBACK_SCHEDULE_SECS: [u64; 11] = [10, 30, 60, 60, 60, 60, 60, 300, 300, 300, 3600];

/// The redelivery intervals multiplied by `scale` (negative or NaN counts as 0).
pub(crate) fn retry_delays(scale: f64) -> Vec<Duration> {
    SPEC_CALLBACK_SCHEDULE_SECS
        .iter()
        .map(|&secs| {
            // Precision loss is irrelevant for delays of at most an hour.
            Duration::try_from_secs_f64(secs as f64 * scale).unwrap_or(Duration::ZERO)
        })
        .collect()
}

/// Whether the callbacks of one payout are sent, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub drop: bool,
    pub duplicate: bool,
}

/// The callback form fields, signed. The same body is resent on every redelivery.
pub(crate) fn callback_form(finalized: &Finalized, secret: &Secret) -> Vec<(&'static str, String)> {
    let dt = format_dt(finalized.at);
    let result = if finalized.paid { "1" } else { "0" };
    let hash = sign_callback(&finalized.id, &dt, &finalized.amount, result, &finalized.destination, secret);
    vec![
        ("id", finalized.id.clone()),
        ("dt", dt),
        ("amount", finalized.amount.clone()),
        ("result", result.to_owned()),
        ("error", finalized.error.clone()),
        ("destination", finalized.destination.clone()),
        ("hash", hash),
    ]
}

/// How one callback POST went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// HTTP 200 "OK": done.
    Acknowledged,
    /// HTTP 200 "ERROR": the spec says interaction stops.
    Refused,
    /// Anything else: try again on schedule.
    Failed,
    /// No callback URL is configured (any more): nothing to send, nothing to count.
    NoReceiver,
}

impl Answer {
    fn is_final(self) -> bool {
        !matches!(self, Self::Failed)
    }
}

/// Delivers the first attempt now (and the duplicate, if planned), and reports whether the
/// schedule is done. Used directly by the early-callback fault, before the payout answer.
pub(crate) async fn first_attempt(sandbox: &Sandbox, finalized: &Finalized, plan: Plan) -> bool {
    if sandbox.callback_url().is_none() {
        return true;
    }
    if plan.drop {
        sandbox.with_ledger(|l| l.stats.callbacks_dropped += 1);
        return true;
    }
    let answer = post(sandbox, finalized).await;
    if plan.duplicate {
        sandbox.with_ledger(|l| l.stats.duplicate_callbacks_sent += 1);
        let again = post(sandbox, finalized).await;
        return answer.is_final() || again.is_final();
    }
    answer.is_final()
}

/// The redeliveries after a first attempt that was not answered "OK" or "ERROR".
pub(crate) async fn redeliver(sandbox: Arc<Sandbox>, finalized: Finalized) {
    let schedule = retry_delays(sandbox.callback_schedule_scale());
    let attempt = || async { post(&sandbox, &finalized).await.is_final() };
    if sandbox.runtime.redeliver(schedule, attempt).await {
        tracing::warn!(id = %finalized.id, "sandbox callback schedule exhausted without an OK");
    }
}

/// The whole delivery: first attempt, then the schedule.
pub(crate) async fn deliver(sandbox: Arc<Sandbox>, finalized: Finalized, plan: Plan) {
    if !first_attempt(&sandbox, &finalized, plan).await {
        redeliver(sandbox, finalized).await;
    }
}

/// One POST to the current callback URL. Without a URL nothing is sent and the schedule ends.
async fn post(sandbox: &Sandbox, finalized: &Finalized) -> Answer {
    let Some(url) = sandbox.callback_url() else {
        return Answer::NoReceiver;
    };
    let form = callback_form(finalized, sandbox.secret());
    let _slot = sandbox.runtime.delivery_slot().await;
    sandbox.with_ledger(|l| l.stats.callbacks_sent += 1);
    let answer = match sandbox.runtime.http().post(&url).form(&form).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            match response.text().await.as_deref().map(str::trim) {
                Ok("OK") => Answer::Acknowledged,
                Ok("ERROR") => Answer::Refused,
                _ => Answer::Failed,
            }
        }
        Ok(_) | Err(_) => Answer::Failed,
    };
    sandbox.with_ledger(|l| match answer {
        Answer::Acknowledged => {
            l.stats.callbacks_acknowledged += 1;
            l.mark_acknowledged(&finalized.id);
        }
        Answer::Refused => l.stats.callbacks_answered_error += 1,
        Answer::Failed => l.stats.callbacks_failed += 1,
        Answer::NoReceiver => {}
    });
    tracing::debug!(id = %finalized.id, ?answer, "sandbox callback");
    answer
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use chrono::Utc;

    use super::*;

    #[test]
    fn schedule_scales() {
        let full = retry_delays(1.0);
        assert_eq!(full.len(), 11);
        assert_eq!(full[0], Duration::from_secs(10));
        assert_eq!(full[10], Duration::from_secs(3600));
        let fast = retry_delays(0.01);
        assert_eq!(fast[0], Duration::from_millis(100));
        assert_eq!(fast[10], Duration::from_secs(36));
        assert!(retry_delays(-1.0).iter().all(|d| d.is_zero()));
        assert!(retry_delays(f64::NAN).iter().all(|d| d.is_zero()));
    }

    #[test]
    fn the_form_is_signed_like_the_spec_says() {
        let finalized = Finalized {
            id: "ord-42".into(),
            amount: "150000".into(),
            destination: "bank_bca".into(),
            paid: true,
            error: String::new(),
            at: Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 0).single().expect("valid"),
        };
        let form = callback_form(&finalized, &Secret::new("s3cr3t-key"));
        let names: Vec<_> = form.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["id", "dt", "amount", "result", "error", "destination", "hash"]);
        assert_eq!(form[1].1, "2026-11-21 10:15:00");
        assert_eq!(form[3].1, "1");
        // md5sum of "ord-422026-11-21 10:15:001500001bank_bcas3cr3t-key".
        assert_eq!(form[6].1, "7da2ec664fc87f37f3f1dcf05191040a");
    }
}
