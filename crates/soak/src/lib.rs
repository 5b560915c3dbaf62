//! The soak run: many payouts through the real `payoutd` binary against the 8B partner sandbox
//! with every fault on, while worker processes are `kill -9`ed at random (and restarted), the
//! API process now and then too, and Postgres is restarted once in the middle. Afterwards every
//! payout must be final and the sandbox's ledger must agree with the database: nothing executed
//! twice, nothing lost, no status query sooner than the interval.
//!
//! [`run`] is the whole run; the `payoutd-soak` binary is a command line around it and the
//! test suite calls it with a small configuration (`tests/soak_small.rs`).
//!
//! - [`postgres`]: the database under test: a private cluster of its own (so it can be
//!   restarted without disturbing anyone) or a given server.
//! - [`children`]: the `payoutd serve` / `payoutd worker` child processes.
//! - [`enqueue`]: payouts over the HTTP API, retried under the same Idempotency-Key.
//! - [`verify`]: the final comparison of ledger and database, and the [`SoakReport`].

pub mod children;
pub mod enqueue;
pub mod postgres;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use payoutd_core::Secret;
use payoutd_sandbox::{Faults, Sandbox, SandboxConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use crate::children::{ChildKind, Fleet};
use crate::enqueue::Enqueuer;
use crate::postgres::{PostgresChoice, SoakDatabase};
pub use crate::verify::SoakReport;

/// The service id the sandbox and the children agree on.
pub const SERVICE_ID: &str = "soak-service";

/// Errors that stop a soak run before it can judge anything. Violations of the guarantees are
/// not errors: they are in the [`SoakReport`].
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("invalid soak settings: {0}")]
    Settings(String),
    #[error("the payoutd binary {} does not exist; build it first: cargo build --release -p payoutd", .0.display())]
    MissingBinary(PathBuf),
    #[error("Postgres: {0}")]
    Postgres(#[from] payoutd::local_postgres::LocalPostgresError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database: {0}")]
    Store(#[from] payoutd_store::StoreError),
    #[error("restarting Postgres with `{command}` failed: {reason}")]
    RestartCommand { command: String, reason: String },
    #[error("sandbox: {0}")]
    Sandbox(#[from] payoutd_sandbox::SandboxError),
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Child(String),
    #[error("enqueue: {0}")]
    Enqueue(String),
}

/// The timings of one run. They have to satisfy payoutd's own start-up rule,
/// `status_interval > request_timeout + lease + safety_margin`, or the children refuse to
/// start.
#[derive(Debug, Clone)]
pub struct Timings {
    /// The connector's status interval and the sandbox's `min_check_delay`.
    pub status_interval: Duration,
    pub request_timeout: Duration,
    pub lease: Duration,
    /// The engine's safety margin (`PAYOUTD_SAFETY_MARGIN_SECS`): added to request timeout +
    /// lease wherever a stalled request must be past reaching the provider.
    pub safety_margin: Duration,
    /// Sandbox: submit to final result.
    pub processing_delay: Duration,
    /// Sandbox: how long an executed payout stays invisible to `check`.
    pub ingestion_delay: Duration,
    /// A kill comes a uniformly random time in this range after the previous one.
    pub kill_interval: (Duration, Duration),
    /// How long Postgres stays down during its restart.
    pub postgres_downtime: Duration,
    /// Spread the enqueueing over this long (zero: as fast as the API takes them). Pacing keeps
    /// payouts in flight during the whole kill phase instead of only its first minute.
    pub enqueue_span: Duration,
    /// Every payout final within this (measured from the start of the run), else a violation.
    pub deadline: Duration,
}

impl Timings {
    /// The production-shaped defaults of the full soak: request timeout 1 s, lease 3 s, safety
    /// margin 1.5 s, status interval 6 s (payoutd refuses one not longer than request timeout +
    /// lease + margin), ingestion delay 1.5 intervals (so the first status query of a payout
    /// that was executed sees NOT_FOUND), kills 0.15-0.75 s apart.
    pub fn full(payouts: usize, kills: u32) -> Self {
        let kill_interval = (Duration::from_millis(150), Duration::from_millis(750));
        let mean_kill = (kill_interval.0 + kill_interval.1) / 2;
        Self {
            status_interval: Duration::from_secs(6),
            request_timeout: Duration::from_millis(1000),
            lease: Duration::from_secs(3),
            safety_margin: Duration::from_millis(1500),
            processing_delay: Duration::from_millis(500),
            ingestion_delay: Duration::from_secs(9),
            kill_interval,
            postgres_downtime: Duration::from_secs(2),
            enqueue_span: (mean_kill * kills).mul_f64(0.7),
            deadline: Duration::from_secs(1800).max(Duration::from_millis(200) * payouts as u32),
        }
    }
}

/// Everything one soak run needs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub payouts: usize,
    /// SIGKILLs to deliver (workers and the API process together) before the run may end.
    pub kills: u32,
    /// Worker processes besides `payoutd serve` (which runs a worker too).
    pub workers: usize,
    /// Share of kills aimed at the `payoutd serve` process instead of a worker: every
    /// `round(1 / share)`-th kill (none at 0).
    pub serve_kill_share: f64,
    pub payoutd_bin: PathBuf,
    /// Child logs go to `<work_dir>/logs`.
    pub work_dir: PathBuf,
    pub postgres: PostgresChoice,
    pub timings: Timings,
    pub faults: Faults,
    /// Enqueue requests in flight at once.
    pub enqueue_concurrency: usize,
    /// PAYOUTD_CONCURRENCY of each child.
    pub child_concurrency: usize,
    /// RUST_LOG of the children.
    pub child_log: String,
    /// Extra environment for the children (e.g. a safety-margin setting).
    pub child_env: Vec<(String, String)>,
    /// Seed of the soak's own random choices and of the sandbox's faults.
    pub seed: u64,
    /// Progress lines on stderr while running.
    pub progress: bool,
}

impl SoakConfig {
    /// The faults of the full soak: every kind on, at rates that leave the run about
    /// payouts rather than waiting (each 429 pauses the whole fleet for a second).
    pub fn default_faults(timings: &Timings) -> Faults {
        Faults {
            max_latency: Duration::from_millis(50),
            error_5xx_rate: 0.03,
            timeout_after_execute_rate: 0.03,
            // Longer than the request timeout, so the client really times out.
            timeout_delay: timings.request_timeout + Duration::from_millis(500),
            decline_rate: 0.03,
            reject_rate: 0.01,
            duplicate_callback_rate: 0.10,
            early_callback_rate: 0.05,
            drop_callback_rate: 0.15,
            rate_limit_rate: 0.001,
            ingestion_delay: timings.ingestion_delay,
        }
    }

    fn validate(&self) -> Result<(), SoakError> {
        let t = &self.timings;
        let bad = |m: &str| Err(SoakError::Settings(m.to_owned()));
        if self.payouts == 0 {
            return bad("at least one payout");
        }
        if self.workers == 0 {
            return bad("at least one worker process besides serve");
        }
        if t.kill_interval.0 > t.kill_interval.1 {
            return bad("the kill interval's minimum is above its maximum");
        }
        if t.status_interval <= t.request_timeout + t.lease + t.safety_margin {
            return bad("the status interval must be longer than request timeout + lease + safety margin");
        }
        if t.ingestion_delay >= t.status_interval * 2 {
            // Two NOT_FOUNDs one interval apart are what allows a resubmit: an ingestion delay
            // that long makes a resubmit of an executed payout unavoidable for any client.
            return bad("the ingestion delay must stay below two status intervals");
        }
        if !(0.0..=1.0).contains(&self.serve_kill_share) {
            return bad("the serve kill share must be in [0, 1]");
        }
        if !self.payoutd_bin.is_file() {
            return Err(SoakError::MissingBinary(self.payoutd_bin.clone()));
        }
        Ok(())
    }
}

/// Live counters of the run, for progress lines and the report.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub worker_kills: u32,
    pub serve_kills: u32,
    /// Children that exited without being killed (e.g. on a database outage), restarted.
    pub unexpected_exits: u32,
    pub postgres_restarts: u32,
}

