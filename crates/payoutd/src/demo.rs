//! `payoutd demo`: the whole system on one machine. An in-process 8B partner sandbox with
//! faults switched on, the API, two workers, and a few thousand payouts enqueued over HTTP;
//! a progress bar while they run, and a summary that checks the sandbox's ledger against the
//! database (every paid payout executed exactly once, nothing executed twice).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use payoutd_core::Secret;
use payoutd_engine::{EngineConfig, Worker};
use payoutd_providers::Connectors;
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_sandbox::{Faults, Sandbox, SandboxConfig};
use payoutd_store::{api_tokens, stats};
use rust_decimal::Decimal;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::database::{self, Fallback};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many payouts to run.
    #[arg(long, default_value_t = 3000)]
    payouts: usize,
    /// Worker instances (each with its own lease owner id) on the one database.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Steps in flight per worker.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Run with no faults injected.
    #[arg(long)]
    no_faults: bool,
    /// Leave the private Postgres running after the demo (when the demo started it). By
    /// default a cluster the demo started is stopped when it ends, even on failure or Ctrl-C.
    #[arg(long)]
    keep_postgres: bool,
}

/// The demo's database, recreated on every run.
const DEMO_DATABASE: &str = "payoutd_demo";

pub async fn run(config: &crate::config::Config, args: DemoArgs) -> anyhow::Result<()> {
    // Zero setup: without a database URL the demo uses the private cluster unasked.
    let source = database::source(config, Fallback::Embedded)?;
    let target = database::resolve(config, source, None).await?;
    if let Some(private) = &target.cluster {
        database::announce(config, private, !args.keep_postgres);
    }
    let keep_postgres = args.keep_postgres;
    let result = tokio::select! {
        result = run_on(target.options, args) => result,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("waiting for Ctrl-C")?;
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    // Stop only a cluster this run started: one found running belongs to someone else.
    if let Some(private) = target.cluster.filter(|p| p.started_now) {
        if keep_postgres {
            eprintln!(
                "payoutd: the private Postgres keeps running; stop it with: {}",
                database::stop_command(&config.data_dir)
            );
        } else {
            let pg = private.cluster;
            match tokio::task::spawn_blocking(move || pg.stop()).await {
                Ok(Ok(())) => eprintln!("payoutd: stopped the private Postgres the demo started"),
                Ok(Err(e)) => eprintln!("payoutd: could not stop the private Postgres: {e}"),
                Err(e) => eprintln!("payoutd: could not stop the private Postgres: {e}"),
            }
        }
    }
    result
}

async fn run_on(options: PgConnectOptions, args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "payoutd demo: {} payouts, {} workers, faults {}",
        args.payouts,
        args.workers,
        if args.no_faults { "off" } else { "on" }
    );

    let pool = fresh_database(options).await?;
    let secret = Secret::new(format!("demo-secret-{}", uuid::Uuid::new_v4().simple()));
    // Demo timings, shortened within the production constraint: status interval (4 s) longer
    // than request timeout (0.8 s) + lease (2 s) + safety margin (0.5 s).
    let status_interval = Duration::from_secs(4);

    // The API listener first: the sandbox needs its callback address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let mut sandbox_config = SandboxConfig::new("demo-service", secret.clone());
    sandbox_config.callback_url = Some(format!("{api}/v1/callbacks/8b_partner"));
    sandbox_config.initial_balance = Decimal::from(1_000_000_000_000_i64);
    sandbox_config.processing_delay = Duration::from_millis(300);
    sandbox_config.callback_schedule_scale = 0.02;
    sandbox_config.min_check_delay = status_interval;
    if !args.no_faults {
        sandbox_config.faults = demo_faults();
    }
    let sandbox = Sandbox::start(sandbox_config, "127.0.0.1:0".parse()?).await?;

    let mut partner = EightBPartnerConfig::new(sandbox.base_url(), "demo-service", secret);
    partner.request_timeout = Duration::from_millis(800);
    partner.min_status_interval = status_interval;
    let connectors = Connectors::new().with(Arc::new(EightBPartner::new(partner)?));

    let shutdown = CancellationToken::new();
    let mut services = tokio::task::JoinSet::new();
    {
        let state = payoutd_server::AppState::new(pool.clone(), connectors.clone());
        let stop = shutdown.clone();
        services.spawn(async move {
            let _ = payoutd_server::serve(listener, state, async move { stop.cancelled().await }).await;
        });
    }
    for n in 0..args.workers.max(1) {
        let engine = EngineConfig {
            worker_id: format!("demo-worker-{n}"),
            concurrency: args.concurrency.max(1),
            lease: Duration::from_secs(2),
            heartbeat_every: Duration::from_millis(500),
            safety_margin: Duration::from_millis(500),
            idle_poll: Duration::from_millis(200),
            provider_calls_per_second: 2000,
            call_retry: payoutd_core::RetryPolicy {
                base: Duration::from_millis(200),
                max_delay: Duration::from_secs(3),
                max_attempts: 10,
            },
            check_retry: payoutd_core::RetryPolicy {
                base: Duration::from_millis(200),
                max_delay: Duration::from_secs(3),
                max_attempts: 5,
            },
            ..EngineConfig::default()
        };
        let worker = Worker::new(pool.clone(), connectors.clone(), engine).context("demo engine settings")?;
        let stop = shutdown.clone();
        services.spawn(async move {
            worker.run(stop).await;
        });
    }

    let token = api_tokens::create(&pool, "demo", "demo", &["*".to_owned()], None).await?;
    let enqueue_started = Instant::now();
    enqueue_all(&api, token.token.expose(), args.payouts).await?;
    let enqueue_secs = enqueue_started.elapsed().as_secs_f64();

    let bar = ProgressBar::new(args.payouts as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} final  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    // Progress from the index of open payouts only; the whole-table summary runs once, at the end.
    loop {
        let open = stats::open_by_state(&pool).await?;
        let left: i64 = open.iter().map(|(_, n)| n).sum();
        bar.set_position((args.payouts as u64).saturating_sub(left as u64));
        bar.set_message(open.iter().map(|(state, n)| format!("{state} {n}")).collect::<Vec<_>>().join("  "));
        if left == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let summary = stats::summary(&pool).await?;
    bar.finish();
    let run_secs = enqueue_started.elapsed().as_secs_f64();

    shutdown.cancel();
    while services.join_next().await.is_some() {}
    let ledger = sandbox.ledger();
    let sandbox_stats = sandbox.stats();
    let executed_twice = ledger.iter().filter(|e| e.executions > 1).count();
    let paid_refs = paid_references(&pool).await?;
    let paid_in_ledger: std::collections::HashSet<&str> = ledger
        .iter()
        .filter(|e| e.status == payoutd_sandbox::LedgerStatus::Paid)
        .map(|e| e.id.as_str())
        .collect();
    let paid_not_in_ledger = paid_refs.iter().filter(|r| !paid_in_ledger.contains(r.as_str())).count();
    sandbox.shutdown().await?;

    println!();
    println!("summary");
    println!("  payouts             {}", summary.total);
    println!("  paid                {}", summary.paid);
    println!("  failed              {}", summary.failed);
    println!("  needs_review        {}", summary.needs_review);
    println!("  still open          {}", summary.open);
    println!("  retries             {}", summary.retries);
    println!("  in-doubt resolved   {}", summary.in_doubt_resolved);
    println!("  duplicate callbacks ignored {}", summary.duplicate_callbacks_ignored);
    println!(
        "  time to final       p50 {:.2}s  p99 {:.2}s",
        summary.p50_seconds_to_final.unwrap_or(0.0),
        summary.p99_seconds_to_final.unwrap_or(0.0)
    );
    println!(
        "  enqueue             {:.1}s ({:.0} payouts/s over HTTP)",
        enqueue_secs,
        summary.total as f64 / enqueue_secs.max(0.001)
    );
    println!(
        "  throughput          {:.0} payouts/s to final ({:.1}s)",
        summary.total as f64 / run_secs.max(0.001),
        run_secs
    );
    println!(
        "  sandbox             {} payout requests, {} executed, {} 5xx, {} timeouts after executing, {} rate limited, {} declined",
        sandbox_stats.payouts_received,
        sandbox_stats.payouts_executed,
        sandbox_stats.errors_5xx,
        sandbox_stats.timeouts_after_execute,
        sandbox_stats.rate_limited,
        sandbox_stats.declined
    );
    println!(
        "  ledger check        executed twice: {executed_twice}; paid here but not paid in the ledger: {paid_not_in_ledger}"
    );
    println!("  total demo time     {:.1}s", started.elapsed().as_secs_f64());
    if executed_twice > 0 || paid_not_in_ledger > 0 || summary.open > 0 {
        anyhow::bail!("demo invariants violated (see summary)");
    }
    Ok(())
}

fn demo_faults() -> Faults {
    Faults {
        max_latency: Duration::from_millis(20),
        error_5xx_rate: 0.03,
        timeout_after_execute_rate: 0.02,
        timeout_delay: Duration::from_millis(1200),
        decline_rate: 0.03,
        reject_rate: 0.01,
        duplicate_callback_rate: 0.10,
        early_callback_rate: 0.05,
        drop_callback_rate: 0.10,
        // A 429 pauses the provider for every worker (Retry-After: 1 s), as it should; more
        // than a few of them would turn the demo into a demonstration of waiting.
        rate_limit_rate: 0.001,
        // The provider's intake lags: a payout shows up in `check` only a while after it moved
        // money, so one NOT_FOUND alone never justifies a resubmit.
        ingestion_delay: Duration::from_secs(2),
    }
}

async fn fresh_database(admin_options: PgConnectOptions) -> anyhow::Result<payoutd_store::PgPool> {
    database::check_reachable(&admin_options, database::STARTUP_CONNECT_TIMEOUT).await?;
    let admin = payoutd_store::connect(admin_options.clone(), 2).await.context("connecting to Postgres")?;
    sqlx::query("DROP DATABASE IF EXISTS payoutd_demo WITH (FORCE)").execute(&admin).await?;
    sqlx::query("CREATE DATABASE payoutd_demo").execute(&admin).await?;
    admin.close().await;
    let pool = payoutd_store::connect(admin_options.database(DEMO_DATABASE), 40).await?;
    payoutd_store::migrate(&pool).await?;
    Ok(pool)
}

async fn enqueue_all(api: &str, token: &str, n: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let currencies = [("IDR", "150000"), ("USD", "12.50"), ("EUR", "99.99"), ("IDR", "2500000")];
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < n || !in_flight.is_empty() {
        while sent < n && in_flight.len() < 32 {
            let (currency, amount) = currencies[sent % currencies.len()];
            let body = serde_json::json!({
                "external_id": format!("demo-{}-{sent}", &run[..8]),
                "amount": amount,
                "currency": currency,
                "destination": {
                    "phone": "622851280",
                    "client": format!("{:010}", 1_000_000 + sent),
                    "destination": "bank_transfer",
                    "receiver_name": "Demo Receiver",
                }
            });
            let request = client.post(format!("{api}/v1/payouts")).bearer_auth(token).json(&body);
            in_flight.spawn(async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "enqueue answered {}", response.status());
                Ok(())
            });
            sent += 1;
        }
        if let Some(r) = in_flight.join_next().await {
            r??;
        }
    }
    Ok(())
}

async fn paid_references(pool: &payoutd_store::PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT provider_reference FROM payouts WHERE state = 'paid'")
        .fetch_all(pool)
        .await?)
}
