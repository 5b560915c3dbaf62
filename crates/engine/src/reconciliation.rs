//! One reconciliation run: read what the provider recorded of a period, compare it with our
//! payouts, act on the discrepancies, store the report (see `payoutd_store::reconciliation`).
//! The balance statement, when given, is compared in aggregate
//! ([`crate::statement_reconciliation`]).
//!
//! Only the 8B partner API has a registry call. For 8B REST and 88Pay the specs have none, so
//! a run for such an account stores and answers "unsupported" and compares nothing: a report
//! that found no discrepancy because it looked at nothing would be worse than none.
//!
//! The registry is read over the period widened by a margin (default 5 minutes) on both sides:
//! our `submitted_at` is when our submit started, the provider's `created` when it took the
//! request, and the two may fall on either side of a period's edge.
//!
//! Minutes the registry cannot return (more than 20,000 rows in one minute) are checked one
//! payout at a time with the status call, only for payouts no worker is working on (final or
//! parked ones) and only when the provider last heard of them at least a status interval ago,
//! so these checks keep DESIGN rule 7's spacing; open payouts in such a minute are left to the
//! engine, which asks about them anyway.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_providers::eightb_partner::registry::{self, RegistryPages, RegistryStatus};
use payoutd_providers::eightb_partner::statement::StatementSource;
use payoutd_providers::{Connectors, FrozenRequest, ProviderStatus};
use payoutd_store::PgPool;
use payoutd_store::reconciliation::{
    self as store, Item, NewReconciliation, OurPayout, ProviderRow, ProviderSays,
};
use serde_json::json;
use uuid::Uuid;

use crate::statement_reconciliation;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("no account named {0:?} is configured")]
    UnknownAccount(String),
    #[error("the period's end ({end}) must be after its start ({start})")]
    Period { start: DateTime<Utc>, end: DateTime<Utc> },
    #[error(transparent)]
    Store(#[from] payoutd_store::StoreError),
}

/// Where the provider's record comes from.
pub enum Source<'a> {
    /// The 8B partner registry (or a fake in tests).
    Registry(&'a dyn RegistryPages),
    /// The provider has no such call; `why` says so in the report.
    Unsupported { why: String },
}

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// How far beyond the period the registry is read (see the module docs).
    pub margin: Duration,
    /// Park open payouts with money mismatches and write events on final ones. Off: report only.
    pub act: bool,
    /// Who asked (stored with the report).
    pub created_by: String,
    /// At most this many one-by-one status checks per run.
    pub max_status_checks: usize,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(300),
            act: true,
            created_by: "cli".into(),
            max_status_checks: 1_000,
        }
    }
}

/// A stored run and its items.
#[derive(Debug, Clone)]
pub struct ReconcileReport {
    pub reconciliation: store::Reconciliation,
    pub items: Vec<Item>,
}

/// Why an account kind has no reconciliation.
pub fn unsupported_reason(kind: &str) -> Option<String> {
    match kind {
        "8b_partner" => None,
        "8b_rest" => Some(
            "reconciliation unsupported for 8b_rest accounts: the 8B REST quickstart has no registry or \
             statement call (only GET disbursements/{id} by the provider's id); nothing was compared"
                .to_owned(),
        ),
        "88pay" => Some(
            "reconciliation unsupported for 88pay accounts: the 88Pay guides have no registry, statement or \
             status call; nothing was compared"
                .to_owned(),
        ),
        other => Some(format!("reconciliation unsupported for {other:?} accounts; nothing was compared")),
    }
}

