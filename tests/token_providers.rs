//! The token providers (issue 6): 8B REST (OAuth2 tokens shared by the fleet, status by the
//! provider's id, unsigned webhooks) and 88Pay (a fresh 60-second token per cashout, no status
//! call, webhooks at capability URLs), each against its own sandbox over loopback, next to the
//! 8B partner account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_core::PayoutState;
use payoutd_sandbox::Faults;
use payoutd_tests::token_accounts::{
    PAY_A, REST_A, REST_B, REST_WEBHOOK_SECRET, TokenOptions, TokenSandboxes, account_payout_body,
};
use payoutd_tests::{AppOptions, TestApp, fast_engine, row};
use uuid::Uuid;

async fn spawn(tokens: TokenOptions, options: AppOptions) -> (TestApp, Arc<TokenSandboxes>) {
    let sandboxes = Arc::new(TokenSandboxes::start(tokens).await);
    let s = sandboxes.clone();
    let options =
        AppOptions { more_accounts: Some(Arc::new(move |api, pool| s.connectors(api, pool))), ..options };
    let app = TestApp::spawn(options).await;
    sandboxes.point_webhooks_at(&app.api);
    (app, sandboxes)
}

async fn enqueue(
    app: &TestApp,
    token: &str,
    account: &str,
    n: usize,
    amount: &str,
    currency: &str,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = account_payout_body(
            account,
            &format!("{account}-{i}-{}", Uuid::new_v4().simple()),
            amount,
            currency,
        );
        ids.push(app.enqueue(token, &body).await);
    }
    ids
}

async fn states(app: &TestApp, ids: &[Uuid]) -> Vec<PayoutState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(app.state(*id).await);
    }
    out
}

fn assert_rest_once(sandbox: &payoutd_sandbox::eightb_rest::RestSandboxHandle) {
    let stats = sandbox.stats();
    assert!(
        stats.executed_more_than_once().is_empty(),
        "8B REST double payments: {:?}",
        stats.executed_more_than_once()
    );
    assert_eq!(stats.double_executions, 0);
}

fn assert_pay_once(sandbox: &payoutd_sandbox::eightyeight_pay::PaySandboxHandle) {
    let stats = sandbox.stats();
    assert_eq!(
        stats.executed_more_than_once, 0,
        "88Pay double payments: {:?}",
        stats.executions_per_merchant_reference
    );
}

