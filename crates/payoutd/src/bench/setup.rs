//! What every figure needs: a database of its own (created, migrated, dropped), payouts
//! inserted in bulk, workers and the API on this runtime.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use payoutd_engine::{EngineConfig, Worker, WorkerReport};
use payoutd_providers::Connectors;
use payoutd_store::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A database of one figure, dropped by [`BenchDb::drop_now`].
pub struct BenchDb {
    pub pool: PgPool,
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
    pub name: String,
}

impl BenchDb {
    pub async fn create(admin: &PgConnectOptions, figure: &str) -> anyhow::Result<Self> {
        let name = format!("payoutd_bench_{figure}");
        let pool = payoutd_store::connect(admin.clone(), 1).await.context("connecting to Postgres")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&pool)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await?;
        pool.close().await;
        let options = admin.clone().database(&name);
        let pool = payoutd_store::connect(options.clone(), 4).await?;
        payoutd_store::migrate(&pool).await?;
        Ok(Self { pool, options, admin: admin.clone(), name })
    }

    /// A pool of its own on this database (a worker's, the API's).
    pub async fn pool(&self, size: u32) -> anyhow::Result<PgPool> {
        Ok(payoutd_store::connect(self.options.clone(), size).await?)
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin = payoutd_store::connect(self.admin, 1).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(())
    }
}

/// The destination every bench payout pays to (8B partner's shape).
pub fn destination() -> serde_json::Value {
    serde_json::json!({
        "phone": "622851280",
        "client": "0001000000",
        "destination": "bank_transfer",
        "receiver_name": "Bench Receiver",
    })
}

/// Inserts `n` due payouts of `provider` with their "payout accepted" events, as the API
/// would, in one statement.
pub async fn insert_pending(pool: &PgPool, provider: &str, n: u64) -> anyhow::Result<()> {
    sqlx::query(
        "WITH p AS (
             INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account,
                                  amount, currency, destination, state, next_run_at)
             SELECT gen_random_uuid(), 'bench', 'pre-' || g, 'pre-' || g, '\\x00', $1, $1,
                    12.50, 'USD', $2, 'pending', now()
               FROM generate_series(1, $3) g
             RETURNING id)
         INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason)
         SELECT id, NULL, 'pending', 'api', 'payout accepted' FROM p",
    )
    .bind(provider)
    .bind(destination())
    .bind(n as i64)
    .execute(pool)
    .await
    .context("inserting payouts")?;
    sqlx::query("ANALYZE payouts").execute(pool).await?;
    Ok(())
}

/// Open payouts left (the partial index of scheduled payouts: cheap however many are final).
pub async fn open_payouts(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM payouts WHERE next_run_at IS NOT NULL")
        .fetch_one(pool)
        .await?)
}

/// Engine settings of the bench: production defaults, a budget high enough not to be the
/// limit, and `concurrency` steps in flight.
pub fn engine(n: usize, concurrency: usize, calls_per_second: u32) -> EngineConfig {
    EngineConfig {
        worker_id: format!("bench-worker-{n}"),
        concurrency,
        provider_calls_per_second: calls_per_second,
        idle_poll: Duration::from_millis(500),
        ..EngineConfig::default()
    }
}

/// Workers running on this runtime until [`Workers::stop`].
pub struct Workers {
    stop: CancellationToken,
    tasks: JoinSet<WorkerReport>,
}

impl Workers {
    pub async fn start(
        db: &BenchDb,
        connectors: &Connectors,
        configs: Vec<EngineConfig>,
        pool_size: u32,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for config in configs {
            let worker = Worker::new(db.pool(pool_size).await?, connectors.clone(), config)
                .context("bench engine settings")?;
            let stop = stop.clone();
            tasks.spawn(async move { worker.run(stop).await });
        }
        Ok(Self { stop, tasks })
    }

    pub async fn stop(mut self) -> Vec<WorkerReport> {
        self.stop.cancel();
        let mut reports = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            if let Ok(r) = r {
                reports.push(r);
            }
        }
        reports
    }
}

/// The HTTP API on a loopback port until [`Api::stop`].
pub struct Api {
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Api {
    pub async fn start(pool: PgPool, connectors: &Connectors) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve_on(listener, pool, connectors))
    }

    pub fn serve_on(listener: tokio::net::TcpListener, pool: PgPool, connectors: &Connectors) -> Self {
        let base = listener.local_addr().map(|a| format!("http://{a}")).unwrap_or_default();
        let state = payoutd_server::AppState::new(pool, connectors.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let _ = payoutd_server::serve(listener, state, async move { until.cancelled().await }).await;
        });
        Self { base, stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A connector set holding only `connector`.
pub fn only(connector: Arc<dyn payoutd_providers::Connector>) -> Connectors {
    Connectors::new().with(connector)
}

/// Waits until no payout is open, or `limit` passes. Returns whether all finished.
pub async fn drain(pool: &PgPool, limit: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if open_payouts(pool).await? == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p50 and p99 seconds from a payout's first worker step to its final state.
pub async fn time_to_final(pool: &PgPool) -> anyhow::Result<(f64, f64)> {
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH first AS (
             SELECT payout_id, min(created_at) AS at FROM payout_events
              WHERE actor LIKE 'worker:%' GROUP BY payout_id)
         SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM p.finalized_at - f.at))::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM p.finalized_at - f.at))::float8
           FROM payouts p JOIN first f ON f.payout_id = p.id
          WHERE p.finalized_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok((p50.unwrap_or(0.0), p99.unwrap_or(0.0)))
}

/// Payouts in each final state: (paid, other final or parked).
pub async fn outcomes(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'paid'),
                count(*) FILTER (WHERE state <> 'paid' AND next_run_at IS NULL)
           FROM payouts",
    )
    .fetch_one(pool)
    .await?)
}
