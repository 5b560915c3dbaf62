//! The verdict: the database against the sandbox's ledger, and the report.
//!
//! Rules checked, each a violation when broken:
//! - every payout the API accepted is in the database, and nothing else is;
//! - every payout is settled (paid, failed, cancelled or needs_review) by the deadline;
//! - no id executed more than once in the sandbox;
//! - every id the sandbox executed belongs to a payout (money never moves for a payout we lost);
//! - `paid` in the database <=> PAID in the ledger; a payout the provider paid is never `failed`
//!   or `cancelled` (a paid one in `needs_review` is reported: a person resolves it);
//! - no status query sooner than the interval after the first submit, or after the previous
//!   query of the same id (the sandbox counts both);
//! - Postgres was restarted once (unless that was explicitly allowed to be skipped).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use payoutd_sandbox::{LedgerStatus, SandboxHandle, SandboxStats};
use payoutd_store::PgPool;
use uuid::Uuid;

use crate::enqueue::Enqueued;
use crate::{Counters, SoakError};

/// States a payout rests in at the end of a run.
const SETTLED: [&str; 4] = ["paid", "failed", "cancelled", "needs_review"];
/// How many examples each kind of violation lists.
const EXAMPLES: usize = 10;

/// Payouts not yet settled.
pub async fn open_count(pool: &PgPool) -> Result<i64, SoakError> {
    let settled: Vec<String> = SETTLED.iter().map(|s| (*s).to_owned()).collect();
    Ok(sqlx::query_scalar("SELECT count(*) FROM payouts WHERE NOT (state::text = ANY($1))")
        .bind(settled)
        .fetch_one(pool)
        .await?)
}

