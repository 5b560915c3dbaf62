//! What a provider can answer, in provider-neutral terms, and the one function that decides
//! what such an answer does to a payout, whether it came by status poll or by callback.
//!
//! Connectors map their wire answers into these types; the engine (polling) and the store
//! (callbacks) both act on [`effect_of_answer`], so the two paths cannot drift apart.

use std::time::Duration;

use rust_decimal::Decimal;

use crate::PayoutState;

/// Answer to "can this payout go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Go,
    /// Not now: e.g. the balance is below the amount. Worth asking again later.
    NotNow {
        reason: String,
    },
}

/// The classified outcome of the one call that moves money (DESIGN rule 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The provider took the payout; its final result comes by callback or status poll.
    /// `provider_id` is the provider's own id for it, where the provider gives one (8B REST's
    /// disbursement id, the only handle its status call accepts).
    Accepted { provider_id: Option<String> },
    /// The provider answered with a final result already.
    Paid { provider_id: Option<String> },
    /// The provider said no. Nothing was paid.
    Rejected { reason: String },
    /// The request provably did not reach the provider (connection refused, 429, an expired
    /// token answered 401): safe to send again later under the same reference.
    NotSent { reason: String, retry_after: Option<Duration> },
    /// Unknown whether the provider executed it: timeout, reset, 5xx, unreadable answer.
    InDoubt { reason: String },
    /// No valid token could be had (or the provider refused a fresh one): nothing was sent. A
    /// credential problem never fails or parks a payout: it waits and tries again.
    NoCredentials { reason: String },
}

/// The provider's view of a payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Paid,
    Failed {
        reason: String,
    },
    Processing,
    /// The provider has no payout under the handle we asked with.
    NotFound,
}

impl ProviderStatus {
    /// A short word for events and logs ("paid", "failed (reason)").
    pub fn describe(&self) -> String {
        match self {
            Self::Paid => "paid".into(),
            Self::Failed { reason } => format!("failed ({reason})"),
            Self::Processing => "processing".into(),
            Self::NotFound => "not found".into(),
        }
    }
}

/// How a provider lets us learn a payout's outcome after submit: what the engine may do for an
/// in-doubt or accepted payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLookup {
    /// A status call by our own reference (8B partner `check`): an in-doubt submit is resolved
    /// by asking, and resubmitted only on repeated NOT_FOUND (DESIGN rule 4).
    ByReference,
    /// A status call by the provider's id, learnt from the submit answer (8B REST). An in-doubt
    /// submit whose answer was lost has no id yet: it is resolved by the provider's webhook
    /// naming the id, confirmed by an authenticated status call; never by resubmission.
    ByProviderId,
    /// No status call at all (88Pay): only the webhook at the payout's capability URL can
    /// finish it; past a bound the payout is parked for reconciliation, never resubmitted.
    None,
}

/// A read-only call (check, status) that gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Timeout, connection problem, 5xx, unreadable answer, or no valid token yet: try again
    /// later.
    #[error("transient provider error: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// 429: the provider asks us to slow down.
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<Duration> },
    /// The provider refused the request itself (bad signature, bad parameters).
    #[error("provider refused the request: {reason}")]
    Refused { reason: String },
    /// No valid token could be had: nothing was sent. Never counts against a payout.
    #[error("no valid provider credentials: {reason}")]
    NoCredentials { reason: String },
}

impl ProviderError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } | Self::RateLimited { retry_after } => *retry_after,
            Self::Refused { .. } | Self::NoCredentials { .. } => None,
        }
    }
}

/// A callback whose authenticity checked out (by signature, or by arriving at a payout's
/// capability URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCallback {
    /// Our reference, as the provider echoes it.
    pub reference: String,
    pub amount: Decimal,
    /// Present when the provider's callback carries it (the 8B partner callback does not).
    pub currency: Option<String>,
    /// The other signed fields that identify the payout, by the name they carry in the frozen
    /// submit request, exactly as received. The store compares each one exactly with what was
    /// sent: a signature over concatenated fields lets an attacker move the boundaries between
    /// fields, so a valid signature alone does not prove which payout and outcome it covers.
    pub identifying: Vec<(String, String)>,
    pub status: ProviderStatus,
    /// Equal for two deliveries of the same notification; duplicates are no-ops.
    pub dedupe_key: String,
}

