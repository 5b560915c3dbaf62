//! The machine's commit capacity, measured in the same run: the transaction of `pgbench -N`
//! (update one account, read it back, append a history row; one commit) from 16 clients on
//! the bench's own database. Throughputs are judged as ratios to it, because on a shared
//! machine absolute figures swing with the hour.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use tokio::task::JoinSet;

use super::setup::BenchDb;

const CLIENTS: usize = 16;
const ACCOUNTS: i64 = 100_000;

/// Commits per second over `duration`.
pub async fn measure(db: &BenchDb, duration: Duration) -> anyhow::Result<f64> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS bench_accounts, bench_history;
         CREATE TABLE bench_accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL,
                                      filler char(84)) WITH (fillfactor = 100);
         INSERT INTO bench_accounts SELECT g, 1, 0, '' FROM generate_series(1, {ACCOUNTS}) g;
         CREATE TABLE bench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));"
    )))
    .execute(&db.pool)
    .await
    .context("preparing the commit-capacity tables")?;
    sqlx::query("VACUUM ANALYZE bench_accounts").execute(&db.pool).await?;
    let pool = db.pool(CLIENTS as u32).await?;
    let until = Instant::now() + duration;
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let pool = pool.clone();
        clients.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut commits = 0u64;
            while Instant::now() < until {
                let (aid, delta) = {
                    let mut rng = rand::rng();
                    (rng.random_range(1..=ACCOUNTS as i32), rng.random_range(-5000..=5000))
                };
                let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
                sqlx::query("UPDATE bench_accounts SET abalance = abalance + $2 WHERE aid = $1")
                    .bind(aid)
                    .bind(delta)
                    .execute(&mut *tx)
                    .await?;
                let _: i32 = sqlx::query_scalar("SELECT abalance FROM bench_accounts WHERE aid = $1")
                    .bind(aid)
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO bench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, $1, $2, now())",
                )
                .bind(aid)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                commits += 1;
            }
            Ok::<u64, sqlx::Error>(commits)
        });
    }
    let started = Instant::now();
    let mut commits = 0;
    while let Some(r) = clients.join_next().await {
        commits += r??;
    }
    let rate = commits as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    sqlx::raw_sql("DROP TABLE bench_accounts, bench_history").execute(&db.pool).await?;
    Ok(rate)
}
