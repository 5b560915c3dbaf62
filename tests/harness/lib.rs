//! Test harness: every test gets a fresh database (a new random name) on a real Postgres,
//! the real HTTP API on a loopback port, the real 8B partner connector and the project's own
//! sandbox. Nothing of our own is mocked.
//!
//! Postgres: DATABASE_URL (an admin connection) when set; otherwise payoutd's private cluster
//! under `target/payoutd-test-pg`, started from the local Postgres binaries on first use.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd::local_postgres::LocalPostgres;
use payoutd_core::{PayoutState, Secret};
use payoutd_engine::{EngineConfig, Worker};
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_providers::{Connector, Connectors};
use payoutd_sandbox::{Faults, Sandbox, SandboxConfig, SandboxHandle};
use payoutd_store::PgPool;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod binary;
pub mod log_capture;
pub mod token_accounts;
pub mod webdriver;

pub const SERVICE_ID: &str = "test-service";
/// The partner secret of every test; tests assert it never shows up in logs or answers.
pub const PARTNER_SECRET: &str = "partner-secret-Zq9vX7";

/// Admin connection options for the test Postgres.
pub async fn admin_options() -> PgConnectOptions {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            PgConnectOptions::from_str(&url).expect("DATABASE_URL must be a postgres URL")
        }
        _ => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/payoutd-test-pg");
            let cluster = LocalPostgres::ensure_running(&dir).await.expect("start the private test cluster");
            cluster.connect_options("postgres")
        }
    }
}

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    /// A URL child processes (`payoutd ...`) reach this database with, over TCP or the socket.
    pub fn url(&self) -> String {
        let o = &self.options;
        let host = o.get_host();
        if host.starts_with('/') {
            format!("postgres://{}@localhost:{}/{}?host={host}", o.get_username(), o.get_port(), self.name)
        } else {
            format!("postgres://{}@{host}:{}/{}", o.get_username(), o.get_port(), self.name)
        }
    }
}

pub async fn fresh_db() -> TestDb {
    let admin_opts = admin_options().await;
    let admin = payoutd_store::connect(admin_opts.clone(), 1).await.expect("connect admin");
    let secs = chrono::Utc::now().timestamp();
    drop_stale_databases(&admin, secs).await;
    let name = format!("payoutd_test_{secs}_{}", &Uuid::new_v4().simple().to_string()[..10]);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create db");
    admin.close().await;
    let options = admin_opts.database(&name);
    let pool = payoutd_store::connect(options.clone(), 20).await.expect("connect test db");
    payoutd_store::migrate(&pool).await.expect("migrate");
    TestDb { pool, name, options }
}

/// Test databases older than an hour are left-overs of earlier runs.
async fn drop_stale_databases(admin: &PgPool, now: i64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'payoutd\\_test\\_%'")
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    for name in names {
        let Some(ts) = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok()) else { continue };
        if now - ts > 3600 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(admin)
                .await;
        }
    }
}

/// Knobs of one test app.
#[derive(Clone)]
pub struct AppOptions {
    pub faults: Faults,
    pub workers: usize,
    pub status_interval: Duration,
    pub processing_delay: Duration,
    pub request_timeout: Duration,
    pub engine: EngineConfig,
    pub balance: Decimal,
    pub callbacks: bool,
    /// Wraps the real connector, e.g. to observe the database at the moment of a call or to
    /// switch sandbox faults at a precise step.
    pub wrap: Option<Wrap>,
    /// More accounts next to the 8B partner one (see [`token_accounts`]): given the API's base
    /// URL and the database, the connectors to add.
    pub more_accounts: Option<MoreAccounts>,
}

pub type MoreAccounts = Arc<dyn Fn(&str, &PgPool) -> Vec<Arc<dyn Connector>> + Send + Sync>;

pub type Wrap = Arc<dyn Fn(Arc<dyn Connector>, Arc<Sandbox>, PgPool) -> Arc<dyn Connector> + Send + Sync>;

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            faults: Faults::default(),
            workers: 1,
            // Within the production constraint: 3 s > request timeout (0.5 s) + lease (2 s) +
            // safety margin (0.3 s). Worker::new refuses anything else.
            status_interval: Duration::from_secs(3),
            processing_delay: Duration::from_millis(100),
            request_timeout: Duration::from_millis(500),
            engine: fast_engine("test-worker"),
            balance: Decimal::from(1_000_000_000_i64),
            callbacks: true,
            wrap: None,
            more_accounts: None,
        }
    }
}