/// Runs one reconciliation of `account` over `[from, to)` (rounded out to whole minutes).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pool: &PgPool,
    connectors: &Connectors,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    source: Source<'_>,
    statement: Option<&dyn StatementSource>,
    options: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let connector =
        connectors.get(account).ok_or_else(|| ReconcileError::UnknownAccount(account.to_owned()))?;
    let (from, to) = (registry::floor_minute(from), registry::ceil_minute(to));
    if from >= to {
        return Err(ReconcileError::Period { start: from, end: to });
    }
    let id = Uuid::now_v7();
    let kind = connector.kind();
    let save = |status: &'static str, summary: serde_json::Value, items: Vec<Item>| async move {
        let saved = store::save(
            pool,
            &NewReconciliation {
                id,
                account,
                kind,
                period_start: from,
                period_end: to,
                status,
                summary: &summary,
                created_by: &options.created_by,
                items: &items,
            },
        )
        .await?;
        Ok::<_, ReconcileError>(ReconcileReport { reconciliation: saved, items })
    };
    let pages = match source {
        Source::Unsupported { why } => {
            return save("unsupported", json!({ "reason": why }), Vec::new()).await;
        }
        Source::Registry(pages) => pages,
    };
    let margin = chrono::Duration::from_std(options.margin).unwrap_or_else(|_| chrono::Duration::minutes(5));
    let (window_start, window_end) =
        (registry::floor_minute(from - margin), registry::ceil_minute(to + margin));
    let fetch = match registry::fetch_all(pages, window_start, window_end).await {
        Ok(fetch) => fetch,
        Err(e) => {
            tracing::error!(alert = true, account, error = %e, "reconciliation could not read the registry");
            return save("failed", json!({ "error": e.to_string() }), Vec::new()).await;
        }
    };
    let mut theirs: Vec<ProviderRow> = fetch
        .rows
        .iter()
        .map(|r| ProviderRow {
            reference: r.id.clone(),
            provider_id: r.pid.clone(),
            status: match &r.status {
                RegistryStatus::Paid => ProviderSays::Paid,
                RegistryStatus::NotPaid => ProviderSays::NotPaid,
                RegistryStatus::Processing => ProviderSays::Processing,
                RegistryStatus::Other(s) => ProviderSays::Other(s.clone()),
            },
            amount: r.amount,
            currency: r.currency.clone(),
            created: r.created,
        })
        .collect();
    let in_period = store::submitted_in(pool, account, from, to).await?;
    // Minutes the registry could not return: their payouts are asked one by one.
    let mut skip = HashSet::new();
    let mut checked = 0usize;
    let mut not_checked = 0usize;
    for ours in in_unpageable(&in_period, &fetch.unpageable) {
        match status_row(pool, connectors, account, ours, options, &mut checked).await? {
            Checked::Row(row) => theirs.push(row),
            // Unknown to the provider: left unseen, so it is reported missing if it should be there.
            Checked::Absent => {}
            Checked::NotAsked => {
                not_checked += 1;
                skip.insert(ours.id);
            }
        }
    }
    let mut references: Vec<String> = theirs.iter().map(|r| r.reference.clone()).collect();
    references.extend(theirs.iter().filter_map(|r| r.provider_id.clone()));
    let by_reference: HashMap<String, OurPayout> = store::by_references(pool, account, &references)
        .await?
        .into_iter()
        .chain(in_period.iter().cloned())
        .map(|p| (p.reference.clone(), p))
        .collect();
    let mut comparison = store::compare(from, to, &in_period, &by_reference, &theirs, &skip);
    for ours in in_period.iter().filter(|p| skip.contains(&p.id)) {
        comparison.items.push(Item {
            category: "checked_by_status".into(),
            reference: Some(ours.reference.clone()),
            payout_id: Some(ours.id),
            our_state: Some(ours.state.0.as_str().into()),
            our_amount: Some(ours.amount),
            our_currency: Some(ours.currency.clone()),
            provider_status: None,
            provider_amount: None,
            provider_currency: None,
            provider_created: None,
            detail:
                "its minute holds more rows than the registry returns, and it could not be asked one by one \
                     (open, asked too recently, or over the per-run limit): not compared"
                    .into(),
            action: "none".into(),
        });
    }
    let (parked, alerted) = if options.act { store::act(pool, &mut comparison, id).await? } else { (0, 0) };
    let mut discrepancies = comparison.discrepancies();
    let balance_statement = match statement {
        None => serde_json::Value::Null,
        Some(source) => match source.statement(from, to).await {
            Err(e) => {
                tracing::error!(alert = true, account, error = %e, "reconciliation could not read the balance statement");
                json!({ "error": e.to_string() })
            }
            Ok(rows) => {
                let aggregate = statement_reconciliation::aggregate(&rows, &in_period, &fetch.rows);
                if aggregate.not_comparable.is_none() && !aggregate.difference.is_zero() {
                    discrepancies += 1;
                    tracing::error!(alert = true, account, difference = %aggregate.difference,
                        "balance statement differs from paid payouts plus commissions");
                    comparison.items.push(Item {
                        category: "balance_statement_difference".into(),
                        reference: None,
                        payout_id: None,
                        our_state: None,
                        our_amount: Some(aggregate.expected),
                        our_currency: aggregate.currency.clone(),
                        provider_status: None,
                        provider_amount: Some(aggregate.net_debits),
                        provider_currency: None,
                        provider_created: None,
                        detail: format!(
                            "the statement's net debits {} (debits {} less credits {}) differ by {} from our paid \
                             payouts {} ({}) plus commissions {}",
                            aggregate.net_debits,
                            aggregate.debits,
                            aggregate.credits,
                            aggregate.difference,
                            aggregate.paid_total,
                            aggregate.paid_payouts,
                            aggregate.commissions
                        ),
                        action: "alerted".into(),
                    });
                }
                serde_json::to_value(&aggregate).unwrap_or(serde_json::Value::Null)
            }
        },
    };
    let summary = json!({
        "counts": comparison.counts,
        "discrepancies": discrepancies,
        "our_payouts_in_period": in_period.len(),
        "registry_rows": fetch.rows.len(),
        "registry_window": { "start": window_start, "end": window_end },
        "registry_pages": fetch.pages,
        "registry_limit_errors": fetch.limit_errors,
        "registry_duplicates": fetch.duplicates,
        "unpageable_minutes": fetch.unpageable.iter().map(|(s, e)| json!({ "start": s, "end": e })).collect::<Vec<_>>(),
        "checked_by_status": checked,
        "not_checked": not_checked,
        "parked": parked,
        "alerted": alerted,
        "acted": options.act,
        "balance_statement": balance_statement,
    });
    tracing::info!(account, %from, %to, discrepancies, parked, alerted, "reconciliation done");
    save("completed", summary, comparison.items).await
}

