//! The simulated account's books: every executed cashout, the balance, and counters of
//! everything the client did (or did wrong). Pure state: the handlers lock it and let go.
//!
//! Cashouts are never deduplicated by `merchant_reference`: each execution is its own entry
//! under its own provider reference, and repeats are counted, so a test sees a double payment.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use payoutd_providers::eightyeight_pay::wire::{
    CashoutRequest, STATUS_COMPLETED, STATUS_PENDING, STATUS_REJECTED, Webhook,
};
use rust_decimal::Decimal;
use serde::Serialize;

/// Where one executed cashout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CashoutStatus {
    Pending,
    Completed,
    /// Declined after executing; the money went back to the balance.
    Rejected,
}

impl CashoutStatus {
    /// The status as 88Pay writes it.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Pending => STATUS_PENDING,
            Self::Completed => STATUS_COMPLETED,
            Self::Rejected => STATUS_REJECTED,
        }
    }
}

/// One execution of a cashout: a request that moved money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayLedgerEntry {
    /// The provider's reference ("88P-" and random hex), unique per execution.
    pub reference: String,
    pub merchant_reference: String,
    /// The amount exactly as received, scale included.
    pub amount: Decimal,
    pub currency: String,
    pub notification_url: String,
    pub account_number: String,
    pub bank_code: String,
    pub holder_name: String,
    pub status: CashoutStatus,
    /// 1 for the first execution under this `merchant_reference`; 2 or more is a double payment.
    pub execution: u64,
    pub executed_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    /// The message the webhook carries once final.
    pub message: Option<String>,
    /// Whether a webhook of the final status was answered 2xx.
    pub webhook_acknowledged: bool,
    /// The `traceparent` header of the cashout call, if it had one.
    pub traceparent: Option<String>,
}

/// Counters of one sandbox run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PayStats {
    /// Token calls that reached the sandbox, faulted or not.
    pub token_calls: u64,
    /// Token calls answered 401 for a wrong `x-api-key` or `X-Merchant-Id`.
    pub token_calls_refused: u64,
    pub tokens_issued: u64,
    /// All 401s answered to balance and cashout calls; the breakdown follows.
    pub unauthorized: u64,
    /// No bearer token, or one never issued.
    pub unauthorized_unknown_token: u64,
    /// Missing `x-session-id`, or not the session issued with the token.
    pub unauthorized_bad_session: u64,
    pub unauthorized_expired: u64,
    /// A token already used for a cashout presented for another.
    pub unauthorized_reused: u64,
    /// Valid tokens refused by the forced-401 fault.
    pub unauthorized_forced: u64,
    /// Cashout calls that reached the sandbox, faulted or not.
    pub cashouts_received: u64,
    /// Cashout calls that moved money.
    pub cashouts_executed: u64,
    /// Executions under a `merchant_reference` that had already been executed: double payments.
    pub executed_more_than_once: u64,
    pub executions_per_merchant_reference: BTreeMap<String, u64>,
    /// Cashouts ended COMPLETED.
    pub completed: u64,
    /// Executed cashouts ended REJECTED by the decline fault (money returned).
    pub declined: u64,
    /// Cashouts answered 400 (missing or malformed fields); nothing executed.
    pub bad_requests: u64,
    /// Cashouts answered 422 by the reject fault; nothing executed.
    pub rejected: u64,
    /// Cashouts answered 422 because the balance was too low; nothing executed.
    pub insufficient_balance: u64,
    /// Cashouts executed whose answer was held back by the timeout fault.
    pub timeouts_after_execute: u64,
    pub balance_calls: u64,
    pub rate_limited: u64,
    pub errors_5xx: u64,
    /// Webhook POSTs made, duplicates and redeliveries included.
    pub webhooks_sent: u64,
    /// Webhook POSTs answered 2xx.
    pub webhooks_acknowledged: u64,
    /// Webhook POSTs answered otherwise or not at all; these are redelivered.
    pub webhooks_failed: u64,
    pub duplicate_webhooks_sent: u64,
    /// Webhook attempts lost on purpose (the drop fault's first attempt, or `drop_all_webhooks`).
    pub webhooks_dropped: u64,
    /// Webhooks whose first attempt came before the cashout answer (early fault).
    pub early_webhooks: u64,
    /// The current balance.
    pub balance: Decimal,
}

/// What the ledger did with a valid cashout request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Execution {
    /// Money moved; the new entry's provider reference.
    Executed { reference: String },
    /// The balance was too low; nothing moved.
    Insufficient { balance: Decimal },
}

pub(crate) struct PayLedger {
    balance: Decimal,
    /// In execution order.
    entries: Vec<PayLedgerEntry>,
    by_reference: HashMap<String, usize>,
    pub(crate) stats: PayStats,
}

impl PayLedger {
    pub(crate) fn new(balance: Decimal) -> Self {
        Self { balance, entries: Vec::new(), by_reference: HashMap::new(), stats: PayStats::default() }
    }

    pub(crate) fn balance(&self) -> Decimal {
        self.balance
    }

