//! Reconciliation with a provider's own record of a period: the comparison (pure), what is
//! done about a mismatch, and the stored reports.
//!
//! Each provider row is matched to exactly one payout of the account by our reference (or, for
//! providers that report it, by the provider's id). Categories:
//!
//! | category | meaning | done |
//! |---|---|---|
//! | matched | same reference, amount, currency; both final and agreeing | counted |
//! | in_progress | we have not reached a final state yet (or are waiting for the provider) | listed |
//! | missing_at_provider | submitted here in the period, absent from the registry | final payout: event + alert |
//! | unknown_to_us | in the registry, no payout of ours has the reference | alert (error log) |
//! | amount_mismatch / currency_mismatch | the provider recorded other money | open payout: parked in needs_review; final: event + alert |
//! | status_mismatch | both sides final and disagreeing, a cancelled payout the provider has, or a status we cannot read | final: event + alert; parked: event |
//! | checked_by_status | its minute held more rows than the registry can return; asked one by one | listed |
//!
//! A failed payout the provider never recorded (refused at submit) and a payout whose submit
//! never left (`intent_recorded`) are absent on both sides, as they should be: only counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;
use crate::transitions::insert_event;
use crate::webhooks::{self, PayoutChange};

/// What the provider says about one payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSays {
    Paid,
    NotPaid,
    Processing,
    /// A status we cannot read, as written.
    Other(String),
}

impl ProviderSays {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Paid => "PAID",
            Self::NotPaid => "NOT_PAID",
            Self::Processing => "PROCESSING",
            Self::Other(s) => s,
        }
    }
}

/// One row of the provider's record, provider-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRow {
    /// Our reference, as the provider wrote it.
    pub reference: String,
    /// The provider's own id, where it reports one.
    pub provider_id: Option<String>,
    pub status: ProviderSays,
    pub amount: Decimal,
    pub currency: String,
    pub created: DateTime<Utc>,
}

/// A payout of ours, as reconciliation reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OurPayout {
    pub id: Uuid,
    pub reference: String,
    #[sqlx(try_from = "String")]
    pub state: StateText,
    pub amount: Decimal,
    pub currency: String,
    pub submitted_at: Option<DateTime<Utc>>,
}

/// A payout state read as text (sqlx `try_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateText(pub PayoutState);

impl TryFrom<String> for StateText {
    type Error = payoutd_core::state::UnknownState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse().map(StateText)
    }
}

/// The payouts of `account` whose last submit started in `[from, to)`.
pub async fn submitted_in(
    pool: &PgPool,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<OurPayout>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, provider_reference AS reference, state::text AS state, amount, currency, submitted_at
           FROM payouts
          WHERE provider = $1 AND submitted_at >= $2 AND submitted_at < $3 AND provider_reference IS NOT NULL
          ORDER BY submitted_at",
    )
    .bind(account)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The payouts of `account` holding one of `references`.
pub async fn by_references(
    pool: &PgPool,
    account: &str,
    references: &[String],
) -> Result<Vec<OurPayout>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, provider_reference AS reference, state::text AS state, amount, currency, submitted_at
           FROM payouts WHERE provider = $1 AND provider_reference = ANY ($2)",
    )
    .bind(account)
    .bind(references)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Matched,
    InProgress,
    MissingAtProvider,
    UnknownToUs,
    AmountMismatch,
    CurrencyMismatch,
    StatusMismatch,
    CheckedByStatus,
    /// Absent on both sides as it should be (a refused or never-sent payout): counted only.
    AbsentAsExpected,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::InProgress => "in_progress",
            Self::MissingAtProvider => "missing_at_provider",
            Self::UnknownToUs => "unknown_to_us",
            Self::AmountMismatch => "amount_mismatch",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::StatusMismatch => "status_mismatch",
            Self::CheckedByStatus => "checked_by_status",
            Self::AbsentAsExpected => "absent_as_expected",
        }
    }

    /// Whether a person has to look.
    pub fn is_discrepancy(self) -> bool {
        matches!(
            self,
            Self::MissingAtProvider
                | Self::UnknownToUs
                | Self::AmountMismatch
                | Self::CurrencyMismatch
                | Self::StatusMismatch
        )
    }
}

/// What reconciliation did about an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    /// An open payout was moved to needs_review.
    Parked,
    /// A final (or already parked) payout: an event on its timeline and an error-level log
    /// line with `alert=true`; its state is unchanged.
    Alerted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Parked => "parked",
            Self::Alerted => "alerted",
        }
    }
}

