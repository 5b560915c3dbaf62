//! The simulator's books: every disbursement it executed, the balance, and counters of
//! everything the client did (or did wrong). Pure state: handlers lock it, change it, let go.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_providers::eightb_rest::wire::{
    PaymentRequest, Recipient, STATUS_ACCEPTED, STATUS_DECLINED, STATUS_PROCESSING, Webhook,
};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::time::Instant;

/// The decline the guide shows as its example, used for every declined disbursement.
pub const DECLINE_ERROR_CODE: &str = "CODE_PT0002";
pub const DECLINE_ERROR_MESSAGE: &str = "Invalid payment details";

/// Where a disbursement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DisbursementStatus {
    Processing,
    Accepted,
    Declined,
}

impl DisbursementStatus {
    /// The status as the API writes it.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Processing => STATUS_PROCESSING,
            Self::Accepted => STATUS_ACCEPTED,
            Self::Declined => STATUS_DECLINED,
        }
    }
}

/// One executed disbursement (one payment of one intent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestLedgerEntry {
    /// The id the API answered (`payments[].id`): the handle of `GET` and of webhooks.
    pub disbursement_id: String,
    pub intent_id: String,
    /// The intent's `externalId`.
    pub intent_external_id: String,
    /// The payment's `externalId` (payoutd's reference).
    pub external_id: String,
    /// The amount at the currency's scale, as `GET` answers it.
    pub amount: Decimal,
    /// The amount's digits exactly as the request wrote them ("10.5" where `amount` is 10.50).
    pub amount_as_sent: String,
    pub currency: String,
    pub recipient: Recipient,
    pub status: DisbursementStatus,
    /// How many disbursements were executed under this entry's `externalId` so far, this one
    /// included. Above 1 is a double payment.
    pub executions: u64,
    pub created_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Whether a webhook with the final status was answered 2xx.
    pub webhook_acknowledged: bool,
}

/// Counters of one simulator run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestSandboxStats {
    /// `authorize` calls that got past the front-door faults, and those refused (bad
    /// credentials, bad body).
    pub authorize_calls: u64,
    pub authorize_failed: u64,
    /// Refresh calls on either refresh path that got past the front-door faults, and those
    /// refused (expired, unknown or consumed refresh token, bad body).
    pub refresh_calls: u64,
    pub refresh_failed: u64,
    /// 401s answered to calls that need a bearer token, all reasons together...
    pub unauthorized: u64,
    /// ...no `Authorization: Bearer` header, or a malformed one...
    pub unauthorized_missing: u64,
    /// ...a token this sandbox never issued (or forgot)...
    pub unauthorized_unknown: u64,
    /// ...a token past its expiry (or revoked by `expire_all_access_tokens`)...
    pub unauthorized_expired: u64,
    /// ...and a valid token refused by the `forced_401_rate` fault.
    pub unauthorized_forced: u64,
    /// `POST /intents` requests that reached the sandbox, faulted or not.
    pub intents_received: u64,
    /// Payments that moved money (one per disbursement).
    pub payments_executed: u64,
    /// Executions under an `externalId` that had already been executed: double payments.
    pub double_executions: u64,
    /// Executions by payment `externalId`.
    pub executions_per_external_id: BTreeMap<String, u64>,
    /// Requests answered 400 (bad JSON, missing or invalid fields, wrong content type).
    pub bad_requests: u64,
    /// Intents refused 422 by the reject fault.
    pub rejected: u64,
    /// Intents refused 422 because the balance did not cover them.
    pub insufficient_balance: u64,
    /// Executed disbursements that ended DECLINED (money returned to the balance).
    pub declined: u64,
    pub rate_limited: u64,
    pub errors_5xx: u64,
    /// Intents executed whose answer was held back by the timeout fault.
    pub timeouts_after_execute: u64,
    /// `POST /disbursements/check` calls answered.
    pub checks: u64,
    /// `GET /disbursements/{id}` calls that passed authentication.
    pub status_gets: u64,
    /// GETs answered 404, for an unknown id or one hidden by the ingestion delay.
    pub status_not_found: u64,
    /// Of those, GETs for an executed disbursement not yet ingested.
    pub status_before_ingestion: u64,
    /// Webhook POSTs made, duplicates and retries included.
    pub webhooks_sent: u64,
    /// Webhooks answered 2xx.
    pub webhooks_acknowledged: u64,
    /// Webhooks answered otherwise or not at all; these are retried.
    pub webhooks_failed: u64,
    pub duplicate_webhooks_sent: u64,
    /// Webhooks not sent because of the drop fault.
    pub webhooks_dropped: u64,
    /// Disbursements finalized and told by webhook before the intent answer (early fault).
    pub early_webhooks: u64,
    /// The current balance.
    pub balance: Decimal,
}

