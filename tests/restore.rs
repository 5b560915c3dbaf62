//! Issue 8: the procedure after a database restore. A dump is taken in the middle of a run,
//! the run finishes (and goes on past the dump), then the dump is restored into a new database
//! and workers run on it against the same provider. Marked and checked, the restored database
//! finishes every payout with no double payment; unmarked, the same restore pays twice.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use payoutd_engine::restore_check::{self, AccountSource, RestoreCheckOptions};
use payoutd_engine::worker::Worker;
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_sandbox::LedgerStatus;
use payoutd_store::operator::Reason;
use payoutd_store::{PgPool, restore};
use payoutd_tests::{AppOptions, TestApp, TestDb, fast_engine, payout_body};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A payout to its own crediting account, so that a double payment shows in the ledger.
fn body(n: usize) -> serde_json::Value {
    let mut body = payout_body(&format!("r-{n}-{}", Uuid::new_v4().simple()), "150000", "IDR");
    body["destination"]["client"] = format!("{:010}", 7_000_000_000_u64 + n as u64).into();
    body
}

fn pg_program(name: &str) -> std::path::PathBuf {
    payoutd::local_postgres::client_program(name)
        .unwrap_or_else(|e| panic!("{name} is needed to dump and restore a database: {e}"))
}

/// Connection arguments for the PostgreSQL client programs.
fn connection_args(db: &TestDb, name: &str) -> Vec<String> {
    let o = &db.options;
    vec![
        "-h".into(),
        o.get_host().to_owned(),
        "-p".into(),
        o.get_port().to_string(),
        "-U".into(),
        o.get_username().to_owned(),
        "-d".into(),
        name.to_owned(),
    ]
}

fn run(mut command: Command) {
    let output = command.output().expect("run a PostgreSQL client program");
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn dump(db: &TestDb, file: &Path) {
    let mut c = Command::new(pg_program("pg_dump"));
    c.args(connection_args(db, &db.name)).arg("-Fc").arg("-f").arg(file);
    run(c);
}

/// Restores `file` into a new database; its pool.
async fn restore_into_new_database(db: &TestDb, file: &Path) -> (String, PgPool) {
    let name = format!("{}_r{}", db.name, &Uuid::new_v4().simple().to_string()[..6]);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&db.pool)
        .await
        .expect("create");
    let mut c = Command::new(pg_program("pg_restore"));
    c.args(connection_args(db, &name)).arg("--no-owner").arg(file);
    run(c);
    let pool = payoutd_store::connect(db.options.clone().database(&name), 8).await.expect("connect restored");
    (name, pool)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("count")
}

async fn wait_all_final(pool: &PgPool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let open = count(pool, "SELECT count(*) FROM payouts WHERE next_run_at IS NOT NULL").await;
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} payouts still open after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Paid ledger entries per crediting account.
fn paid_per_client(app: &TestApp) -> HashMap<String, usize> {
    let mut paid = HashMap::new();
    for e in app.sandbox.ledger() {
        if e.status == LedgerStatus::Paid {
            *paid.entry(e.client).or_default() += e.executions as usize;
        }
    }
    paid
}

