//! Payouts spread over three providers and four accounts (8B partner, two 8B REST accounts,
//! 88Pay), driven by separate `payoutd worker` processes (one SIGKILLed and restarted mid-run)
//! with faults on and token lifetimes of seconds. Then: every payout final and paid or failed
//! for a provider's reason, none failed because of auth, each executed exactly once at its
//! sandbox, and the 8B REST authorize/refresh calls bounded by time, not by payouts or workers.
//!
//! The suite runs 120 payouts with 4 processes. The full campaign (1,000 payouts) is
//! `PAYOUTD_FLEET_PAYOUTS=1000 cargo nextest run -p payoutd-tests --test token_fleet --run-ignored all`
//! (see README, "Campaigns").

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_sandbox::Faults;
use payoutd_tests::token_accounts::{
    PAY_A, REST_A, REST_B, TokenOptions, TokenSandboxes, account_payout_body,
};
use payoutd_tests::{AppOptions, PARTNER_SECRET, SERVICE_ID, TestApp, binary, payout_body};
use uuid::Uuid;

fn faults() -> Faults {
    Faults {
        error_5xx_rate: 0.04,
        timeout_after_execute_rate: 0.04,
        timeout_delay: Duration::from_secs(5),
        decline_rate: 0.05,
        reject_rate: 0.02,
        duplicate_callback_rate: 0.2,
        early_callback_rate: 0.1,
        rate_limit_rate: 0.01,
        ..Faults::default()
    }
}

struct Fleet {
    bin: std::path::PathBuf,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    children: Vec<Child>,
}

