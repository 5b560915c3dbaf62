//! Issue 7: metrics and probes on the admin listener.
//!
//! The real instruments (installed by `payoutd::telemetry`), the real admin router, a worker
//! and the gauges' timer, against the sandbox with faults: `/metrics` is Prometheus text with
//! every metric family the SREs' rules and dashboard use, durations are histograms in seconds,
//! the backlog gauges move on their timer while no worker runs (and read 0 when the queue is
//! empty), readiness says which check fails (database, migrations, worker loop), and no label
//! carries a secret, also after error paths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_engine::Worker;
use payoutd_engine::gauges::GaugeSettings;
use payoutd_sandbox::Faults;
use payoutd_server::admin::{AdminState, WorkerAlive};
use payoutd_store::queue;
use payoutd_tests::{AppOptions, PARTNER_SECRET, TestApp, payout_body, send_callback};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Serves the admin routes for `state` on a loopback port; returns its base URL.
async fn admin(state: AdminState, stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(payoutd_server::admin::serve(listener, state, async move { stop.cancelled().await }));
    base
}

fn renderer() -> payoutd_server::admin::RenderMetrics {
    Arc::new(payoutd::telemetry::render_metrics)
}

/// The value of the first sample of `family` whose labels contain every one of `labels`.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (name_and_labels, value) = line.rsplit_once(' ')?;
        let name = name_and_labels.split('{').next()?;
        (name == family && labels.iter().all(|l| name_and_labels.contains(l))).then(|| value.parse().ok())?
    })
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_on_the_admin_listener() {
    // No OTEL_* variables: nothing is exported, the Prometheus reader is installed.
    let telemetry = payoutd::telemetry::init_with_env("warn", |_| None);
    assert!(!telemetry.plan.traces && !telemetry.plan.metrics);

    let faults = Faults {
        error_5xx_rate: 0.2,
        rate_limit_rate: 0.1,
        decline_rate: 0.1,
        duplicate_callback_rate: 0.5,
        ..Faults::default()
    };
    let app = TestApp::spawn(AppOptions { faults, workers: 0, ..AppOptions::default() }).await;
    let http = reqwest::Client::new();
    let stop = CancellationToken::new();

    // A worker whose loop the readiness probe watches, and the gauges' timer.
    let engine =
        payoutd_engine::EngineConfig { worker_id: "metrics-worker".into(), ..app.options.engine.clone() };
    let worker = Worker::new(app.db.pool.clone(), app.connectors.clone(), engine).expect("settings");
    let pulse = worker.pulse();
    let worker_stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(worker_stop.clone()));
    let gauges = GaugeSettings {
        every: Duration::from_millis(200),
        balance_every: Some(Duration::from_millis(300)),
        provider_calls_per_second: 1000,
    };
    tokio::spawn(payoutd_engine::gauges::run(
        app.db.pool.clone(),
        app.connectors.clone(),
        gauges,
        stop.clone(),
    ));
    let alive: WorkerAlive = Arc::new(move || pulse.alive_within(Duration::from_secs(1)));
    let base = admin(
        AdminState { pool: app.db.pool.clone(), metrics: renderer(), worker: Some(alive) },
        stop.clone(),
    )
    .await;

    assert_eq!(get(&http, &format!("{base}/health/live")).await, (200, "ok".to_owned()));
    let (status, body) = get(&http, &format!("{base}/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ready["checks"], serde_json::json!({"database": "ok", "migrations": "ok", "worker": "ok"}));

    // A payout held by a "dead worker": claimed under a short lease and never worked on.
    let token = app.token(&["*"]).await;
    worker_stop.cancel();
    worker_task.await.expect("worker stopped");
    app.enqueue(&token, &payout_body("orphan", "10.00", "USD")).await;
    let claimed =
        queue::claim_due(&app.db.pool, "dead-worker", 10, Duration::from_millis(300)).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the orphan is claimed by the dead worker");

    // With no worker running, the backlog gauges still move: on their timer, on the DB clock.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.enqueue(&token, &payout_body(&format!("m-{i}"), "10.00", "USD")).await);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = get(&http, &format!("{base}/metrics")).await.1;
    let due = sample(&text, "payoutd_due_payouts", &[]).expect("due gauge");
    assert!(due >= 6.0, "{due}\n{text}");
    let age = sample(&text, "payoutd_due_oldest_age_seconds", &[]).expect("age gauge");
    assert!(age > 0.5, "the oldest due payout has waited ~1 s: {age}");
    let pending = sample(&text, "payoutd_payouts", &["state=\"pending\"", "account=\"test-service\""]);
    assert!(pending.is_some_and(|n| n >= 6.0), "{pending:?}");
    // The worker loop has stopped: not ready, and the body says why.
    let (status, body) = get(&http, &format!("{base}/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopped or stalled"), "{body}");

    // A worker again: everything is worked off, the orphan after its lease expired.
    let mut app = app;
    app.start_worker("metrics-worker-2");
    app.wait_all_final(Duration::from_secs(60)).await;

    // Callbacks of every kind, on a paid payout.
    let paid = sqlx::query_as::<_, (String, String)>(
        "SELECT provider_reference, amount::text FROM payouts WHERE state = 'paid' LIMIT 1",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("a paid payout");
    let (reference, amount) = paid;
    assert_eq!(send_callback(&app, &reference, &amount, "1", PARTNER_SECRET).await.0, 200);
    assert_eq!(send_callback(&app, &reference, &amount, "1", PARTNER_SECRET).await.0, 200);
    assert_eq!(send_callback(&app, &reference, &amount, "0", PARTNER_SECRET).await.0, 200);
    assert_eq!(send_callback(&app, &reference, &amount, "1", "not-the-secret").await.0, 200);
    assert_eq!(send_callback(&app, "PO999999999999999999", &amount, "1", PARTNER_SECRET).await.0, 200);

    // The gauges read 0 once the queue is empty (not "no data").
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = get(&http, &format!("{base}/metrics")).await.1;
        if sample(&text, "payoutd_due_payouts", &[]) == Some(0.0)
            && sample(&text, "payoutd_provider_balance", &[]).is_some()
        {
            break text;
        }
        assert!(Instant::now() < deadline, "gauges did not settle:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sample(&text, "payoutd_due_oldest_age_seconds", &[]), Some(0.0));
    assert_eq!(sample(&text, "payoutd_payouts", &["state=\"pending\""]), Some(0.0));
    assert!(sample(&text, "payoutd_payouts", &["state=\"needs_review\""]).is_some());
    assert!(sample(&text, "payoutd_payouts", &["state=\"in_doubt\""]).is_some());
    let balance =
        sample(&text, "payoutd_provider_balance", &["provider=\"8b_partner\"", "account=\"test-service\""]);
    assert!(balance.is_some_and(|b| b > 0.0), "{balance:?}");

    // Counters and histograms (seconds) of the work done.
    for (family, labels) in [
        ("payoutd_transitions_total", &["from=\"pending\"", "to=\"checked\"", "actor=\"worker\""][..]),
        ("payoutd_transitions_total", &["to=\"paid\""][..]),
        ("payoutd_step_duration_seconds_count", &["state=\"pending\"", "result=\"ok\""][..]),
        ("payoutd_step_duration_seconds_bucket", &["le=\"+Inf\""][..]),
        ("payoutd_group_commit_writes_count", &[][..]),
        ("payoutd_group_commit_writes_bucket", &["le=\"256\""][..]),
        ("payoutd_provider_call_duration_seconds_count", &["operation=\"payout\"", "outcome=\"ok\""][..]),
        ("payoutd_provider_call_duration_seconds_bucket", &["operation=\"balance\"", "le=\"+Inf\""][..]),
        ("payoutd_provider_errors_total", &["class=\"http_5xx\""][..]),
        ("payoutd_retries_scheduled_total", &["provider=\"8b_partner\""][..]),
        ("payoutd_callbacks_total", &["result=\"accepted\""][..]),
        ("payoutd_callbacks_total", &["result=\"duplicate\""][..]),
        ("payoutd_callbacks_total", &["result=\"conflicting\""][..]),
        ("payoutd_callbacks_total", &["result=\"rejected\"", "reason=\"unverifiable\""][..]),
        ("payoutd_callbacks_total", &["result=\"rejected\"", "reason=\"unknown_reference\""][..]),
        ("payoutd_lease_takeovers_total", &[][..]),
    ] {
        let value = sample(&text, family, labels);
        assert!(value.is_some_and(|v| v > 0.0), "{family}{labels:?} = {value:?}");
    }
    // Every family deploy/metrics.txt promises "always" is served (the rules and the dashboard
    // are checked against that list by deploy/validate.sh).
    for line in include_str!("../deploy/metrics.txt").lines() {
        let fields: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
        if let [family, "always"] = fields[..] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} is not served");
        }
    }
    assert!(text.contains("# TYPE payoutd_step_duration_seconds histogram"), "durations are histograms");
    // In seconds: a step averages a few milliseconds to a second here, even on a loaded machine
    // (in milliseconds the mean would be far above 5).
    let (sum, count) = (
        sample(&text, "payoutd_step_duration_seconds_sum", &["state=\"pending\"", "result=\"ok\""]),
        sample(&text, "payoutd_step_duration_seconds_count", &["state=\"pending\"", "result=\"ok\""]),
    );
    let mean = sum.zip(count).map(|(s, c)| s / c);
    assert!(mean.is_some_and(|m| m > 0.0 && m < 5.0), "mean step duration {mean:?} is not in seconds");
    assert!(text.contains("# TYPE payoutd_provider_call_duration_seconds histogram"));
    // The 429 fault makes calls wait or fail as rate limited.
    assert!(
        sample(&text, "payoutd_provider_errors_total", &["class=\"rate_limited\""]).is_some()
            || sample(&text, "payoutd_rate_limit_waits_total", &[]).is_some(),
        "rate limiting shows"
    );
    // No secret anywhere in names, labels or values.
    for secret in [PARTNER_SECRET, token.as_str()] {
        assert!(!text.contains(secret), "a secret in /metrics");
    }
    assert!(!text.contains("hash="), "no signature in /metrics");

    // Readiness: a database that does not answer, and one without the migrations.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(app.db.options.clone().host("127.0.0.1").port(closed));
    let down = admin(AdminState { pool: unreachable, metrics: renderer(), worker: None }, stop.clone()).await;
    let (status, body) = get(&http, &format!("{down}/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"database\":\"unreachable\"") || body.contains("timed out"), "{body}");
    assert_eq!(
        get(&http, &format!("{down}/health/live")).await.0,
        200,
        "liveness does not need the database"
    );

    // A database without payoutd's migrations (an empty schema first on the search path).
    sqlx::query("CREATE SCHEMA bare").execute(&app.db.pool).await.expect("schema");
    let bare = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(app.db.options.clone().options([("search_path", "bare")]));
    let unmigrated = admin(AdminState { pool: bare, metrics: renderer(), worker: None }, stop.clone()).await;
    let (status, body) = get(&http, &format!("{unmigrated}/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pending"), "{body}");

    stop.cancel();
    app.shutdown().await;
    telemetry.shutdown().await;
}