fn start_workers(app: &TestApp, pool: &PgPool, stop: &CancellationToken, tag: &str) {
    for n in 0..2 {
        let engine = payoutd_engine::EngineConfig { ..fast_engine(&format!("{tag}-{n}")) };
        let worker = Worker::new(pool.clone(), app.connectors.clone(), engine).expect("engine settings");
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_run_dump_restored_marked_and_checked_finishes_with_no_double_payment() {
    let mut app = TestApp::spawn(AppOptions { workers: 2, callbacks: false, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    // Paid before the backup.
    for n in 0..8 {
        app.enqueue(&token, &body(n)).await;
    }
    app.wait_all_final(Duration::from_secs(60)).await;
    // On their way when the workers stop, and waiting (no reference yet) when the dump is taken.
    for n in 8..16 {
        app.enqueue(&token, &body(n)).await;
    }
    app.stop_workers().await;
    for n in 16..24 {
        app.enqueue(&token, &body(n)).await;
    }
    let backup_taken_at = Utc::now() - chrono::Duration::seconds(1);
    let file = std::env::temp_dir().join(format!("payoutd-restore-{}.dump", Uuid::new_v4().simple()));
    dump(&app.db, &file);
    app.start_worker("after-backup-0");
    app.start_worker("after-backup-1");
    // Accepted after the backup: lost with the restore.
    for n in 24..28 {
        app.enqueue(&token, &body(n)).await;
    }
    app.wait_all_final(Duration::from_secs(90)).await;
    app.stop_workers().await;
    let before = paid_per_client(&app);
    assert_eq!(before.len(), 28, "every payout paid once before the restore: {before:?}");
    assert!(before.values().all(|&n| n == 1));
    let executed_before = app.sandbox.stats().payouts_executed;
    assert_eq!(executed_before, 28);

    // The restore, marked before any worker runs.
    let (_, restored) = restore_into_new_database(&app.db, &file).await;
    let open_in_dump =
        count(&restored, "SELECT count(*) FROM payouts WHERE state NOT IN ('paid', 'failed')").await;
    let referenceless_in_dump =
        count(&restored, "SELECT count(*) FROM payouts WHERE provider_reference IS NULL").await;
    assert!(referenceless_in_dump >= 8, "the payouts waiting at the backup have no reference yet");
    let highest_before: i64 = sqlx::query_scalar("SELECT last_value FROM provider_reference_seq")
        .fetch_one(&restored)
        .await
        .expect("seq");
    let reason = Reason::parse("restored from the nightly backup").expect("reason");
    let mark =
        restore::mark(&restored, backup_taken_at, "operator:test", &reason, 1_000).await.expect("mark");
    assert!(mark.reference_floor >= highest_before + 1_000);
    assert!(
        restore::mark(&restored, backup_taken_at, "operator:test", &reason, 1_000).await.is_err(),
        "a second mark is refused while one is open"
    );

    // Workers on the marked database send nothing.
    let stop = CancellationToken::new();
    start_workers(&app, &restored, &stop, "restored");
    let received = app.sandbox.stats().payouts_received;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.sandbox.stats().payouts_received, received, "a submit went out while marked");
    let deferred: i64 = count(
        &restored,
        "SELECT count(*) FROM payout_events WHERE reason LIKE 'deferred: the database was restored%'",
    )
    .await;
    assert!(deferred > 0 || open_in_dump == 0, "held payouts say why");

    // The check, against the provider's registry since the backup.
    let registry = EightBPartner::new(app.connector_config.clone())
        .expect("connector")
        .registry(None, Duration::from_secs(30))
        .expect("registry");
    let options =
        RestoreCheckOptions { margin: Duration::from_secs(120), act: true, actor: "operator:test".into() };
    let report = restore_check::run(
        &restored,
        &app.connectors,
        vec![("8b_partner".to_owned(), AccountSource::Registry(&registry))],
        &options,
    )
    .await
    .expect("check");
    assert!(report.cleared, "{report:#?}");
    let account = &report.accounts[0];
    assert_eq!(account.outcome, "checked");
    // Status queries go on while marked, so payouts submitted before the backup may have
    // finished before the check; the ones without a reference all wait for it.
    assert!(account.open_payouts as i64 <= open_in_dump, "{account:?}");
    assert!(account.open_payouts as i64 >= referenceless_in_dump, "{account:?}");
    assert_eq!(account.adopted_references as i64, referenceless_in_dump, "{account:?}");
    assert_eq!(account.unknown_to_database.len(), 4, "the payouts accepted after the backup: {account:?}");
    assert_eq!(account.parked, 0, "{account:?}");
    assert!(restore::open_mark(&restored).await.expect("mark").is_none());

    wait_all_final(&restored, Duration::from_secs(90)).await;
    stop.cancel();
    let after = paid_per_client(&app);
    assert_eq!(after, before, "no payment at the provider after the restore: nothing paid twice");
    assert_eq!(app.sandbox.stats().payouts_executed, executed_before);
    assert_eq!(count(&restored, "SELECT count(*) FROM payouts WHERE state <> 'paid'").await, 0);
    payoutd_tests::assert_no_double_execution(&app.sandbox);
    // Every restored payout carries the reference the provider paid it under.
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider_reference, destination->>'client' FROM payouts ORDER BY provider_reference",
    )
    .fetch_all(&restored)
    .await
    .expect("references");
    let ledger: HashMap<String, String> =
        app.sandbox.ledger().into_iter().map(|e| (e.id, e.client)).collect();
    for (reference, client) in &references {
        assert_eq!(ledger.get(reference), Some(client), "{reference}");
    }
    // New references start past every one the provider has seen.
    let next: i64 = sqlx::query_scalar("SELECT last_value FROM provider_reference_seq")
        .fetch_one(&restored)
        .await
        .expect("seq");
    let highest_at_provider = ledger
        .keys()
        .filter_map(|r| r.strip_prefix("PO").and_then(|d| d.parse::<i64>().ok()))
        .max()
        .expect("references");
    assert!(next >= highest_at_provider, "sequence {next} below {highest_at_provider}");

    // The control: the same dump restored without the mark pays again.
    let (_, unmarked) = restore_into_new_database(&app.db, &file).await;
    let stop = CancellationToken::new();
    start_workers(&app, &unmarked, &stop, "unmarked");
    wait_all_final(&unmarked, Duration::from_secs(90)).await;
    stop.cancel();
    // Each payout that had no reference in the dump is paid again, under a reference of its
    // own or one the provider already paid for another payout (the sequence went back).
    let paid_again = app.sandbox.stats().payouts_executed - executed_before;
    assert!(
        paid_again as i64 >= referenceless_in_dump,
        "without the procedure the restore pays twice: {paid_again} payments again, {referenceless_in_dump} expected"
    );
    let _ = std::fs::remove_file(&file);
    app.shutdown().await;
}

#[tokio::test]
async fn a_provider_without_registry_parks_what_may_have_been_sent() {
    use payoutd_tests::token_accounts::{PAY_A, TokenOptions, TokenSandboxes};
    let sandboxes = std::sync::Arc::new(TokenSandboxes::start(TokenOptions::default()).await);
    let s = sandboxes.clone();
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        more_accounts: Some(std::sync::Arc::new(move |api, pool| s.connectors(api, pool))),
        ..AppOptions::default()
    })
    .await;
    let token = app.token(&["*"]).await;
    let body = payoutd_tests::token_accounts::account_payout_body(PAY_A, "r-88", "15000", "COP");
    let id = app.enqueue(&token, &body).await;
    let reason = Reason::parse("restored").expect("reason");
    restore::mark(&app.db.pool, Utc::now(), "operator:test", &reason, 10).await.expect("mark");
    let report = restore_check::run(
        &app.db.pool,
        &app.connectors,
        vec![(PAY_A.to_owned(), AccountSource::NoRegistry { why: "88pay has no registry".into() })],
        &RestoreCheckOptions::default(),
    )
    .await
    .expect("check");
    assert!(report.cleared);
    assert_eq!(report.accounts[0].parked, 1, "{report:#?}");
    assert_eq!(app.state(id).await, payoutd_core::PayoutState::NeedsReview);
    let reasons = app.reasons(id).await;
    assert!(reasons.iter().any(|r| r.contains("88pay has no registry")), "{reasons:?}");
    app.shutdown().await;
}