/// One line of a report (matched rows are only counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Item {
    pub category: String,
    pub reference: Option<String>,
    pub payout_id: Option<Uuid>,
    pub our_state: Option<String>,
    pub our_amount: Option<Decimal>,
    pub our_currency: Option<String>,
    pub provider_status: Option<String>,
    pub provider_amount: Option<Decimal>,
    pub provider_currency: Option<String>,
    pub provider_created: Option<DateTime<Utc>>,
    pub detail: String,
    pub action: String,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub items: Vec<Item>,
    pub counts: BTreeMap<&'static str, u64>,
}

impl Comparison {
    fn count(&mut self, c: Category) {
        *self.counts.entry(c.as_str()).or_default() += 1;
    }

    fn push(&mut self, c: Category, ours: Option<&OurPayout>, theirs: Option<&ProviderRow>, detail: String) {
        self.count(c);
        self.items.push(Item {
            category: c.as_str().to_owned(),
            reference: ours.map(|o| o.reference.clone()).or_else(|| theirs.map(|t| t.reference.clone())),
            payout_id: ours.map(|o| o.id),
            our_state: ours.map(|o| o.state.0.as_str().to_owned()),
            our_amount: ours.map(|o| o.amount),
            our_currency: ours.map(|o| o.currency.clone()),
            provider_status: theirs.map(|t| t.status.as_str().to_owned()),
            provider_amount: theirs.map(|t| t.amount),
            provider_currency: theirs.map(|t| t.currency.clone()),
            provider_created: theirs.map(|t| t.created),
            detail,
            action: Action::None.as_str().to_owned(),
        });
    }

    /// Discrepancies found (what a person must look at).
    pub fn discrepancies(&self) -> u64 {
        self.items
            .iter()
            .filter(|i| {
                [
                    Category::MissingAtProvider,
                    Category::UnknownToUs,
                    Category::AmountMismatch,
                    Category::CurrencyMismatch,
                    Category::StatusMismatch,
                ]
                .iter()
                .any(|c| c.as_str() == i.category)
            })
            .count() as u64
    }
}

/// Compares the provider's rows with our payouts (pure).
///
/// `in_period`: our payouts submitted in `[from, to)`; `by_reference`: every payout of ours
/// any provider row names (looked up by reference, whenever it was submitted); `skip`: payouts
/// checked another way (their minute could not be read from the registry). Provider rows are
/// read over a wider window than the period so that a payout submitted just before the end is
/// found even if the provider stamped it a little later; a row outside the period counts only
/// when it belongs to one of our payouts of the period.
pub fn compare(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    in_period: &[OurPayout],
    by_reference: &HashMap<String, OurPayout>,
    theirs: &[ProviderRow],
    skip: &HashSet<Uuid>,
) -> Comparison {
    let mut out = Comparison::default();
    let in_window = |t: DateTime<Utc>| t >= from && t < to;
    let period_ids: HashSet<Uuid> = in_period.iter().map(|p| p.id).collect();
    let mut seen: HashSet<Uuid> = HashSet::new();
    for row in theirs {
        let ours = by_reference
            .get(&row.reference)
            .or_else(|| row.provider_id.as_ref().and_then(|pid| by_reference.get(pid)));
        let Some(ours) = ours else {
            if in_window(row.created) {
                out.push(
                    Category::UnknownToUs,
                    None,
                    Some(row),
                    format!(
                        "the provider recorded {} {} as {} under reference {:?}; no payout of ours has it",
                        row.amount,
                        row.currency,
                        row.status.as_str(),
                        row.reference
                    ),
                );
            }
            continue;
        };
        if !in_window(row.created) && !period_ids.contains(&ours.id) {
            continue;
        }
        if !seen.insert(ours.id) {
            out.push(
                Category::StatusMismatch,
                Some(ours),
                Some(row),
                "the provider recorded this reference more than once".to_owned(),
            );
            continue;
        }
        let mut problems = 0;
        if row.amount != ours.amount {
            problems += 1;
            out.push(
                Category::AmountMismatch,
                Some(ours),
                Some(row),
                format!("we sent {} {}; the provider recorded {}", ours.amount, ours.currency, row.amount),
            );
        }
        if !row.currency.eq_ignore_ascii_case(&ours.currency) {
            problems += 1;
            out.push(
                Category::CurrencyMismatch,
                Some(ours),
                Some(row),
                format!("we sent {}; the provider recorded {}", ours.currency, row.currency),
            );
        }
        match status_verdict(ours.state.0, &row.status) {
            Verdict::Agree => {}
            Verdict::InProgress(why) => {
                if problems == 0 {
                    out.push(Category::InProgress, Some(ours), Some(row), why);
                }
                problems += 1;
            }
            Verdict::Disagree(why) => {
                problems += 1;
                out.push(Category::StatusMismatch, Some(ours), Some(row), why);
            }
        }
        if problems == 0 {
            out.count(Category::Matched);
        }
    }
    for ours in in_period {
        if seen.contains(&ours.id) || skip.contains(&ours.id) {
            continue;
        }
        match ours.state.0 {
            PayoutState::Paid => out.push(
                Category::MissingAtProvider,
                Some(ours),
                None,
                "paid here, but the provider's registry does not have it".to_owned(),
            ),
            PayoutState::Submitted | PayoutState::InDoubt | PayoutState::NeedsReview => out.push(
                Category::MissingAtProvider,
                Some(ours),
                None,
                format!("{} here; the provider's registry does not have it (yet)", ours.state.0),
            ),
            _ => out.count(Category::AbsentAsExpected),
        }
    }
    out
}

