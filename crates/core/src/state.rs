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
    /// Parked for a person (outcome unknown after retries, a data mismatch, a poison row). No
    /// automatic step runs on it; it leaves only by a recorded resolution: a verified final
    /// answer from the provider (to paid or failed), an operator (to paid or failed), or an
    /// operator retry (to in_doubt, which asks the provider before anything else).
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

    /// Final states never change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Paid | Self::Failed | Self::Cancelled)
    }

    /// Parked: not final, but no automatic step runs on it (see [`Self::NeedsReview`]).
    pub fn is_parked(self) -> bool {
        matches!(self, Self::NeedsReview)
    }

    /// Whether the engine schedules steps for this state (neither final nor parked).
    pub fn is_active(self) -> bool {
        !self.is_final() && !self.is_parked()
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
            // needs_review before the intent: a poison row (nothing was sent).
            (Pending, Checked | Failed | Cancelled | NeedsReview) => true,
            (Checked, IntentRecorded | Failed | Cancelled | NeedsReview) => true,
            (IntentRecorded, Submitted | InDoubt | Paid | Failed | NeedsReview) => true,
            (InDoubt, Submitted | Paid | Failed | NeedsReview) => true,
            (Submitted, InDoubt | Paid | Failed | NeedsReview) => true,
            // The recorded ways out of the parking lot (DESIGN rule 11).
            (NeedsReview, Paid | Failed | InDoubt) => true,
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
    fn needs_review_is_parked_not_final_and_leaves_only_by_resolution() {
        assert!(!NeedsReview.is_final());
        assert!(NeedsReview.is_parked());
        assert!(!NeedsReview.is_active());
        for to in PayoutState::ALL {
            let allowed = NeedsReview.can_move_to(to);
            assert_eq!(allowed, matches!(to, Paid | Failed | InDoubt), "needs_review -> {to}");
        }
        for s in [Pending, Checked, IntentRecorded, Submitted, InDoubt] {
            assert!(s.is_active() && s.can_move_to(NeedsReview), "{s} can be parked");
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
