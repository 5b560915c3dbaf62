//! Figure 6: the worker's memory with many payouts waiting at the provider. `waiting` payouts
//! are put in `submitted` (accepted by the provider, not final) and one worker polls them, at
//! the shortest status interval the engine's rules allow, for `rss_secs`. The process also
//! holds the bench itself (no sandbox: the instant connector answers "processing").

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use super::instant::{INSTANT, Instant as InstantConnector};
use super::meter;
use super::setup::{self, BenchDb, Workers};
use super::{BenchArgs, Row};

pub async fn run(admin: &PgConnectOptions, args: &BenchArgs) -> anyhow::Result<Row> {
    let db = BenchDb::create(admin, "rss").await?;
    sqlx::query(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                              currency, destination, state, next_run_at, provider_reference, submit_request,
                              submitted_at, submit_attempts, provider_contact_bound)
         SELECT gen_random_uuid(), 'bench', 'w' || g, 'w' || g, '\\x00', $1, $1, 12.50, 'USD', $2, 'submitted',
                now(), 'PO' || lpad(g::text, 18, '0'),
                jsonb_build_object('reference', 'PO' || lpad(g::text, 18, '0'), 'body', '{}'::jsonb),
                now() - interval '1 minute', 1, now() - interval '1 minute'
           FROM generate_series(1, $3) g",
    )
    .bind(INSTANT)
    .bind(setup::destination())
    .bind(args.waiting as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query("ANALYZE payouts").execute(&db.pool).await?;
    // Lease 2 s, heartbeat 0.5 s, margin 0.3 s, timeout 0.1 s: a 3 s interval is allowed.
    let interval = Duration::from_secs(3);
    let connectors = setup::only(Arc::new(InstantConnector {
        paid_on_submit: false,
        status_interval: interval,
        checks: None,
    }));
    let mut config = setup::engine(0, args.concurrency, args.calls_per_second);
    config.lease = Duration::from_secs(2);
    config.heartbeat_every = Duration::from_millis(500);
    config.safety_margin = Duration::from_millis(300);
    let (rss_before, _) = meter::rss();
    let workers = Workers::start(&db, &connectors, vec![config], args.pool).await?;
    let until = Instant::now() + Duration::from_secs(args.rss_secs);
    let mut max = 0;
    while Instant::now() < until {
        max = max.max(meter::rss().0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports = workers.stop().await;
    let polls: i64 = sqlx::query_scalar("SELECT COALESCE(sum(status_queries), 0)::int8 FROM payouts")
        .fetch_one(&db.pool)
        .await?;
    db.drop_now().await?;
    let steps: u64 = reports.iter().map(|r| r.steps).sum();
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(Row {
        figure: "6 worker RSS, payouts waiting",
        result: format!("{:.0} MB max ({:.0} MB before the worker started)", mb(max), mb(rss_before)),
        rate: None,
        ratio: None,
        per: None,
        notes: format!(
            "{} waiting, {} s, {steps} steps, {polls} status queries ({:.0}/s)",
            args.waiting,
            args.rss_secs,
            polls as f64 / args.rss_secs as f64
        ),
    })
}