enum Verdict {
    Agree,
    InProgress(String),
    Disagree(String),
}

fn status_verdict(ours: PayoutState, theirs: &ProviderSays) -> Verdict {
    use PayoutState as S;
    use ProviderSays as P;
    match (ours, theirs) {
        (_, P::Other(s)) => Verdict::Disagree(format!("the provider's status {s:?} is not one we can read")),
        (S::Paid, P::Paid) | (S::Failed, P::NotPaid) => Verdict::Agree,
        (S::Cancelled, p) => Verdict::Disagree(format!(
            "cancelled here (never sent), yet the provider recorded it as {}",
            p.as_str()
        )),
        (S::Paid, p) | (S::Failed, p) => {
            Verdict::Disagree(format!("{ours} here; the provider says {}", p.as_str()))
        }
        (S::NeedsReview, P::Paid) | (S::NeedsReview, P::NotPaid) => Verdict::Disagree(format!(
            "parked in needs_review here; the provider says {}: resolve it with that answer",
            theirs.as_str()
        )),
        (s, p) => Verdict::InProgress(format!(
            "{s} here, {} at the provider: not final yet on our side",
            p.as_str()
        )),
    }
}

/// Acts on the discrepancies of `comparison` (see the module table) and records on each item
/// what was done. Returns how many payouts were parked and how many alerts were raised.
pub async fn act(
    pool: &PgPool,
    comparison: &mut Comparison,
    reconciliation_id: Uuid,
) -> Result<(u64, u64), StoreError> {
    let (mut parked, mut alerted) = (0, 0);
    for item in comparison.items.iter_mut() {
        let serious = [
            Category::AmountMismatch,
            Category::CurrencyMismatch,
            Category::StatusMismatch,
            Category::MissingAtProvider,
        ]
        .iter()
        .any(|c| c.as_str() == item.category);
        if item.category == Category::UnknownToUs.as_str() {
            tracing::error!(
                alert = true,
                reconciliation = %reconciliation_id,
                reference = item.reference.as_deref().unwrap_or(""),
                detail = %item.detail,
                "reconciliation: the provider paid out under a reference we do not know"
            );
            item.action = Action::Alerted.as_str().to_owned();
            alerted += 1;
            continue;
        }
        let (Some(payout_id), true) = (item.payout_id, serious) else { continue };
        let money = item.category == Category::AmountMismatch.as_str()
            || item.category == Category::CurrencyMismatch.as_str();
        let reason = format!("RECONCILIATION {} ({}): {}", item.category, reconciliation_id, item.detail);
        let done = if money {
            park_or_note(pool, payout_id, &reason).await?
        } else {
            note(pool, payout_id, &reason).await?
        };
        if done == Action::Parked {
            parked += 1;
        } else {
            alerted += 1;
            tracing::error!(
                alert = true,
                reconciliation = %reconciliation_id,
                payout.id = %payout_id,
                category = %item.category,
                detail = %item.detail,
                "reconciliation found a discrepancy"
            );
        }
        item.action = done.as_str().to_owned();
    }
    Ok((parked, alerted))
}

