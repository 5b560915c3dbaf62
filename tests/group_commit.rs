//! Group commit (issue 12): many payouts' transitions share one commit, and each still keeps
//! every rule of a single write (DESIGN rules 1, 2, 3): its own fencing token decides whether
//! it is written, and its state change, events and next run time commit together or not at all.

use std::time::Duration;

use payoutd_core::PayoutState;
use payoutd_engine::transition_writer::TransitionWriter;
use payoutd_store::queue::{self, Lease};
use payoutd_store::transition_batch;
use payoutd_store::transitions::{HoldCheck, SubmitStart, Transition};
use payoutd_store::{PgPool, StoreError, payouts};
use payoutd_tests::{AppOptions, TestApp, assert_no_double_execution, record_intent_only, row};

fn no_workers() -> AppOptions {
    AppOptions { workers: 0, ..AppOptions::default() }
}

async fn events_of(pool: &PgPool, id: uuid::Uuid) -> usize {
    payouts::timeline(pool, id).await.unwrap().len()
}

#[tokio::test]
async fn a_batch_writes_the_payouts_whose_lease_holds_and_nothing_of_the_one_taken_over() {
    let app = TestApp::spawn(no_workers()).await;
    let ids = app.enqueue_many(3, "USD", "2.00").await;
    let pool = &app.db.pool;
    let claimed = queue::claim_due(pool, "w", 3, Duration::from_secs(30)).await.unwrap();
    let leases: Vec<Lease> = claimed.iter().map(|(_, l)| l.clone()).collect();
    // Another worker took the second payout over: its fencing token moved on.
    let stolen = &leases[1];
    sqlx::query("UPDATE payouts SET fencing_token = fencing_token + 1 WHERE id = $1")
        .bind(stolen.payout_id)
        .execute(pool)
        .await
        .unwrap();
    let before: Vec<usize> = futures_events(pool, &ids).await;
    let t = Transition::new(PayoutState::Pending, PayoutState::Checked, "worker:w", "check passed");
    let items: Vec<(&Lease, &Transition)> = leases.iter().map(|l| (l, &t)).collect();
    let results = transition_batch::apply_batch(pool, &items).await.unwrap();

    assert_eq!(results.len(), 3);
    for (lease, result) in leases.iter().zip(&results) {
        let r = row(&app, lease.payout_id).await;
        let events = events_of(pool, lease.payout_id).await;
        let was = before[ids.iter().position(|id| *id == lease.payout_id).unwrap()];
        if lease.payout_id == stolen.payout_id {
            assert!(matches!(result, Err(StoreError::LeaseLost(_))), "{result:?}");
            assert_eq!(r.state, PayoutState::Pending, "a fenced-out write changes nothing");
            assert_eq!(events, was, "and leaves no event");
        } else {
            let written = result.as_ref().unwrap().as_ref().unwrap();
            assert_eq!((written.state, r.state), (PayoutState::Checked, PayoutState::Checked));
            assert_eq!(events, was + 1, "its event commits with it");
        }
    }
    app.shutdown().await;
}

async fn futures_events(pool: &PgPool, ids: &[uuid::Uuid]) -> Vec<usize> {
    let mut counts = Vec::new();
    for id in ids {
        counts.push(events_of(pool, *id).await);
    }
    counts
}

