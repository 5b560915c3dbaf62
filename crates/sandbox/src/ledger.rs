//! The sandbox's books: executed payouts by id, the balance, and counters of everything the
//! client did (or did wrong). Pure state: the handlers lock it, change it and let go.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payoutd_providers::eightb_partner::wire::ResultCode;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::time::Instant;

/// Where a payout stands in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LedgerStatus {
    Processing,
    Paid,
    NotPaid,
}

impl LedgerStatus {
    /// The code a check answers with.
    pub fn result_code(self) -> ResultCode {
        match self {
            Self::Processing => ResultCode::Processing,
            Self::Paid => ResultCode::Paid,
            Self::NotPaid => ResultCode::NotPaid,
        }
    }
}

/// One payout id as the sandbox saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub id: String,
    /// The amount exactly as the last payout request wrote it.
    pub amount: String,
    pub currency: String,
    pub destination: String,
    pub client: String,
    pub status: LedgerStatus,
    /// How many payout requests under this id moved money. Above 1 is a double payment.
    pub executions: u32,
    /// The first payout request under this id ("transaction initialization").
    pub submitted_at: DateTime<Utc>,
    pub last_submitted_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    /// Why the payout failed, when it did.
    pub error: Option<String>,
    /// Whether a callback for the current result was answered "OK".
    pub callback_acknowledged: bool,
}

/// Counters of one sandbox run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    /// Payout requests that reached the sandbox, faulted or not.
    pub payouts_received: u64,
    /// Payout requests that moved money.
    pub payouts_executed: u64,
    /// Executions under an id that had already been executed: double payments.
    pub double_executions: u64,
    pub bad_signatures: u64,
    /// Requests with missing or malformed fields (answered ERROR).
    pub bad_requests: u64,
    /// Payouts refused by the reject fault.
    pub rejected: u64,
    /// Payouts answered NOT_PAID because the balance was too low.
    pub insufficient_balance: u64,
    /// Executed payouts that ended NOT_PAID by the decline fault.
    pub declined: u64,
    pub rate_limited: u64,
    pub errors_5xx: u64,
    /// Payouts executed whose answer was held back by the timeout fault.
    pub timeouts_after_execute: u64,
    pub checks: u64,
    /// Checks sooner than `min_check_delay` after the payout's first submit.
    pub early_checks: u64,
    /// Checks sooner than `min_check_delay` after the previous check of the same id (known to
    /// the ledger or not): the spacing rule between two status queries.
    pub checks_too_soon: u64,
    /// The first ten early and the first ten too-soon checks, described (id and gap), to find
    /// them again.
    pub check_spacing_examples: Vec<String>,
    pub checks_per_id: BTreeMap<String, u64>,
    /// Checks answered NOT_FOUND for an executed payout not yet ingested (delayed ingestion).
    pub checks_before_ingestion: u64,
    pub balance_requests: u64,
    /// Callback POSTs made, duplicates and retries included.
    pub callbacks_sent: u64,
    /// Callbacks answered HTTP 200 "OK".
    pub callbacks_acknowledged: u64,
    /// Callbacks answered HTTP 200 "ERROR" (the spec: interaction stops).
    pub callbacks_answered_error: u64,
    /// Callbacks that got another answer or none; these are retried.
    pub callbacks_failed: u64,
    pub duplicate_callbacks_sent: u64,
    /// Callbacks not sent because of the drop fault.
    pub callbacks_dropped: u64,
    /// Callbacks delivered before the payout answer (early fault).
    pub early_callbacks: u64,
    /// The current balance.
    pub balance: Decimal,
}

/// A payout request whose fields and signature checked out.
#[derive(Debug, Clone)]
pub(crate) struct PayoutRequest {
    pub id: String,
    pub amount_text: String,
    pub amount: Decimal,
    pub currency: String,
    pub destination: String,
    pub client: String,
}

/// What the ledger did with a payout request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Execution {
    /// Money moved; `generation` identifies this execution among repeats under the same id.
    Executed { generation: u64 },
    /// The balance was too low; nothing moved.
    Insufficient { balance: Decimal },
}

/// A final result to tell the client by callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finalized {
    pub id: String,
    pub amount: String,
    pub destination: String,
    pub paid: bool,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// How many early, and how many too-soon, checks [`SandboxStats::check_spacing_examples`]
