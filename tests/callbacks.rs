//! DESIGN rule 6: callbacks verified over the exact bytes, checked against the payout, stored
//! and applied in one transaction; duplicates are no-ops; unverifiable ones change nothing but
//! bring the status query forward; an early callback may finish the payout.

use std::time::Duration;

use payoutd_core::PayoutState;
use payoutd_sandbox::Faults;
use payoutd_tests::{AppOptions, PARTNER_SECRET, TestApp, assert_no_double_execution, row, send_callback};

/// A submitted payout whose provider never calls back and whose status poll is far away.
async fn submitted_payout() -> (TestApp, uuid::Uuid, String) {
    let mut options = AppOptions { callbacks: false, ..AppOptions::default() };
    options.status_interval = Duration::from_secs(30);
    options.processing_delay = Duration::from_secs(600);
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, "USD", "25.00").await[0];
    app.wait_for_state(id, PayoutState::Submitted, Duration::from_secs(10)).await;
    let reference = row(&app, id).await.provider_reference.unwrap();
    (app, id, reference)
}

async fn callbacks(app: &TestApp) -> Vec<(bool, bool, String)> {
    sqlx::query_as("SELECT verified, duplicate, outcome FROM provider_callbacks ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_valid_callback_finishes_the_payout_and_a_duplicate_is_a_no_op() {
    let (app, id, reference) = submitted_payout().await;
    let (status, body) = send_callback(&app, &reference, "25.00", "1", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    assert_eq!(app.state(id).await, PayoutState::Paid);
    let events = app.reasons(id).await.len();

    let (status, body) = send_callback(&app, &reference, "25.00", "1", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "OK"), "a redelivery is acknowledged");
    assert_eq!(app.reasons(id).await.len(), events, "a duplicate changes nothing");
    let stored = callbacks(&app).await;
    assert_eq!(stored.len(), 2, "every delivery is stored");
    assert_eq!(stored[0], (true, false, "applied:paid".to_owned()));
    assert_eq!(stored[1], (true, true, "duplicate_ignored".to_owned()));
    let last = payoutd_store::payouts::timeline(&app.db.pool, id).await.unwrap().pop().unwrap();
    assert_eq!(last.actor, "callback:8b_partner");
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_callback_fails_the_payout() {
    let (app, id, reference) = submitted_payout().await;
    let (status, body) = send_callback(&app, &reference, "25.00", "0", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    assert_eq!(app.state(id).await, PayoutState::Failed);
    app.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_changes_nothing_and_brings_the_status_query_forward() {
    let (app, id, reference) = submitted_payout().await;
    let before = row(&app, id).await;
    let (status, body) = send_callback(&app, &reference, "25.00", "1", "not-the-secret").await;
    assert_eq!((status, body.as_str()), (200, "ERROR"));
    let after = row(&app, id).await;
    assert_eq!(after.state, PayoutState::Submitted, "an unverifiable callback changes no state");
    assert!(after.next_run_at.unwrap() < before.next_run_at.unwrap(), "the status query was brought forward");
    let stored = callbacks(&app).await;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].0, "stored as unverified");
    // Tampered amount with the original signature: also unverifiable.
    let (status, _) = send_callback(&app, &reference, "25.00", "1", "x").await;
    assert_eq!(status, 200);
    assert_eq!(app.state(id).await, PayoutState::Submitted);
    app.shutdown().await;
}

#[tokio::test]
async fn a_callback_whose_amount_differs_parks_the_payout_for_review() {
    let (app, id, reference) = submitted_payout().await;
    let (status, body) = send_callback(&app, &reference, "26.00", "1", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::NeedsReview);
    assert!(r.last_error.unwrap().contains("differs"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_callback_for_an_unknown_reference_is_refused() {
    let (app, _, _) = submitted_payout().await;
    let (status, body) = send_callback(&app, "PO999999999999999999", "1.00", "1", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "ERROR"));
    app.shutdown().await;
}

#[tokio::test]
async fn an_early_callback_finishes_the_payout_before_the_submit_answer() {
    // The sandbox sends the final callback before it answers the payout request; the worker's
    // later write is fenced out and the payout stays as the callback left it.
    let faults = Faults { early_callback_rate: 1.0, ..Faults::default() };
    let app = TestApp::spawn(AppOptions { faults, ..AppOptions::default() }).await;
    let ids = app.enqueue_many(5, "USD", "4.00").await;
    app.wait_all_final(Duration::from_secs(20)).await;
    for id in ids {
        let r = row(&app, id).await;
        assert_eq!(r.state, PayoutState::Paid);
        let events = payoutd_store::payouts::timeline(&app.db.pool, id).await.unwrap();
        let paid = events.iter().find(|e| e.to_state == "paid").unwrap();
        assert_eq!(paid.actor, "callback:8b_partner");
        assert_eq!(events.iter().filter(|e| e.to_state == "paid").count(), 1);
    }
    assert_no_double_execution(&app.sandbox);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_and_dropped_callbacks_under_load_end_consistent() {
    let faults = Faults {
        duplicate_callback_rate: 0.5,
        drop_callback_rate: 0.3,
        decline_rate: 0.2,
        ..Faults::default()
    };
    let app = TestApp::spawn(AppOptions { faults, ..AppOptions::default() }).await;
    let ids = app.enqueue_many(40, "IDR", "50000").await;
    app.wait_all_final(Duration::from_secs(40)).await;
    let ledger = app.sandbox.ledger();
    for id in ids {
        let r = row(&app, id).await;
        let entry =
            ledger.iter().find(|e| Some(&e.id) == r.provider_reference.as_ref()).expect("in the ledger");
        match r.state {
            PayoutState::Paid => assert_eq!(entry.status, payoutd_sandbox::LedgerStatus::Paid),
            PayoutState::Failed => assert_ne!(entry.status, payoutd_sandbox::LedgerStatus::Paid),
            other => panic!("unexpected final state {other}"),
        }
    }
    let dups: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_callbacks WHERE duplicate")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(dups > 0, "the duplicate fault should have produced duplicates");
    assert_no_double_execution(&app.sandbox);
    app.shutdown().await;
}
