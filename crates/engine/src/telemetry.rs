//! The engine's instruments: step durations, retries scheduled, rate-limit waits, leases lost,
//! the queue gauges and provider balances, and the worker loop's pulse (for readiness).
//!
//! Instruments come from the global meter provider, created on first use: the binary installs
//! the provider before it builds a worker.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use payoutd_providers::telemetry::{DURATION_BUCKETS, meter};

pub(crate) struct Instruments {
    pub step_duration: Histogram<f64>,
    pub group_commit_writes: Histogram<u64>,
    pub retries: Counter<u64>,
    pub rate_limit_waits: Counter<u64>,
    pub leases_lost: Counter<u64>,
    pub payouts: Gauge<i64>,
    pub due: Gauge<i64>,
    pub oldest_due_age: Gauge<f64>,
    pub balance: Gauge<f64>,
    pub gauge_errors: Counter<u64>,
    pub account_paused: Gauge<i64>,
    pub batches: Gauge<i64>,
    pub batch_open_payouts: Gauge<i64>,
    pub restore_marked: Gauge<i64>,
}

pub(crate) static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = meter();
    Instruments {
        step_duration: meter
            .f64_histogram("payoutd.step.duration")
            .with_unit("s")
            .with_description("Engine steps, claim to written transition, by provider, state and result")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        group_commit_writes: meter
            .u64_histogram("payoutd.group_commit.writes")
            .with_unit("{write}")
            .with_description("Payout writes per commit of a worker's group commit (1: no batching happened)")
            .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
            .build(),
        retries: meter
            .u64_counter("payoutd.retries.scheduled")
            .with_description("Steps that failed and were scheduled again, by provider and state")
            .build(),
        rate_limit_waits: meter
            .u64_counter("payoutd.rate_limit.waits")
            .with_description(
                "Times a provider call waited for the shared rate limit: inline (slept) or deferred (rescheduled)",
            )
            .build(),
        leases_lost: meter
            .u64_counter("payoutd.leases.lost")
            .with_description("Steps stopped because their lease was taken over or could no longer be proven")
            .build(),
        payouts: meter
            .i64_gauge("payoutd.payouts")
            .with_unit("{payout}")
            .with_description("Payouts not yet final (and parked ones), by provider, account and state")
            .build(),
        due: meter
            .i64_gauge("payoutd.due.payouts")
            .with_unit("{payout}")
            .with_description("Payouts due now that no live lease holds: work waiting for a worker")
            .build(),
        oldest_due_age: meter
            .f64_gauge("payoutd.due.oldest.age")
            .with_unit("s")
            .with_description("Seconds since the oldest waiting payout became due; 0 when none waits")
            .build(),
        balance: meter
            .f64_gauge("payoutd.provider.balance")
            .with_description("The provider account's balance, polled where the provider has a balance call")
            .build(),
        gauge_errors: meter
            .u64_counter("payoutd.gauge.errors")
            .with_description("Gauge refreshes that failed (database or provider unreachable)")
            .build(),
        account_paused: meter
            .i64_gauge("payoutd.account.paused")
            .with_description("1 while an operator has paused submits for the account (\"*\": all accounts), else 0")
            .build(),
        batches: meter
            .i64_gauge("payoutd.batches")
            .with_description("Batches not yet completed, by state (awaiting_approval, processing)")
            .build(),
        batch_open_payouts: meter
            .i64_gauge("payoutd.batch.open_payouts")
            .with_description("Payouts of batches that are not final yet")
            .build(),
        restore_marked: meter
            .i64_gauge("payoutd.restore.marked")
            .with_description("1 while the database is marked restored (no intent or submit goes out), else 0")
            .build(),
    }
});

pub(crate) fn retry_scheduled(provider: &str, state: payoutd_core::PayoutState) {
    INSTRUMENTS
        .retries
        .add(1, &[KeyValue::new("provider", provider.to_owned()), KeyValue::new("state", state.as_str())]);
}

pub(crate) fn rate_limit_wait(provider: &str, kind: &'static str) {
    INSTRUMENTS
        .rate_limit_waits
        .add(1, &[KeyValue::new("provider", provider.to_owned()), KeyValue::new("kind", kind)]);
}

/// The claim loop's heartbeat, read by the readiness probe: a loop that stopped turning (stuck
/// or finished) makes the process unready, so it gets no traffic and its pod is looked at.
#[derive(Debug)]
pub struct Pulse {
    started: Instant,
    /// Milliseconds after `started` of the last turn, plus one; 0: never turned or stopped.
    last: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Self { started: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl Pulse {
    pub(crate) fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(ms + 1, Ordering::Relaxed);
    }

    pub(crate) fn stop(&self) {
        self.last.store(0, Ordering::Relaxed);
    }

    /// Whether the loop turned within `max_silence` (and has not stopped).
    pub fn alive_within(&self, max_silence: Duration) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                now.saturating_sub(last - 1) <= u64::try_from(max_silence.as_millis()).unwrap_or(u64::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulse_is_alive_after_a_beat_and_dead_before_and_after_stop() {
        let pulse = Pulse::default();
        assert!(!pulse.alive_within(Duration::from_secs(10)));
        pulse.beat();
        assert!(pulse.alive_within(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!pulse.alive_within(Duration::from_millis(5)));
        pulse.stop();
        assert!(!pulse.alive_within(Duration::from_secs(10)));
    }
}
