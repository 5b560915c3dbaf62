//! Two workers, each with its own connection pool (as two processes would have), on one
//! database: no payout is handled twice.

use std::time::Duration;

use payoutd_sandbox::Faults;
use payoutd_tests::{AppOptions, TestApp, assert_no_double_execution};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_queue_without_double_work() {
    let faults = Faults {
        error_5xx_rate: 0.05,
        timeout_after_execute_rate: 0.03,
        timeout_delay: Duration::from_millis(900),
        duplicate_callback_rate: 0.2,
        early_callback_rate: 0.1,
        ..Faults::default()
    };
    let mut app = TestApp::spawn(AppOptions { faults, workers: 0, ..AppOptions::default() }).await;
    let n = 150;
    app.enqueue_many(n, "USD", "7.00").await;
    // Each worker gets its own pool, so they contend through Postgres only.
    let mut handles = Vec::new();
    for name in ["alpha", "beta"] {
        let pool = payoutd_store::connect(app.db.options.clone(), 8).await.unwrap();
        let engine =
            payoutd_engine::EngineConfig { worker_id: name.to_owned(), ..app.options.engine.clone() };
        let worker = payoutd_engine::Worker::new(pool, app.connectors.clone(), engine).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        handles.push((stop, tokio::spawn(async move { worker.run(s).await })));
    }
    app.wait_all_final(Duration::from_secs(60)).await;
    let mut reports = Vec::new();
    for (stop, h) in handles {
        stop.cancel();
        reports.push(h.await.unwrap());
    }
    assert!(reports.iter().all(|r| r.claimed > 0), "both workers should have worked: {reports:?}");

    // Every step a worker wrote carries the fencing token of its claim; no token was used by
    // two workers, and tokens of one payout only grow.
    let rows: Vec<(uuid::Uuid, i64, String)> = sqlx::query_as(
        "SELECT payout_id, fencing_token, actor FROM payout_events WHERE fencing_token IS NOT NULL ORDER BY payout_id, id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    for pair in rows.windows(2) {
        let ((p1, t1, a1), (p2, t2, a2)) = (&pair[0], &pair[1]);
        if p1 == p2 {
            assert!(t2 >= t1, "fencing token went backwards on {p1}");
            if t1 == t2 {
                assert_eq!(a1, a2, "two workers wrote {p1} under one claim");
            }
        }
    }
    let submits: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT payout_id, count(*) FROM payout_events WHERE reason LIKE 'submit attempt % started' GROUP BY payout_id HAVING count(*) > 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    // A second submit happens only in doubt (a 5xx, or a worker that lost its lease mid-call on
    // a loaded machine) and after the provider said NOT_FOUND.
    for (id, _) in &submits {
        let reasons = app.reasons(*id).await;
        assert!(
            reasons.iter().any(|r| r.contains("outcome unknown") || r.contains("outcome was never recorded")),
            "{id} resubmitted without being in doubt: {reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("NOT_FOUND")),
            "{id} resubmitted without a NOT_FOUND answer: {reasons:?}"
        );
    }
    assert_no_double_execution(&app.sandbox);
    app.stop_workers().await;
    app.shutdown().await;
}