/// Payouts on both token providers and two 8B REST accounts are paid, each executed once; the
/// authorize calls do not grow with payouts or workers (one per account), and 88Pay takes one
/// token per cashout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payouts_on_every_account_are_paid_once_with_bounded_token_calls() {
    let (app, sandboxes) =
        spawn(TokenOptions::default(), AppOptions { workers: 3, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    let mut ids = enqueue(&app, &token, REST_A, 15, "150000", "IDR").await;
    ids.extend(enqueue(&app, &token, REST_B, 10, "250000", "IDR").await);
    let pay = enqueue(&app, &token, PAY_A, 15, "98765.43", "COP").await;
    ids.extend(pay.iter().copied());
    app.wait_all_final(Duration::from_secs(60)).await;
    assert!(
        states(&app, &ids).await.iter().all(|s| *s == PayoutState::Paid),
        "{:?}",
        states(&app, &ids).await
    );

    for sandbox in [&sandboxes.rest_a, &sandboxes.rest_b] {
        assert_rest_once(sandbox);
        let stats = sandbox.stats();
        assert_eq!(stats.authorize_calls, 1, "one password grant per account, for 3 workers and all payouts");
        assert_eq!((stats.refresh_calls, stats.unauthorized), (0, 0));
    }
    assert_pay_once(&sandboxes.pay);
    let pay_stats = sandboxes.pay.stats();
    assert_eq!(pay_stats.cashouts_received, 15);
    assert_eq!(pay_stats.unauthorized, 0);
    // One token per cashout; balance checks reuse a token while it is young.
    assert!(
        pay_stats.token_calls >= 15 && pay_stats.token_calls <= 15 + pay_stats.balance_calls,
        "{pay_stats:?}"
    );
    // The 88Pay amount arrived exactly, and the provider's id is recorded for 8B REST payouts.
    assert!(sandboxes.pay.ledger().iter().all(|e| e.amount.to_string() == "98765.43"));
    for id in &ids[..25] {
        let r = row(&app, *id).await;
        let provider_id = r.provider_payout_id.expect("8B REST disbursement id stored");
        let sandbox = if r.provider == REST_A { &sandboxes.rest_a } else { &sandboxes.rest_b };
        assert!(sandbox.entry(&provider_id).is_some(), "the stored id is the provider's");
    }
    app.shutdown().await;
}

/// Rule 8: a 401 refreshes once and repeats the same request; an expired refresh token falls
/// back to the password grant; a token problem never fails a payout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_tokens_refresh_on_401_and_fall_back_to_the_password_grant() {
    let tokens = TokenOptions { forced_401_rate: 0.2, ..TokenOptions::default() };
    let (app, sandboxes) = spawn(tokens, AppOptions { workers: 2, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    let first = enqueue(&app, &token, REST_A, 10, "150000", "IDR").await;
    app.wait_all_final(Duration::from_secs(60)).await;
    // Every token the provider issued so far is refused from now on.
    sandboxes.rest_a.expire_all_access_tokens();
    let second = enqueue(&app, &token, REST_A, 5, "150000", "IDR").await;
    app.wait_all_final(Duration::from_secs(60)).await;
    let refreshes = sandboxes.rest_a.stats().refresh_calls;
    assert!(refreshes >= 1, "an expired access token is refreshed");
    // Now the refresh token is dead too: the password grant takes over.
    sandboxes.rest_a.expire_all_refresh_tokens();
    sandboxes.rest_a.expire_all_access_tokens();
    let third = enqueue(&app, &token, REST_A, 5, "150000", "IDR").await;
    app.wait_all_final(Duration::from_secs(60)).await;

    let all: Vec<Uuid> = first.into_iter().chain(second).chain(third).collect();
    assert!(
        states(&app, &all).await.iter().all(|s| *s == PayoutState::Paid),
        "{:?}",
        states(&app, &all).await
    );
    assert_rest_once(&sandboxes.rest_a);
    let stats = sandboxes.rest_a.stats();
    assert!(stats.unauthorized_forced > 0 && stats.unauthorized_expired > 0, "{stats:?}");
    assert!(stats.refresh_failed >= 1, "the dead refresh token was tried: {stats:?}");
    assert_eq!(stats.authorize_calls, 2, "first grant, then one fallback: {stats:?}");
    app.shutdown().await;
}

/// Rule 4 for a provider without a lookup by our reference: the submit answer (and with it the
/// provider's id) is lost; the payout is never sent again; the provider's webhook names an id
/// no payout carries, payoutd asks the provider about it and finds its reference there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_in_doubt_submit_is_found_through_its_webhook_and_never_sent_again() {
    let (app, sandboxes) = spawn(TokenOptions::default(), AppOptions::default()).await;
    let token = app.token(&["*"]).await;
    // Webhooks that came before their payouts' submit answers (the early fault) leave ids the
    // payouts then learnt from the answers: more of them than one step looks at. (On a loaded
    // machine a real webhook can already have left one: the same row.)
    let earlier = enqueue(&app, &token, REST_A, 12, "150000", "IDR").await;
    app.wait_all_final(Duration::from_secs(30)).await;
    for id in &earlier {
        let provider_id = row(&app, *id).await.provider_payout_id.expect("id");
        sqlx::query(
            "INSERT INTO unmatched_provider_notifications (provider, provider_payout_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(REST_A)
        .bind(provider_id)
        .execute(&app.db.pool)
        .await
        .expect("insert");
    }
    sandboxes.rest_a.set_faults(Faults { timeout_after_execute_rate: 1.0, ..Faults::default() });
    let ids = enqueue(&app, &token, REST_A, 1, "150000", "IDR").await;
    let id = ids[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state(id).await != PayoutState::InDoubt {
        assert!(Instant::now() < deadline, "the lost answer puts the payout in doubt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sandboxes.rest_a.set_faults(Faults::default());
    app.wait_for_state(id, PayoutState::Paid, Duration::from_secs(30)).await;
    let r = row(&app, id).await;
    let reference = r.provider_reference.clone().expect("reference");
    let entries = sandboxes.rest_a.entries_for(&reference);
    assert_eq!(entries.len(), 1, "executed once");
    assert_eq!(sandboxes.rest_a.stats().intents_received, 13, "never sent again");
    assert_eq!(r.provider_payout_id.as_deref(), Some(entries[0].disbursement_id.as_str()));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM unmatched_provider_notifications")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "ids whose payouts are known are forgotten once looked up");
    let reasons = app.reasons(id).await;
    assert!(reasons.iter().any(|r| r.contains("found through its webhook")), "{reasons:?}");
    app.shutdown().await;
}

/// Webhooks that are not ours change nothing: a wrong secret path segment or capability token is
/// refused unstored; an unsigned 8B REST webhook never decides a payout (the status call does);
/// an 88Pay webhook whose amount differs from the payout is not applied; duplicates are no-ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_that_are_not_ours_or_do_not_match_change_nothing() {
    // Slow processing: the payouts stay PROCESSING at the provider for the whole test.
    let tokens = TokenOptions { processing_delay: Duration::from_secs(600), ..TokenOptions::default() };
    let (app, sandboxes) = spawn(tokens, AppOptions::default()).await;
    let token = app.token(&["*"]).await;
    let rest = enqueue(&app, &token, REST_A, 1, "150000", "IDR").await[0];
    let pay = enqueue(&app, &token, PAY_A, 1, "5000.00", "COP").await[0];
    app.wait_for_state(rest, PayoutState::Submitted, Duration::from_secs(10)).await;
    app.wait_for_state(pay, PayoutState::Submitted, Duration::from_secs(10)).await;
    let post = |path: String, body: &'static str| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.api);
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post");
            r.status().as_u16()
        }
    };
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM provider_callbacks")
            .fetch_one(&app.db.pool)
            .await
            .expect("count")
    };

    // Wrong secret segment, forged capability token: 404, nothing stored.
    assert_eq!(
        post(format!("/v1/callbacks/{REST_A}/not-the-secret-segment/d-1"), r#"{"status":"ACCEPTED"}"#).await,
        404
    );
    let reference = row(&app, pay).await.provider_reference.expect("reference");
    assert_eq!(post(format!("/v1/callbacks/{PAY_A}/n/{reference}/forged-token"), r#"{}"#).await, 404);
    assert_eq!(stored().await, 0);

    // The real 8B REST URL and id, a body saying ACCEPTED: the status call (PROCESSING) decides.
    let provider_id = row(&app, rest).await.provider_payout_id.expect("id");
    let path = format!("/v1/callbacks/{REST_A}/{REST_WEBHOOK_SECRET}/{provider_id}");
    assert_eq!(post(path, r#"{"status":"ACCEPTED"}"#).await, 200);
    // An id no payout carries is kept for in-doubt payouts to look up, and changes nothing.
    assert_eq!(
        post(format!("/v1/callbacks/{REST_A}/{REST_WEBHOOK_SECRET}/d-unknown"), r#"{"status":"ACCEPTED"}"#)
            .await,
        200
    );
    let unmatched: i64 = sqlx::query_scalar("SELECT count(*) FROM unmatched_provider_notifications")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(unmatched, 1);

    // 88Pay at the real capability URL, but another amount: not applied.
    let url = sandboxes.pay.ledger()[0].notification_url.clone();
    let path = url.strip_prefix(&app.api).expect("under the API").to_owned();
    let wrong_amount = format!(
        r#"{{"merchant_reference":"{reference}","reference":"88P-x","status":"COMPLETED","amount":5000000.00,"currency":"COP"}}"#
    );
    let r = app.http.post(format!("{}{path}", app.api)).body(wrong_amount).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let other_payout = r#"{"merchant_reference":"PO-someone-else","reference":"88P-x","status":"COMPLETED","amount":5000.00,"currency":"COP"}"#;
    assert_eq!(post(path.clone(), other_payout).await, 200);

    tokio::time::sleep(Duration::from_secs(4)).await; // past one status interval
    assert_eq!(app.state(rest).await, PayoutState::Submitted, "an unsigned ACCEPTED did not pay it");
    assert_eq!(app.state(pay).await, PayoutState::Submitted, "a mismatched webhook did not pay it");

    // The right webhook pays it, and its duplicate is a no-op.
    let right = format!(
        r#"{{"merchant_reference":"{reference}","reference":"88P-x","status":"COMPLETED","amount":5000.00,"currency":"COP"}}"#
    );
    for _ in 0..2 {
        let r = app.http.post(format!("{}{path}", app.api)).body(right.clone()).send().await.expect("post");
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(app.state(pay).await, PayoutState::Paid);
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM provider_callbacks WHERE provider = $1 AND verified ORDER BY id",
    )
    .bind(PAY_A)
    .fetch_all(&app.db.pool)
    .await
    .expect("outcomes");
    assert!(outcomes.iter().any(|o| o.starts_with("mismatch")), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o == "duplicate_ignored"), "{outcomes:?}");
    assert_rest_once(&sandboxes.rest_a);
    assert_pay_once(&sandboxes.pay);
    app.shutdown().await;
}

/// 88Pay: a token refused in flight (401) is replaced and the same cashout sent again under the
/// same reference; an in-doubt cashout is finished by its webhook, or parked when none comes;
/// never resubmitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_tokens_are_fresh_per_cashout_and_an_in_doubt_cashout_waits_for_its_webhook() {
    let tokens = TokenOptions {
        forced_401_rate: 0.3,
        pay_token_lifetime: Duration::from_secs(2),
        ..TokenOptions::default()
    };
    let engine = payoutd_engine::EngineConfig { max_await: Duration::from_secs(8), ..fast_engine("pay") };
    let (app, sandboxes) = spawn(tokens, AppOptions { workers: 2, engine, ..AppOptions::default() }).await;
    let token = app.token(&["*"]).await;
    let ids = enqueue(&app, &token, PAY_A, 12, "1000.50", "COP").await;
    app.wait_all_final(Duration::from_secs(60)).await;
    assert!(
        states(&app, &ids).await.iter().all(|s| *s == PayoutState::Paid),
        "{:?}",
        states(&app, &ids).await
    );
    let stats = sandboxes.pay.stats();
    assert!(stats.unauthorized_forced > 0, "{stats:?}");
    assert_eq!(stats.cashouts_executed, 12);

    // The cashout's answer is lost: the webhook finishes it.
    sandboxes.pay.set_forced_401_rate(0.0);
    sandboxes.pay.set_faults(Faults { timeout_after_execute_rate: 1.0, ..Faults::default() });
    let lost_answer = enqueue(&app, &token, PAY_A, 1, "2000.00", "COP").await[0];
    app.wait_for_state(lost_answer, PayoutState::Paid, Duration::from_secs(20)).await;
    // ... and when no webhook ever comes, the payout is parked for reconciliation.
    sandboxes.pay.set_drop_all_webhooks(true);
    let silent = enqueue(&app, &token, PAY_A, 1, "3000.00", "COP").await[0];
    app.wait_for_state(silent, PayoutState::NeedsReview, Duration::from_secs(30)).await;
    let reasons = app.reasons(silent).await;
    assert!(
        reasons.iter().any(|r| r.contains("no webhook") && r.contains("never resubmitted")),
        "{reasons:?}"
    );
    assert_pay_once(&sandboxes.pay);
    assert_eq!(sandboxes.pay.stats().cashouts_executed, 14, "every cashout executed exactly once");
    app.shutdown().await;
}

/// Rule 10 for the token providers: passwords, API keys, the token key, access and refresh
/// tokens, the webhook path secret and capability tokens reach no log line, no event, and the
/// token table only sealed.
#[tokio::test(flavor = "current_thread")]
async fn provider_credentials_and_tokens_stay_out_of_logs_events_and_the_database() {
    use payoutd_tests::token_accounts::{PAY_API_KEY, REST_PASSWORD, TOKEN_KEY};
    let captured = payoutd_tests::log_capture::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber());

    let tokens = TokenOptions { forced_401_rate: 0.3, ..TokenOptions::default() };
    let (app, sandboxes) = spawn(tokens, AppOptions::default()).await;
    let token = app.token(&["*"]).await;
    let mut ids = enqueue(&app, &token, REST_A, 4, "150000", "IDR").await;
    ids.extend(enqueue(&app, &token, PAY_A, 4, "100.00", "COP").await);
    app.wait_all_final(Duration::from_secs(40)).await;
    sandboxes.rest_a.expire_all_access_tokens();
    ids.extend(enqueue(&app, &token, REST_A, 2, "150000", "IDR").await);
    app.wait_all_final(Duration::from_secs(40)).await;

    // What the provider issued: the stored (sealed) tokens, opened with the key.
    let key = Arc::new(
        payoutd_core::sealing::SealingKey::from_base64(&payoutd_core::Secret::new(TOKEN_KEY)).expect("key"),
    );
    let store = payoutd_store::credentials::PgCredentialStore::new(app.db.pool.clone(), key);
    let stored = payoutd_core::credentials::CredentialStore::load(&store, &format!("8b_rest:{REST_A}"))
        .await
        .expect("load")
        .expect("tokens stored");
    let access = stored.access_token.expose().to_owned();
    let refresh = stored.refresh_token.as_ref().expect("refresh token").expose().to_owned();
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM provider_tokens")
        .fetch_all(&app.db.pool)
        .await
        .expect("sealed");
    for bytes in &sealed {
        for secret in [&access, &refresh] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a token stored in clear");
        }
    }
    let pay_url = sandboxes.pay.ledger()[0].notification_url.clone();
    let capability = pay_url.rsplit('/').next().expect("token").to_owned();
    let events: Vec<String> =
        sqlx::query_scalar("SELECT reason || coalesce(detail::text, '') FROM payout_events")
            .fetch_all(&app.db.pool)
            .await
            .expect("events");
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(p)::text FROM payouts p")
        .fetch_all(&app.db.pool)
        .await
        .expect("rows");
    app.shutdown().await;
    let logs = captured.text();
    assert!(logs.contains("refreshing the token once"), "the 401 path ran and logged");
    for secret in [REST_PASSWORD, PAY_API_KEY, TOKEN_KEY, REST_WEBHOOK_SECRET, &access, &refresh, &capability]
    {
        assert!(!logs.contains(secret), "a secret in the logs");
        assert!(!events.iter().chain(&rows).any(|e| e.contains(secret)), "a secret in events or payout rows");
    }
}

/// Rule 8: a credential outage longer than every retry budget neither fails nor parks a payout;
/// it waits without counting attempts and goes on when tokens work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_outage_never_fails_or_parks_a_payout() {
    let (app, sandboxes) = spawn(TokenOptions::default(), AppOptions::default()).await;
    let token = app.token(&["*"]).await;
    sandboxes.pay.set_forced_401_rate(1.0);
    let ids = enqueue(&app, &token, PAY_A, 2, "700.00", "COP").await;
    // Far longer than the check and submit retry budgets of the test engine (~3 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for id in &ids {
        let r = row(&app, *id).await;
        assert!(r.state.is_active(), "{} during a credential outage", r.state);
        assert!(r.last_error.as_deref().is_some_and(|e| e.contains("credentials")), "{:?}", r.last_error);
    }
    assert_eq!(sandboxes.pay.stats().cashouts_executed, 0);
    sandboxes.pay.set_forced_401_rate(0.0);
    app.wait_all_final(Duration::from_secs(30)).await;
    assert!(states(&app, &ids).await.iter().all(|s| *s == PayoutState::Paid));
    assert_pay_once(&sandboxes.pay);
    app.shutdown().await;
}
