//! DESIGN rule 6: callbacks verified over the exact bytes, checked against the payout, stored
//! and applied in one transaction; duplicates are no-ops; unverifiable ones change nothing but
//! bring the status query forward; an early callback may finish the payout.

use std::time::Duration;

use payoutd_core::PayoutState;
use payoutd_sandbox::Faults;
use payoutd_tests::{AppOptions, PARTNER_SECRET, TestApp, assert_no_double_execution, row, send_callback};

/// A submitted payout whose provider never calls back and whose status poll is far away.
async fn submitted_payout() -> (TestApp, uuid::Uuid, String) {
    submitted_payout_of("USD", "25.00").await
}

async fn submitted_payout_of(currency: &str, amount: &str) -> (TestApp, uuid::Uuid, String) {
    let mut options = AppOptions { callbacks: false, ..AppOptions::default() };
    options.status_interval = Duration::from_secs(30);
    options.processing_delay = Duration::from_secs(600);
    let app = TestApp::spawn(options).await;
    let id = app.enqueue_many(1, currency, amount).await[0];
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
async fn item4_a_callback_whose_amount_differs_changes_nothing_and_asks_the_provider() {
    let (app, id, reference) = submitted_payout().await;
    let before = row(&app, id).await;
    let (status, body) = send_callback(&app, &reference, "26.00", "1", PARTNER_SECRET).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ERROR"),
        "not taken: the provider's own status answer decides"
    );
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::Submitted, "a mismatching callback changes no state");
    assert!(r.next_run_at.unwrap() < before.next_run_at.unwrap(), "the status query was brought forward");
    let reasons = app.reasons(id).await;
    assert!(reasons.iter().any(|r| r.contains("callback amount 26.00 differs")), "{reasons:?}");
    app.shutdown().await;
}