fn in_unpageable<'a>(
    ours: &'a [OurPayout],
    minutes: &'a [(DateTime<Utc>, DateTime<Utc>)],
) -> impl Iterator<Item = &'a OurPayout> {
    ours.iter().filter(move |p| {
        p.submitted_at.is_some_and(|at| minutes.iter().any(|(start, end)| at >= *start && at < *end))
    })
}

enum Checked {
    Row(ProviderRow),
    Absent,
    NotAsked,
}

/// Asks the provider about one payout by its status call, when allowed (see the module docs).
async fn status_row(
    pool: &PgPool,
    connectors: &Connectors,
    account: &str,
    ours: &OurPayout,
    options: &ReconcileOptions,
    checked: &mut usize,
) -> Result<Checked, ReconcileError> {
    let Some(connector) = connectors.get(account) else { return Ok(Checked::NotAsked) };
    if *checked >= options.max_status_checks || ours.state.0.is_active() {
        return Ok(Checked::NotAsked);
    }
    let Some(row) = payoutd_store::payouts::get(pool, ours.id).await? else { return Ok(Checked::NotAsked) };
    let interval =
        chrono::Duration::from_std(connector.min_status_interval()).unwrap_or(chrono::Duration::zero());
    if row.provider_contact_bound.is_some_and(|bound| bound + interval > row.db_now) {
        return Ok(Checked::NotAsked);
    }
    let Some(request) =
        row.submit_request.clone().and_then(|b| serde_json::from_value::<FrozenRequest>(b).ok())
    else {
        return Ok(Checked::NotAsked);
    };
    *checked += 1;
    let status = match connector.status(&request, row.provider_payout_id.as_deref()).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(payout.id = %ours.id, error = %e, "reconciliation status check failed");
            return Ok(Checked::NotAsked);
        }
    };
    let says = match status {
        ProviderStatus::Paid => ProviderSays::Paid,
        ProviderStatus::Failed { .. } => ProviderSays::NotPaid,
        ProviderStatus::Processing => ProviderSays::Processing,
        ProviderStatus::NotFound => return Ok(Checked::Absent),
    };
    Ok(Checked::Row(ProviderRow {
        reference: ours.reference.clone(),
        provider_id: None,
        status: says,
        // The status call is keyed by reference and checks the amount we send with it.
        amount: ours.amount,
        currency: ours.currency.clone(),
        created: ours.submitted_at.unwrap_or(row.db_now),
    }))
}
