//! Figures 1 and 3: N payouts already enqueued, workers started, time until every one is
//! final. Figure 1 goes through the in-process 8B partner sandbox over HTTP (zero latency, no
//! faults, callbacks on); figure 3 through the instant connector, so what is left is the
//! engine's own cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_core::Secret;
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_sandbox::{Sandbox, SandboxConfig};
use rust_decimal::Decimal;
use sqlx::postgres::PgConnectOptions;

use super::instant::{INSTANT, Instant as InstantConnector};
use super::meter::{self, Cost};
use super::setup::{self, Api, BenchDb, Workers};
use super::{BenchArgs, Row};

/// What one drain measured.
struct Drain {
    payouts: u64,
    took: Duration,
    cost: Cost,
    p50: f64,
    p99: f64,
    transitions: i64,
    unfinished: i64,
    not_paid: i64,
}

/// Runs the workers over the payouts already in `db` until all are final.
async fn drain(
    db: &BenchDb,
    connectors: &payoutd_providers::Connectors,
    args: &BenchArgs,
) -> anyhow::Result<Drain> {
    let payouts = args.payouts;
    let configs =
        (0..args.workers).map(|n| setup::engine(n, args.concurrency, args.calls_per_second)).collect();
    let pg = meter::PgCpu::start(&db.name);
    let before = meter::snapshot(&db.pool, &pg).await?;
    let events_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payout_events").fetch_one(&db.pool).await?;
    let started = Instant::now();
    let workers = Workers::start(db, connectors, configs, args.pool).await?;
    let finished = setup::drain(&db.pool, args.drain_limit()).await?;
    let took = started.elapsed();
    workers.stop().await;
    let after = meter::snapshot(&db.pool, &pg).await?;
    let mut cost = before.to(&after);
    cost.elapsed = took;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM payout_events").fetch_one(&db.pool).await?;
    let (p50, p99) = setup::time_to_final(&db.pool).await?;
    let (paid, other) = setup::outcomes(&db.pool).await?;
    Ok(Drain {
        payouts,
        took,
        cost,
        p50,
        p99,
        transitions: events - events_before,
        unfinished: if finished { 0 } else { setup::open_payouts(&db.pool).await? },
        not_paid: (payouts as i64 - paid).min(other),
    })
}

/// Figure 1: through the sandbox, callbacks on.
pub async fn end_to_end(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "end_to_end").await?;
    setup::insert_pending(&db.pool, "8b_partner", args.payouts).await?;
    // The API first: the sandbox needs its callback address.
    let api_pool = db.pool(args.pool).await?;
    let secret = Secret::new(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    // Timings within the production constraint (status interval > timeout + lease + margin);
    // callbacks finish every payout long before its first status query would be due.
    let status_interval = Duration::from_secs(30);
    let mut sandbox_config = SandboxConfig::new("bench-service", secret.clone());
    sandbox_config.initial_balance = Decimal::from(1_000_000_000_000_i64);
    sandbox_config.processing_delay = Duration::ZERO;
    sandbox_config.callback_schedule_scale = 0.01;
    sandbox_config.min_check_delay = status_interval;
    // Connectors need the sandbox's address, the sandbox the API's: bind the API's port first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_base = format!("http://{}", listener.local_addr()?);
    sandbox_config.callback_url = Some(format!("{api_base}/v1/callbacks/8b_partner"));
    let sandbox = Sandbox::start(sandbox_config, "127.0.0.1:0".parse()?).await?;
    let mut partner = EightBPartnerConfig::new(sandbox.base_url(), "bench-service", secret);
    partner.request_timeout = Duration::from_secs(2);
    partner.min_status_interval = status_interval;
    let connectors = setup::only(Arc::new(EightBPartner::new(partner)?));
    let api = Api::serve_on(listener, api_pool, &connectors);

    let d = drain(&db, &connectors, args).await?;
    api.stop().await;
    let executed_twice = sandbox.ledger().iter().filter(|e| e.executions > 1).count();
    sandbox.shutdown().await?;
    db.drop_now().await?;
    // Two provider calls per payout take a permit: the balance check and the submit.
    let calls = 2 * d.payouts;
    let mut notes = format!(
        "{} transitions; rate-limit row writes per provider call {:.2}",
        d.transitions,
        d.cost.rate_limit_writes as f64 / calls as f64
    );
    notes.push_str(&problems(&d));
    if executed_twice > 0 {
        notes.push_str(&format!("; EXECUTED TWICE: {executed_twice}"));
    }
    Ok(d.row("1 end to end, zero-latency sandbox", notes))
}

/// Figure 3: the instant connector, no HTTP.
pub async fn engine_floor(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "engine_floor").await?;
    setup::insert_pending(&db.pool, INSTANT, args.payouts).await?;
    let connectors = setup::only(Arc::new(InstantConnector {
        paid_on_submit: true,
        status_interval: Duration::from_secs(30),
        checks: None,
    }));
    let d = drain(&db, &connectors, args).await?;
    db.drop_now().await?;
    let secs = d.took.as_secs_f64();
    let calls = 2 * d.payouts;
    let mut notes = format!(
        "{:.0} transitions/s; rate-limit row writes per provider call {:.2}",
        d.transitions as f64 / secs,
        d.cost.rate_limit_writes as f64 / calls as f64
    );
    notes.push_str(&problems(&d));
    Ok(d.row("3 engine floor, instant connector", notes))
}

impl Drain {
    /// The table row of a drain: throughput, time to final and cost per payout.
    fn row(&self, figure: &'static str, notes: String) -> Row {
        Row {
            figure,
            result: format!(
                "{:.0} payouts/s; to final p50 {:.0} ms p99 {:.0} ms",
                self.rate(),
                self.p50 * 1000.0,
                self.p99 * 1000.0
            ),
            rate: Some(self.rate()),
            ratio: None,
            per: Some(self.cost.per(self.payouts)),
            notes,
        }
    }

    /// Payouts finished per second (all of them, unless the time limit cut the run short).
    fn rate(&self) -> f64 {
        (self.payouts as i64 - self.unfinished).max(0) as f64 / self.took.as_secs_f64()
    }
}

fn problems(d: &Drain) -> String {
    let mut s = String::new();
    if d.unfinished > 0 {
        s.push_str(&format!("; UNFINISHED at the time limit: {}", d.unfinished));
    }
    if d.not_paid > 0 {
        s.push_str(&format!("; not paid: {}", d.not_paid));
    }
    s
}
