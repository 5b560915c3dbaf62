//! Upgrading to provider accounts (issue 6): a database written by the previous schema, holding
//! payouts in every state, is migrated; the payouts keep working under the account named
//! `8b_partner` (the name they already carry), the `/v1/callbacks/8b_partner` route keeps taking
//! the provider's callbacks, and nothing is paid twice.

use std::time::Duration;

use chrono::Utc;
use payoutd_core::{Currency, Destination, Money, PayoutState};
use payoutd_providers::PayoutForProvider;
use payoutd_tests::{AppOptions, TestApp, TestDb, admin_options};
use uuid::Uuid;

/// The first migration of the accounts issue; everything before it is the old schema.
const ACCOUNTS_MIGRATION: i64 = 20261123000001;

async fn old_schema_db() -> TestDb {
    let admin = payoutd_store::connect(admin_options().await, 1).await.expect("admin");
    let name =
        format!("payoutd_test_{}_{}", Utc::now().timestamp(), &Uuid::new_v4().simple().to_string()[..10]);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create");
    admin.close().await;
    let options = admin_options().await.database(&name);
    let pool = payoutd_store::connect(options.clone(), 20).await.expect("connect");
    let mut old = sqlx::migrate!("../migrations");
    old.migrations =
        old.migrations.iter().filter(|m| m.version < ACCOUNTS_MIGRATION).cloned().collect::<Vec<_>>().into();
    old.run(&pool).await.expect("old migrations");
    TestDb { pool, name, options }
}

fn destination() -> Destination {
    Destination {
        phone: "622851280".into(),
        client: "1234567890".into(),
        destination: "bank_bca".into(),
        receiver_name: "Budi Santoso".into(),
        receiver_bic: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_payouts_in_every_state_upgrades_and_keeps_working() {
    let db = old_schema_db().await;
    let app = TestApp::spawn_on(db, AppOptions { workers: 0, ..AppOptions::default() }).await;
    let connector = app.connectors.get("8b_partner").expect("the default account").clone();
    let money = Money::parse("150000", Currency::parse("IDR").expect("IDR")).expect("money");
    let payout = PayoutForProvider { money, destination: destination() };

    let mut ids = Vec::new();
    for (n, state) in PayoutState::ALL.into_iter().enumerate() {
        let id = Uuid::new_v4();
        let reference = format!("UPG{n:05}{}", &id.simple().to_string()[..8]);
        let frozen = connector.freeze_submit(&payout, &reference, Utc::now());
        let has_intent =
            !matches!(state, PayoutState::Pending | PayoutState::Checked | PayoutState::Cancelled);
        // Submitted and in-doubt payouts reached the provider before the upgrade (an in-doubt
        // one just never learnt it).
        if matches!(state, PayoutState::Submitted | PayoutState::InDoubt) {
            connector.submit(&frozen).await;
        }
        let scheduled = state.is_active();
        sqlx::query(
            "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account,
                                  amount, currency, destination, state, next_run_at, provider_reference,
                                  submit_request, submitted_at, provider_contact_bound, finalized_at, parked_at)
             VALUES ($1, 'client-a', $2, $2, '\\x00', '8b_partner', $3, 150000, 'IDR', $4, $5::payout_state,
                     CASE WHEN $6 THEN now() END, $7, $8,
                     CASE WHEN $9 THEN now() - interval '10 seconds' END,
                     CASE WHEN $9 THEN now() - interval '10 seconds' END,
                     CASE WHEN $10 THEN now() END, CASE WHEN $11 THEN now() END)",
        )
        .bind(id)
        .bind(format!("upgrade-{n}"))
        .bind(connector.account())
        .bind(serde_json::to_value(destination()).expect("json"))
        .bind(state.as_str())
        .bind(scheduled)
        .bind(has_intent.then_some(&reference))
        .bind(has_intent.then(|| serde_json::to_value(&frozen).expect("json")))
        .bind(matches!(state, PayoutState::Submitted | PayoutState::InDoubt))
        .bind(state.is_final())
        .bind(state == PayoutState::NeedsReview)
        .execute(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("old-schema insert of a {state} payout: {e}"));
        ids.push((id, state, reference));
    }

    payoutd_store::migrate(&app.db.pool).await.expect("the upgrade migrates");
    let accounts: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT provider FROM payouts").fetch_all(&app.db.pool).await.expect("q");
    assert_eq!(accounts, ["8b_partner"]);

    let mut app = app;
    app.start_worker("after-upgrade");
    app.wait_all_final(Duration::from_secs(60)).await;
    for (id, before, _) in &ids {
        let after = app.state(*id).await;
        // Pending and checked payouts allocate their reference after the upgrade.
        let reference = payoutd_tests::row(&app, *id).await.provider_reference.unwrap_or_default();
        let expected = match before {
            // Active payouts finish; the sandbox pays everything (no faults).
            s if s.is_active() => PayoutState::Paid,
            s => *s,
        };
        assert_eq!(after, expected, "a payout that was {before} before the upgrade");
        let executed = app.sandbox.entry(&reference).map_or(0, |e| e.executions);
        let want = u32::from(expected == PayoutState::Paid && !before.is_final());
        assert_eq!(executed, want, "{before}: executed {executed} times at the provider");
    }
    // The provider's callbacks still reach the old route and are applied.
    let verified: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_callbacks WHERE provider = '8b_partner' AND verified",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert!(verified > 0, "callbacks at /v1/callbacks/8b_partner were stored and verified");
    app.shutdown().await;
}
