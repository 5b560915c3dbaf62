//! The crash test: 500 payouts with faults on, while worker processes are SIGKILLed at random
//! moments (30 times) and restarted. Afterwards every payout is final and the sandbox ledger
//! shows each executed exactly once, agreeing with the database.
//!
//! The worker processes are this test binary run again with `--ignored --exact child_worker`:
//! a separate process running the real engine against the same database and sandbox.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_core::PayoutState;
use payoutd_providers::Connectors;
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_sandbox::{Faults, LedgerStatus};
use payoutd_tests::{AppOptions, TestApp, admin_options, assert_no_double_execution};
use rand::Rng;

// Within the production constraint for the child workers' settings: 2000 ms > request timeout
// (500) + lease (1000) + safety margin (300).
const STATUS_INTERVAL_MS: u64 = 2000;
const REQUEST_TIMEOUT_MS: u64 = 500;

fn spawn_worker_process(db: &str, sandbox: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_worker", "--nocapture", "--test-threads", "1"])
        .env("PAYOUTD_CRASH_CHILD_DB", db)
        .env("PAYOUTD_CRASH_CHILD_SANDBOX", sandbox)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_never_lose_or_double_pay_a_payout() {
    let faults = Faults {
        max_latency: Duration::from_millis(30),
        error_5xx_rate: 0.05,
        timeout_after_execute_rate: 0.05,
        timeout_delay: Duration::from_millis(REQUEST_TIMEOUT_MS + 400),
        decline_rate: 0.05,
        duplicate_callback_rate: 0.1,
        early_callback_rate: 0.05,
        drop_callback_rate: 0.2,
        rate_limit_rate: 0.01,
        ingestion_delay: Duration::from_millis(1500),
        ..Faults::default()
    };
    let options = AppOptions {
        faults,
        workers: 0,
        status_interval: Duration::from_millis(STATUS_INTERVAL_MS),
        processing_delay: Duration::from_millis(200),
        ..AppOptions::default()
    };
    let app = TestApp::spawn(options).await;
    let ids = app.enqueue_many(500, "IDR", "125000").await;

    let mut rng = rand::rng();
    let mut kills = 0;
    let started = Instant::now();
    while kills < 30 {
        let mut child = spawn_worker_process(&app.db.name, &app.sandbox.base_url());
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
    }
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE next_run_at IS NOT NULL")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    println!("after {kills} kills in {:?}: {open} of 500 still open", started.elapsed());

    let mut last = spawn_worker_process(&app.db.name, &app.sandbox.base_url());
    app.wait_all_final(Duration::from_secs(120)).await;
    last.kill().ok();
    last.wait().ok();

    let ledger = app.sandbox.ledger();
    let mut states = std::collections::BTreeMap::new();
    for id in &ids {
        let r = payoutd_tests::row(&app, *id).await;
        *states.entry(r.state.as_str()).or_insert(0) += 1;
        let entry =
            r.provider_reference.as_ref().and_then(|reference| ledger.iter().find(|e| &e.id == reference));
        match r.state {
            PayoutState::Paid => {
                assert_eq!(
                    entry.map(|e| e.status),
                    Some(LedgerStatus::Paid),
                    "{id} paid here but not in the ledger"
                )
            }
            PayoutState::Failed => assert!(
                entry.is_none_or(|e| e.status != LedgerStatus::Paid),
                "{id} failed here but paid by the provider"
            ),
            PayoutState::NeedsReview => {}
            other => panic!("{id} is not final: {other}"),
        }
    }
    for e in &ledger {
        assert!(e.executions <= 1, "{} executed {} times", e.id, e.executions);
    }
    assert_no_double_execution(&app.sandbox);
    let crashed_mid_submit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payout_events WHERE reason LIKE '%outcome was never recorded%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    println!(
        "final states {states:?}; payouts found mid-submit after a kill: {crashed_mid_submit}; total {:?}",
        started.elapsed()
    );
    assert_eq!(states.get("needs_review"), None, "nothing should need review: {states:?}");
    app.shutdown().await;
}

/// The worker process of the crash test. Ignored in normal runs; started by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process started by the crash test"]
async fn child_worker() {
    let (Ok(db), Ok(sandbox)) =
        (std::env::var("PAYOUTD_CRASH_CHILD_DB"), std::env::var("PAYOUTD_CRASH_CHILD_SANDBOX"))
    else {
        return;
    };
    let options = admin_options().await.database(&db);
    let pool = payoutd_store::connect(options, 12).await.expect("connect");
    let config = payoutd_tests::connector_config(
        &sandbox,
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        Duration::from_millis(STATUS_INTERVAL_MS),
    );
    let connectors = Connectors::new().with(Arc::new(EightBPartner::new(config).expect("connector")));
    let mut engine = payoutd_tests::fast_engine(&format!("child-{}", std::process::id()));
    engine.lease = Duration::from_secs(1);
    engine.heartbeat_every = Duration::from_millis(300);
    engine.in_doubt_max_attempts = 100;
    engine.concurrency = 32;
    let worker = payoutd_engine::Worker::new(pool, connectors, engine).expect("settings pass the check");
    worker.run(tokio_util::sync::CancellationToken::new()).await;
}