/// A kind of violation: how many, and the first few described.
#[derive(Debug, Default, Clone)]
pub struct Finding {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Finding {
    fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// Everything a soak run found out.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub requested: usize,
    pub enqueued: usize,
    pub enqueue_retries: u64,
    pub enqueue_replays: u64,
    pub counters: Counters,
    /// Why Postgres was not restarted, if it was not.
    pub postgres_restart_skipped: Option<String>,
    pub allow_no_restart: bool,
    /// Payouts per state.
    pub states: BTreeMap<String, u64>,
    pub not_settled: Finding,
    /// Ids the sandbox executed more than once.
    pub executed_twice: Finding,
    /// Accepted payouts missing from the database, payouts nobody enqueued, payouts the API
    /// never accepted, ledger ids with no payout.
    pub lost: Finding,
    /// The database and the ledger disagree about a payout's outcome.
    pub mismatches: Finding,
    /// Paid in the ledger, parked in needs_review (not a violation: a person resolves it).
    pub paid_in_review: Finding,
    /// needs_review payouts and their last error, for reading.
    pub review_examples: Vec<String>,
    pub sandbox: SandboxStats,
    pub wall: Duration,
    pub time_to_all_final: Option<Duration>,
    pub deadline: Duration,
    /// How to look a payout up afterwards.
    pub inspect_hint: String,
}

impl SoakReport {
    /// Every broken rule, one line each; empty when the run passed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("{n} {what}"));
            }
        };
        count(self.executed_twice.count, "payout(s) executed more than once in the sandbox");
        count(self.sandbox.double_executions, "double execution(s) counted by the sandbox");
        count(self.lost.count, "payout(s) lost");
        count(self.mismatches.count, "payout(s) where the database and the ledger disagree");
        count(self.not_settled.count, "payout(s) not final by the deadline");
        count(self.sandbox.early_checks, "status quer(ies) sooner than the interval after submit");
        count(
            self.sandbox.checks_too_soon,
            "status quer(ies) sooner than the interval after the previous one",
        );
        if let Some(note) = &self.postgres_restart_skipped
            && !self.allow_no_restart
        {
            v.push(format!("{note} (pass --allow-no-restart to accept that)"));
        }
        v
    }

    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sandbox;
        let c = &self.counters;
        let per_sec = self.enqueued as f64 / self.wall.as_secs_f64().max(0.001);
        writeln!(f, "soak summary")?;
        writeln!(f, "  payouts               {} requested, {} enqueued", self.requested, self.enqueued)?;
        writeln!(
            f,
            "  enqueue               {} repeats after no answer/5xx, {} answered as replays",
            self.enqueue_retries, self.enqueue_replays
        )?;
        writeln!(
            f,
            "  kills (SIGKILL)       {} workers + {} serve = {}",
            c.worker_kills,
            c.serve_kills,
            c.worker_kills + c.serve_kills
        )?;
        writeln!(
            f,
            "  unexpected exits      {} (children that died on their own, restarted)",
            c.unexpected_exits
        )?;
        match &self.postgres_restart_skipped {
            None => writeln!(f, "  postgres restarts     {}", c.postgres_restarts)?,
            Some(note) => writeln!(f, "  postgres restarts     0 -- {note}")?,
        }
        let states: Vec<String> = self.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "  states                {}", states.join(", "))?;
        writeln!(f, "  not final             {}", self.not_settled.count)?;
        writeln!(
            f,
            "  sandbox               {} payout requests, {} executed, {} 5xx, {} timeouts after executing, \
             {} rate limited, {} declined, {} rejected",
            s.payouts_received,
            s.payouts_executed,
            s.errors_5xx,
            s.timeouts_after_execute,
            s.rate_limited,
            s.declined,
            s.rejected
        )?;
        writeln!(
            f,
            "  callbacks             {} sent, {} acknowledged, {} duplicated, {} early, {} dropped, {} failed (retried)",
            s.callbacks_sent,
            s.callbacks_acknowledged,
            s.duplicate_callbacks_sent,
            s.early_callbacks,
            s.callbacks_dropped,
            s.callbacks_failed
        )?;
        writeln!(
            f,
            "  executed twice        {} (sandbox double executions {})",
            self.executed_twice.count, s.double_executions
        )?;
        writeln!(f, "  lost                  {}", self.lost.count)?;
        writeln!(f, "  ledger mismatches     {}", self.mismatches.count)?;
        writeln!(f, "  paid, in review       {}", self.paid_in_review.count)?;
        writeln!(f, "  status queries        {}", s.checks)?;
        writeln!(
            f,
            "  early status queries  {} (sooner than the interval after the first submit)",
            s.early_checks
        )?;
        writeln!(
            f,
            "  too-soon queries      {} (sooner than the interval after the previous query)",
            s.checks_too_soon
        )?;
        writeln!(
            f,
            "  before ingestion      {} (NOT_FOUND for an executed payout)",
            s.checks_before_ingestion
        )?;
        match self.time_to_all_final {
            Some(t) => writeln!(f, "  all final after       {:.1}s", t.as_secs_f64())?,
            None => writeln!(
                f,
                "  all final after       NOT within the deadline of {:.0}s",
                self.deadline.as_secs_f64()
            )?,
        }
        writeln!(f, "  wall time             {:.1}s ({per_sec:.1} payouts/s)", self.wall.as_secs_f64())?;
        let lists = [
            ("executed twice", &self.executed_twice),
            ("lost", &self.lost),
            ("ledger mismatches", &self.mismatches),
            ("not final", &self.not_settled),
            ("paid, in review", &self.paid_in_review),
        ];
        for (title, finding) in lists {
            if !finding.examples.is_empty() {
                writeln!(f, "  {title}:")?;
                for e in &finding.examples {
                    writeln!(f, "    {e}")?;
                }
            }
        }
        if !s.check_spacing_examples.is_empty() {
            writeln!(f, "  early / too-soon status queries (sandbox ids):")?;
            for e in &s.check_spacing_examples {
                writeln!(f, "    {e}")?;
            }
        }
        if !self.review_examples.is_empty() {
            writeln!(f, "  needs_review (examples):")?;
            for e in &self.review_examples {
                writeln!(f, "    {e}")?;
            }
        }
        let violations = self.violations();
        if violations.is_empty() {
            writeln!(f, "PASSED: every payout final, ledger equal to the database, status queries spaced")?;
        } else {
            writeln!(f, "FAILED:")?;
            for v in &violations {
                writeln!(f, "  - {v}")?;
            }
            writeln!(f, "inspect a payout: {}", self.inspect_hint)?;
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    external_id: String,
    state: String,
    provider_reference: Option<String>,
    last_error: Option<String>,
}