/// Posts a callback form as given (field values exactly as written).
async fn post_form(app: &TestApp, fields: &[(&str, &str)]) -> (u16, String) {
    let body = serde_urlencoded::to_string(fields).unwrap();
    let r = app
        .http
        .post(format!("{}/v1/callbacks/8b_partner", app.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn item4_a_paid_callback_re_split_into_a_validly_signed_failed_one_is_refused() {
    let (app, id, reference) = submitted_payout_of("USD", "10.50").await;
    let dt = "2026-11-21 10:00:00";
    // The genuine PAID callback's signature: md5(id + dt + "10.50" + "1" + "bank_transfer" + key).
    let hash = payoutd_providers::eightb_partner::signature::sign_callback(
        &reference,
        dt,
        "10.50",
        "1",
        "bank_transfer",
        &payoutd_core::Secret::new(PARTNER_SECRET),
    );
    // The same bytes split differently: "10.5" + "0" + "1bank_transfer": a FAILED callback with
    // a valid signature and an amount that is numerically right.
    let forged = [
        ("id", reference.as_str()),
        ("dt", dt),
        ("amount", "10.5"),
        ("result", "0"),
        ("error", "forged"),
        ("destination", "1bank_transfer"),
        ("hash", hash.as_str()),
    ];
    let (status, body) = post_form(&app, &forged).await;
    assert_eq!((status, body.as_str()), (200, "ERROR"));
    assert_eq!(app.state(id).await, PayoutState::Submitted, "the forged FAILED was not applied");
    let reasons = app.reasons(id).await;
    assert!(
        reasons.iter().any(|r| r.contains("callback not applied") && r.contains("destination")),
        "{reasons:?}"
    );
    // The genuine one still finishes the payout.
    let genuine = [
        ("id", reference.as_str()),
        ("dt", dt),
        ("amount", "10.50"),
        ("result", "1"),
        ("error", ""),
        ("destination", "bank_transfer"),
        ("hash", hash.as_str()),
    ];
    assert_eq!(post_form(&app, &genuine).await, (200, "OK".to_owned()));
    assert_eq!(app.state(id).await, PayoutState::Paid);
    app.shutdown().await;
}

#[tokio::test]
async fn item4_an_amount_echoed_in_another_format_is_still_accepted() {
    let (app, id, reference) = submitted_payout_of("IDR", "150000").await;
    let (status, body) = send_callback(&app, &reference, "150000.00", "1", PARTNER_SECRET).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    assert_eq!(app.state(id).await, PayoutState::Paid);
    app.shutdown().await;
}

/// Parks a submitted payout as the engine would (a fenced transition under a lease).
async fn park(app: &TestApp, id: uuid::Uuid) {
    sqlx::query("UPDATE payouts SET next_run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    // The app's own worker may take the due payout first (it only defers it: the status
    // interval has not passed); claim it once it has let go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (r, lease) = loop {
        let claimed = payoutd_store::queue::claim_due(&app.db.pool, "parker", 1, Duration::from_secs(5))
            .await
            .unwrap()
            .pop();
        if let Some(claimed) = claimed {
            break claimed;
        }
        assert!(std::time::Instant::now() < deadline, "never claimed");
        sqlx::query("UPDATE payouts SET next_run_at = now() WHERE id = $1 AND lease_owner IS NULL")
            .bind(id)
            .execute(&app.db.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.id, id);
    let mut t = payoutd_store::transitions::Transition::new(
        PayoutState::Submitted,
        PayoutState::NeedsReview,
        "worker:parker",
        "no final answer in time",
    );
    t.last_error = Some("no final answer in time".into());
    payoutd_store::transitions::apply(&app.db.pool, &lease, &t).await.unwrap();
    assert_eq!(app.state(id).await, PayoutState::NeedsReview);
}

#[tokio::test]
async fn item5_a_verified_final_callback_resolves_needs_review_with_actor_and_reason() {
    for (result, resolved) in [("1", PayoutState::Paid), ("0", PayoutState::Failed)] {
        let (app, id, reference) = submitted_payout().await;
        park(&app, id).await;
        let (status, body) = send_callback(&app, &reference, "25.00", result, PARTNER_SECRET).await;
        assert_eq!((status, body.as_str()), (200, "OK"));
        assert_eq!(app.state(id).await, resolved, "needs_review is resolved by the provider's word");
        let last = payoutd_store::payouts::timeline(&app.db.pool, id).await.unwrap().pop().unwrap();
        assert_eq!(last.actor, "callback:8b_partner");
        assert_eq!(last.from_state.as_deref(), Some("needs_review"));
        assert!(last.reason.contains("resolved from needs_review"), "{}", last.reason);
        app.shutdown().await;
    }
}

#[tokio::test]
async fn item5_a_conflicting_final_answer_is_recorded_as_an_event_not_swallowed() {
    let (app, id, reference) = submitted_payout().await;
    assert_eq!(send_callback(&app, &reference, "25.00", "1", PARTNER_SECRET).await, (200, "OK".to_owned()));
    assert_eq!(app.state(id).await, PayoutState::Paid);
    let events = app.reasons(id).await.len();
    // The provider later says it failed.
    assert_eq!(send_callback(&app, &reference, "25.00", "0", PARTNER_SECRET).await, (200, "OK".to_owned()));
    assert_eq!(app.state(id).await, PayoutState::Paid, "a final state never changes");
    let reasons = app.reasons(id).await;
    assert_eq!(reasons.len(), events + 1, "the conflict is an event: {reasons:?}");
    assert!(reasons.last().unwrap().starts_with("CONFLICT"), "{reasons:?}");
    let stored: String =
        sqlx::query_scalar("SELECT outcome FROM provider_callbacks ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, "ignored_final:paid:conflicting");
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

#[tokio::test]
async fn rule11_an_operator_resolution_is_recorded_needs_a_reason_and_a_retry_asks_first() {
    use payoutd_store::review::{self, Resolution};
    let (app, id, _) = submitted_payout().await;
    park(&app, id).await;
    let queue = review::queue(&app.db.pool, 10).await.unwrap();
    assert_eq!(queue.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
    let refused = review::resolve(&app.db.pool, id, Resolution::Paid, "operator:ana", "  ").await;
    assert!(matches!(refused, Err(payoutd_store::StoreError::Refused(_))), "{refused:?}");
    assert_eq!(app.state(id).await, PayoutState::NeedsReview, "nothing written without a reason");
    // A retry goes to in_doubt: the provider is asked by our reference before anything else.
    let to = review::resolve(&app.db.pool, id, Resolution::Retry, "operator:ana", "bank says unknown")
        .await
        .unwrap();
    assert_eq!(to, PayoutState::InDoubt);
    let r = row(&app, id).await;
    assert_eq!(r.state, PayoutState::InDoubt);
    assert!(r.next_run_at.is_some());
    // The worker may already have taken the retried payout up; the resolution is recorded either way.
    let timeline = payoutd_store::payouts::timeline(&app.db.pool, id).await.unwrap();
    let resolution = timeline.iter().rev().find(|e| e.actor == "operator:ana").expect("the operator's event");
    assert_eq!(
        (resolution.from_state.as_deref(), resolution.to_state.as_str()),
        (Some("needs_review"), "in_doubt")
    );
    assert!(resolution.reason.contains("bank says unknown"));
    // Only a parked payout can be resolved.
    assert!(review::resolve(&app.db.pool, id, Resolution::Failed, "operator:ana", "x").await.is_err());
    app.shutdown().await;
}