/// Engine settings with every wait shortened for tests, within the constraints production
/// settings obey (`EngineConfig::validate`).
pub fn fast_engine(worker_id: &str) -> EngineConfig {
    EngineConfig {
        worker_id: worker_id.to_owned(),
        concurrency: 16,
        lease: Duration::from_secs(2),
        heartbeat_every: Duration::from_millis(500),
        safety_margin: Duration::from_millis(300),
        idle_poll: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        check_retry: payoutd_core::RetryPolicy {
            base: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_attempts: 5,
        },
        call_retry: payoutd_core::RetryPolicy {
            base: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_attempts: 8,
        },
        in_doubt_max_attempts: 8,
        max_await: Duration::from_secs(60),
        provider_calls_per_second: 1000,
        ..EngineConfig::default()
    }
}

pub struct TestApp {
    pub db: TestDb,
    /// Base URL of the API, e.g. http://127.0.0.1:41234
    pub api: String,
    pub sandbox: SandboxHandle,
    pub connectors: Connectors,
    pub connector_config: EightBPartnerConfig,
    pub options: AppOptions,
    shutdown: CancellationToken,
    workers_stop: CancellationToken,
    tasks: JoinSet<()>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(options: AppOptions) -> TestApp {
        let db = fresh_db().await;
        Self::spawn_on(db, options).await
    }

    /// The API, a sandbox and `options.workers` in-process workers on `db`.
    pub async fn spawn_on(db: TestDb, options: AppOptions) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let api = format!("http://{}", listener.local_addr().expect("addr"));
        let mut sc = SandboxConfig::new(SERVICE_ID, Secret::new(PARTNER_SECRET));
        sc.callback_url = options.callbacks.then(|| format!("{api}/v1/callbacks/8b_partner"));
        sc.initial_balance = options.balance;
        sc.processing_delay = options.processing_delay;
        sc.callback_schedule_scale = 0.01;
        sc.min_check_delay = options.status_interval;
        sc.faults = options.faults.clone();
        let sandbox = Sandbox::start(sc, "127.0.0.1:0".parse().expect("addr")).await.expect("sandbox");

        let cc = connector_config(&sandbox.base_url(), options.request_timeout, options.status_interval);
        let mut connector: Arc<dyn Connector> = Arc::new(EightBPartner::new(cc.clone()).expect("connector"));
        if let Some(wrap) = &options.wrap {
            connector = wrap(connector, sandbox.sandbox().clone(), db.pool.clone());
        }
        let mut connectors = Connectors::new().with(connector);
        if let Some(more) = &options.more_accounts {
            for c in more(&api, &db.pool) {
                connectors = connectors.with(c);
            }
        }