#[tokio::test]
async fn a_batch_the_database_refuses_writes_nothing_and_the_writer_retries_each_write_alone() {
    let app = TestApp::spawn(no_workers()).await;
    app.enqueue_many(2, "USD", "3.00").await;
    let pool = &app.db.pool;
    let claimed = queue::claim_due(pool, "w", 2, Duration::from_secs(30)).await.unwrap();
    let (good, bad) = (claimed[0].1.clone(), claimed[1].1.clone());
    // The bad write claims a provider id another payout of the account already carries (a
    // unique index): the database refuses the whole statement.
    sqlx::query("UPDATE payouts SET provider_payout_id = 'TAKEN' WHERE id = $1")
        .bind(good.payout_id)
        .execute(pool)
        .await
        .unwrap();
    let ok = Transition::new(PayoutState::Pending, PayoutState::Checked, "worker:w", "check passed");
    let mut clash = ok.clone();
    clash.provider_payout_id = Some("TAKEN".into());
    let whole = transition_batch::apply_batch(pool, &[(&good, &ok), (&bad, &clash)]).await;
    assert!(matches!(whole, Err(StoreError::Database(_))), "{whole:?}");
    for id in [good.payout_id, bad.payout_id] {
        assert_eq!(row(&app, id).await.state, PayoutState::Pending, "nothing of a refused batch is written");
    }

    // Through the writer both go in whatever commits it makes; the good one is written either way.
    let (writer, lanes) = TransitionWriter::start(pool.clone());
    let (a, b) = tokio::join!(writer.write(&good, ok.clone()), writer.write(&bad, clash));
    assert_eq!(a.unwrap().unwrap().state, PayoutState::Checked);
    assert!(matches!(b, Err(StoreError::Database(_))), "{b:?}");
    assert_eq!(row(&app, bad.payout_id).await.state, PayoutState::Pending);
    drop(writer);
    for lane in lanes {
        lane.await.unwrap();
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_submit_start_is_written_only_under_a_live_lease_and_without_a_hold() {
    let app = TestApp::spawn(no_workers()).await;
    let ids = app.enqueue_many(2, "USD", "4.00").await;
    let pool = &app.db.pool;
    let connector = app.connectors.get("8b_partner").unwrap().clone();
    let claimed = queue::claim_due(pool, "w", 2, Duration::from_secs(30)).await.unwrap();
    let leases: Vec<Lease> = claimed.iter().map(|(_, l)| l.clone()).collect();
    for lease in &leases {
        record_intent_only(pool, lease, connector.as_ref(), lease.payout_id).await;
    }
    let start = || {
        let mut t = Transition::new(
            PayoutState::IntentRecorded,
            PayoutState::IntentRecorded,
            "worker:w",
            "submit started",
        );
        t.submit_start =
            Some(SubmitStart { lease: Duration::from_secs(30), request_timeout: Duration::from_secs(5) });
        t.hold_check = HoldCheck::RestoreMark;
        t.after = payoutd_store::transitions::AfterWrite::Continue;
        t
    };
    // The first payout's lease has run out (nobody claimed it yet, so its token still matches).
    sqlx::query("UPDATE payouts SET lease_expires_at = now() - interval '1 millisecond' WHERE id = $1")
        .bind(leases[0].payout_id)
        .execute(pool)
        .await
        .unwrap();
    let (t0, t1) = (start(), start());
    let results = transition_batch::apply_batch(pool, &[(&leases[0], &t0), (&leases[1], &t1)]).await.unwrap();
    assert!(matches!(results[0], Err(StoreError::LeaseLost(_))), "{:?}", results[0]);
    let started = results[1].as_ref().unwrap().as_ref().unwrap();
    assert_eq!((started.submit_attempts, started.submit_in_flight), (1, true));
    let first = row(&app, ids[0]).await;
    assert_eq!(
        (first.submit_attempts, first.submit_in_flight),
        (0, false),
        "no start under an expired lease"
    );
    let reasons = app.reasons(leases[1].payout_id).await;
    assert_eq!(reasons.last().map(String::as_str), Some("submit attempt 1 started"), "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| r.contains("submit")).count(),
        1,
        "a write that only starts a submit records just that: {reasons:?}"
    );

    // An open restore mark holds the start back, in the same statement.
    let (_, lease) = {
        sqlx::query(
            "INSERT INTO restore_marks (id, backup_taken_at, marked_by, reason, reference_floor)
             VALUES (gen_random_uuid(), now(), 'operator:test', 'test', 0)",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query("UPDATE payouts SET lease_owner = NULL, lease_expires_at = NULL, next_run_at = now() WHERE id = $1")
            .bind(ids[0])
            .execute(pool)
            .await
            .unwrap();
        queue::claim_due(pool, "w", 1, Duration::from_secs(30)).await.unwrap().remove(0)
    };
    let held = transition_batch::apply_batch(pool, &[(&lease, &start())]).await.unwrap();
    assert!(matches!(held[0], Err(StoreError::Held(_))), "{:?}", held[0]);
    assert_eq!(row(&app, ids[0]).await.submit_attempts, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_busy_worker_commits_many_payouts_transitions_together() {
    let mut options = AppOptions::default();
    options.engine.concurrency = 64;
    let app = TestApp::spawn(options).await;
    let ids = app.enqueue_many(120, "USD", "1.50").await;
    app.wait_all_final(Duration::from_secs(60)).await;
    let pool = &app.db.pool;
    // Events written by the engine: how many transactions wrote them (xmin is the writing
    // transaction's id), and how many of those carried more than one payout.
    let (events, transactions, shared): (i64, i64, i64) = sqlx::query_as(
        "WITH t AS (SELECT xmin::text AS tx, count(DISTINCT payout_id) AS payouts, count(*) AS events
                      FROM payout_events WHERE actor LIKE 'worker:%' GROUP BY 1)
         SELECT sum(events)::int8, count(*), count(*) FILTER (WHERE payouts > 1) FROM t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    for id in &ids {
        assert_eq!(row(&app, *id).await.state, PayoutState::Paid);
    }
    println!("{events} engine events of {} payouts in {transactions} commits, {shared} shared", ids.len());
    assert!(shared > 0, "no commit carried two payouts: {transactions} commits for {events} events");
    assert_no_double_execution(&app.sandbox);
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_enqueues_share_commits_and_each_key_stores_one_payout() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    // 60 requests at once: 40 distinct payouts, and 20 that repeat one of the first 10 keys
    // with the same body (replays) or another body (conflicts).
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..60 {
        let n = if i < 40 { i } else { i % 10 };
        let amount = if i >= 50 { "9.99" } else { "1.00" };
        let body = payoutd_tests::payout_body(&format!("gc-{n}"), amount, "USD");
        let req = app
            .http
            .post(format!("{}/v1/payouts", app.api))
            .bearer_auth(&token)
            .header("idempotency-key", format!("gc-key-{n}"))
            .json(&body);
        requests.spawn(async move {
            let r = req.send().await.expect("post");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json");
            (i, status, v)
        });
    }
    let answers = requests.join_all().await;
    let pool = &app.db.pool;
    let mut created = std::collections::HashMap::new();
    for (i, status, v) in &answers {
        match status {
            201 => {
                let n = if *i < 40 { *i } else { i % 10 };
                assert!(created.insert(n, v["id"].clone()).is_none(), "two payouts for key {n}");
            }
            200 | 409 => {}
            other => panic!("request {i}: {other} {v}"),
        }
    }
    assert_eq!(created.len(), 40, "one payout per key");
    let conflicts = answers.iter().filter(|(_, s, _)| *s == 409).count();
    let replays = answers.iter().filter(|(_, s, _)| *s == 200).count();
    // Requests 50..59 carry another body under a taken key; 40..49 replay theirs. Which request
    // of a key arrives first decides which one is stored, so only the totals are fixed.
    assert_eq!((replays + conflicts, created.len()), (20, 40));
    let (payouts, commits): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM payouts")
            .fetch_one(pool)
            .await
            .unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payout_events WHERE reason = 'payout accepted'")
            .fetch_one(pool)
            .await
            .unwrap();
    println!("{payouts} payouts in {commits} commits");
    assert!(commits < payouts, "no commit carried two payouts: {commits} commits for {payouts}");
    assert_eq!(
        (payouts, events),
        (40, 40),
        "each stored payout has its first event, and no other was stored"
    );
    app.shutdown().await;
}