    /// Executes a cashout if the balance covers it. Never deduplicates: a known
    /// `merchant_reference` is executed (and debited) again.
    pub(crate) fn execute(
        &mut self,
        request: &CashoutRequest,
        now: DateTime<Utc>,
        traceparent: Option<String>,
    ) -> Execution {
        if request.amount > self.balance {
            self.stats.insufficient_balance += 1;
            return Execution::Insufficient { balance: self.balance };
        }
        self.balance -= request.amount;
        self.stats.cashouts_executed += 1;
        let count = self.stats.executions_per_merchant_reference.entry(request.merchant_reference.clone());
        let execution = *count.and_modify(|n| *n += 1).or_insert(1);
        if execution > 1 {
            self.stats.executed_more_than_once += 1;
        }
        let reference = new_reference();
        self.by_reference.insert(reference.clone(), self.entries.len());
        self.entries.push(PayLedgerEntry {
            reference: reference.clone(),
            merchant_reference: request.merchant_reference.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
            notification_url: request.notification_url.clone(),
            account_number: request.account_number.clone(),
            bank_code: request.bank_code.clone(),
            holder_name: request.holder_name.clone(),
            status: CashoutStatus::Pending,
            execution,
            executed_at: now,
            finalized_at: None,
            message: None,
            webhook_acknowledged: false,
            traceparent,
        });
        Execution::Executed { reference }
    }

    /// Ends one execution, COMPLETED or (declined) REJECTED with the money returned, and gives
    /// the webhook to send and where. `None` if unknown or already final.
    pub(crate) fn finalize(
        &mut self,
        reference: &str,
        declined: bool,
        now: DateTime<Utc>,
    ) -> Option<(Webhook, String)> {
        let entry = self.by_reference.get(reference).and_then(|&i| self.entries.get_mut(i))?;
        if entry.status != CashoutStatus::Pending {
            return None;
        }
        let message = if declined {
            self.balance += entry.amount;
            self.stats.declined += 1;
            entry.status = CashoutStatus::Rejected;
            "Declined by the sandbox (decline fault)"
        } else {
            self.stats.completed += 1;
            entry.status = CashoutStatus::Completed;
            "Cashout completed"
        };
        entry.finalized_at = Some(now);
        entry.message = Some(message.to_owned());
        let webhook = Webhook {
            merchant_reference: entry.merchant_reference.clone(),
            reference: entry.reference.clone(),
            status: entry.status.wire().to_owned(),
            amount: entry.amount,
            currency: entry.currency.clone(),
            message: Some(message.to_owned()),
        };
        Some((webhook, entry.notification_url.clone()))
    }

    pub(crate) fn mark_acknowledged(&mut self, reference: &str) {
        if let Some(entry) = self.by_reference.get(reference).and_then(|&i| self.entries.get_mut(i)) {
            entry.webhook_acknowledged = true;
        }
    }

    pub(crate) fn entries(&self) -> Vec<PayLedgerEntry> {
        self.entries.clone()
    }

    pub(crate) fn stats(&self) -> PayStats {
        PayStats { balance: self.balance, ..self.stats.clone() }
    }
}

/// A provider reference: "88P-" and 16 random upper-case hex digits.
fn new_reference() -> String {
    format!("88P-{:016X}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(merchant_reference: &str, amount: &str) -> CashoutRequest {
        CashoutRequest {
            flow: "PAYOUT".into(),
            method_code: "BANK_TRANSFER".into(),
            method_category: "BANK".into(),
            country: "COL".into(),
            currency: "COP".into(),
            amount: Decimal::from_str_exact(amount).expect("decimal"),
            description: "d".into(),
            customer_id: "c".into(),
            merchant_reference: merchant_reference.into(),
            notification_url: "http://127.0.0.1:1/n".into(),
            account_number: "1".into(),
            bank_code: "b".into(),
            holder_name: "h".into(),
            phone: "p".into(),
        }
    }

    fn executed(outcome: Execution) -> String {
        match outcome {
            Execution::Executed { reference } => reference,
            other => panic!("not executed: {other:?}"),
        }
    }

    #[test]
    fn repeats_execute_again_and_are_counted() {
        let mut ledger = PayLedger::new(Decimal::from(1000));
        let now = Utc::now();
        let first = executed(ledger.execute(&request("PO1", "300.00"), now, None));
        let second = executed(ledger.execute(&request("PO1", "300.00"), now, None));
        assert_ne!(first, second);
        assert!(first.starts_with("88P-"));
        assert_eq!(ledger.balance(), Decimal::from(400));
        let entries = ledger.entries();
        assert_eq!(entries.iter().map(|e| e.execution).collect::<Vec<_>>(), [1, 2]);
        let stats = ledger.stats();
        assert_eq!((stats.cashouts_executed, stats.executed_more_than_once), (2, 1));
        assert_eq!(stats.executions_per_merchant_reference.get("PO1"), Some(&2));
    }

    #[test]
    fn insufficient_balance_moves_nothing() {
        let mut ledger = PayLedger::new(Decimal::from(100));
        let outcome = ledger.execute(&request("PO1", "100.01"), Utc::now(), None);
        assert_eq!(outcome, Execution::Insufficient { balance: Decimal::from(100) });
        assert!(ledger.entries().is_empty());
        assert_eq!(ledger.stats().insufficient_balance, 1);
    }

    #[test]
    fn finalize_completes_or_declines_with_refund_once() {
        let mut ledger = PayLedger::new(Decimal::from(1000));
        let now = Utc::now();
        let paid = executed(ledger.execute(&request("PO1", "100"), now, None));
        let declined = executed(ledger.execute(&request("PO2", "200"), now, None));
        let (webhook, url) = ledger.finalize(&paid, false, now).expect("pending");
        assert_eq!((webhook.status.as_str(), webhook.merchant_reference.as_str()), ("COMPLETED", "PO1"));
        assert_eq!(url, "http://127.0.0.1:1/n");
        let (webhook, _) = ledger.finalize(&declined, true, now).expect("pending");
        assert_eq!(webhook.status, "REJECTED");
        assert_eq!(ledger.finalize(&declined, true, now), None);
        assert_eq!(ledger.balance(), Decimal::from(900));
        assert_eq!((ledger.stats().completed, ledger.stats().declined), (1, 1));
    }
}
