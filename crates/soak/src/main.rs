//! `payoutd-soak`: the command line around [`payoutd_soak::run`]. See crates/soak/README.md.
//! Exit codes: 0 passed, 1 a guarantee was violated, 2 the run could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use payoutd_core::Secret;
use payoutd_sandbox::Faults;
use payoutd_soak::postgres::PostgresChoice;
use payoutd_soak::{SoakConfig, Timings};

#[derive(Debug, Parser)]
#[command(
    name = "payoutd-soak",
    version,
    about = "Soak payoutd: payouts against the faulty sandbox while processes are SIGKILLed"
)]
struct Args {
    /// Payouts to enqueue.
    #[arg(long, default_value_t = 10_000)]
    payouts: usize,
    /// SIGKILLs to deliver (worker and serve processes) before the run may end.
    #[arg(long, default_value_t = 1000)]
    kills: u32,
    /// Worker processes besides `payoutd serve` (2 to 4 is the intended range).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Share of the kills aimed at the `payoutd serve` process (API + callbacks + a worker).
    #[arg(long, default_value_t = 0.05)]
    serve_kill_share: f64,
    /// The payoutd binary [default: `payoutd` next to this binary, e.g. target/release/payoutd].
    #[arg(long)]
    payoutd_bin: Option<PathBuf>,
    /// Child logs and the private Postgres cluster go here [default: `soak` in the target dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Use this Postgres server instead of a private cluster (an admin URL; the soak creates
    /// and drops the database --database-name on it).
    #[arg(long)]
    database_url: Option<String>,
    /// The database the soak (re)creates.
    #[arg(long, default_value = "payoutd_soak")]
    database_name: String,
    /// With --database-url: a shell command that restarts that server (run once mid-run).
    #[arg(long, requires = "database_url")]
    restart_postgres_cmd: Option<String>,
    /// With --database-url and no restart command: pass without the Postgres restart.
    #[arg(long, requires = "database_url")]
    allow_no_restart: bool,
    /// Every payout must be final this many seconds after the start [default: max(1800, payouts / 5)].
    #[arg(long)]
    deadline_secs: Option<u64>,
    /// The status interval (connector) and the sandbox's minimum check spacing.
    #[arg(long, default_value_t = 6.0)]
    status_interval_secs: f64,
    #[arg(long, default_value_t = 1000)]
    request_timeout_ms: u64,
    #[arg(long, default_value_t = 3.0)]
    lease_secs: f64,
    /// The engine's safety margin (PAYOUTD_SAFETY_MARGIN_SECS); status interval > request
    /// timeout + lease + margin.
    #[arg(long, default_value_t = 1.5)]
    safety_margin_secs: f64,
    /// Sandbox: an executed payout is invisible to `check` this long [default: 1.5 status intervals].
    #[arg(long)]
    ingestion_delay_secs: Option<f64>,
    /// Sandbox: submit to final result.
    #[arg(long, default_value_t = 500)]
    processing_delay_ms: u64,
    /// Shortest time between two kills.
    #[arg(long, default_value_t = 150)]
    kill_min_ms: u64,
    /// Longest time between two kills.
    #[arg(long, default_value_t = 750)]
    kill_max_ms: u64,
    /// Spread the enqueueing over this many seconds [default: 70% of the expected kill phase].
    #[arg(long)]
    enqueue_span_secs: Option<f64>,
    /// Enqueue requests in flight at once.
    #[arg(long, default_value_t = 32)]
    enqueue_concurrency: usize,
    /// PAYOUTD_CONCURRENCY of every child.
    #[arg(long, default_value_t = 32)]
    child_concurrency: usize,
    /// RUST_LOG of the children.
    #[arg(long, default_value = "warn")]
    child_log: String,
    /// Extra environment for the children, NAME=VALUE (repeatable), e.g. a safety margin.
    #[arg(long = "child-env", value_parser = parse_pair)]
    child_env: Vec<(String, String)>,
    /// Fault overrides as JSON, merged over the soak's defaults, e.g. '{"drop_callback_rate":0.5}'.
    #[arg(long)]
    faults: Option<String>,
    /// Seed of the soak's choices and the sandbox's faults [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn secs(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn config(args: Args) -> anyhow::Result<SoakConfig> {
    let exe_dir = std::env::current_exe()
        .context("locating this binary")?
        .parent()
        .map(PathBuf::from)
        .context("this binary has no directory")?;
    let mut t = Timings::full(args.payouts, args.kills);
    t.status_interval = secs("status-interval-secs", args.status_interval_secs)?;
    t.request_timeout = Duration::from_millis(args.request_timeout_ms);
    t.lease = secs("lease-secs", args.lease_secs)?;
    t.safety_margin = secs("safety-margin-secs", args.safety_margin_secs)?;
    t.ingestion_delay = match args.ingestion_delay_secs {
        Some(v) => secs("ingestion-delay-secs", v)?,
        None => t.status_interval.mul_f64(1.5),
    };
    t.processing_delay = Duration::from_millis(args.processing_delay_ms);
    t.kill_interval = (Duration::from_millis(args.kill_min_ms), Duration::from_millis(args.kill_max_ms));
    t.enqueue_span = match args.enqueue_span_secs {
        Some(v) => secs("enqueue-span-secs", v)?,
        None => ((t.kill_interval.0 + t.kill_interval.1) / 2 * args.kills).mul_f64(0.7),
    };
    if let Some(d) = args.deadline_secs {
        t.deadline = Duration::from_secs(d);
    }
    let faults = merged_faults(SoakConfig::default_faults(&t), args.faults.as_deref())?;
    let work_dir = args.work_dir.unwrap_or_else(|| exe_dir.join("..").join("soak"));
    let postgres = match args.database_url {
        Some(url) => PostgresChoice::External {
            admin_url: Secret::new(url),
            database: args.database_name,
            restart_command: args.restart_postgres_cmd,
            allow_no_restart: args.allow_no_restart,
        },
        None => PostgresChoice::Embedded { data_dir: work_dir.join("pg"), database: args.database_name },
    };
    Ok(SoakConfig {
        payouts: args.payouts,
        kills: args.kills,
        workers: args.workers,
        serve_kill_share: args.serve_kill_share,
        payoutd_bin: args.payoutd_bin.unwrap_or_else(|| exe_dir.join("payoutd")),
        work_dir,
        postgres,
        timings: t,
        faults,
        enqueue_concurrency: args.enqueue_concurrency,
        child_concurrency: args.child_concurrency,
        child_log: args.child_log,
        child_env: args.child_env,
        seed: args.seed.unwrap_or_else(rand::random),
        progress: !args.quiet,
    })
}

/// The soak's default faults with the fields of `json` replaced.
fn merged_faults(defaults: Faults, json: Option<&str>) -> anyhow::Result<Faults> {
    let Some(json) = json else { return Ok(defaults) };
    let overrides: serde_json::Value = serde_json::from_str(json).context("--faults must be JSON")?;
    let serde_json::Value::Object(overrides) = overrides else {
        anyhow::bail!("--faults must be a JSON object of fault settings");
    };
    let mut merged = serde_json::to_value(defaults)?;
    if let serde_json::Value::Object(fields) = &mut merged {
        for (name, value) in overrides {
            anyhow::ensure!(fields.contains_key(&name), "--faults: unknown fault {name:?}");
            fields.insert(name, value);
        }
    }
    serde_json::from_value(merged).context("--faults has a value of the wrong type")
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = (|| -> anyhow::Result<_> {
        let config = config(args)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        Ok(runtime.block_on(payoutd_soak::run(config))?)
    })();
    match outcome {
        Ok(report) => {
            println!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("payoutd-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
