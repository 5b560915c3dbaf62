//! Counters of what the store writes: state changes by from/to (engine steps, callbacks,
//! operators and poison-row parking alike), and leases taken over from workers that let them
//! expire. They are added after the transaction commits, so a rolled-back write is never
//! counted.
//!
//! Instruments come from the global meter provider, created on first use (the binary installs
//! the provider first).

use std::sync::LazyLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use payoutd_core::PayoutState;

struct Instruments {
    transitions: Counter<u64>,
    takeovers: Counter<u64>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("payoutd");
    Instruments {
        transitions: meter
            .u64_counter("payoutd.transitions")
            .with_description("Committed state changes of payouts, by from and to state and actor kind")
            .build(),
        takeovers: meter
            .u64_counter("payoutd.lease.takeovers")
            .with_description(
                "Claims of a payout whose previous lease expired without being released (a dead, stalled or failed worker)",
            )
            .build(),
    }
});

/// Who wrote a transition, as a label: the kind only (`worker`, `callback`, `operator`), never the
/// full actor, which names a worker or a person.
fn actor_kind(actor: &str) -> &'static str {
    match actor.split(':').next() {
        Some("worker") => "worker",
        Some("callback") => "callback",
        _ => "operator",
    }
}

/// Counts one committed move (a stay in the same state is not a transition).
pub(crate) fn transition(from: PayoutState, to: PayoutState, actor: &str) {
    if from == to {
        return;
    }
    INSTRUMENTS.transitions.add(
        1,
        &[
            KeyValue::new("from", from.as_str()),
            KeyValue::new("to", to.as_str()),
            KeyValue::new("actor", actor_kind(actor)),
        ],
    );
}

/// Counts claims that took over an expired, unreleased lease.
pub(crate) fn takeovers(n: u64) {
    if n > 0 {
        INSTRUMENTS.takeovers.add(n, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_kinds_never_carry_names() {
        assert_eq!(actor_kind("worker:host-1-abc"), "worker");
        assert_eq!(actor_kind("callback:8b_partner"), "callback");
        assert_eq!(actor_kind("operator:alice"), "operator");
        assert_eq!(actor_kind("alice"), "operator");
    }
}
