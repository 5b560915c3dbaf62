//! The payout state machine. The store mirrors [`PayoutState`] as a Postgres enum and refuses
//! any write whose move [`PayoutState::can_move_to`] does not allow.

use std::fmt;
use std::str::FromStr;

/// Where a payout is in its workflow: check, intent, submit, await, final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayoutState {
    /// Accepted from a client; the "can this payout go" check has not passed yet.
    Pending,
    /// The check passed; the submit request is not frozen yet.
    Checked,
    /// Write-ahead: the exact submit request and our provider reference are committed.
    /// A submit call may be under way (or may have happened before a crash).
    IntentRecorded,
    /// The provider accepted the submit; waiting for a callback or a status poll.
    Submitted,
    /// A submit had no clear outcome (timeout, reset, 5xx, unreadable answer, crash).
    /// The next step must ask the provider by our reference before anything else.
    InDoubt,
    /// Final: the provider paid.
    Paid,
    /// Final: the provider said explicitly that the payout failed, or it failed before submit.
    Failed,
    /// Final: cancelled by an operator before any submit.
    Cancelled,
    /// Final: parked for a person (outcome unknown after retries, or a data mismatch).
    NeedsReview,
}

impl PayoutState {
    pub const ALL: [PayoutState; 9] = [
        Self::Pending,
        Self::Checked,
        Self::IntentRecorded,
        Self::Submitted,
        Self::InDoubt,
        Self::Paid,
        Self::Failed,
        Self::Cancelled,
        Self::NeedsReview,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Checked => "checked",
            Self::IntentRecorded => "intent_recorded",
            Self::Submitted => "submitted",
            Self::InDoubt => "in_doubt",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::NeedsReview => "needs_review",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Paid | Self::Failed | Self::Cancelled | Self::NeedsReview)
    }

    /// True once money may have moved: from here on nothing may cancel or fail the payout
    /// without the provider's word.
    pub fn money_may_have_moved(self) -> bool {
        matches!(self, Self::IntentRecorded | Self::Submitted | Self::InDoubt | Self::Paid)
    }

    /// States only move forward. A final state never changes; `Cancelled` is reachable only
    /// before the intent; `Failed` after the intent only on the provider's explicit word
    /// (the engine decides that, this table only forbids the impossible moves).
    pub fn can_move_to(self, to: PayoutState) -> bool {
        use PayoutState::*;
        match (self, to) {
            (from, _) if from.is_final() => false,
            (Pending, Checked | Failed | Cancelled) => true,
            (Checked, IntentRecorded | Failed | Cancelled) => true,
            (IntentRecorded, Submitted | InDoubt | Paid | Failed | NeedsReview) => true,
            (InDoubt, Submitted | Paid | Failed | NeedsReview) => true,
            (Submitted, InDoubt | Paid | Failed | NeedsReview) => true,
            _ => false,
        }
    }
}

impl fmt::Display for PayoutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown payout state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for PayoutState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::PayoutState::*;
    use super::*;

    #[test]
    fn final_states_never_move() {
        for from in PayoutState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in PayoutState::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn cancel_only_before_the_intent() {
        for from in PayoutState::ALL {
            let allowed = from.can_move_to(Cancelled);
            assert_eq!(allowed, matches!(from, Pending | Checked), "{from} -> cancelled");
        }
    }

    #[test]
    fn nothing_moves_back_to_before_the_intent() {
        for from in [IntentRecorded, Submitted, InDoubt] {
            for to in [Pending, Checked, IntentRecorded, Cancelled] {
                assert!(!from.can_move_to(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in PayoutState::ALL {
            assert_eq!(s.as_str().parse::<PayoutState>().unwrap(), s);
        }
    }
}