/// describes.
const MAX_SPACING_EXAMPLES: u64 = 10;

struct Record {
    entry: LedgerEntry,
    first_submit: Instant,
    generation: u64,
}

/// One movement of the balance, for the balance statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BalanceMovement {
    pub(crate) id: u64,
    pub(crate) at: DateTime<Utc>,
    /// Debit (`OUT`) or credit (`IN`).
    pub(crate) debit: bool,
    pub(crate) amount: Decimal,
    pub(crate) comment: String,
}

pub(crate) struct Ledger {
    balance: Decimal,
    /// Every debit and credit, oldest first.
    pub(crate) movements: Vec<BalanceMovement>,
    records: BTreeMap<String, Record>,
    /// When each id was last checked, for `checks_too_soon`.
    last_checks: BTreeMap<String, Instant>,
    pub(crate) stats: SandboxStats,
}

impl Ledger {
    pub(crate) fn new(balance: Decimal) -> Self {
        Self {
            balance,
            movements: Vec::new(),
            records: BTreeMap::new(),
            last_checks: BTreeMap::new(),
            stats: SandboxStats::default(),
        }
    }

    pub(crate) fn balance(&self) -> Decimal {
        self.balance
    }

    fn move_balance(&mut self, at: DateTime<Utc>, debit: bool, amount: Decimal, comment: String) {
        let id = self.movements.len() as u64 + 1;
        self.movements.push(BalanceMovement { id, at, debit, amount, comment });
    }

    /// Executes a payout if the balance covers it. Never deduplicates: a known id is executed
    /// (and debited) again.
    pub(crate) fn execute(&mut self, request: &PayoutRequest, now: DateTime<Utc>, at: Instant) -> Execution {
        if request.amount > self.balance {
            self.stats.insufficient_balance += 1;
            // Recorded so that a check answers NOT_PAID, as the provider would; not an execution.
            self.records.entry(request.id.clone()).or_insert_with(|| Record {
                entry: LedgerEntry {
                    status: LedgerStatus::NotPaid,
                    executions: 0,
                    finalized_at: Some(now),
                    error: Some("insufficient balance".to_owned()),
                    ..new_entry(request, now)
                },
                first_submit: at,
                generation: 0,
            });
            return Execution::Insufficient { balance: self.balance };
        }
        self.balance -= request.amount;
        self.move_balance(now, true, request.amount, format!("payout {}", request.id));
        self.stats.payouts_executed += 1;
        let record = self.records.entry(request.id.clone()).or_insert_with(|| Record {
            entry: new_entry(request, now),
            first_submit: at,
            generation: 0,
        });
        if record.entry.executions > 0 {
            self.stats.double_executions += 1;
        }
        record.generation += 1;
        let entry = &mut record.entry;
        entry.executions += 1;
        entry.amount = request.amount_text.clone();
        entry.currency = request.currency.clone();
        entry.destination = request.destination.clone();
        entry.client = request.client.clone();
        entry.status = LedgerStatus::Processing;
        entry.last_submitted_at = now;
        entry.finalized_at = None;
        entry.error = None;
        entry.callback_acknowledged = false;
        Execution::Executed { generation: record.generation }
    }

    /// Ends one execution. A declined execution's money returns to the balance either way; the
    /// entry's status only changes if no later execution under the same id superseded it.
    pub(crate) fn finalize(
        &mut self,
        id: &str,
        generation: u64,
        amount: Decimal,
        declined: bool,
        now: DateTime<Utc>,
    ) -> Option<Finalized> {
        if declined {
            self.balance += amount;
            self.move_balance(now, false, amount, format!("refund of declined payout {id}"));
            self.stats.declined += 1;
        }
        let record = self.records.get_mut(id)?;
        if record.generation != generation {
            return None;
        }
        let entry = &mut record.entry;
        let error = if declined { "declined by the sandbox".to_owned() } else { String::new() };
        entry.status = if declined { LedgerStatus::NotPaid } else { LedgerStatus::Paid };
        entry.finalized_at = Some(now);
        entry.error = (!error.is_empty()).then(|| error.clone());
        Some(Finalized {
            id: id.to_owned(),
            amount: entry.amount.clone(),
            destination: entry.destination.clone(),
            paid: !declined,
            error,
            at: now,
        })
    }

