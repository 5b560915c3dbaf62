//! Issue 8: reconciliation with the 8B partner registry. Real payouts through the engine and the
//! sandbox, or payouts written straight into the database next to rows seeded straight into the
//! sandbox's ledger (tens of thousands, to cross the registry's 20,000-row limit); then
//! discrepancies planted on either side and found exactly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::{Currency, Destination, Money, PayoutState, Secret};
use payoutd_engine::reconciliation::{self, ReconcileOptions, Source};
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_providers::eightb_partner::registry::EightBRegistry;
use payoutd_providers::eightb_partner::signature::sign_payout;
use payoutd_providers::{Connectors, PayoutForProvider};
use payoutd_sandbox::registry::{SeedPayout, seed};
use payoutd_tests::token_accounts::{PAY_A, REST_A, TokenOptions, TokenSandboxes};
use payoutd_tests::{AppOptions, PARTNER_SECRET, SERVICE_ID, TestApp, payout_body};
use serde_json::Value;
use uuid::Uuid;

fn registry(app: &TestApp) -> EightBRegistry {
    EightBPartner::new(app.connector_config.clone())
        .expect("connector")
        .registry(None, Duration::from_secs(30))
        .expect("registry client")
}

fn count(report: &reconciliation::ReconcileReport, key: &str) -> u64 {
    report.reconciliation.summary["counts"][key].as_u64().unwrap_or(0)
}

fn items<'a>(
    report: &'a reconciliation::ReconcileReport,
    category: &str,
) -> Vec<&'a payoutd_store::reconciliation::Item> {
    report.items.iter().filter(|i| i.category == category).collect()
}

/// Sends a payout straight to the sandbox, as someone else holding our credentials would.
async fn pay_behind_our_back(app: &TestApp, id: &str, amount: &str) {
    let dt = "2026-11-23 10:00:00";
    let (phone, client, destination) = ("622851280", "999888777", "bank_transfer");
    let hash = sign_payout(id, dt, amount, phone, client, destination, &Secret::new(PARTNER_SECRET));
    let form = [
        ("id", id),
        ("dt", dt),
        ("amount", amount),
        ("currency", "IDR"),
        ("phone", phone),
        ("client", client),
        ("destination", destination),
        ("receiver_fio", "Somebody Else"),
        ("hash", hash.as_str()),
    ];
    let r = reqwest::Client::new()
        .post(format!("{}/partner/{SERVICE_ID}/payout", app.sandbox.base_url()))
        .form(&form)
        .send()
        .await
        .expect("payout");
    assert!(r.text().await.expect("body").contains("OK"));
}