/// Runs one soak: sets up Postgres, the sandbox and the children, enqueues, kills, restarts
/// Postgres once, waits for every payout to be final (or the deadline), and compares.
pub async fn run(config: SoakConfig) -> Result<SoakReport, SoakError> {
    config.validate()?;
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let say = |line: String| {
        if config.progress {
            eprintln!("[soak {:>6.1}s] {line}", started.elapsed().as_secs_f64());
        }
    };
    say(format!(
        "{} payouts, {} kills, {} workers + serve, seed {}",
        config.payouts, config.kills, config.workers, config.seed
    ));

    let db = SoakDatabase::prepare(&config.postgres).await?;
    say(format!("database ready: {}", db.describe()));
    let pool = db.pool().clone();

    // The API port first: the sandbox needs the callback address, the serve child the port.
    let api_addr = children::free_local_addr()?;
    let api = format!("http://{api_addr}");
    let secret = Secret::new(format!("soak-{}", uuid::Uuid::new_v4().simple()));
    let t = &config.timings;
    let mut sandbox_config = SandboxConfig::new(SERVICE_ID, secret.clone());
    sandbox_config.callback_url = Some(format!("{api}/v1/callbacks/8b_partner"));
    sandbox_config.initial_balance = Decimal::from(1_000_000_000_000_000_i64);
    sandbox_config.processing_delay = t.processing_delay;
    // Redeliveries at 0.5 s, 1.5 s, 3 s, ...: a callback that hit a killed API lands soon after.
    sandbox_config.callback_schedule_scale = 0.05;
    sandbox_config.min_check_delay = t.status_interval;
    sandbox_config.seed = config.seed;
    sandbox_config.faults = config.faults.clone();
    let sandbox = Sandbox::start(sandbox_config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    say(format!("sandbox at {}", sandbox.base_url()));

    let env = children::ChildEnv {
        database_url: db.child_url().clone(),
        listen: api_addr,
        sandbox_url: sandbox.base_url(),
        secret,
        timings: t.clone(),
        concurrency: config.child_concurrency,
        log: config.child_log.clone(),
        extra: config.child_env.clone(),
    };
    let logs = config.work_dir.join("logs");
    let mut fleet = Fleet::start(&config.payoutd_bin, &logs, env, config.workers).await?;
    fleet.wait_ready(&api, Duration::from_secs(60)).await?;
    say(format!("payoutd serve at {api} and {} workers running; logs in {}", config.workers, logs.display()));

    let token = payoutd_store::api_tokens::create(&pool, "soak", "soak", &["*".to_owned()], None).await?;
    let enqueuer = Enqueuer::start(
        api.clone(),
        token.token,
        config.payouts,
        config.enqueue_concurrency,
        t.enqueue_span,
        started + t.deadline,
    );

    let mut counters = Counters::default();
    let mut restart_note: Option<String> = None;
    let mut restarted = false;
    let mut last_progress = Instant::now();
    let mut next_kill = Instant::now() + pick(&mut rng, t.kill_interval);
    let mut open = i64::MAX;
    let mut last_open_query = Instant::now() - Duration::from_secs(10);
    // Spread evenly rather than drawn, so that even a short run kills serve.
    let serve_every =
        (config.serve_kill_share > 0.0).then(|| (1.0 / config.serve_kill_share).round().max(1.0) as u32);
    let finished_at = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fleet.supervise(&mut counters).await?;
        let now = Instant::now();
        let killing = counters.worker_kills + counters.serve_kills < config.kills;
        if killing && now >= next_kill {
            let nth = counters.worker_kills + counters.serve_kills + 1;
            let kind = if serve_every.is_some_and(|every| nth % every == 0) {
                ChildKind::Serve
            } else {
                ChildKind::Worker
            };
            fleet.kill_one(kind, &mut rng, &mut counters).await?;
            next_kill = now + pick(&mut rng, t.kill_interval);
        }
        if !restarted && counters.worker_kills + counters.serve_kills >= config.kills / 2 {
            restarted = true;
            say("restarting Postgres".to_owned());
            match db.restart(t.postgres_downtime).await? {
                Ok(()) => counters.postgres_restarts += 1,
                Err(note) => {
                    say(format!("NOTE: {note}"));
                    restart_note = Some(note);
                }
            }
            say("Postgres is back".to_owned());
        }
        if now.duration_since(last_open_query) >= Duration::from_secs(1) {
            last_open_query = now;
            // A failed count (Postgres restarting) just waits for the next round.
            if let Ok(n) = verify::open_count(&pool).await {
                open = n;
            }
        }
        let enqueued = enqueuer.done();
        if now.duration_since(last_progress) >= Duration::from_secs(5) {
            last_progress = now;
            say(format!(
                "enqueued {}/{}  open {}  kills {} workers + {} serve  unexpected exits {}  pg restarts {}",
                enqueuer.accepted(),
                config.payouts,
                if open == i64::MAX { "?".to_owned() } else { open.to_string() },
                counters.worker_kills,
                counters.serve_kills,
                counters.unexpected_exits,
                counters.postgres_restarts
            ));
        }
        if !killing && restarted && enqueued && open == 0 {
            break Some(now);
        }
        if now >= started + t.deadline {
            say("deadline reached".to_owned());
            break None;
        }
    };
    let enqueue = enqueuer.finish().await?;
    say("stopping the children".to_owned());
    fleet.stop_all().await;
    // A submit still on its way (latency, held answer) would land in the ledger now.
    tokio::time::sleep(config.faults.max_latency + Duration::from_secs(1)).await;
    let mut report = verify::compare(&pool, &sandbox, &enqueue).await?;
    sandbox.shutdown().await?;
    report.requested = config.payouts;
    report.enqueue_retries = enqueue.retries;
    report.enqueue_replays = enqueue.replays;
    report.counters = counters;
    report.postgres_restart_skipped = restart_note;
    report.allow_no_restart = config.postgres.allows_no_restart();
    report.wall = started.elapsed();
    report.time_to_all_final = finished_at.map(|at| at.duration_since(started));
    report.deadline = t.deadline;
    report.inspect_hint = db.inspect_hint();
    pool.close().await;
    if report.passed() {
        db.finish().await;
    }
    Ok(report)
}

fn pick(rng: &mut StdRng, (min, max): (Duration, Duration)) -> Duration {
    if max <= min {
        return min;
    }
    let span = u64::try_from((max - min).as_micros()).unwrap_or(u64::MAX);
    min + Duration::from_micros(rng.random_range(0..=span))
}
