//! Figure 2: HTTP enqueue alone. Workers stopped; 32 keep-alive clients each send single
//! `POST /v1/payouts` requests back to back. Every 201 means the payout is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use payoutd_store::api_tokens;
use sqlx::postgres::PgConnectOptions;
use tokio::task::JoinSet;

use super::instant::{INSTANT, Instant as InstantConnector};
use super::meter::{self, quantile};
use super::setup::{self, Api, BenchDb};
use super::{BenchArgs, Row};

const CLIENTS: usize = 32;

/// A payout request body; `n` makes its external id unique.
pub fn body(run: &str, n: u64) -> serde_json::Value {
    serde_json::json!({
        "external_id": format!("bench-{run}-{n}"),
        "amount": "12.50",
        "currency": "USD",
        "provider": INSTANT,
        "destination": setup::destination(),
    })
}

pub async fn run(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "enqueue").await?;
    let connectors = setup::only(Arc::new(InstantConnector {
        paid_on_submit: true,
        status_interval: Duration::from_secs(30),
        checks: None,
    }));
    let api = Api::start(db.pool(args.pool).await?, &connectors).await?;
    let token = api_tokens::create(&db.pool, "bench", "bench", &["*".to_owned()], None).await?;
    let token = token.token.expose().to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let total = args.enqueue_requests;
    let next = Arc::new(AtomicU64::new(0));

    let pg = meter::PgCpu::start(&db.name);
    let before = meter::snapshot(&db.pool, &pg).await?;
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        // One client each: its own keep-alive connection.
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
        let (url, token, run, next) =
            (format!("{}/v1/payouts", api.base), token.clone(), run.clone(), next.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let sent = Instant::now();
                let response = client.post(&url).bearer_auth(&token).json(&body(&run, n)).send().await?;
                anyhow::ensure!(response.status().as_u16() == 201, "enqueue answered {}", response.status());
                latencies.push(sent.elapsed().as_secs_f64());
            }
            Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = clients.join_next().await {
        latencies.extend(r.context("an enqueue client")??);
    }
    let took = started.elapsed();
    let after = meter::snapshot(&db.pool, &pg).await?;
    let mut cost = before.to(&after);
    cost.elapsed = took;
    api.stop().await;
    db.drop_now().await?;
    let rate = total as f64 / took.as_secs_f64();
    let (p50, p99) = (quantile(&mut latencies, 0.5), quantile(&mut latencies, 0.99));
    Ok(Row {
        figure: "2 HTTP enqueue, 32 clients",
        result: format!("{rate:.0} payouts/s; latency p50 {:.1} ms p99 {:.1} ms", p50 * 1000.0, p99 * 1000.0),
        rate: Some(rate),
        ratio: None,
        per: Some(cost.per(total)),
        notes: format!("{total} requests, workers stopped"),
    })
}