/// Compares the database with the ledger after the children are stopped.
pub async fn compare(
    pool: &PgPool,
    sandbox: &SandboxHandle,
    enqueued: &Enqueued,
) -> Result<SoakReport, SoakError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, external_id, state::text AS state, provider_reference, last_error FROM payouts ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    let ledger = sandbox.ledger();
    let mut report =
        SoakReport { enqueued: enqueued.accepted.len(), sandbox: sandbox.stats(), ..SoakReport::default() };

    for external_id in &enqueued.not_accepted {
        report.lost.add(|| format!("{external_id}: the API never accepted it before the deadline"));
    }
    let by_id: HashMap<Uuid, &Row> = rows.iter().map(|r| (r.id, r)).collect();
    for (external_id, id) in &enqueued.accepted {
        match by_id.get(id) {
            None => report
                .lost
                .add(|| format!("payout {id} ({external_id}): accepted by the API, not in the database")),
            Some(row) if row.external_id != *external_id => report
                .lost
                .add(|| format!("payout {id}: accepted for {external_id}, stored as {}", row.external_id)),
            Some(_) => {}
        }
    }
    let ours: HashMap<&Uuid, ()> = enqueued.accepted.values().map(|id| (id, ())).collect();
    for row in &rows {
        if !ours.contains_key(&row.id) {
            report
                .lost
                .add(|| format!("payout {} ({}): in the database, never enqueued", row.id, row.external_id));
        }
    }

    let by_reference: HashMap<&str, &Row> =
        rows.iter().filter_map(|r| r.provider_reference.as_deref().map(|p| (p, r))).collect();
    for entry in &ledger {
        if entry.executions > 0 && !by_reference.contains_key(entry.id.as_str()) {
            report.lost.add(|| {
                format!(
                    "sandbox id {}: executed {} time(s), no payout has this reference",
                    entry.id, entry.executions
                )
            });
        }
    }

    let ledger_by_id: HashMap<&str, &payoutd_sandbox::LedgerEntry> =
        ledger.iter().map(|e| (e.id.as_str(), e)).collect();
    for row in &rows {
        *report.states.entry(row.state.clone()).or_default() += 1;
        let what = |detail: &str| {
            format!(
                "payout {} ({}): {detail}",
                row.id,
                row.provider_reference.as_deref().unwrap_or("no reference")
            )
        };
        if !SETTLED.contains(&row.state.as_str()) {
            report.not_settled.add(|| what(&format!("still {}", row.state)));
        }
        if row.state == "needs_review" && report.review_examples.len() < EXAMPLES {
            report.review_examples.push(what(row.last_error.as_deref().unwrap_or("no last error")));
        }
        let entry = row.provider_reference.as_deref().and_then(|r| ledger_by_id.get(r));
        let executions = entry.map_or(0, |e| e.executions);
        if executions > 1 {
            report.executed_twice.add(|| what(&format!("executed {executions} times, state {}", row.state)));
        }
        let ledger_paid = entry.is_some_and(|e| e.executions > 0 && e.status == LedgerStatus::Paid);
        // Executed and not declined: paid, or still processing and about to be.
        let money_moving = entry.is_some_and(|e| e.executions > 0 && e.status != LedgerStatus::NotPaid);
        match (row.state.as_str(), ledger_paid) {
            ("failed" | "cancelled", false) if money_moving => {
                report.mismatches.add(|| what(&format!("{} here, still PROCESSING in the ledger", row.state)))
            }
            ("paid", false) => report.mismatches.add(|| {
                what(&format!(
                    "paid here, ledger says {}",
                    entry.map_or("nothing (never executed)".to_owned(), |e| format!(
                        "{:?} after {} execution(s)",
                        e.status, e.executions
                    ))
                ))
            }),
            ("failed" | "cancelled", true) => {
                report.mismatches.add(|| what(&format!("{} here, PAID in the ledger", row.state)))
            }
            ("needs_review", true) => {
                report.paid_in_review.add(|| what("PAID in the ledger, parked in needs_review"))
            }
            _ => {}
        }
    }
    Ok(report)
}
