//! Figure 4: pickup latency when idle. One worker with nothing to do; a payout is enqueued
//! over the API, and the time from its insert to its first step written is read on the
//! database's clock (the instant connector's check adds nothing). Then the next, after the
//! worker went idle again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_store::api_tokens;
use rand::Rng;
use sqlx::postgres::PgConnectOptions;

use super::enqueue::body;
use super::instant::Instant as InstantConnector;
use super::meter::quantile;
use super::setup::{self, Api, BenchDb, Workers};
use super::{BenchArgs, Row};

pub async fn run(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "pickup").await?;
    let checks = Arc::new(Mutex::new(Vec::new()));
    let connectors = setup::only(Arc::new(InstantConnector {
        paid_on_submit: true,
        status_interval: Duration::from_secs(30),
        checks: Some(checks.clone()),
    }));
    let api = Api::start(db.pool(4).await?, &connectors).await?;
    let token = api_tokens::create(&db.pool, "bench", "bench", &["*".to_owned()], None).await?;
    let token = token.token.expose().to_owned();
    let workers =
        Workers::start(&db, &connectors, vec![setup::engine(0, args.concurrency, args.calls_per_second)], 8)
            .await?;
    let client = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..args.pickup_samples {
        let response = client
            .post(format!("{}/v1/payouts", api.base))
            .bearer_auth(&token)
            .json(&body(&run, n))
            .send()
            .await?;
        anyhow::ensure!(response.status().as_u16() == 201, "enqueue answered {}", response.status());
        // Long enough for the payout to finish and the worker to fall asleep again.
        let pause = rand::rng().random_range(30..60);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    setup::drain(&db.pool, Duration::from_secs(10)).await?;
    workers.stop().await;
    api.stop().await;
    // To the claim: the step's first provider call (the instant check) comes right after it.
    // One payout at a time, so the n-th check belongs to the n-th payout.
    let created: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM payouts ORDER BY created_at").fetch_all(&db.pool).await?;
    let mut to_claim: Vec<f64> = {
        let checks = checks.lock().unwrap_or_else(PoisonError::into_inner);
        created
            .iter()
            .zip(checks.iter())
            .map(|(c, k)| (*k - *c).num_microseconds().unwrap_or(0) as f64 / 1e6)
            .collect()
    };
    let mut samples: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(e.created_at) - p.created_at)::float8
           FROM payouts p JOIN payout_events e ON e.payout_id = p.id AND e.actor LIKE 'worker:%'
          GROUP BY p.id, p.created_at",
    )
    .fetch_all(&db.pool)
    .await?;
    db.drop_now().await?;
    let n = samples.len();
    let (p50, p99) = (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99));
    let (c50, c99) = (quantile(&mut to_claim, 0.5), quantile(&mut to_claim, 0.99));
    Ok(Row {
        figure: "4 pickup latency, idle worker",
        result: format!(
            "to the claim p50 {:.1} ms p99 {:.1} ms; to first step written p50 {:.1} ms p99 {:.1} ms",
            c50 * 1000.0,
            c99 * 1000.0,
            p50 * 1000.0,
            p99 * 1000.0
        ),
        rate: None,
        ratio: None,
        per: None,
        notes: format!("{n} samples, instant connector; from the enqueue's insert (its commit included)"),
    })
}