#[tokio::test]
async fn reconciliation_finds_planted_discrepancies_and_acts_on_them() {
    let app = TestApp::spawn(AppOptions { workers: 2, ..AppOptions::default() }).await;
    let started = Utc::now() - chrono::Duration::minutes(1);
    let ids = app.enqueue_many(12, "IDR", "150000").await;
    app.wait_all_final(Duration::from_secs(60)).await;
    // Planted: a payout the provider paid that our database says failed, one whose amount we
    // changed, one paid at the provider that we never made, and a payout marked paid here that
    // the provider never saw.
    let failed_here = ids[0];
    let other_amount = ids[1];
    let sql = |q: &'static str, id: Uuid| sqlx::query(q).bind(id);
    sql("UPDATE payouts SET state = 'failed' WHERE id = $1", failed_here)
        .execute(&app.db.pool)
        .await
        .expect("edit");
    sql("UPDATE payouts SET amount = 150001 WHERE id = $1", other_amount)
        .execute(&app.db.pool)
        .await
        .expect("edit");
    pay_behind_our_back(&app, "XX000000000000000001", "50000").await;
    sqlx::query(
        "UPDATE payouts SET provider_reference = 'PO999999999999999999', state = 'paid' WHERE id = $1",
    )
    .bind(ids[2])
    .execute(&app.db.pool)
    .await
    .expect("edit");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let source = registry(&app);
    let statement = EightBPartner::new(app.connector_config.clone())
        .expect("connector")
        .statement(None, Duration::from_secs(30))
        .expect("statement client");
    let options = ReconcileOptions { margin: Duration::from_secs(120), ..ReconcileOptions::default() };
    let report = reconciliation::run(
        &app.db.pool,
        &app.connectors,
        "8b_partner",
        started,
        Utc::now() + chrono::Duration::minutes(1),
        Source::Registry(&source),
        Some(&statement),
        &options,
    )
    .await
    .expect("run");
    let r = &report.reconciliation;
    assert_eq!(r.status, "completed", "{:?}", r.summary);
    let status = items(&report, "status_mismatch");
    assert_eq!(status.len(), 1, "{:?}", report.items);
    assert_eq!(status[0].payout_id, Some(failed_here));
    assert_eq!(
        (status[0].our_state.as_deref(), status[0].provider_status.as_deref()),
        (Some("failed"), Some("PAID"))
    );
    assert_eq!(status[0].action, "alerted");
    let amount = items(&report, "amount_mismatch");
    assert_eq!(amount.len(), 1);
    assert_eq!(amount[0].payout_id, Some(other_amount));
    let unknown = items(&report, "unknown_to_us");
    assert_eq!(
        unknown.len(),
        2,
        "ours with a changed reference, and the one paid behind our back: {:?}",
        report.items
    );
    assert!(unknown.iter().any(|i| i.reference.as_deref() == Some("XX000000000000000001")));
    let missing = items(&report, "missing_at_provider");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].payout_id, Some(ids[2]));
    assert_eq!(count(&report, "matched"), 9);
    // The balance statement in aggregate: the provider debited 12 payouts of 150000 and the one
    // paid behind our back (50000); we count 11 paid (one failed here), one of them at 150001.
    let statement = &r.summary["balance_statement"];
    assert_eq!(statement["debits"], "1850000", "{statement}");
    assert_eq!(
        (statement["paid_payouts"].as_u64(), statement["paid_total"].as_str()),
        (Some(11), Some("1650001"))
    );
    assert_eq!(statement["difference"], "199999", "150000 + 50000 - 1: {statement}");
    let difference = items(&report, "balance_statement_difference");
    assert_eq!(difference.len(), 1, "{:?}", report.items);
    assert!(difference[0].detail.contains("differ by 199999"), "{}", difference[0].detail);
    assert_eq!(r.summary["discrepancies"], 6);
    // Final payouts keep their state; the finding is on their timeline.
    assert_eq!(app.state(failed_here).await, PayoutState::Failed);
    assert!(app.reasons(failed_here).await.iter().any(|r| r.starts_with("RECONCILIATION status_mismatch")));

    // The stored report, over the API, as JSON and as CSV (operator scope only).
    let token = app.token_for("ops", &["reconciliations.read"]).await;
    let url = format!("{}/v1/reconciliations/{}", app.api, r.id);
    let v: Value =
        app.http.get(&url).bearer_auth(&token).send().await.expect("get").json().await.expect("json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(report.items.len()));
    let csv = app
        .http
        .get(format!("{url}?format=csv"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("csv");
    assert!(csv.starts_with("category,reference,payout_id,"), "{csv}");
    assert_eq!(csv.lines().count(), report.items.len() + 1);
    let client = app.token_for("client-a", &["payouts.read", "batches.read"]).await;
    assert_eq!(app.http.get(&url).bearer_auth(&client).send().await.expect("get").status().as_u16(), 403);
    app.shutdown().await;
}

#[tokio::test]
async fn an_open_payout_with_other_money_at_the_provider_is_parked() {
    let mut app = TestApp::spawn(AppOptions { workers: 1, callbacks: false, ..AppOptions::default() }).await;
    let started = Utc::now() - chrono::Duration::minutes(1);
    let token = app.token(&["*"]).await;
    let id = app.enqueue(&token, &payout_body("open-1", "150000", "IDR")).await;
    app.wait_for_state(id, PayoutState::Submitted, Duration::from_secs(20)).await;
    app.stop_workers().await;
    sqlx::query("UPDATE payouts SET amount = 140000 WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .expect("edit");
    let source = registry(&app);
    let report = reconciliation::run(
        &app.db.pool,
        &app.connectors,
        "8b_partner",
        started,
        Utc::now() + chrono::Duration::minutes(1),
        Source::Registry(&source),
        None,
        &ReconcileOptions::default(),
    )
    .await
    .expect("run");
    let amount = items(&report, "amount_mismatch");
    assert_eq!(amount.len(), 1, "{:?}", report.items);
    assert_eq!(amount[0].action, "parked");
    assert_eq!(app.state(id).await, PayoutState::NeedsReview);
    app.shutdown().await;
}

/// Our payouts written straight into the database (final, with a frozen request so that the
/// status call can be made), matching rows seeded into the sandbox's ledger.
async fn insert_paid(app: &TestApp, refs: &[(String, DateTime<Utc>, bool)]) {
    let connector = app.connectors.get("8b_partner").expect("connector").clone();
    let money = Money::parse("1000", Currency::parse("IDR").expect("idr")).expect("money");
    let destination = Destination {
        phone: "622851280".into(),
        client: "1234567890".into(),
        destination: "bank_transfer".into(),
        receiver_name: "Budi".into(),
        receiver_bic: None,
    };
    let payout = PayoutForProvider { money, destination: destination.clone() };
    for chunk in refs.chunks(5_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        let references: Vec<&str> = chunk.iter().map(|(r, _, _)| r.as_str()).collect();
        let times: Vec<DateTime<Utc>> = chunk.iter().map(|(_, t, _)| *t).collect();
        let states: Vec<&str> =
            chunk.iter().map(|(_, _, paid)| if *paid { "paid" } else { "failed" }).collect();
        let requests: Vec<Value> = chunk
            .iter()
            .map(|(r, t, _)| serde_json::to_value(connector.freeze_submit(&payout, r, *t)).expect("json"))
            .collect();
        sqlx::query(
            "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                                  currency, destination, state, provider_reference, submit_request, submitted_at,
                                  submit_attempts, finalized_at)
             SELECT u.id, 'client-a', 'ext-' || u.reference, 'external_id:ext-' || u.reference, '\\x00', '8b_partner',
                    $6, 1000, 'IDR', $7, u.state::payout_state, u.reference, u.request, u.at, 1, u.at
               FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::jsonb[])
                    AS u (id, reference, at, state, request)",
        )
        .bind(&ids)
        .bind(&references)
        .bind(&times)
        .bind(&states)
        .bind(&requests)
        .bind(SERVICE_ID)
        .bind(serde_json::to_value(&destination).expect("json"))
        .execute(&app.db.pool)
        .await
        .expect("insert");
    }
}

fn reference(n: usize) -> String {
    format!("PO{n:018}")
}

/// More than 20,000 registry rows: the period is read page by page, every row exactly once,
/// and the planted mismatches (three of them in the minute where the first page ends) are
/// found exactly.
#[tokio::test]
async fn over_twenty_thousand_rows_are_paged_without_skipping_the_boundary_minute() {
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let base = registry_time("2026-11-20 10:00:00");
    // 26,000 payouts over 13 minutes, 2,000 a minute: the 20,000th is in minute 10, so the
    // first page ends at the cut-off 10:09 (its minute minus one) and the next starts there.
    let n = 26_000;
    let at = |i: usize| base + chrono::Duration::milliseconds((i as i64) * 30_000 / 1000);
    let mut sandbox_rows = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    // Planted, by index: unknown to us (only at the sandbox), missing at the provider (only
    // here), paid there but failed here; the first of each in the boundary minute 10:09.
    let unknown = [18_000, 18_001, 3];
    let missing = [18_002, 25_999];
    let failed_here = [18_003, 7];
    for i in 0..n {
        let created = at(i);
        if !missing.contains(&i) {
            sandbox_rows.push(SeedPayout {
                id: reference(i),
                amount: "1000".into(),
                currency: "IDR".into(),
                created,
                paid: true,
            });
        }
        if !unknown.contains(&i) {
            ours.push((reference(i), created, !failed_here.contains(&i)));
        }
    }
    assert_eq!(seed(app.sandbox.sandbox(), &sandbox_rows), sandbox_rows.len());
    insert_paid(&app, &ours).await;
    let source = registry(&app);
    let report = reconciliation::run(
        &app.db.pool,
        &app.connectors,
        "8b_partner",
        base,
        base + chrono::Duration::minutes(13),
        Source::Registry(&source),
        None,
        &ReconcileOptions { margin: Duration::from_secs(60), ..ReconcileOptions::default() },
    )
    .await
    .expect("run");
    let s = &report.reconciliation.summary;
    println!("summary: {s}");
    assert_eq!(s["registry_rows"].as_u64(), Some((n - missing.len()) as u64), "every row read");
    assert_eq!(s["registry_duplicates"], 0, "no row read twice");
    assert!(s["registry_limit_errors"].as_u64().unwrap_or(0) >= 1, "{s}");
    assert!(s["registry_pages"].as_u64().unwrap_or(0) >= 2, "{s}");
    let refs = |cat: &str| {
        let mut v: Vec<String> = items(&report, cat).iter().filter_map(|i| i.reference.clone()).collect();
        v.sort();
        v
    };
    let sorted = |idx: &[usize]| {
        let mut v: Vec<String> = idx.iter().map(|i| reference(*i)).collect();
        v.sort();
        v
    };
    assert_eq!(refs("unknown_to_us"), sorted(&unknown));
    assert_eq!(refs("missing_at_provider"), sorted(&missing));
    assert_eq!(refs("status_mismatch"), sorted(&failed_here));
    assert_eq!(count(&report, "matched"), (n - unknown.len() - missing.len() - failed_here.len()) as u64);
    assert_eq!(report.items.len(), unknown.len() + missing.len() + failed_here.len());
    app.shutdown().await;
}

/// A single minute holding more rows than the registry returns cannot be paged: it is
/// reported, and our payouts of that minute are asked about one by one.
#[tokio::test]
async fn a_minute_over_the_limit_is_reported_and_its_payouts_checked_one_by_one() {
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let minute = registry_time("2026-11-20 12:00:00");
    let rows: Vec<SeedPayout> = (0..20_001)
        .map(|i| SeedPayout {
            id: reference(i),
            amount: "1000".into(),
            currency: "IDR".into(),
            created: minute + chrono::Duration::milliseconds(i as i64 * 2),
            paid: i != 1,
        })
        .collect();
    seed(app.sandbox.sandbox(), &rows);
    // Ours: three of them (one of which the provider did not pay), and one it never had.
    let ours: Vec<(String, DateTime<Utc>, bool)> = vec![
        (reference(0), rows[0].created, true),
        (reference(1), rows[1].created, true),
        (reference(2), rows[2].created, true),
        (reference(50_000), minute + chrono::Duration::seconds(30), true),
    ];
    insert_paid(&app, &ours).await;
    let source = registry(&app);
    let report = reconciliation::run(
        &app.db.pool,
        &app.connectors,
        "8b_partner",
        minute,
        minute + chrono::Duration::minutes(1),
        Source::Registry(&source),
        None,
        &ReconcileOptions { margin: Duration::ZERO, ..ReconcileOptions::default() },
    )
    .await
    .expect("run");
    let s = &report.reconciliation.summary;
    assert_eq!(s["unpageable_minutes"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["checked_by_status"], 4, "{s}");
    assert_eq!(count(&report, "matched"), 2);
    let mismatch = items(&report, "status_mismatch");
    assert_eq!(mismatch.len(), 1);
    assert_eq!(mismatch[0].reference.as_deref(), Some(reference(1).as_str()));
    assert_eq!(
        items(&report, "missing_at_provider")[0].reference.as_deref(),
        Some(reference(50_000).as_str())
    );
    app.shutdown().await;
}

fn registry_time(text: &str) -> DateTime<Utc> {
    payoutd_providers::eightb_partner::registry::parse_time(text).expect("time")
}

/// The 8B REST and 88Pay specs have no registry: the run says so and compares nothing.
#[tokio::test]
async fn token_provider_accounts_say_reconciliation_is_unsupported() {
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let sandboxes = TokenSandboxes::start(TokenOptions::default()).await;
    let mut connectors = Connectors::new();
    for c in sandboxes.connectors(&app.api, &app.db.pool) {
        connectors = connectors.with(c);
    }
    for account in [REST_A, PAY_A] {
        let kind = connectors.get(account).expect("account").kind();
        let why = reconciliation::unsupported_reason(kind).expect("unsupported");
        assert!(why.contains("unsupported") && why.contains(kind), "{why}");
        let report = reconciliation::run(
            &app.db.pool,
            &connectors,
            account,
            Utc::now() - chrono::Duration::hours(1),
            Utc::now(),
            Source::Unsupported { why: why.clone() },
            None,
            &ReconcileOptions::default(),
        )
        .await
        .expect("run");
        assert_eq!(report.reconciliation.status, "unsupported");
        assert_eq!(report.reconciliation.summary["reason"], Value::String(why));
        assert!(report.items.is_empty());
    }
    assert!(reconciliation::unsupported_reason("8b_partner").is_none());
    sandboxes.shutdown().await;
    app.shutdown().await;
}