impl Fleet {
    fn spawn_one(&self) -> Child {
        let mut command = Command::new(&self.bin);
        command.arg("--config").arg(&self.config).arg("worker");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("PAYOUTD_") || name == "DATABASE_URL" || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().expect("spawn payoutd worker")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run_fleet(payouts: usize, workers: usize) {
    let (target, profile) = binary::target_and_profile();
    let bin = binary::payoutd_binary(&target, &profile);
    // No 5xx at the token providers: neither has a lookup by our reference, so a money call
    // answered 5xx stays in doubt until a webhook names it, and one that was never executed is
    // parked after max_await (tested on its own). The 8B partner account gets every fault.
    let tokens = TokenOptions {
        faults: Faults { error_5xx_rate: 0.0, ..faults() },
        access_token_lifetime: Duration::from_secs(4),
        refresh_token_lifetime: Duration::from_secs(12),
        pay_token_lifetime: Duration::from_secs(2),
        forced_401_rate: 0.02,
        ..TokenOptions::default()
    };
    let sandboxes = Arc::new(TokenSandboxes::start(tokens).await);
    let s = sandboxes.clone();
    // The API (callbacks) runs here; all steps run in the worker processes.
    let options = AppOptions {
        workers: 0,
        faults: Faults { drop_callback_rate: 0.2, ..faults() },
        more_accounts: Some(Arc::new(move |api, pool| s.connectors(api, pool))),
        ..AppOptions::default()
    };
    let app = TestApp::spawn(options).await;
    sandboxes.point_webhooks_at(&app.api);

    let dir = target.join("token-fleet");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join(format!("payoutd-{}.toml", Uuid::new_v4().simple()));
    let o = &app.options;
    let mut file = std::fs::File::create(&config).expect("config file");
    // Concurrency 6: each process's pool is concurrency + 10 connections, so four of them (and
    // the API here) stay well under Postgres' default limit of 100.
    write!(
        file,
        "[eightb_partner]\nbase_url = \"{}\"\nservice_id = \"{SERVICE_ID}\"\nsecret = \"{PARTNER_SECRET}\"\n\
         request_timeout_ms = {}\nstatus_interval_secs = {}\n\n{}\
         [engine]\nconcurrency = 6\nlease_secs = 2\nheartbeat_secs = 0.5\nsafety_margin_secs = 0.3\n\
         idle_poll_ms = 100\nprovider_calls_per_second = 1000\nin_doubt_max_attempts = 8\nmax_await_secs = 90\n\
         retry_base_ms = 50\nretry_max_delay_ms = 500\nretry_max_attempts = 8\n",
        app.sandbox.base_url(),
        o.request_timeout.as_millis(),
        o.status_interval.as_secs_f64(),
        sandboxes.accounts_toml(&app.api),
    )
    .expect("write config");
    let mut env: Vec<(String, String)> =
        TokenSandboxes::accounts_env().into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    env.push(("DATABASE_URL".into(), app.db.url()));
    env.push(("PAYOUTD_ADMIN_LISTEN".into(), "off".into()));
    let config_path = config.clone();
    let mut fleet = Fleet { bin, config, env, children: Vec::new() };
    for _ in 0..workers {
        let child = fleet.spawn_one();
        fleet.children.push(child);
    }

    let token = app.token(&["*"]).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..payouts {
        let external = format!("fleet-{i}-{}", Uuid::new_v4().simple());
        let body = match i % 4 {
            0 => payout_body(&external, "150000", "IDR"),
            1 => account_payout_body(REST_A, &external, "150000", "IDR"),
            2 => account_payout_body(REST_B, &external, "175000", "IDR"),
            _ => account_payout_body(PAY_A, &external, "4321.09", "COP"),
        };
        ids.push(app.enqueue(&token, &body).await);
        if i == payouts / 2 {
            // A worker process dies mid-run and comes back.
            fleet.children[0].kill().expect("SIGKILL");
            fleet.children[0].wait().expect("reap");
            fleet.children[0] = fleet.spawn_one();
        }
    }
    app.wait_all_final(Duration::from_secs(240)).await;
    let elapsed = started.elapsed();

    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT provider, state::text, last_error FROM payouts")
            .fetch_all(&app.db.pool)
            .await
            .expect("rows");
    let mut by_state = std::collections::BTreeMap::<(String, String), usize>::new();
    for (account, state, _) in &rows {
        *by_state.entry((account.clone(), state.clone())).or_default() += 1;
    }
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM payout_events WHERE to_state IN ('failed', 'needs_review')")
            .fetch_all(&app.db.pool)
            .await
            .expect("reasons");
    for r in &reasons {
        let r = r.to_lowercase();
        assert!(
            !r.contains("token") && !r.contains("401") && !r.contains("unauthorized"),
            "failed because of auth: {r}"
        );
    }
    // A token provider's money call can time out before the provider even read it (a CPU-starved
    // run of debug processes on two cores): without a lookup by our reference, such a payout is
    // parked for reconciliation after max_await, correctly. Allowed only when the provider
    // indeed never executed it; anything else not final fails the run.
    let parked: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider, provider_reference FROM payouts WHERE state = 'needs_review' AND provider_reference IS NOT NULL",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("parked");
    for (account, reference) in &parked {
        let executed = match account.as_str() {
            a if a == REST_A => !sandboxes.rest_a.entries_for(reference).is_empty(),
            a if a == REST_B => !sandboxes.rest_b.entries_for(reference).is_empty(),
            a if a == PAY_A => !sandboxes.pay.entries_for(reference).is_empty(),
            _ => true,
        };
        if executed {
            let timeline: Vec<String> = sqlx::query_scalar(
                "SELECT e.created_at::text || ' ' || e.to_state::text || ' ' || e.reason FROM payout_events e
                   JOIN payouts p ON p.id = e.payout_id WHERE p.provider_reference = $1 ORDER BY e.id",
            )
            .bind(reference)
            .fetch_all(&app.db.pool)
            .await
            .expect("timeline");
            let stats = format!(
                "rest-a {} rest-b {} pay-a {}",
                sandboxes.rest_a.stats().webhooks_failed,
                sandboxes.rest_b.stats().webhooks_failed,
                sandboxes.pay.stats().webhooks_failed
            );
            panic!(
                "{account} {reference} was executed but parked; webhooks failed {stats}; timeline {timeline:#?}"
            );
        }
    }
    let open: Vec<_> =
        rows.iter().filter(|(_, s, _)| s != "paid" && s != "failed" && s != "needs_review").collect();
    assert!(open.is_empty(), "not final: {open:?}\nreasons: {reasons:?}");
    let parked_count = rows.iter().filter(|(_, s, _)| s == "needs_review").count();
    assert_eq!(parked_count, parked.len(), "every parked payout had sent its money call");

    // Exactly once at every sandbox; every paid payout is in a ledger.
    payoutd_tests::assert_no_double_execution(&app.sandbox);
    for sandbox in [&sandboxes.rest_a, &sandboxes.rest_b] {
        assert!(sandbox.stats().executed_more_than_once().is_empty());
    }
    assert_eq!(sandboxes.pay.stats().executed_more_than_once, 0);
    let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE state = 'paid'")
        .fetch_one(&app.db.pool)
        .await
        .expect("paid");
    let executed_paid =
        app.sandbox.ledger().iter().filter(|e| e.status == payoutd_sandbox::LedgerStatus::Paid).count()
            + [&sandboxes.rest_a, &sandboxes.rest_b]
                .iter()
                .map(|s| s.ledger().iter().filter(|e| e.status.wire() == "ACCEPTED").count())
                .sum::<usize>()
            + sandboxes.pay.ledger().iter().filter(|e| e.status.wire() == "COMPLETED").count();
    assert_eq!(paid as usize, executed_paid, "paid in the database = paid at the providers");

    let (ra, rb, pay) = (sandboxes.rest_a.stats(), sandboxes.rest_b.stats(), sandboxes.pay.stats());
    let secs = elapsed.as_secs_f64();
    // Token calls are bounded by time (one refresh per lifetime per account, plus fallbacks
    // when the refresh token dies), not by payouts or workers.
    for (name, s) in [(REST_A, &ra), (REST_B, &rb)] {
        let bound = 2.0 * (secs / 3.5 + 1.0) + 5.0;
        let calls = (s.authorize_calls + s.refresh_calls) as f64;
        assert!(
            calls <= bound,
            "{name}: {calls} authorize+refresh calls in {secs:.0} s (bound {bound:.0}): {s:?}"
        );
    }
    assert!(pay.token_calls <= pay.cashouts_received * 2 + pay.balance_calls, "{pay:?}");
    println!(
        "fleet: {payouts} payouts, {workers} worker processes, {secs:.1} s; states {by_state:?}; \
         parked, never executed at the provider: {parked_count}\n\
         8B REST rest-a: {} authorize + {} refresh ({} refused) calls, {} intents, {} 401s;\n\
         8B REST rest-b: {} authorize + {} refresh ({} refused) calls, {} intents, {} 401s;\n\
         88Pay: {} token calls for {} cashouts ({} executed), {} balance calls, {} 401s",
        ra.authorize_calls,
        ra.refresh_calls,
        ra.refresh_failed,
        ra.intents_received,
        ra.unauthorized,
        rb.authorize_calls,
        rb.refresh_calls,
        rb.refresh_failed,
        rb.intents_received,
        rb.unauthorized,
        pay.token_calls,
        pay.cashouts_received,
        pay.cashouts_executed,
        pay.balance_calls,
        pay.unauthorized,
    );
    drop(fleet);
    let _ = std::fs::remove_file(&config_path);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payouts_over_three_providers_and_four_worker_processes_are_final_and_executed_once() {
    run_fleet(120, 4).await;
}

/// The campaign: `PAYOUTD_FLEET_PAYOUTS` payouts (default 1,000), `PAYOUTD_FLEET_WORKERS`
/// processes (default 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a campaign of minutes; run on demand (README, Campaigns)"]
async fn campaign_many_payouts_over_three_providers() {
    let n = std::env::var("PAYOUTD_FLEET_PAYOUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let w = std::env::var("PAYOUTD_FLEET_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    run_fleet(n, w).await;
}