/// An open payout goes to needs_review (the fencing token moves on, so no worker that held it
/// can write it); a final or parked one only gets the event.
async fn park_or_note(pool: &PgPool, payout_id: Uuid, reason: &str) -> Result<Action, StoreError> {
    let mut tx = pool.begin().await?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state::text FROM payouts WHERE id = $1 FOR UPDATE")
            .bind(payout_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(state) = state else { return Ok(Action::None) };
    let state: PayoutState =
        state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()))?;
    if !state.is_active() {
        insert_event(&mut tx, payout_id, Some(state), state, "reconciliation", reason, None, None).await?;
        tx.commit().await?;
        return Ok(Action::Alerted);
    }
    sqlx::query(
        "UPDATE payouts SET state = 'needs_review', next_run_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                fencing_token = fencing_token + 1, parked_at = now(), last_error = $2, updated_at = now()
          WHERE id = $1",
    )
    .bind(payout_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    insert_event(
        &mut tx,
        payout_id,
        Some(state),
        PayoutState::NeedsReview,
        "reconciliation",
        reason,
        None,
        None,
    )
    .await?;
    webhooks::record_payout_change(&mut tx, payout_id, PayoutChange::Entered(PayoutState::NeedsReview))
        .await?;
    tx.commit().await?;
    Ok(Action::Parked)
}

/// An event on the payout's timeline; its state does not change.
async fn note(pool: &PgPool, payout_id: Uuid, reason: &str) -> Result<Action, StoreError> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state::text FROM payouts WHERE id = $1")
        .bind(payout_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(state) = state else { return Ok(Action::None) };
    let state: PayoutState =
        state.parse().map_err(|e: payoutd_core::state::UnknownState| StoreError::Corrupt(e.to_string()))?;
    insert_event(&mut tx, payout_id, Some(state), state, "reconciliation", reason, None, None).await?;
    tx.commit().await?;
    Ok(Action::Alerted)
}

// ---- stored reports -------------------------------------------------------------------------

/// A stored reconciliation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Reconciliation {
    pub id: Uuid,
    pub account: String,
    pub kind: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub status: String,
    pub summary: Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// What to store.
#[derive(Debug, Clone)]
pub struct NewReconciliation<'a> {
    pub id: Uuid,
    pub account: &'a str,
    pub kind: &'a str,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub status: &'a str,
    pub summary: &'a Value,
    pub created_by: &'a str,
    pub items: &'a [Item],
}