/// `payoutd restore mark|status|check` from the command line, against a database and the
/// sandbox: the mark holds new payouts back, a second mark is refused, the check releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_commands_mark_hold_and_release() {
    use payoutd_tests::{PARTNER_SECRET, SERVICE_ID, binary};
    let app = TestApp::spawn(AppOptions { workers: 2, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    for n in 0..3 {
        app.enqueue(&token, &body(n)).await;
    }
    app.wait_all_final(Duration::from_secs(60)).await;

    let (target, profile) = binary::target_and_profile();
    let bin = binary::payoutd_binary(&target, &profile);
    let dir = target.join("restore-cli");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join(format!("payoutd-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!(
            "[eightb_partner]\nbase_url = \"{}\"\nservice_id = \"{SERVICE_ID}\"\nsecret = \"{PARTNER_SECRET}\"\n",
            app.sandbox.base_url()
        ),
    )
    .expect("config");
    let url = app.db.url();
    let payoutd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("PAYOUTD_") || name == "DATABASE_URL" {
                c.env_remove(name);
            }
        }
        let out = c
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .expect("run payoutd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = payoutd(&["restore", "status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("not marked restored"), "{out}");
    let backup = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (code, out, err) =
        payoutd(&["restore", "mark", "--backup-taken-at", &backup, "--reason", "restore drill"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("marked restored from the backup of"), "{out}");
    let (code, out, err) = payoutd(&["restore", "mark", "--backup-taken-at", &backup, "--reason", "again"]);
    assert_ne!(code, Some(0), "a second mark is refused: {out}");
    assert!(err.contains("marked restored already"), "{err}");
    let (_, out, _) = payoutd(&["restore", "status"]);
    assert!(out.contains("marked restored by operator:cli/"), "{out}");
    let (_, out, _) = payoutd(&["status"]);
    assert!(out.contains("RESTORED DATABASE"), "{out}");

    // New payouts wait while marked.
    let received = app.sandbox.stats().payouts_received;
    let held: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in 3..5 {
            ids.push(app.enqueue(&token, &body(n)).await);
        }
        ids
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sandbox.stats().payouts_received, received, "nothing sent while marked");
    for id in &held {
        assert!(!app.state(*id).await.is_final());
    }

    let (code, out, err) = payoutd(&["restore", "check", "--margin-secs", "120"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("mark cleared"), "{out}");
    assert!(out.contains("8b_partner") && out.contains("checked"), "{out}");
    app.wait_all_final(Duration::from_secs(60)).await;
    for id in &held {
        assert_eq!(app.state(*id).await, payoutd_core::PayoutState::Paid);
    }
    payoutd_tests::assert_no_double_execution(&app.sandbox);
    let _ = std::fs::remove_file(&config);
    app.shutdown().await;
}

/// A payout whose intent is recorded (its submit not started) when the database is marked:
/// the "submit started" write itself refuses while the mark is open, so nothing is sent; the
/// check lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_intent_is_not_submitted_while_marked() {
    use payoutd_providers::PayoutForProvider;
    let mut app = TestApp::spawn(AppOptions { workers: 0, callbacks: false, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    let id = app.enqueue(&token, &body(1)).await;
    let row = payoutd_tests::row(&app, id).await;
    let reference = "PO000000000000004242";
    let connector = app.connectors.get("8b_partner").expect("connector").clone();
    let frozen = connector.freeze_submit(
        &PayoutForProvider { money: row.money, destination: row.destination.clone() },
        reference,
        Utc::now(),
    );
    sqlx::query(
        "UPDATE payouts SET state = 'intent_recorded', provider_reference = $2, submit_request = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(reference)
    .bind(serde_json::to_value(&frozen).expect("json"))
    .execute(&app.db.pool)
    .await
    .expect("intent");
    let reason = Reason::parse("drill").expect("reason");
    restore::mark(&app.db.pool, Utc::now(), "operator:test", &reason, 1_000).await.expect("mark");
    app.start_worker("held-0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.reasons(id).await.iter().any(|r| r.starts_with("deferred: the database was restored")) {
        assert!(Instant::now() < deadline, "the submit was never held: {:?}", app.reasons(id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.sandbox.stats().payouts_received, 0, "a submit went out while marked");
    assert_eq!(app.state(id).await, payoutd_core::PayoutState::IntentRecorded);
    assert_eq!(payoutd_tests::row(&app, id).await.submit_attempts, 0);

    let registry = EightBPartner::new(app.connector_config.clone())
        .expect("connector")
        .registry(None, Duration::from_secs(30))
        .expect("registry");
    let report = restore_check::run(
        &app.db.pool,
        &app.connectors,
        vec![("8b_partner".to_owned(), AccountSource::Registry(&registry))],
        &RestoreCheckOptions::default(),
    )
    .await
    .expect("check");
    assert!(report.cleared, "{report:#?}");
    assert_eq!(report.accounts[0].not_sent_since_backup, 1, "{report:#?}");
    app.wait_all_final(Duration::from_secs(60)).await;
    assert_eq!(app.state(id).await, payoutd_core::PayoutState::Paid);
    assert_eq!(app.sandbox.stats().payouts_executed, 1);
    app.stop_workers().await;
    app.shutdown().await;
}
