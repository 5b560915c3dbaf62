//! The restore check: after a database restore (`payoutd_store::restore`), every open payout is
//! compared with what the provider recorded since the backup, before anything is sent again.
//!
//! For each account, the provider's registry is read from the backup time (less a margin) to now
//! (plus a margin), and:
//! - an open payout whose reference the registry shows takes the registry's outcome: paid,
//!   failed, or submitted (the engine polls it from then on); a money mismatch parks it;
//! - an open payout whose reference the registry does not show never reached the provider since
//!   the backup: the engine goes on with it once the mark is cleared;
//! - a registry row whose reference this database does not know is a submit made after the
//!   backup. If exactly one open payout without a reference matches it (crediting account,
//!   destination, amount, currency) and matches no other such row, that payout adopts the
//!   reference and its outcome; if several could, all of them are parked for a person; if none
//!   can, the row is reported (a payout accepted after the backup whose record is lost: its
//!   backend must not send it again blindly) and raises an alert.
//!
//! Accounts whose provider has no registry (8B REST, 88Pay) cannot be checked: their open payouts
//! that could have been sent since the backup are parked for reconciliation with the provider's
//! statement; a submitted one keeps waiting for its own status call or webhook.
//!
//! The mark is cleared only when every account was checked completely: a registry that could not
//! be read, or minutes it could not return, leave the mark (and the hold on submits) in place.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::PayoutState;
use payoutd_providers::eightb_partner::registry::{self, RegistryPages, RegistryRow, RegistryStatus};
use payoutd_providers::{Connectors, PayoutForProvider};
use payoutd_store::PgPool;
use payoutd_store::restore::{self as store, Found, OpenPayout};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum RestoreCheckError {
    #[error("the database is not marked restored: nothing to check (`payoutd restore mark` first)")]
    NotMarked,
    #[error("no account named {0:?} is configured")]
    UnknownAccount(String),
    #[error(transparent)]
    Store(#[from] payoutd_store::StoreError),
    #[error(transparent)]
    Action(#[from] payoutd_store::operator::ActionError),
}

/// Where an account's record since the backup comes from.
pub enum AccountSource<'a> {
    Registry(&'a dyn RegistryPages),
    /// The provider has no registry; `why` says so in the report.
    NoRegistry {
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct RestoreCheckOptions {
    /// How far beyond [backup, now] the registry is read (clocks and the provider's `created`).
    pub margin: Duration,
    /// Off: report what would be done, change nothing, keep the mark.
    pub act: bool,
    /// Who ran it (stored with the mark).
    pub actor: String,
}

impl Default for RestoreCheckOptions {
    fn default() -> Self {
        Self { margin: Duration::from_secs(300), act: true, actor: "cli".into() }
    }
}

/// What the check found in one account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountReport {
    pub account: String,
    /// `checked`, `no_registry` (open payouts parked), or `incomplete` (the mark stays).
    pub outcome: String,
    pub detail: String,
    pub open_payouts: usize,
    pub registry_rows: usize,
    /// Open payouts whose reference the registry did not show: never sent since the backup.
    pub not_sent_since_backup: usize,
    /// Open payouts that took the registry's outcome (under their own or an adopted reference).
    pub settled_paid: usize,
    pub settled_failed: usize,
    pub settled_submitted: usize,
    /// Of the settled ones, those that had no reference here and adopted one from the registry.
    pub adopted_references: usize,
    pub parked: usize,
    /// Registry rows this database knows nothing of, and no open payout could claim.
    pub unknown_to_database: Vec<String>,
    /// Payouts that moved while the check ran (left to the engine).
    pub moved_meanwhile: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreCheckReport {
    pub backup_taken_at: DateTime<Utc>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub accounts: Vec<AccountReport>,
    /// Whether the mark was cleared (every account checked completely, and `act`).
    pub cleared: bool,
}

/// Runs the check over `accounts` (every configured account, each with its source) and clears
/// the mark when all of them were checked completely.
pub async fn run(
    pool: &PgPool,
    connectors: &Connectors,
    accounts: Vec<(String, AccountSource<'_>)>,
    options: &RestoreCheckOptions,
) -> Result<RestoreCheckReport, RestoreCheckError> {
    let mark = store::open_mark(pool).await?.ok_or(RestoreCheckError::NotMarked)?;
    let margin = chrono::Duration::from_std(options.margin).unwrap_or_else(|_| chrono::Duration::minutes(5));
    let window_start = registry::floor_minute(mark.backup_taken_at - margin);
    let window_end = registry::ceil_minute(Utc::now() + margin);
    let mut reports = Vec::new();
    for (account, source) in accounts {
        let connector =
            connectors.get(&account).ok_or_else(|| RestoreCheckError::UnknownAccount(account.clone()))?;
        let open = store::open_payouts(pool, &account).await?;
        let mut report =
            AccountReport { account: account.clone(), open_payouts: open.len(), ..Default::default() };
        match source {
            AccountSource::NoRegistry { why } => {
                park_unverifiable(pool, &open, &why, options, &mut report).await?;
                report.outcome = "no_registry".into();
                report.detail = why;
            }
            AccountSource::Registry(pages) => {
                match registry::fetch_all(pages, window_start, window_end).await {
                    Err(e) => {
                        report.outcome = "incomplete".into();
                        report.detail = format!("the registry could not be read: {e}");
                    }
                    Ok(fetch) if !fetch.unpageable.is_empty() => {
                        report.outcome = "incomplete".into();
                        report.detail = format!(
                            "{} minute(s) hold more rows than the registry returns; check them with the provider",
                            fetch.unpageable.len()
                        );
                    }
                    Ok(fetch) => {
                        report.registry_rows = fetch.rows.len();
                        compare(pool, &account, connector.as_ref(), &open, &fetch.rows, options, &mut report)
                            .await?;
                        report.outcome = "checked".into();
                    }
                }
            }
        }
        if !report.unknown_to_database.is_empty() {
            tracing::error!(alert = true, account = %report.account, rows = report.unknown_to_database.len(),
                "restore check: the provider has payouts since the backup that this database does not know");
        }
        reports.push(report);
    }
    let complete = reports.iter().all(|r| r.outcome != "incomplete");
    let mut result = RestoreCheckReport {
        backup_taken_at: mark.backup_taken_at,
        window_start,
        window_end,
        accounts: reports,
        cleared: false,
    };
    if options.act && complete {
        let summary = serde_json::to_value(&result).unwrap_or_else(|_| json!({}));
        store::clear(pool, &options.actor, &summary).await?;
        result.cleared = true;
    }
    Ok(result)
}

/// The registry comparison of one account (see the module docs).
async fn compare(
    pool: &PgPool,
    account: &str,
    connector: &dyn payoutd_providers::Connector,
    open: &[OpenPayout],
    rows: &[RegistryRow],
    options: &RestoreCheckOptions,
    report: &mut AccountReport,
) -> Result<(), RestoreCheckError> {
    // No new payout may take a reference the provider has seen, whatever the mark's gap was.
    if let Some(highest) = rows.iter().filter_map(|r| reference_number(&r.id)).max()
        && options.act
    {
        store::advance_references_past(pool, highest).await?;
    }
    let by_reference: HashMap<&str, &RegistryRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let known = store::known_references(pool, account, &ids).await?;

    // Open payouts with a reference: the registry has it, or it was never sent since the backup.
    for payout in open {
        let Some(reference) = payout.reference.as_deref() else { continue };
        match by_reference.get(reference) {
            None => {
                report.not_sent_since_backup += 1;
                if options.act {
                    let why = "restore check: not in the provider's registry since the backup, so never sent since; \
                               the engine goes on with it";
                    store::note(pool, payout.id, payout.state, why).await?;
                }
            }
            Some(row) => settle(pool, payout, row, None, options, report).await?,
        }
    }

    // Registry rows this database does not know: submits made after the backup.
    let unknown: Vec<&RegistryRow> = rows.iter().filter(|r| !known.contains(&r.id)).collect();
    let without_reference: Vec<&OpenPayout> = open.iter().filter(|p| p.reference.is_none()).collect();
    let candidates = |row: &RegistryRow| -> Vec<&OpenPayout> {
        without_reference.iter().copied().filter(|p| same_payment(p, row)).collect()
    };
    let claims = |payout: &OpenPayout| unknown.iter().filter(|r| same_payment(payout, r)).count();
    let mut parked_ambiguous = std::collections::HashSet::new();
    for row in &unknown {
        let matching = candidates(row);
        match matching.as_slice() {
            [] => report.unknown_to_database.push(row.id.clone()),
            [only] if claims(only) == 1 => {
                let frozen = connector.freeze_submit(
                    &PayoutForProvider { money: only.money, destination: only.destination.clone() },
                    &row.id,
                    row.created,
                );
                let request = serde_json::to_value(&frozen).ok();
                settle(pool, only, row, request.as_ref(), options, report).await?;
                report.adopted_references += 1;
            }
            several => {
                let references: Vec<&str> = unknown
                    .iter()
                    .filter(|r| several.iter().any(|p| same_payment(p, r)))
                    .map(|r| r.id.as_str())
                    .collect();
                for payout in several {
                    if !parked_ambiguous.insert(payout.id) {
                        continue;
                    }
                    let why = format!(
                        "restore check: the provider executed a payment to the same account for the same amount \
                         after the backup ({}) and it cannot be told which payout it was; compare with the provider, \
                         then resolve or retry",
                        references.join(", ")
                    );
                    park(pool, payout, &why, options, report).await?;
                }
            }
        }
    }
    Ok(())
}

/// Gives `payout` the registry's outcome for `row` (and the row's reference when it had none).
async fn settle(
    pool: &PgPool,
    payout: &OpenPayout,
    row: &RegistryRow,
    adopted_request: Option<&serde_json::Value>,
    options: &RestoreCheckOptions,
    report: &mut AccountReport,
) -> Result<(), RestoreCheckError> {
    if row.amount != payout.money.amount() || row.currency != payout.money.currency().code() {
        let why = format!(
            "restore check: the registry shows {} as {} {}, the payout is {}; not settled",
            row.id, row.amount, row.currency, payout.money
        );
        return park(pool, payout, &why, options, report).await;
    }
    let found = match &row.status {
        RegistryStatus::Paid => Found::Paid,
        RegistryStatus::NotPaid => Found::NotPaid,
        RegistryStatus::Processing => Found::Processing,
        RegistryStatus::Other(status) => {
            let why =
                format!("restore check: the registry shows {} with status {status:?}; not settled", row.id);
            return park(pool, payout, &why, options, report).await;
        }
    };
    if found == Found::Processing && payout.state == PayoutState::Submitted && adopted_request.is_none() {
        // Already waiting for the provider: the engine's status queries finish it.
        report.settled_submitted += 1;
        return Ok(());
    }
    let how = if adopted_request.is_some() { "adopted the reference" } else { "found its reference" };
    let why = format!(
        "restore check: the provider's registry shows {} ({}, created {}) since the backup: {how}",
        row.id,
        match found {
            Found::Paid => "paid",
            Found::NotPaid => "not paid",
            Found::Processing => "processing",
        },
        row.created.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    match found {
        Found::Paid => report.settled_paid += 1,
        Found::NotPaid => report.settled_failed += 1,
        Found::Processing => report.settled_submitted += 1,
    }
    if options.act
        && !store::adopt(pool, payout.id, payout.state, &row.id, adopted_request, found, &why).await?
    {
        report.moved_meanwhile += 1;
    }
    Ok(())
}

async fn park(
    pool: &PgPool,
    payout: &OpenPayout,
    why: &str,
    options: &RestoreCheckOptions,
    report: &mut AccountReport,
) -> Result<(), RestoreCheckError> {
    report.parked += 1;
    if options.act && !store::park(pool, payout.id, payout.state, why).await? {
        report.parked -= 1;
        report.moved_meanwhile += 1;
    }
    Ok(())
}

/// Without a registry, whatever could have been sent since the backup is parked: every open
/// payout except one already submitted (its own status call or webhook finishes it).
async fn park_unverifiable(
    pool: &PgPool,
    open: &[OpenPayout],
    why: &str,
    options: &RestoreCheckOptions,
    report: &mut AccountReport,
) -> Result<(), RestoreCheckError> {
    for payout in open.iter().filter(|p| p.state != PayoutState::Submitted) {
        let reason = format!(
            "restore check: {why}; this payout may have been sent after the backup, so it is parked: \
             compare with the provider's statement, then resolve or retry"
        );
        park(pool, payout, &reason, options, report).await?;
    }
    Ok(())
}

/// Whether a registry row is a payment of this payout's money to its account.
fn same_payment(payout: &OpenPayout, row: &RegistryRow) -> bool {
    row.amount == payout.money.amount()
        && row.currency == payout.money.currency().code()
        && row.client.as_deref() == Some(payout.destination.client.as_str())
        && row.destination.as_deref() == Some(payout.destination.destination.as_str())
}

/// The number of one of our references ("PO" and digits).
fn reference_number(reference: &str) -> Option<i64> {
    reference
        .strip_prefix("PO")
        .filter(|d| (1..=18).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::reference_number;

    #[test]
    fn only_our_reference_shape_counts() {
        assert_eq!(reference_number("PO000000000000000042"), Some(42));
        assert_eq!(reference_number("PO"), None);
        assert_eq!(reference_number("XX000000000000000042"), None);
        assert_eq!(reference_number("PO-1"), None);
        assert_eq!(reference_number("PO9999999999999999999"), None, "more than 18 digits");
    }
}