impl RestSandboxStats {
    /// The payment `externalId`s executed more than once: the double payments.
    pub fn executed_more_than_once(&self) -> Vec<String> {
        self.executions_per_external_id.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect()
    }
}

/// A payment whose fields checked out, with the id it will be executed under.
pub(crate) struct Payment<'r> {
    pub disbursement_id: String,
    pub request: &'r PaymentRequest,
    /// `request.amount` at the currency's scale.
    pub amount: Decimal,
}

/// A final status to tell the client by webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Final {
    pub disbursement_id: String,
    pub webhook: Webhook,
}

/// What `GET /disbursements/{id}` finds.
pub(crate) enum Lookup {
    Found(Box<RestLedgerEntry>),
    /// Executed, but still hidden by the ingestion delay.
    NotIngested,
    Unknown,
}

struct Record {
    entry: RestLedgerEntry,
    created: Instant,
}

pub(crate) struct Books {
    balance: Decimal,
    /// In execution order.
    records: Vec<Record>,
    by_id: HashMap<String, usize>,
    pub(crate) stats: RestSandboxStats,
}

impl Books {
    pub(crate) fn new(balance: Decimal) -> Self {
        Self { balance, records: Vec::new(), by_id: HashMap::new(), stats: RestSandboxStats::default() }
    }

    pub(crate) fn balance(&self) -> Decimal {
        self.balance
    }

    pub(crate) fn available(&self, amount: Decimal) -> bool {
        self.balance >= amount
    }