/// What one provider answer (a verified callback or a status query's result) does to a payout
/// in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerEffect {
    /// Move to this final state.
    Finalize(PayoutState),
    /// A parked payout is resolved by the provider's verified final answer (DESIGN rule 11).
    Resolve(PayoutState),
    /// The payout is final already and stays so (rule 5); `conflicting` when the provider now
    /// says the other final state, which must raise an alert.
    AlreadyFinal { state: PayoutState, conflicting: bool },
    /// The provider still works on it. From in_doubt this proves the submit arrived, so the
    /// payout is `Submitted` from now on (the polling path records that; a callback leaves the
    /// state to the next poll).
    StillProcessing { known_submitted: bool },
    /// The provider does not know the payout: what follows depends on the state and the
    /// provider (the resubmit rule of in_doubt, the review bound of submitted).
    NotFound,
    /// The answer is final but the state cannot take it (a final answer before intent): change
    /// nothing.
    Ignored,
}

/// The one decision of what a provider's answer does to a payout in `state`.
pub fn effect_of_answer(state: PayoutState, status: &ProviderStatus) -> AnswerEffect {
    let wanted = match status {
        ProviderStatus::Paid => PayoutState::Paid,
        ProviderStatus::Failed { .. } => PayoutState::Failed,
        ProviderStatus::Processing => {
            return if state.is_final() || state.is_parked() {
                AnswerEffect::Ignored
            } else {
                AnswerEffect::StillProcessing { known_submitted: state == PayoutState::InDoubt }
            };
        }
        ProviderStatus::NotFound => {
            return if state.is_final() || state.is_parked() {
                AnswerEffect::Ignored
            } else {
                AnswerEffect::NotFound
            };
        }
    };
    if state.is_final() {
        AnswerEffect::AlreadyFinal { state, conflicting: wanted != state }
    } else if state.is_parked() {
        AnswerEffect::Resolve(wanted)
    } else if state.can_move_to(wanted) {
        AnswerEffect::Finalize(wanted)
    } else {
        AnswerEffect::Ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PayoutState::*;

    const ALL: [PayoutState; 9] =
        [Pending, Checked, IntentRecorded, InDoubt, Submitted, Paid, Failed, Cancelled, NeedsReview];

    #[test]
    fn final_states_never_change_and_conflicts_are_flagged() {
        for state in [Paid, Failed, Cancelled] {
            for status in [ProviderStatus::Paid, ProviderStatus::Failed { reason: "x".into() }] {
                let AnswerEffect::AlreadyFinal { conflicting, .. } = effect_of_answer(state, &status) else {
                    panic!("{state} moved on {status:?}");
                };
                let same = matches!(
                    (state, &status),
                    (Paid, ProviderStatus::Paid) | (Failed, ProviderStatus::Failed { .. })
                );
                assert_eq!(conflicting, !same, "{state} {status:?}");
            }
        }
    }

    #[test]
    fn a_parked_payout_is_resolved_only_by_a_final_answer() {
        assert_eq!(effect_of_answer(NeedsReview, &ProviderStatus::Paid), AnswerEffect::Resolve(Paid));
        assert_eq!(effect_of_answer(NeedsReview, &ProviderStatus::Processing), AnswerEffect::Ignored);
        assert_eq!(effect_of_answer(NeedsReview, &ProviderStatus::NotFound), AnswerEffect::Ignored);
    }

    #[test]
    fn every_effect_is_a_legal_move() {
        for state in ALL {
            for status in [
                ProviderStatus::Paid,
                ProviderStatus::Failed { reason: "x".into() },
                ProviderStatus::Processing,
                ProviderStatus::NotFound,
            ] {
                if let AnswerEffect::Finalize(to) = effect_of_answer(state, &status) {
                    assert!(state.can_move_to(to), "{state} -> {to}");
                }
            }
        }
        assert_eq!(
            effect_of_answer(InDoubt, &ProviderStatus::Processing),
            AnswerEffect::StillProcessing { known_submitted: true }
        );
    }
}