        let shutdown = CancellationToken::new();
        let workers_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let state = payoutd_server::AppState::new(db.pool.clone(), connectors.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _ = payoutd_server::serve(listener, state, async move { stop.cancelled().await }).await;
        });
        let mut app = TestApp {
            db,
            api,
            sandbox,
            connectors,
            connector_config: cc,
            options: options.clone(),
            shutdown,
            workers_stop,
            tasks,
            http: reqwest::Client::new(),
        };
        for n in 0..options.workers {
            app.start_worker(&format!("{}-{n}", options.engine.worker_id));
        }
        app
    }

    /// Starts one more in-process worker.
    pub fn start_worker(&mut self, worker_id: &str) {
        let engine = EngineConfig { worker_id: worker_id.to_owned(), ..self.options.engine.clone() };
        let worker = Worker::new(self.db.pool.clone(), self.connectors.clone(), engine)
            .expect("test engine settings must pass the production configuration check");
        let stop = self.workers_stop.clone();
        self.tasks.spawn(async move {
            worker.run(stop).await;
        });
    }

    pub async fn token(&self, scopes: &[&str]) -> String {
        self.token_for("client-a", scopes).await
    }

    pub async fn token_for(&self, client: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let t = payoutd_store::api_tokens::create(&self.db.pool, client, "test", &scopes, None)
            .await
            .expect("token");
        t.token.expose().to_owned()
    }

    /// POST /v1/payouts with a full-access token; returns the new payout's id.
    pub async fn enqueue(&self, token: &str, body: &Value) -> Uuid {
        let r = self
            .http
            .post(format!("{}/v1/payouts", self.api))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("post");
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert!(status.is_success(), "enqueue failed: {status} {v}");
        Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
    }

    pub async fn enqueue_many(&self, n: usize, currency: &str, amount: &str) -> Vec<Uuid> {
        let token = self.token(&["*"]).await;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(
                self.enqueue(
                    &token,
                    &payout_body(&format!("p-{i}-{}", Uuid::new_v4().simple()), amount, currency),
                )
                .await,
            );
        }
        ids
    }

    pub async fn state(&self, id: Uuid) -> PayoutState {
        payoutd_store::payouts::get(&self.db.pool, id).await.expect("get").expect("exists").state
    }

    /// Waits until every payout of the database is final.
    pub async fn wait_all_final(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let open: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE next_run_at IS NOT NULL")
                .fetch_one(&self.db.pool)
                .await
                .expect("count");
            if open == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{open} payouts still open after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_state(&self, id: Uuid, wanted: PayoutState, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state(id).await;
            if s == wanted {
                return;
            }
            assert!(Instant::now() < deadline, "payout {id} is {s}, wanted {wanted} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the in-process workers (graceful), leaving the API and sandbox running.
    pub async fn stop_workers(&mut self) {
        self.workers_stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.workers_stop = CancellationToken::new();
    }

    /// Event reasons of a payout, oldest first.
    pub async fn reasons(&self, id: Uuid) -> Vec<String> {
        payoutd_store::payouts::timeline(&self.db.pool, id)
            .await
            .expect("timeline")
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    pub async fn shutdown(mut self) {
        self.workers_stop.cancel();
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.db.pool.close().await;
    }
}

/// The 8B partner connector settings every test uses against a sandbox at `base_url`.
pub fn connector_config(
    base_url: &str,
    request_timeout: Duration,
    status_interval: Duration,
) -> EightBPartnerConfig {
    let mut config = EightBPartnerConfig::new(base_url, SERVICE_ID, Secret::new(PARTNER_SECRET));
    config.request_timeout = request_timeout;
    config.min_status_interval = status_interval;
    config
}

/// A valid enqueue body.
pub fn payout_body(external_id: &str, amount: &str, currency: &str) -> Value {
    json!({
        "external_id": external_id,
        "amount": amount,
        "currency": currency,
        "destination": {
            "phone": "622851280",
            "client": "1234567890",
            "destination": "bank_transfer",
            "receiver_name": "Budi Santoso",
        }
    })
}

/// Every executed id in the sandbox ledger was executed exactly once.
pub fn assert_no_double_execution(sandbox: &SandboxHandle) {
    let twice: Vec<_> =
        sandbox.ledger().into_iter().filter(|e| e.executions > 1).map(|e| (e.id, e.executions)).collect();
    assert!(twice.is_empty(), "payouts executed more than once: {twice:?}");
    assert_eq!(sandbox.stats().double_executions, 0);
}

/// Posts a callback signed with `secret` as the 8B partner would; returns (HTTP status, body).
pub async fn send_callback(
    app: &TestApp,
    reference: &str,
    amount: &str,
    result: &str,
    secret: &str,
) -> (u16, String) {
    let dt = "2026-11-21 10:00:00";
    let destination = "bank_transfer";
    let hash = payoutd_providers::eightb_partner::signature::sign_callback(
        reference,
        dt,
        amount,
        result,
        destination,
        &Secret::new(secret),
    );
    let form = [
        ("id", reference),
        ("dt", dt),
        ("amount", amount),
        ("result", result),
        ("error", if result == "1" { "" } else { "declined by bank" }),
        ("destination", destination),
        ("hash", hash.as_str()),
    ];
    let body = serde_urlencoded::to_string(form).expect("form");
    let r = app
        .http
        .post(format!("{}/v1/callbacks/8b_partner", app.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("callback");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The row of a payout.
pub async fn row(app: &TestApp, id: Uuid) -> payoutd_store::PayoutRow {
    payoutd_store::payouts::get(&app.db.pool, id).await.expect("get").expect("exists")
}

/// Records a payout's check and intent under `lease` as the engine's first write does, but
/// without starting the submit: for tests that stop a worker between its intent and its submit
/// call (the engine itself commits "submit started" in the same write and goes on to the call).
pub async fn record_intent_only(
    pool: &PgPool,
    lease: &payoutd_store::queue::Lease,
    connector: &dyn Connector,
    id: Uuid,
) -> payoutd_store::PayoutRow {
    use payoutd_store::transitions::{self, AfterWrite, Transition};
    let r = payoutd_store::payouts::get(pool, id).await.expect("get").expect("exists");
    let reference = payoutd_engine::references::References::new().next(pool).await.expect("reference");
    let payout = payoutd_providers::PayoutForProvider { money: r.money, destination: r.destination.clone() };
    let frozen = connector.freeze_submit(&payout, &reference, chrono::Utc::now());
    let mut t = Transition::new(
        r.state,
        PayoutState::IntentRecorded,
        "worker:test",
        format!("intent recorded under reference {reference}"),
    );
    if r.state == PayoutState::Pending {
        t.via.push((PayoutState::Checked, "check passed".to_owned()));
    }
    t.intent = Some((reference, serde_json::to_value(&frozen).expect("frozen request")));
    t.after = AfterWrite::Continue;
    transitions::apply_and_read(pool, lease, &t).await.expect("intent written").expect("decodes")
}