    /// Records a check of `id` (arrived at `at`) and answers its status, if the id is known and
    /// already ingested (`ingestion_delay` after its first submit). Counts it as early when it
    /// comes sooner than `min_delay` after the first submit, and as too soon when it comes sooner
    /// than `min_delay` after the previous check of the same id.
    pub(crate) fn check(
        &mut self,
        id: &str,
        at: Instant,
        min_delay: std::time::Duration,
        ingestion_delay: std::time::Duration,
    ) -> Option<LedgerEntry> {
        self.stats.checks += 1;
        *self.stats.checks_per_id.entry(id.to_owned()).or_default() += 1;
        if let Some(previous) = self.last_checks.insert(id.to_owned(), at) {
            let gap = at.saturating_duration_since(previous);
            if gap < min_delay {
                self.stats.checks_too_soon += 1;
                let nth = self.stats.checks_too_soon;
                spacing_example(
                    &mut self.stats,
                    nth,
                    format!("{id}: checked {gap:?} after its previous check"),
                );
            }
        }
        let record = self.records.get(id)?;
        let since_submit = at.saturating_duration_since(record.first_submit);
        if since_submit < min_delay {
            self.stats.early_checks += 1;
            let nth = self.stats.early_checks;
            spacing_example(
                &mut self.stats,
                nth,
                format!("{id}: checked {since_submit:?} after its first submit"),
            );
        }
        if since_submit < ingestion_delay {
            self.stats.checks_before_ingestion += 1;
            return None;
        }
        Some(record.entry.clone())
    }

    pub(crate) fn mark_acknowledged(&mut self, id: &str) {
        if let Some(record) = self.records.get_mut(id) {
            record.entry.callback_acknowledged = true;
        }
    }

    pub(crate) fn entries(&self) -> Vec<LedgerEntry> {
        self.records.values().map(|r| r.entry.clone()).collect()
    }

    pub(crate) fn entry(&self, id: &str) -> Option<LedgerEntry> {
        self.records.get(id).map(|r| r.entry.clone())
    }

    pub(crate) fn stats(&self) -> SandboxStats {
        SandboxStats { balance: self.balance, ..self.stats.clone() }
    }
}

/// Keeps the description of the `nth` early (or too-soon) check if it is among the first few.
fn spacing_example(stats: &mut SandboxStats, nth: u64, example: String) {
    if nth <= MAX_SPACING_EXAMPLES {
        stats.check_spacing_examples.push(example);
    }
}

