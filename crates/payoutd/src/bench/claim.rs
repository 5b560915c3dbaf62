//! Figure 5: what a claim costs with a million final payouts in the table, against the same
//! claim in a table holding only the due ones. It times the engine's own claim
//! (`queue::claim_batch`), so it stays in step with the claim SQL.

use std::time::{Duration, Instant};

use payoutd_store::queue;
use sqlx::postgres::PgConnectOptions;

use super::meter::quantile;
use super::setup::{self, BenchDb};
use super::{BenchArgs, Row};

const DUE: u64 = 1_000;
const BATCH: i64 = 32;
const ROUNDS: usize = 3;

/// Median milliseconds of one claim of `BATCH` due payouts.
async fn median_claim(db: &BenchDb) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        sqlx::query("UPDATE payouts SET lease_owner = NULL, lease_expires_at = NULL WHERE state = 'pending'")
            .execute(&db.pool)
            .await?;
        sqlx::query("VACUUM ANALYZE payouts").execute(&db.pool).await?;
        for _ in 0..(DUE as i64 / BATCH) {
            let started = Instant::now();
            let batch = queue::claim_batch(&db.pool, "bench", BATCH, Duration::from_secs(60)).await?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(batch.ready.len() as i64 == BATCH, "claimed {} of {BATCH}", batch.ready.len());
        }
    }
    Ok(quantile(&mut samples, 0.5))
}

pub async fn run(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "claim").await?;
    setup::insert_pending(&db.pool, "8b_partner", DUE).await?;
    let empty = median_claim(&db).await?;
    let fill = Instant::now();
    sqlx::query(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                              currency, destination, state, next_run_at, provider_reference, submit_request,
                              finalized_at)
         SELECT gen_random_uuid(), 'c', 'e' || g, 'k' || g, '\\x00', '8b_partner', 'a', 10, 'USD', '{}', 'paid', NULL,
                'PO' || lpad(g::text, 18, '0'), '{}', now()
           FROM generate_series(1, $1) g",
    )
    .bind(args.final_rows as i64)
    .execute(&db.pool)
    .await?;
    let fill = fill.elapsed();
    let full = median_claim(&db).await?;
    db.drop_now().await?;
    Ok(Row {
        figure: "5 claim of 32, final rows vs empty",
        result: format!(
            "{full:.2} ms vs {empty:.2} ms (median of {} claims each)",
            ROUNDS * (DUE as usize / 32)
        ),
        rate: None,
        ratio: Some(full / empty),
        per: None,
        notes: format!("{} final rows inserted in {:.0} s", args.final_rows, fill.as_secs_f64()),
    })
}
