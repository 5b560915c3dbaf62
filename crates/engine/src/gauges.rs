//! The gauges that must move even when no work runs: payouts by state and account, the due
//! backlog and the age of its oldest payout (all on the database's clock), and each provider
//! account's balance where the provider has a balance call. A timer refreshes them, so a
//! stuck fleet shows a growing backlog instead of a frozen one.
//!
//! Every process with a database runs this, so with several processes the same figures come
//! from each (the alert rules take the max over instances). The balance call takes its slot
//! from the provider's shared rate limit like any other call, and is skipped when none is free.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::KeyValue;
use payoutd_core::PayoutState;
use payoutd_providers::Connectors;
use payoutd_store::stats::{self, QueueFigures};
use payoutd_store::{PgPool, StoreError};
use rust_decimal::prelude::ToPrimitive;
use tokio_util::sync::CancellationToken;

use crate::rate_limit;
use crate::telemetry::INSTRUMENTS;

/// The states the payouts gauge reports (every state that is not final). Each is reported for
/// every known account, 0 included, so a series drops to 0 instead of vanishing.
const GAUGED_STATES: [PayoutState; 6] = [
    PayoutState::Pending,
    PayoutState::Checked,
    PayoutState::IntentRecorded,
    PayoutState::Submitted,
    PayoutState::InDoubt,
    PayoutState::NeedsReview,
];

/// How often the gauges are refreshed.
#[derive(Debug, Clone)]
pub struct GaugeSettings {
    /// Queue gauges (default 15 s).
    pub every: Duration,
    /// Balance polls (default 60 s); `None`: never.
    pub balance_every: Option<Duration>,
    /// The provider budget the balance call takes its slot from (as the engine's setting).
    pub provider_calls_per_second: u32,
}

impl Default for GaugeSettings {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(15),
            balance_every: Some(Duration::from_secs(60)),
            provider_calls_per_second: 100,
        }
    }
}

/// Refreshes the gauges until `shutdown`.
pub async fn run(pool: PgPool, connectors: Connectors, settings: GaugeSettings, shutdown: CancellationToken) {
    let mut queue_tick = tokio::time::interval(settings.every.max(Duration::from_millis(100)));
    queue_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut balance_tick = settings.balance_every.map(|every| {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut known = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = queue_tick.tick() => {
                if let Err(e) = run_once(&pool, &connectors, &mut known).await {
                    INSTRUMENTS.gauge_errors.add(1, &[KeyValue::new("gauge", "queue")]);
                    tracing::warn!(error = %e, "queue gauges not refreshed");
                }
            }
            _ = next_tick(&mut balance_tick) => {
                poll_balances(&pool, &connectors, settings.provider_calls_per_second).await;
            }
        }
    }
}

/// The next tick of an optional timer; never, without one.
async fn next_tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One refresh of the queue gauges. `known` collects the (provider, account) pairs seen so far:
/// each keeps being reported (with zeros) after its last payout finishes.
pub async fn run_once(
    pool: &PgPool,
    connectors: &Connectors,
    known: &mut BTreeSet<(String, String)>,
) -> Result<QueueFigures, StoreError> {
    let figures = stats::queue_figures(pool).await?;
    for name in connectors.names() {
        if let Some(connector) = connectors.get(name) {
            known.insert((name.to_owned(), connector.account()));
        }
    }
    for count in &figures.by_state {
        known.insert((count.provider.clone(), count.account.clone()));
    }
    for (provider, account) in known.iter() {
        for state in GAUGED_STATES {
            let n = figures
                .by_state
                .iter()
                .find(|c| &c.provider == provider && &c.account == account && c.state == state.as_str())
                .map_or(0, |c| c.payouts);
            INSTRUMENTS.payouts.record(
                n,
                &[
                    KeyValue::new("provider", provider.clone()),
                    KeyValue::new("account", account.clone()),
                    KeyValue::new("state", state.as_str()),
                ],
            );
        }
    }
    INSTRUMENTS.due.record(figures.due, &[]);
    INSTRUMENTS.oldest_due_age.record(figures.oldest_due_age_secs, &[]);
    record_pauses(pool, connectors).await?;
    record_batches_and_restore(pool).await?;
    Ok(figures)
}

/// `payoutd_batches{state}` (0 when none), `payoutd_batch_open_payouts` and
/// `payoutd_restore_marked`: a batch stuck in approval, a batch that does not finish, a
/// restored database whose check was never run.
async fn record_batches_and_restore(pool: &PgPool) -> Result<(), StoreError> {
    let figures = payoutd_store::batches::open_figures(pool).await?;
    for state in ["awaiting_approval", "processing"] {
        let n = figures.by_state.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        INSTRUMENTS.batches.record(n, &[KeyValue::new("state", state)]);
    }
    INSTRUMENTS.batch_open_payouts.record(figures.open_payouts, &[]);
    let marked = payoutd_store::restore::open_mark(pool).await?.is_some();
    INSTRUMENTS.restore_marked.record(i64::from(marked), &[]);
    Ok(())
}

/// `payoutd_account_paused{account}`: 1 for each paused account (and `*` for all), 0 for every
/// other configured account, so a resumed account's series drops to 0 instead of vanishing.
async fn record_pauses(pool: &PgPool, connectors: &Connectors) -> Result<(), StoreError> {
    let paused: BTreeSet<String> =
        payoutd_store::account_pauses::list(pool).await?.into_iter().map(|p| p.account).collect();
    let all = payoutd_store::account_pauses::ALL_ACCOUNTS;
    let names: BTreeSet<&str> =
        connectors.names().into_iter().chain([all]).chain(paused.iter().map(String::as_str)).collect();
    for name in names {
        INSTRUMENTS
            .account_paused
            .record(i64::from(paused.contains(name)), &[KeyValue::new("account", name.to_owned())]);
    }
    Ok(())
}

/// Asks every provider that has a balance call for its balance; returns how many answered.
pub async fn poll_balances(pool: &PgPool, connectors: &Connectors, per_second: u32) -> usize {
    let mut answered = 0;
    for name in connectors.names() {
        let Some(connector) = connectors.get(name) else { continue };
        match rate_limit::permit(pool, name, per_second).await {
            Ok(None) => {}
            // No slot (or no database): payouts come first; try again next time.
            Ok(Some(_)) | Err(_) => continue,
        }
        // Providers without a balance call answer None before any call is made.
        let Some(call) = connector.balance() else { continue };
        match call.await {
            Ok(balance) => {
                answered += 1;
                INSTRUMENTS.balance.record(
                    balance.to_f64().unwrap_or(f64::NAN),
                    &[
                        KeyValue::new("provider", name.to_owned()),
                        KeyValue::new("account", connector.account()),
                    ],
                );
            }
            Err(e) => {
                INSTRUMENTS.gauge_errors.add(1, &[KeyValue::new("gauge", "balance")]);
                tracing::warn!(provider = name, error = %e, "balance poll failed");
            }
        }
    }
    answered
}