fn new_entry(request: &PayoutRequest, now: DateTime<Utc>) -> LedgerEntry {
    LedgerEntry {
        id: request.id.clone(),
        amount: request.amount_text.clone(),
        currency: request.currency.clone(),
        destination: request.destination.clone(),
        client: request.client.clone(),
        status: LedgerStatus::Processing,
        executions: 0,
        submitted_at: now,
        last_submitted_at: now,
        finalized_at: None,
        error: None,
        callback_acknowledged: false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request(id: &str, amount: i64) -> PayoutRequest {
        PayoutRequest {
            id: id.into(),
            amount_text: amount.to_string(),
            amount: Decimal::from(amount),
            currency: "IDR".into(),
            destination: "bank_bca".into(),
            client: "123".into(),
        }
    }

    #[test]
    fn execution_debits_and_repeats_are_counted_not_deduplicated() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let now = Utc::now();
        let at = Instant::now();
        assert_eq!(ledger.execute(&request("a", 300), now, at), Execution::Executed { generation: 1 });
        assert_eq!(ledger.execute(&request("a", 300), now, at), Execution::Executed { generation: 2 });
        assert_eq!(ledger.balance(), Decimal::from(400));
        let entry = ledger.entry("a").expect("entry");
        assert_eq!(entry.executions, 2);
        let stats = ledger.stats();
        assert_eq!((stats.payouts_executed, stats.double_executions), (2, 1));
    }

    #[test]
    fn insufficient_balance_executes_nothing_but_answers_not_paid_later() {
        let mut ledger = Ledger::new(Decimal::from(100));
        let outcome = ledger.execute(&request("a", 300), Utc::now(), Instant::now());
        assert_eq!(outcome, Execution::Insufficient { balance: Decimal::from(100) });
        assert_eq!(ledger.balance(), Decimal::from(100));
        let entry = ledger.entry("a").expect("entry");
        assert_eq!((entry.status, entry.executions), (LedgerStatus::NotPaid, 0));
        assert_eq!(ledger.stats().insufficient_balance, 1);
    }

    #[test]
    fn finalize_pays_or_declines_with_refund() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let (now, at) = (Utc::now(), Instant::now());
        ledger.execute(&request("paid", 100), now, at);
        ledger.execute(&request("declined", 200), now, at);
        let paid = ledger.finalize("paid", 1, Decimal::from(100), false, now).expect("current");
        assert!(paid.paid && paid.error.is_empty());
        let declined = ledger.finalize("declined", 1, Decimal::from(200), true, now).expect("current");
        assert!(!declined.paid);
        assert_eq!(ledger.entry("declined").expect("entry").status, LedgerStatus::NotPaid);
        assert_eq!(ledger.balance(), Decimal::from(900));
    }

    #[test]
    fn a_superseded_execution_does_not_touch_the_entry() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let (now, at) = (Utc::now(), Instant::now());
        ledger.execute(&request("a", 100), now, at);
        ledger.execute(&request("a", 100), now, at);
        assert_eq!(ledger.finalize("a", 1, Decimal::from(100), true, now), None);
        assert_eq!(ledger.entry("a").expect("entry").status, LedgerStatus::Processing);
        // The declined first execution's money came back all the same.
        assert_eq!(ledger.balance(), Decimal::from(900));
        assert!(ledger.finalize("a", 2, Decimal::from(100), false, now).is_some());
    }

    #[test]
    fn checks_are_counted_and_early_ones_flagged() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let at = Instant::now();
        ledger.execute(&request("a", 1), Utc::now(), at);
        let min = Duration::from_secs(60);
        let none = Duration::ZERO;
        assert!(ledger.check("a", at + Duration::from_secs(1), min, none).is_some());
        assert!(ledger.check("a", at + Duration::from_secs(61), min, none).is_some());
        assert!(ledger.check("nope", at, min, none).is_none());
        let stats = ledger.stats();
        assert_eq!((stats.checks, stats.early_checks), (3, 1));
        assert_eq!(stats.checks_per_id.get("a"), Some(&2));
        assert_eq!(stats.checks_per_id.get("nope"), Some(&1));
    }

    #[test]
    fn checks_sooner_than_the_interval_after_the_previous_check_are_counted() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let at = Instant::now();
        ledger.execute(&request("a", 1), Utc::now(), at);
        let (min, none) = (Duration::from_secs(60), Duration::ZERO);
        let check = |ledger: &mut Ledger, id: &str, secs: u64| {
            ledger.check(id, at + Duration::from_secs(secs), min, none);
        };
        check(&mut ledger, "a", 60); // the first check: nothing to be too soon after
        check(&mut ledger, "a", 120); // exactly one interval later: fine
        check(&mut ledger, "a", 150); // 30 s after the previous one: too soon
        check(&mut ledger, "a", 200); // 50 s after the previous (too soon) one: too soon again
        check(&mut ledger, "b", 0); // unknown ids are spaced too
        check(&mut ledger, "b", 59);
        check(&mut ledger, "b", 119);
        let stats = ledger.stats();
        assert_eq!((stats.checks, stats.early_checks, stats.checks_too_soon), (7, 0, 3));
        assert_eq!(stats.check_spacing_examples[0], "a: checked 30s after its previous check");
        assert_eq!(stats.check_spacing_examples.len(), 3);
        // Only the first ten too-soon checks are described.
        (0..30).for_each(|_| check(&mut ledger, "c", 300));
        let stats = ledger.stats();
        assert_eq!((stats.checks_too_soon, stats.check_spacing_examples.len()), (32, 10));
    }

    #[test]
    fn delayed_ingestion_hides_an_executed_payout_from_check_for_a_while() {
        let mut ledger = Ledger::new(Decimal::from(1000));
        let at = Instant::now();
        ledger.execute(&request("a", 1), Utc::now(), at);
        let (min, delay) = (Duration::ZERO, Duration::from_secs(20));
        assert!(ledger.check("a", at + Duration::from_secs(19), min, delay).is_none());
        assert!(ledger.check("a", at + Duration::from_secs(20), min, delay).is_some());
        assert_eq!(ledger.stats().checks_before_ingestion, 1);
        assert_eq!(ledger.stats().payouts_executed, 1);
    }
}
