//! The 88Pay sandbox over loopback HTTP: tokens and sessions, cashouts, webhooks, faults.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use payoutd_core::Secret;
use payoutd_providers::eightyeight_pay::wire::{
    BALANCE_PATH, CASHOUT_PATH, CashoutRequest, Envelope, TOKEN_PATH, TokenData,
};
use payoutd_sandbox::Faults;
use payoutd_sandbox::eightyeight_pay::{CashoutStatus, PaySandbox, PaySandboxConfig, PaySandboxHandle};
use rust_decimal::Decimal;

const MERCHANT: &str = "MCH-COL-2KKAK";
const API_KEY: &str = "sk_test_MCH-COL-2KKAK_0123456789";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A sandbox with fast timings, changed by `tweak`.
async fn sandbox(tweak: impl FnOnce(&mut PaySandboxConfig)) -> PaySandboxHandle {
    let mut config = PaySandboxConfig::new(MERCHANT, Secret::new(API_KEY));
    config.processing_delay = Duration::from_millis(100);
    config.webhook_schedule_scale = 0.001;
    config.initial_balance = Decimal::from(1_000_000_000_000_000_i64);
    tweak(&mut config);
    PaySandbox::start(config, loopback()).await.expect("sandbox starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// A token call with the given credentials: (HTTP status, raw body).
async fn token_call(h: &PaySandboxHandle, api_key: &str, merchant: &str) -> (StatusCode, String) {
    let response = http()
        .post(format!("{}{TOKEN_PATH}", h.base_url()))
        .header("x-api-key", api_key)
        .header("X-Merchant-Id", merchant)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("token call");
    (response.status(), response.text().await.expect("body"))
}

/// A fresh (access_token, session_id).
async fn token(h: &PaySandboxHandle) -> (String, String) {
    let (status, body) = token_call(h, API_KEY, MERCHANT).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let envelope: Envelope<TokenData> = serde_json::from_str(&body).expect("token envelope");
    assert_eq!((envelope.status.as_str(), envelope.code), ("Success", 200));
    let data = envelope.data.expect("token data");
    (data.access_token, data.session_id)
}

/// A cashout body written by the wire type, so the amount keeps its digits.
fn cashout_body(merchant_reference: &str, amount: &str, notification_url: &str) -> String {
    let request = CashoutRequest {
        flow: "PAYOUT".into(),
        method_code: "BANK_TRANSFER".into(),
        method_category: "BANK".into(),
        country: "COL".into(),
        currency: "COP".into(),
        amount: Decimal::from_str_exact(amount).expect("decimal"),
        description: format!("Payout {merchant_reference}"),
        customer_id: merchant_reference.into(),
        merchant_reference: merchant_reference.into(),
        notification_url: notification_url.into(),
        account_number: "0123456789".into(),
        bank_code: "1007".into(),
        holder_name: "Ana Gómez".into(),
        phone: "573001234567".into(),
    };
    serde_json::to_string(&request).expect("json")
}

/// A cashout call: (HTTP status, raw body).
async fn cashout(
    h: &PaySandboxHandle,
    (token, session): &(String, String),
    body: String,
) -> (StatusCode, String) {
    let response = http()
        .post(format!("{}{CASHOUT_PATH}", h.base_url()))
        .bearer_auth(token)
        .header("x-session-id", session)
        .header("content-type", "application/json")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body(body)
        .send()
        .await
        .expect("cashout call");
    (response.status(), response.text().await.expect("body"))
}

async fn balance(h: &PaySandboxHandle, (token, session): &(String, String)) -> (StatusCode, String) {
    let response = http()
        .post(format!("{}{BALANCE_PATH}", h.base_url()))
        .bearer_auth(token)
        .header("x-session-id", session)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("balance call");
    (response.status(), response.text().await.expect("body"))
}

/// Polls `condition` every 10 ms for up to 5 s.
async fn eventually(condition: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// A merchant-side webhook endpoint: records every raw body and answers from `script` in
/// order, then 200.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(script: Vec<StatusCode>) -> Self {
        type Shared = (Arc<Mutex<Vec<String>>>, Arc<Vec<StatusCode>>);
        async fn receive(State((bodies, script)): State<Shared>, body: String) -> StatusCode {
            let mut bodies = bodies.lock().expect("lock");
            bodies.push(body);
            script.get(bodies.len() - 1).copied().unwrap_or(StatusCode::OK)
        }
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/webhooks/88pay/{capability}", axum::routing::post(receive))
            .with_state((bodies.clone(), Arc::new(script)));
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("http://{}/webhooks/88pay/cap-0123", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").clone()
    }

    fn count(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }
}

#[tokio::test]
async fn a_cashout_of_17_significant_digits_arrives_exactly_in_answer_ledger_and_webhook() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|_| {}).await;
    let before = h.balance();
    let auth = token(&h).await;
    assert!(auth.1.starts_with("sess_"), "{}", auth.1);

    let amount = "123456789012345.67";
    let (status, body) = cashout(&h, &auth, cashout_body("PO-17", amount, &receiver.url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""status":"Success","code":200"#), "{body}");
    assert!(body.contains(r#""status":"PENDING""#), "{body}");
    assert!(body.contains(&format!(r#""amount":{amount}"#)), "{body}");

    let ledger = h.ledger();
    assert_eq!(ledger.len(), 1);
    let entry = &ledger[0];
    assert_eq!(entry.amount.to_string(), amount);
    assert_eq!((entry.merchant_reference.as_str(), entry.currency.as_str()), ("PO-17", "COP"));
    assert!(entry.reference.starts_with("88P-"), "{}", entry.reference);
    assert!(body.contains(&format!(r#""reference":"{}""#, entry.reference)), "{body}");
    assert_eq!(entry.notification_url, receiver.url);
    assert_eq!(h.balance(), before - Decimal::from_str_exact(amount).expect("decimal"));

    assert!(eventually(|| receiver.count() >= 1).await, "no webhook");
    let webhook = &receiver.bodies()[0];
    assert!(webhook.contains(&format!(r#""amount":{amount}"#)), "{webhook}");
    assert!(webhook.contains(r#""status":"COMPLETED""#), "{webhook}");
    assert!(webhook.contains(r#""merchant_reference":"PO-17""#), "{webhook}");
    assert!(webhook.contains(&format!(r#""reference":"{}""#, entry.reference)), "{webhook}");
    assert!(eventually(|| h.ledger()[0].webhook_acknowledged).await);
    assert_eq!(h.ledger()[0].status, CashoutStatus::Completed);

    let stats = h.stats();
    assert_eq!((stats.token_calls, stats.tokens_issued, stats.cashouts_received), (1, 1, 1));
    assert_eq!((stats.cashouts_executed, stats.completed, stats.executed_more_than_once), (1, 1, 0));
    assert_eq!((stats.webhooks_sent, stats.webhooks_acknowledged), (1, 1));
    assert_eq!(h.traceparents().len(), 1);
    assert_eq!(h.traceparents()[0].0, CASHOUT_PATH);
    assert!(entry.traceparent.is_some());
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn wrong_credentials_get_a_401_and_no_token() {
    let h = sandbox(|_| {}).await;
    for (key, merchant) in [("sk_wrong", MERCHANT), (API_KEY, "MCH-OTHER"), ("", "")] {
        let (status, body) = token_call(&h, key, merchant).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let envelope: Envelope<serde_json::Value> = serde_json::from_str(&body).expect("envelope");
        assert_eq!((envelope.status.as_str(), envelope.code, envelope.data), ("Error", 401, None));
    }
    let stats = h.stats();
    assert_eq!((stats.token_calls, stats.token_calls_refused, stats.tokens_issued), (3, 3, 0));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_expired_token_is_refused_and_nothing_is_executed() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.token_lifetime = Duration::from_millis(300)).await;
    let (status, body) = token_call(&h, API_KEY, MERCHANT).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""expires_in":1,"#), "{body}");

    let auth = token(&h).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = cashout(&h, &auth, cashout_body("PO-1", "100.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains(r#""code":401"#) && body.contains("expired"), "{body}");

    // Expiring every token at once: the old one is refused, a new one works.
    let old = token(&h).await;
    h.expire_all_tokens();
    assert_eq!(balance(&h, &old).await.0, StatusCode::UNAUTHORIZED);
    let fresh = token(&h).await;
    assert_eq!(balance(&h, &fresh).await.0, StatusCode::OK);

    assert!(h.ledger().is_empty());
    let stats = h.stats();
    assert_eq!((stats.unauthorized, stats.unauthorized_expired, stats.cashouts_executed), (2, 2, 0));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_token_pays_once_but_may_still_read_the_balance() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.initial_balance = Decimal::from(1000)).await;
    let auth = token(&h).await;
    assert_eq!(cashout(&h, &auth, cashout_body("PO-1", "100.00", &receiver.url)).await.0, StatusCode::OK);
    let (status, body) = cashout(&h, &auth, cashout_body("PO-2", "100.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("already used"), "{body}");

    let (status, body) = balance(&h, &auth).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""balance":900.00,"currency":"COP""#), "{body}");

    assert_eq!(h.ledger().len(), 1);
    let stats = h.stats();
    assert_eq!((stats.unauthorized_reused, stats.cashouts_executed, stats.balance_calls), (1, 1, 1));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_foreign_or_missing_session_is_refused() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|_| {}).await;
    let (a_token, _) = token(&h).await;
    let (_, b_session) = token(&h).await;
    let crossed = (a_token.clone(), b_session);
    let (status, body) = cashout(&h, &crossed, cashout_body("PO-1", "1.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("session"), "{body}");

    let response = http()
        .post(format!("{}{BALANCE_PATH}", h.base_url()))
        .bearer_auth(&a_token)
        .send()
        .await
        .expect("balance call");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(balance(&h, &("not-a-token".into(), "sess_x".into())).await.0, StatusCode::UNAUTHORIZED);

    assert!(h.ledger().is_empty());
    let stats = h.stats();
    assert_eq!((stats.unauthorized_bad_session, stats.unauthorized_unknown_token), (2, 1));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_same_merchant_reference_is_executed_again_and_counted() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.initial_balance = Decimal::from(1000)).await;
    for _ in 0..2 {
        let auth = token(&h).await;
        let (status, body) = cashout(&h, &auth, cashout_body("PO-DUP", "250.00", &receiver.url)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let entries = h.entries_for("PO-DUP");
    assert_eq!(entries.len(), 2);
    assert_ne!(entries[0].reference, entries[1].reference);
    assert_eq!((entries[0].execution, entries[1].execution), (1, 2));
    assert_eq!(h.balance(), Decimal::from(500));
    let stats = h.stats();
    assert_eq!((stats.cashouts_executed, stats.executed_more_than_once), (2, 1));
    assert_eq!(stats.executions_per_merchant_reference.get("PO-DUP"), Some(&2));
    assert!(eventually(|| receiver.count() == 2).await);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_fields_are_answered_400_naming_the_field_and_execute_nothing() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|_| {}).await;
    let good = cashout_body("PO-1", "10.00", &receiver.url);
    let cases = [
        (cashout_body("PO-1", "10.001", &receiver.url), "amount"),
        (cashout_body("PO-1", "0", &receiver.url), "amount"),
        (cashout_body("PO-1", "10.00", "ftp://merchant.example/n"), "notification_url"),
        (good.replace(r#""flow":"PAYOUT""#, r#""flow":"PAYIN""#), "flow"),
        (good.replace(r#""method_category":"BANK""#, r#""method_category":"CARD""#), "method_category"),
        (good.replace(r#""phone":"573001234567","#, "").replace(r#","phone":"573001234567""#, ""), "phone"),
    ];
    for (body, field) in cases {
        let (status, answer) = cashout(&h, &token(&h).await, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let envelope: Envelope<serde_json::Value> = serde_json::from_str(&answer).expect("envelope");
        assert_eq!((envelope.status.as_str(), envelope.code), ("Error", 400));
        assert!(envelope.message.contains(field), "{:?} should name {field}", envelope.message);
    }
    assert!(h.ledger().is_empty());
    assert_eq!(h.stats().bad_requests, 6);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn forced_401_refuses_valid_tokens_until_switched_off() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.forced_401_rate = 1.0).await;
    let (status, body) = cashout(&h, &token(&h).await, cashout_body("PO-1", "1.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(balance(&h, &token(&h).await).await.0, StatusCode::UNAUTHORIZED);
    assert!(h.ledger().is_empty());

    h.set_forced_401_rate(0.0);
    let (status, body) = cashout(&h, &token(&h).await, cashout_body("PO-1", "1.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = h.stats();
    assert_eq!((stats.unauthorized_forced, stats.unauthorized, stats.cashouts_executed), (2, 2, 1));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn webhooks_are_redelivered_until_a_2xx_even_after_a_dropped_first_attempt() {
    let receiver = Receiver::start(vec![StatusCode::INTERNAL_SERVER_ERROR]).await;
    let h = sandbox(|c| c.faults = Faults { drop_callback_rate: 1.0, ..Faults::default() }).await;
    let (status, _) = cashout(&h, &token(&h).await, cashout_body("PO-1", "5.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(eventually(|| h.ledger()[0].webhook_acknowledged).await, "never acknowledged");
    assert_eq!(receiver.count(), 2);
    let bodies = receiver.bodies();
    assert_eq!(bodies[0], bodies[1], "redeliveries resend the same body");
    let stats = h.stats();
    assert_eq!((stats.webhooks_dropped, stats.webhooks_sent), (1, 2));
    assert_eq!((stats.webhooks_failed, stats.webhooks_acknowledged), (1, 1));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn drop_all_webhooks_holds_them_back_until_switched_off() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.drop_all_webhooks = true).await;
    let (status, _) = cashout(&h, &token(&h).await, cashout_body("PO-1", "5.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(eventually(|| h.stats().webhooks_dropped >= 2).await);
    assert_eq!(receiver.count(), 0);
    h.set_drop_all_webhooks(false);
    assert!(eventually(|| receiver.count() == 1).await, "no webhook after switching back on");
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_declined_cashout_is_rejected_and_its_money_returned() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| {
        c.initial_balance = Decimal::from(100);
        // Long enough that the debit is still visible when the answer has come back.
        c.processing_delay = Duration::from_millis(400);
        c.faults = Faults { decline_rate: 1.0, duplicate_callback_rate: 1.0, ..Faults::default() };
    })
    .await;
    let (status, _) = cashout(&h, &token(&h).await, cashout_body("PO-1", "60.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.balance(), Decimal::from(40));
    assert!(eventually(|| receiver.count() == 2).await, "the duplicate too");
    assert!(receiver.bodies()[0].contains(r#""status":"REJECTED""#));
    assert_eq!(h.ledger()[0].status, CashoutStatus::Rejected);
    assert_eq!(h.balance(), Decimal::from(100));

    // More than the balance: refused, nothing executed.
    let (status, body) = cashout(&h, &token(&h).await, cashout_body("PO-2", "100.01", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(h.ledger().len(), 1);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn front_door_faults_execute_nothing() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| c.faults = Faults { rate_limit_rate: 1.0, ..Faults::default() }).await;
    let response = http().post(format!("{}{TOKEN_PATH}", h.base_url())).send().await.expect("call");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(response.text().await.expect("body").contains(r#""code":429"#));

    h.set_faults(Faults::default());
    let auth = token(&h).await;
    h.set_faults(Faults { error_5xx_rate: 1.0, ..Faults::default() });
    let (status, body) = cashout(&h, &auth, cashout_body("PO-1", "1.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    h.set_faults(Faults { reject_rate: 1.0, ..Faults::default() });
    // The 5xx came before the token was looked at, so it is still unused.
    let (status, body) = cashout(&h, &auth, cashout_body("PO-1", "1.00", &receiver.url)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(h.ledger().is_empty());
    let stats = h.stats();
    assert_eq!((stats.rate_limited, stats.errors_5xx, stats.rejected), (1, 1, 1));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_timeout_after_execute_moves_the_money_and_shutdown_ends_the_held_answer() {
    let receiver = Receiver::start(vec![]).await;
    let h = sandbox(|c| {
        c.faults = Faults {
            timeout_after_execute_rate: 1.0,
            timeout_delay: Duration::from_secs(60),
            ..Faults::default()
        };
    })
    .await;
    let (token, session) = token(&h).await;
    let outcome = http()
        .post(format!("{}{CASHOUT_PATH}", h.base_url()))
        .bearer_auth(token)
        .header("x-session-id", session)
        .header("content-type", "application/json")
        .body(cashout_body("PO-1", "1.00", &receiver.url))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(outcome.is_err_and(|e| e.is_timeout()));
    assert_eq!(h.ledger().len(), 1);
    assert!(eventually(|| receiver.count() == 1).await, "the webhook still tells");
    assert_eq!(h.stats().timeouts_after_execute, 1);
    tokio::time::timeout(Duration::from_secs(5), h.shutdown())
        .await
        .expect("shutdown does not wait for the held answer")
        .expect("clean shutdown");
}

/// A client that times out while the early webhook is on its way (its request's future is
/// dropped on hang-up) must not cost the webhook: 88Pay has no status call, so a lost webhook
/// would leave the payout unfinishable.
#[tokio::test]
async fn an_early_webhook_survives_the_client_hanging_up() {
    async fn slow(body: String) -> StatusCode {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if body.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::OK }
    }
    let app = axum::Router::new().route("/webhooks/88pay/{capability}", axum::routing::post(slow));
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}/webhooks/88pay/cap-0123", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = sandbox(|c| c.faults = Faults { early_callback_rate: 1.0, ..Faults::default() }).await;
    let session = token(&h).await;
    let hurried =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(100)).build().expect("client");
    let sent = hurried
        .post(format!("{}{CASHOUT_PATH}", h.base_url()))
        .bearer_auth(&session.0)
        .header("x-session-id", &session.1)
        .header("content-type", "application/json")
        .body(cashout_body("PO-HANGUP", "5.00", &url))
        .send()
        .await;
    assert!(sent.is_err(), "the client hung up before the answer: {sent:?}");
    assert!(
        eventually(|| h.ledger()[0].webhook_acknowledged).await,
        "the early webhook was lost with the request"
    );
    assert_eq!(h.stats().webhooks_acknowledged, 1);
    h.shutdown().await.expect("clean shutdown");
}
