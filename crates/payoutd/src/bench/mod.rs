//! `payoutd bench`: one table of figures of the money path on this machine, each with what it
//! cost (CPU of payoutd and of Postgres, transactions and WAL bytes per payout), and the
//! machine's commit capacity measured in the same run, so that throughputs can be read as
//! ratios to it (absolute figures on a shared machine swing with the hour).
//!
//! Every figure runs on a database of its own, created and dropped here. One file per figure:
//! `pipeline` (1 end to end, 3 engine floor), `enqueue` (2), `pickup` (4), `claim` (5),
//! `rss` (6); `capacity` measures the commit capacity, `meter` reads /proc and the statistics.

mod capacity;
mod claim;
mod enqueue;
mod instant;
mod meter;
mod pickup;
mod pipeline;
mod rss;
mod setup;

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::database::{self, Fallback};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Payouts of the end-to-end and engine-floor figures.
    #[arg(long, default_value_t = 20_000)]
    payouts: u64,
    /// Workers (each with its own pool and lease owner id) of the pipeline figures.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Steps in flight per worker.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Connections of each worker's pool (and of the API's).
    #[arg(long, default_value_t = 12)]
    pool: u32,
    /// The provider budget shared by the workers (calls per second); high, so that it is not
    /// what limits the figures.
    #[arg(long, default_value_t = 20_000)]
    calls_per_second: u32,
    /// Requests of the HTTP enqueue figure.
    #[arg(long, default_value_t = 10_000)]
    enqueue_requests: u64,
    /// Samples of the pickup-latency figure.
    #[arg(long, default_value_t = 200)]
    pickup_samples: u64,
    /// Final payouts in the table for the claim-cost figure.
    #[arg(long, default_value_t = 1_000_000)]
    final_rows: u64,
    /// Payouts waiting at the provider in the RSS figure.
    #[arg(long, default_value_t = 10_000)]
    waiting: u64,
    /// Seconds the RSS figure polls them.
    #[arg(long, default_value_t = 15)]
    rss_secs: u64,
    /// Seconds of each commit-capacity measurement (one before the figures, one after).
    #[arg(long, default_value_t = 3)]
    capacity_secs: u64,
    /// Only these figures (1-6), e.g. `--only 1,3`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
}

impl BenchArgs {
    /// The longest a pipeline figure waits for its payouts to finish.
    fn drain_limit(&self) -> Duration {
        Duration::from_secs(240)
    }

    fn wants(&self, figure: u8) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

/// One line of the table.
pub struct Row {
    figure: &'static str,
    result: String,
    /// A throughput (per second) to show as a ratio to the commit capacity.
    rate: Option<f64>,
    /// A ratio of the figure's own (claim cost).
    ratio: Option<f64>,
    per: Option<meter::PerUnit>,
    notes: String,
}

pub async fn run(config: &crate::config::Config, args: BenchArgs) -> anyhow::Result<()> {
    let source = database::source(config, Fallback::Embedded)?;
    let target = database::resolve(config, source, None).await?;
    let result = run_on(&target.options, &args).await;
    if let Some(private) = target.cluster.filter(|p| p.started_now) {
        let pg = private.cluster;
        let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
    }
    result
}

async fn run_on(admin: &sqlx::postgres::PgConnectOptions, args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    database::check_reachable(admin, database::STARTUP_CONNECT_TIMEOUT).await?;
    let cap_db = setup::BenchDb::create(admin, "capacity").await?;
    let capacity_secs = Duration::from_secs(args.capacity_secs.max(1));
    let first = capacity::measure(&cap_db, capacity_secs).await.context("commit capacity")?;
    eprintln!("commit capacity {first:.0}/s; running the figures");

    let mut rows = Vec::new();
    // The memory figure first, before other figures have grown the heap.
    let order: [(u8, &str); 6] =
        [(6, "rss"), (4, "pickup"), (5, "claim"), (2, "enqueue"), (3, "engine floor"), (1, "end to end")];
    for (figure, name) in order {
        if !args.wants(figure) {
            continue;
        }
        eprintln!("figure {figure} ({name})...");
        let row = match figure {
            1 => pipeline::end_to_end(admin, args).await,
            2 => enqueue::run(admin, args).await,
            3 => pipeline::engine_floor(admin, args).await,
            4 => pickup::run(admin, args).await,
            5 => claim::run(admin, args).await,
            _ => rss::run(admin, args).await,
        }
        .with_context(|| format!("figure {figure} ({name})"))?;
        rows.push((figure, row));
    }
    let second = capacity::measure(&cap_db, capacity_secs).await.context("commit capacity")?;
    cap_db.drop_now().await?;
    rows.sort_by_key(|(f, _)| *f);
    let capacity = (first + second) / 2.0;
    print_table(args, capacity, first, second, &rows);
    println!(
        "load average (1 min) {load_before} at the start, {} at the end: other work on the machine skews the \
         absolute figures; compare ratios",
        load_average()
    );
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The 1-minute load average, as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn print_table(args: &BenchArgs, capacity: f64, first: f64, second: f64, rows: &[(u8, Row)]) {
    println!(
        "payoutd bench: {} payouts, {} workers x {} in flight, {} CPUs",
        args.payouts,
        args.workers,
        args.concurrency,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "commit capacity (pgbench -N shape, 16 clients): {capacity:.0} commits/s (before {first:.0}, after {second:.0})"
    );
    println!();
    println!(
        "{:<36} {:<58} {:>8} {:>9} {:>9} {:>7} {:>8}",
        "figure", "result", "x cap", "own ms", "pg ms", "xact", "WAL B"
    );
    for (_, r) in rows {
        let ratio = match (r.rate, r.ratio) {
            (Some(rate), _) => format!("{:.3}x", rate / capacity),
            (None, Some(ratio)) => format!("={ratio:.2}"),
            _ => "-".to_owned(),
        };
        let (own, pg, xact, wal) = match &r.per {
            Some(p) => (
                format!("{:.3}", p.own_ms),
                format!("{:.3}", p.pg_ms),
                format!("{:.2}", p.xacts),
                format!("{:.0}", p.wal_bytes),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<36} {:<58} {:>8} {:>9} {:>9} {:>7} {:>8}",
            r.figure, r.result, ratio, own, pg, xact, wal
        );
        println!("{:<36} {}", "", r.notes);
    }
    println!();
    println!(
        "x cap: throughput / commit capacity (claim row: its own ratio, full / empty). own ms, pg ms: CPU of \
         payoutd and of Postgres per payout (per request for figure 2); xact: transactions per payout \
         (pg_stat_database, reads included); WAL B: WAL bytes per payout (cluster-wide)."
    );
}
