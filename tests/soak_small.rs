//! The soak in small (the full one is `payoutd-soak`, see crates/soak/README.md): 60 payouts
//! through the real `payoutd` binary (serve + 2 worker processes) against the sandbox with
//! every fault on, delayed ingestion included; about 10 SIGKILLs of worker and serve processes
//! and one Postgres restart. Then every payout is final, the sandbox ledger equals the
//! database (nothing executed twice, nothing lost) and no status query came sooner than the
//! interval.
//!
//! The payoutd binary is built first (`cargo build -p payoutd --bin payoutd`, same target dir
//! and profile as this test), because a test of another package does not get it built.
//! Postgres: a private cluster of the soak's own (under the target dir), so the restart
//! disturbs no other test; only when the local server binaries are missing and DATABASE_URL is
//! set does it use that server, and then it skips the restart and says so.

use std::time::Duration;

use payoutd::local_postgres::LocalPostgres;
use payoutd_core::Secret;
use payoutd_sandbox::Faults;
use payoutd_soak::postgres::PostgresChoice;
use payoutd_soak::{SoakConfig, Timings};

/// Every fault on, at rates high enough that 60 payouts meet each of them.
fn faults(t: &Timings) -> Faults {
    Faults {
        error_5xx_rate: 0.05,
        timeout_after_execute_rate: 0.08,
        decline_rate: 0.05,
        reject_rate: 0.03,
        duplicate_callback_rate: 0.2,
        early_callback_rate: 0.1,
        drop_callback_rate: 0.25,
        rate_limit_rate: 0.005,
        ..SoakConfig::default_faults(t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_soak_kills_and_restarts_without_losing_or_double_paying() {
    let (target, profile) = payoutd_tests::binary::target_and_profile();
    let payoutd_bin = payoutd_tests::binary::payoutd_binary(&target, &profile);
    let work_dir = target.join("soak-small");

    let data_dir = work_dir.join("pg");
    let postgres = match LocalPostgres::ensure_running(&data_dir).await {
        Ok(_) => PostgresChoice::Embedded { data_dir, database: "payoutd_soak_small".to_owned() },
        Err(e) => match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                eprintln!(
                    "soak_small: no private Postgres cluster ({e}); using DATABASE_URL and SKIPPING the \
                     Postgres restart part (a shared server must not be restarted by a test)"
                );
                PostgresChoice::External {
                    admin_url: Secret::new(url),
                    database: format!(
                        "payoutd_test_soak_{}",
                        &uuid::Uuid::new_v4().simple().to_string()[..8]
                    ),
                    restart_command: None,
                    allow_no_restart: true,
                }
            }
            _ => panic!("no Postgres for the soak: {e}"),
        },
    };

    // payoutd refuses a status interval not longer than request timeout + lease + safety
    // margin: 0.5 + 1 + 1 < 4. The ingestion delay (5 s) hides an executed payout from the
    // first status query, not from the second.
    let timings = Timings {
        status_interval: Duration::from_secs(4),
        request_timeout: Duration::from_millis(500),
        lease: Duration::from_secs(1),
        safety_margin: Duration::from_secs(1),
        processing_delay: Duration::from_millis(300),
        ingestion_delay: Duration::from_secs(5),
        kill_interval: (Duration::from_millis(300), Duration::from_millis(1200)),
        postgres_downtime: Duration::from_secs(1),
        enqueue_span: Duration::from_secs(5),
        deadline: Duration::from_secs(80),
    };
    let seed = rand::random();
    let config = SoakConfig {
        payouts: 60,
        kills: 10,
        workers: 2,
        serve_kill_share: 0.2,
        payoutd_bin,
        work_dir,
        postgres,
        faults: faults(&timings),
        timings,
        enqueue_concurrency: 8,
        child_concurrency: 16,
        child_log: "warn".to_owned(),
        child_env: Vec::new(),
        seed,
        progress: true,
    };
    let report = payoutd_soak::run(config).await.expect("the soak ran");
    println!("{report}");
    assert!(report.passed(), "soak violations (seed {seed}):\n{report}");
    let c = &report.counters;
    assert!(c.worker_kills + c.serve_kills >= 10 && c.serve_kills >= 2, "{c:?}");
    assert!(c.postgres_restarts == 1 || report.postgres_restart_skipped.is_some(), "{c:?}");
    assert_eq!(report.enqueued, 60);
}