pub async fn save(pool: &PgPool, r: &NewReconciliation<'_>) -> Result<Reconciliation, StoreError> {
    let mut tx = pool.begin().await?;
    let saved: Reconciliation = sqlx::query_as(
        "INSERT INTO reconciliations (id, account, kind, period_start, period_end, status, summary, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, account, kind, period_start, period_end, status, summary, created_by, created_at",
    )
    .bind(r.id)
    .bind(r.account)
    .bind(r.kind)
    .bind(r.period_start)
    .bind(r.period_end)
    .bind(r.status)
    .bind(r.summary)
    .bind(r.created_by)
    .fetch_one(&mut *tx)
    .await?;
    for chunk in r.items.chunks(5_000) {
        let col = |f: fn(&Item) -> Option<String>| chunk.iter().map(f).collect::<Vec<_>>();
        let categories: Vec<&str> = chunk.iter().map(|i| i.category.as_str()).collect();
        let payouts: Vec<Option<Uuid>> = chunk.iter().map(|i| i.payout_id).collect();
        let our_amounts: Vec<Option<Decimal>> = chunk.iter().map(|i| i.our_amount).collect();
        let their_amounts: Vec<Option<Decimal>> = chunk.iter().map(|i| i.provider_amount).collect();
        let created: Vec<Option<DateTime<Utc>>> = chunk.iter().map(|i| i.provider_created).collect();
        let details: Vec<&str> = chunk.iter().map(|i| i.detail.as_str()).collect();
        let actions: Vec<&str> = chunk.iter().map(|i| i.action.as_str()).collect();
        sqlx::query(
            "INSERT INTO reconciliation_items (reconciliation_id, category, reference, payout_id, our_state, our_amount,
                                               our_currency, provider_status, provider_amount, provider_currency,
                                               provider_created, detail, action)
             SELECT $1, u.* FROM UNNEST($2::text[], $3::text[], $4::uuid[], $5::text[], $6::numeric[], $7::text[],
                                        $8::text[], $9::numeric[], $10::text[], $11::timestamptz[], $12::text[],
                                        $13::text[]) AS u",
        )
        .bind(r.id)
        .bind(&categories)
        .bind(col(|i| i.reference.clone()))
        .bind(&payouts)
        .bind(col(|i| i.our_state.clone()))
        .bind(&our_amounts)
        .bind(col(|i| i.our_currency.clone()))
        .bind(col(|i| i.provider_status.clone()))
        .bind(&their_amounts)
        .bind(col(|i| i.provider_currency.clone()))
        .bind(&created)
        .bind(&details)
        .bind(&actions)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(saved)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Reconciliation>, StoreError> {
    let r = sqlx::query_as(
        "SELECT id, account, kind, period_start, period_end, status, summary, created_by, created_at
           FROM reconciliations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(r)
}

pub async fn items(pool: &PgPool, id: Uuid) -> Result<Vec<Item>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT category, reference, payout_id, our_state, our_amount, our_currency, provider_status, provider_amount,
                provider_currency, provider_created, detail, action
           FROM reconciliation_items WHERE reconciliation_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Reconciliations, newest first (of one account when given).
pub async fn list(
    pool: &PgPool,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<Reconciliation>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, account, kind, period_start, period_end, status, summary, created_by, created_at
           FROM reconciliations WHERE ($1::text IS NULL OR account = $1) ORDER BY created_at DESC LIMIT $2",
    )
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The CSV columns of a report.
pub const CSV_HEADER: &[&str] = &[
    "category",
    "reference",
    "payout_id",
    "our_state",
    "our_amount",
    "our_currency",
    "provider_status",
    "provider_amount",
    "provider_currency",
    "provider_created",
    "detail",
    "action",
];

/// An item as CSV cells, in [`CSV_HEADER`] order.
pub fn csv_cells(i: &Item) -> Vec<String> {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        i.category.clone(),
        s(&i.reference),
        i.payout_id.map(|u| u.to_string()).unwrap_or_default(),
        s(&i.our_state),
        i.our_amount.map(|a| a.to_string()).unwrap_or_default(),
        s(&i.our_currency),
        s(&i.provider_status),
        i.provider_amount.map(|a| a.to_string()).unwrap_or_default(),
        s(&i.provider_currency),
        i.provider_created.map(|t| t.to_rfc3339()).unwrap_or_default(),
        i.detail.clone(),
        i.action.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, m, 0).single().expect("t")
    }

    fn ours(reference: &str, state: PayoutState, amount: i64) -> OurPayout {
        OurPayout {
            id: Uuid::new_v4(),
            reference: reference.into(),
            state: StateText(state),
            amount: Decimal::from(amount),
            currency: "IDR".into(),
            submitted_at: Some(at(5)),
        }
    }

    fn theirs(reference: &str, status: ProviderSays, amount: i64, created: DateTime<Utc>) -> ProviderRow {
        ProviderRow {
            reference: reference.into(),
            provider_id: None,
            status,
            amount: Decimal::from(amount),
            currency: "IDR".into(),
            created,
        }
    }

    #[test]
    fn every_kind_of_difference_is_found_once() {
        let mine = vec![
            ours("PO1", PayoutState::Paid, 100),
            ours("PO2", PayoutState::Failed, 100),
            ours("PO3", PayoutState::Paid, 100),
            ours("PO4", PayoutState::Paid, 100),
            ours("PO5", PayoutState::Submitted, 100),
            ours("PO6", PayoutState::Failed, 100),
        ];
        let by_ref: HashMap<String, OurPayout> =
            mine.iter().map(|p| (p.reference.clone(), p.clone())).collect();
        let rows = vec![
            theirs("PO1", ProviderSays::Paid, 100, at(5)),
            theirs("PO2", ProviderSays::Paid, 100, at(5)),
            theirs("PO3", ProviderSays::Paid, 90, at(5)),
            theirs("PO5", ProviderSays::Paid, 100, at(5)),
            theirs("XX9", ProviderSays::Paid, 70, at(6)),
            // Outside the period and nobody's: the next period's business.
            theirs("XX8", ProviderSays::Paid, 70, at(30)),
        ];
        let c = compare(at(0), at(10), &mine, &by_ref, &rows, &HashSet::new());
        let got: Vec<(&str, Option<&str>)> =
            c.items.iter().map(|i| (i.category.as_str(), i.reference.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("status_mismatch", Some("PO2")),
                ("amount_mismatch", Some("PO3")),
                ("in_progress", Some("PO5")),
                ("unknown_to_us", Some("XX9")),
                ("missing_at_provider", Some("PO4")),
            ]
        );
        assert_eq!(c.counts.get("matched"), Some(&1));
        assert_eq!(c.counts.get("absent_as_expected"), Some(&1), "PO6 failed and the provider never had it");
        assert_eq!(c.discrepancies(), 4);
    }
}