    /// Executes every payment of one intent if the balance covers them all; otherwise nothing
    /// and `Err(balance)`. Never deduplicates: a known `externalId` is executed (and debited)
    /// again under a new disbursement id.
    pub(crate) fn execute(
        &mut self,
        intent_id: &str,
        intent_external_id: &str,
        payments: &[Payment<'_>],
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<(), Decimal> {
        let total: Decimal = payments.iter().map(|p| p.amount).sum();
        if total > self.balance {
            self.stats.insufficient_balance += 1;
            return Err(self.balance);
        }
        for payment in payments {
            self.balance -= payment.amount;
            self.stats.payments_executed += 1;
            let external_id = &payment.request.external_id;
            let executions = self.stats.executions_per_external_id.entry(external_id.clone()).or_default();
            *executions += 1;
            if *executions > 1 {
                self.stats.double_executions += 1;
            }
            let entry = RestLedgerEntry {
                disbursement_id: payment.disbursement_id.clone(),
                intent_id: intent_id.to_owned(),
                intent_external_id: intent_external_id.to_owned(),
                external_id: external_id.clone(),
                amount: payment.amount,
                amount_as_sent: payment.request.amount.to_string(),
                currency: payment.request.currency.clone(),
                recipient: payment.request.recipient.clone(),
                status: DisbursementStatus::Processing,
                executions: *executions,
                created_at: now,
                finalized_at: None,
                error_code: None,
                error_message: None,
                webhook_acknowledged: false,
            };
            self.by_id.insert(entry.disbursement_id.clone(), self.records.len());
            self.records.push(Record { entry, created: at });
        }
        Ok(())
    }

    /// Ends a disbursement still processing: ACCEPTED, or DECLINED with its money returned.
    pub(crate) fn finalize(&mut self, id: &str, declined: bool, now: DateTime<Utc>) -> Option<Final> {
        let record = self.by_id.get(id).and_then(|&i| self.records.get_mut(i))?;
        let entry = &mut record.entry;
        if entry.status != DisbursementStatus::Processing {
            return None;
        }
        entry.finalized_at = Some(now);
        if declined {
            self.balance += entry.amount;
            self.stats.declined += 1;
            entry.status = DisbursementStatus::Declined;
            entry.error_code = Some(DECLINE_ERROR_CODE.to_owned());
            entry.error_message = Some(DECLINE_ERROR_MESSAGE.to_owned());
        } else {
            entry.status = DisbursementStatus::Accepted;
        }
        Some(Final {
            disbursement_id: id.to_owned(),
            webhook: Webhook {
                status: entry.status.wire().to_owned(),
                error_code: entry.error_code.clone(),
                error_message: entry.error_message.clone(),
            },
        })
    }

    /// Counts a status GET of `id` (arrived at `at`) and finds the disbursement, unless it was
    /// executed less than `ingestion_delay` ago.
    pub(crate) fn lookup(&mut self, id: &str, at: Instant, ingestion_delay: Duration) -> Lookup {
        self.stats.status_gets += 1;
        let Some(record) = self.by_id.get(id).and_then(|&i| self.records.get(i)) else {
            self.stats.status_not_found += 1;
            return Lookup::Unknown;
        };
        if at.saturating_duration_since(record.created) < ingestion_delay {
            self.stats.status_not_found += 1;
            self.stats.status_before_ingestion += 1;
            return Lookup::NotIngested;
        }
        Lookup::Found(Box::new(self.view(record)))
    }

    pub(crate) fn mark_acknowledged(&mut self, id: &str) {
        if let Some(record) = self.by_id.get(id).and_then(|&i| self.records.get_mut(i)) {
            record.entry.webhook_acknowledged = true;
        }
    }

    /// Every disbursement, in execution order.
    pub(crate) fn entries(&self) -> Vec<RestLedgerEntry> {
        self.records.iter().map(|r| self.view(r)).collect()
    }

    pub(crate) fn entry(&self, id: &str) -> Option<RestLedgerEntry> {
        self.by_id.get(id).and_then(|&i| self.records.get(i)).map(|r| self.view(r))
    }

    pub(crate) fn stats(&self) -> RestSandboxStats {
        RestSandboxStats { balance: self.balance, ..self.stats.clone() }
    }

    /// The entry with its `executions` brought up to date.
    fn view(&self, record: &Record) -> RestLedgerEntry {
        let executions = self.stats.executions_per_external_id.get(&record.entry.external_id).copied();
        RestLedgerEntry { executions: executions.unwrap_or(record.entry.executions), ..record.entry.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(external_id: &str, amount: i64) -> PaymentRequest {
        PaymentRequest {
            external_id: external_id.into(),
            amount: Decimal::from(amount),
            currency: "IDR".into(),
            recipient: Recipient {
                account_number: "123".into(),
                bank_code: "bca".into(),
                name: "Budi".into(),
                phone: "62".into(),
                bic: None,
            },
        }
    }

    fn pay<'r>(id: &str, request: &'r PaymentRequest) -> Payment<'r> {
        Payment { disbursement_id: id.into(), request, amount: request.amount }
    }

    #[test]
    fn repeats_are_executed_and_counted_not_deduplicated() {
        let mut books = Books::new(Decimal::from(1000));
        let (now, at) = (Utc::now(), Instant::now());
        let a = request("a", 300);
        assert_eq!(books.execute("i1", "a", &[pay("d1", &a)], now, at), Ok(()));
        assert_eq!(books.execute("i2", "a", &[pay("d2", &a)], now, at), Ok(()));
        assert_eq!(books.balance(), Decimal::from(400));
        assert_eq!(books.entry("d1").expect("d1").executions, 2);
        let stats = books.stats();
        assert_eq!((stats.payments_executed, stats.double_executions), (2, 1));
        assert_eq!(stats.executed_more_than_once(), ["a"]);
    }

    #[test]
    fn an_intent_the_balance_does_not_cover_moves_nothing() {
        let mut books = Books::new(Decimal::from(500));
        let (a, b) = (request("a", 300), request("b", 300));
        let outcome = books.execute("i", "x", &[pay("d1", &a), pay("d2", &b)], Utc::now(), Instant::now());
        assert_eq!(outcome, Err(Decimal::from(500)));
        assert!(books.entries().is_empty());
        assert_eq!(books.stats().insufficient_balance, 1);
    }

    #[test]
    fn finalize_accepts_or_declines_with_refund_once() {
        let mut books = Books::new(Decimal::from(1000));
        let (now, at) = (Utc::now(), Instant::now());
        let (a, b) = (request("a", 100), request("b", 200));
        books.execute("i", "x", &[pay("d1", &a), pay("d2", &b)], now, at).expect("covered");
        let accepted = books.finalize("d1", false, now).expect("processing");
        assert_eq!(
            accepted.webhook,
            Webhook { status: "ACCEPTED".into(), error_code: None, error_message: None }
        );
        let declined = books.finalize("d2", true, now).expect("processing");
        assert_eq!(declined.webhook.error_code.as_deref(), Some(DECLINE_ERROR_CODE));
        assert_eq!(books.finalize("d2", true, now), None);
        assert_eq!(books.balance(), Decimal::from(900));
        assert_eq!(books.entry("d2").expect("d2").status, DisbursementStatus::Declined);
    }

    #[test]
    fn ingestion_delay_hides_a_fresh_disbursement() {
        let mut books = Books::new(Decimal::from(1000));
        let at = Instant::now();
        let a = request("a", 1);
        books.execute("i", "a", &[pay("d1", &a)], Utc::now(), at).expect("covered");
        let delay = Duration::from_secs(20);
        assert!(matches!(books.lookup("d1", at + Duration::from_secs(19), delay), Lookup::NotIngested));
        assert!(matches!(books.lookup("d1", at + delay, delay), Lookup::Found(_)));
        assert!(matches!(books.lookup("nope", at, delay), Lookup::Unknown));
        let stats = books.stats();
        assert_eq!((stats.status_gets, stats.status_not_found, stats.status_before_ingestion), (3, 2, 1));
    }
}
