//! The 8B REST simulator over loopback HTTP, driven by a plain HTTP client speaking the wire
//! types, with a small webhook receiver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use payoutd_core::Secret;
use payoutd_providers::eightb_rest::wire::{
    AUTHORIZE_PATH, CHECK_PATH, CheckAnswer, CheckRequest, DISBURSEMENT_PATH, DisbursementAnswer,
    ErrorAnswer, INTENTS_PATH, IntentAnswer, IntentRequest, PaymentRequest, REFRESH_PATH, Recipient,
    TokenAnswer, Webhook,
};
use payoutd_sandbox::Faults;
use payoutd_sandbox::eightb_rest::{
    CLIENT_REFRESH_PATH, DECLINE_ERROR_CODE, DisbursementStatus, RestSandbox, RestSandboxConfig,
    RestSandboxHandle,
};
use rust_decimal::Decimal;

const LOGIN: &str = "payoutd";
const PASSWORD: &str = "sandbox-password";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A simulator with fast timings, changed by `tweak`.
async fn sandbox(tweak: impl FnOnce(&mut RestSandboxConfig)) -> RestSandboxHandle {
    let mut config = RestSandboxConfig::new(LOGIN, Secret::new(PASSWORD));
    config.processing_delay = Duration::from_millis(100);
    config.webhook_schedule_scale = 0.001;
    config.initial_balance = Decimal::from(1_000_000);
    tweak(&mut config);
    RestSandbox::start(config, loopback()).await.expect("sandbox starts")
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

/// A bare HTTP client of the simulator.
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(handle: &RestSandboxHandle) -> Self {
        Self::with_timeout(handle, Duration::from_secs(5))
    }

    fn with_timeout(handle: &RestSandboxHandle, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).no_proxy().build().expect("client");
        Self { base: handle.base_url(), http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn authorize_as(&self, login: &str, password: &str) -> reqwest::Response {
        let body = serde_json::json!({ "login": login, "password": password });
        self.http.post(self.url(AUTHORIZE_PATH)).json(&body).send().await.expect("authorize")
    }

    async fn tokens(&self) -> TokenAnswer {
        let response = self.authorize_as(LOGIN, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("token answer")
    }

    async fn refresh(&self, path: &str, refresh_token: &str) -> reqwest::Response {
        let body = serde_json::json!({ "refreshToken": refresh_token });
        self.http.post(self.url(path)).json(&body).send().await.expect("refresh")
    }

    async fn intent(&self, token: &str, request: &IntentRequest) -> reqwest::Response {
        self.http.post(self.url(INTENTS_PATH)).bearer_auth(token).json(request).send().await.expect("intent")
    }

    /// An intent that must be answered 200; its single disbursement id.
    async fn pay(&self, token: &str, request: &IntentRequest) -> String {
        let response = self.intent(token, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let answer: IntentAnswer = response.json().await.expect("intent answer");
        assert!(answer.id.starts_with("i-"), "{}", answer.id);
        assert_eq!(answer.payments.len(), 1);
        assert_eq!(answer.payments[0].external_id, request.payments[0].external_id);
        assert_eq!(answer.payments[0].status.as_deref(), Some("PROCESSING"));
        answer.payments[0].id.clone()
    }

    /// An intent written as raw JSON text.
    async fn raw_intent(&self, token: &str, content_type: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url(INTENTS_PATH))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("intent")
    }

    async fn get(&self, token: &str, id: &str) -> reqwest::Response {
        let url = self.url(&format!("{DISBURSEMENT_PATH}/{id}"));
        self.http.get(url).bearer_auth(token).send().await.expect("get")
    }

    async fn check(&self, token: &str, request: &CheckRequest) -> reqwest::Response {
        self.http.post(self.url(CHECK_PATH)).bearer_auth(token).json(request).send().await.expect("check")
    }
}

fn recipient() -> Recipient {
    Recipient {
        account_number: "1234567890".into(),
        bank_code: "bca".into(),
        name: "Budi Santoso".into(),
        phone: "622851280".into(),
        bic: None,
    }
}

fn intent(external_id: &str, amount: &str, currency: &str) -> IntentRequest {
    IntentRequest {
        external_id: external_id.into(),
        payments: vec![PaymentRequest {
            external_id: external_id.into(),
            amount: Decimal::from_str_exact(amount).expect("amount"),
            currency: currency.into(),
            recipient: recipient(),
        }],
    }
}

async fn error_of(response: reqwest::Response, status: StatusCode) -> ErrorAnswer {
    assert_eq!(response.status(), status);
    response.json().await.expect("error answer")
}

/// A webhook endpoint: records (disbursement id, body) and answers from `script` in order, then
/// 200.
struct Receiver {
    base: String,
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Receiver {
    async fn start(script: Vec<StatusCode>) -> Self {
        type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;
        async fn receive(
            State((seen, script)): State<(Seen, Arc<Vec<StatusCode>>)>,
            Path(id): Path<String>,
            body: Bytes,
        ) -> StatusCode {
            let mut seen = seen.lock().expect("lock");
            seen.push((id, body));
            script.get(seen.len() - 1).copied().unwrap_or(StatusCode::OK)
        }
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/hooks/8b/{id}", axum::routing::post(receive))
            .with_state((seen.clone(), Arc::new(script)));
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        // A trailing slash, to see that the sandbox joins the id without doubling it.
        let base = format!("http://{}/hooks/8b/", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, seen }
    }

    fn seen(&self) -> Vec<(String, Webhook)> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .map(|(id, body)| (id.clone(), serde_json::from_slice(body).expect("webhook body")))
            .collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

fn accepted() -> Webhook {
    Webhook { status: "ACCEPTED".into(), error_code: None, error_message: None }
}

#[tokio::test]
async fn authorize_pay_poll_and_receive_the_webhook() {
    let receiver = Receiver::start(vec![]).await;
    let sb = sandbox(|c| c.webhook_base_url = Some(receiver.base.clone())).await;
    let client = Client::new(&sb);
    let tokens = client.tokens().await;
    assert_eq!((tokens.expires_in, tokens.refresh_expires_in), (Some(1800), Some(36_000)));
    let token = tokens.access_token;

    let check =
        CheckRequest { amount: Decimal::from(150_000), currency: "IDR".into(), recipient: recipient() };
    let answer: CheckAnswer = client.check(&token, &check).await.json().await.expect("check answer");
    assert_eq!(answer, CheckAnswer { available: true, reason: None });
    let too_much = CheckRequest { amount: Decimal::from(2_000_000), ..check };
    let answer: CheckAnswer = client.check(&token, &too_much).await.json().await.expect("check answer");
    assert!(!answer.available && answer.reason.is_some());

    let traced = client
        .http
        .post(client.url(INTENTS_PATH))
        .bearer_auth(&token)
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .json(&intent("po-1", "150000", "IDR"))
        .send()
        .await
        .expect("intent");
    assert_eq!(traced.status(), StatusCode::OK);
    let answer: IntentAnswer = traced.json().await.expect("intent answer");
    let id = answer.payments[0].id.clone();
    assert!(id.starts_with("d-") && id.len() > 20, "{id}");
    assert_eq!(
        sb.traceparents(),
        [(INTENTS_PATH.to_owned(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned())]
    );

    let processing: DisbursementAnswer = client.get(&token, &id).await.json().await.expect("status");
    assert_eq!((processing.status.as_str(), processing.external_id.as_str()), ("PROCESSING", "po-1"));
    assert_eq!(sb.balance(), Decimal::from(850_000));

    assert!(eventually(|| receiver.count() == 1).await);
    assert_eq!(receiver.seen(), [(id.clone(), accepted())]);
    let response = client.get(&token, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("body");
    assert!(text.contains(r#""amount":150000,"#), "{text}");
    let done: DisbursementAnswer = serde_json::from_str(&text).expect("status");
    assert_eq!(
        (done.status.as_str(), done.amount, done.currency.as_str()),
        ("ACCEPTED", Decimal::from(150_000), "IDR")
    );

    assert!(eventually(|| sb.entry(&id).is_some_and(|e| e.webhook_acknowledged)).await);
    let entry = sb.entry(&id).expect("entry");
    assert_eq!(
        (entry.status, entry.executions, entry.external_id.as_str()),
        (DisbursementStatus::Accepted, 1, "po-1")
    );
    let stats = sb.stats();
    assert_eq!((stats.authorize_calls, stats.authorize_failed), (1, 0));
    assert_eq!((stats.intents_received, stats.payments_executed, stats.double_executions), (1, 1, 0));
    assert_eq!((stats.checks, stats.status_gets, stats.status_not_found), (2, 2, 0));
    assert_eq!((stats.webhooks_sent, stats.webhooks_acknowledged, stats.unauthorized), (1, 1, 0));
    assert_eq!(stats.balance, Decimal::from(850_000));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_credentials_are_answered_401() {
    let sb = sandbox(|_| ()).await;
    let client = Client::new(&sb);
    let refused = error_of(client.authorize_as(LOGIN, "wrong").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(refused.error_code.as_deref(), Some("UNAUTHORIZED"));
    error_of(client.authorize_as("someone", PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    let missing = client.http.post(client.url(AUTHORIZE_PATH)).json(&serde_json::json!({ "login": LOGIN }));
    error_of(missing.send().await.expect("send"), StatusCode::BAD_REQUEST).await;

    // Without a token, with a made-up one: 401, nothing executed.
    let no_token = client.http.post(client.url(INTENTS_PATH)).json(&intent("po-1", "1", "IDR"));
    let refused = error_of(no_token.send().await.expect("send"), StatusCode::UNAUTHORIZED).await;
    assert_eq!(refused.error_code.as_deref(), Some("UNAUTHORIZED"));
    error_of(client.intent("at-made-up", &intent("po-1", "1", "IDR")).await, StatusCode::UNAUTHORIZED).await;

    assert!(sb.ledger().is_empty());
    let stats = sb.stats();
    assert_eq!((stats.authorize_calls, stats.authorize_failed, stats.bad_requests), (3, 3, 1));
    assert_eq!((stats.unauthorized, stats.unauthorized_missing, stats.unauthorized_unknown), (2, 1, 1));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_expired_access_token_is_401_and_a_refresh_brings_a_new_one() {
    let sb = sandbox(|c| c.access_token_lifetime = Duration::from_millis(500)).await;
    let client = Client::new(&sb);
    let first = client.tokens().await;
    assert_eq!(first.expires_in, Some(1), "sub-second lifetimes are announced rounded up");
    // Authorized (404 for an unknown id, not 401).
    assert_eq!(client.get(&first.access_token, "d-unknown").await.status(), StatusCode::NOT_FOUND);

    let refreshed =
        client.refresh(REFRESH_PATH, first.refresh_token.as_deref().expect("refresh token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let second: TokenAnswer = refreshed.json().await.expect("token answer");
    assert_ne!(second.access_token, first.access_token);
    assert_ne!(second.refresh_token, first.refresh_token);
    // The old access token stays valid until its own expiry; the old refresh token is used up.
    assert_eq!(client.get(&first.access_token, "d-unknown").await.status(), StatusCode::NOT_FOUND);
    let reused = client.refresh(REFRESH_PATH, first.refresh_token.as_deref().expect("refresh token")).await;
    error_of(reused, StatusCode::UNAUTHORIZED).await;

    tokio::time::sleep(Duration::from_millis(600)).await;
    for token in [&first.access_token, &second.access_token] {
        let expired =
            error_of(client.intent(token, &intent("po-1", "1", "IDR")).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(expired.error_message.as_deref(), Some("access token expired"));
    }
    assert!(sb.ledger().is_empty());

    // The guide's other refresh path works the same.
    let refreshed =
        client.refresh(CLIENT_REFRESH_PATH, second.refresh_token.as_deref().expect("refresh token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let third: TokenAnswer = refreshed.json().await.expect("token answer");
    client.pay(&third.access_token, &intent("po-1", "1", "IDR")).await;

    let stats = sb.stats();
    assert_eq!((stats.refresh_calls, stats.refresh_failed), (3, 1));
    assert_eq!((stats.unauthorized, stats.unauthorized_expired), (2, 2));
    assert_eq!(stats.payments_executed, 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_expired_refresh_token_is_401() {
    let sb = sandbox(|c| c.refresh_token_lifetime = Duration::from_millis(200)).await;
    let client = Client::new(&sb);
    let tokens = client.tokens().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = error_of(
        client.refresh(REFRESH_PATH, tokens.refresh_token.as_deref().expect("refresh token")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(refused.error_message.as_deref(), Some("refresh token expired"));
    error_of(client.refresh(REFRESH_PATH, "rt-made-up").await, StatusCode::UNAUTHORIZED).await;
    // The access token lives longer and still works; authorizing again always does.
    assert_eq!(client.get(&tokens.access_token, "d-unknown").await.status(), StatusCode::NOT_FOUND);
    client.tokens().await;
    assert_eq!((sb.stats().refresh_calls, sb.stats().refresh_failed), (2, 2));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn tokens_can_be_revoked_all_at_once() {
    let sb = sandbox(|_| ()).await;
    let client = Client::new(&sb);
    let tokens = client.tokens().await;
    let refresh = tokens.refresh_token.as_deref().expect("refresh token");

    sb.expire_all_access_tokens();
    error_of(client.get(&tokens.access_token, "d-unknown").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(sb.stats().unauthorized_expired, 1);

    sb.expire_all_refresh_tokens();
    error_of(client.refresh(CLIENT_REFRESH_PATH, refresh).await, StatusCode::UNAUTHORIZED).await;

    // Tokens issued afterwards are not affected.
    let fresh = client.tokens().await;
    assert_eq!(client.get(&fresh.access_token, "d-unknown").await.status(), StatusCode::NOT_FOUND);
    let refreshed =
        client.refresh(REFRESH_PATH, fresh.refresh_token.as_deref().expect("refresh token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_forced_401_refuses_a_valid_token_and_executes_nothing() {
    let sb = sandbox(|c| c.forced_401_rate = 1.0).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let refused =
        error_of(client.intent(&token, &intent("po-1", "100", "IDR")).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(refused.error_code.as_deref(), Some("UNAUTHORIZED"));
    assert!(sb.ledger().is_empty());
    assert_eq!(sb.balance(), Decimal::from(1_000_000));
    let stats = sb.stats();
    assert_eq!((stats.intents_received, stats.unauthorized, stats.unauthorized_forced), (1, 1, 1));

    sb.set_forced_401_rate(0.0);
    client.pay(&token, &intent("po-1", "100", "IDR")).await;
    assert_eq!(sb.stats().payments_executed, 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_same_external_id_sent_twice_is_executed_twice() {
    let sb = sandbox(|_| ()).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let request = intent("po-dup", "150000", "IDR");
    let first = client.pay(&token, &request).await;
    let second = client.pay(&token, &request).await;
    assert_ne!(first, second);

    assert_eq!(sb.balance(), Decimal::from(700_000));
    let entries = sb.entries_for("po-dup");
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.executions == 2), "{entries:?}");
    let stats = sb.stats();
    assert_eq!((stats.intents_received, stats.payments_executed, stats.double_executions), (2, 2, 1));
    assert_eq!(stats.executions_per_external_id.get("po-dup"), Some(&2));
    assert_eq!(stats.executed_more_than_once(), ["po-dup"]);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn malformed_intents_are_400_and_execute_nothing() {
    let sb = sandbox(|_| ()).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    const JSON: &str = "application/json";
    let recipient = r#""recipient":{"accountNumber":"1","bankCode":"bca","name":"Budi","phone":"62"}"#;
    let bodies: [(&str, String); 8] = [
        // IDR has no decimals, USD two.
        (
            JSON,
            format!(
                r#"{{"externalId":"a","payments":[{{"externalId":"a","amount":150000.5,"currency":"IDR",{recipient}}}]}}"#
            ),
        ),
        (
            JSON,
            format!(
                r#"{{"externalId":"a","payments":[{{"externalId":"a","amount":10.505,"currency":"USD",{recipient}}}]}}"#
            ),
        ),
        (
            JSON,
            format!(
                r#"{{"externalId":"a","payments":[{{"externalId":"a","amount":0,"currency":"USD",{recipient}}}]}}"#
            ),
        ),
        (
            JSON,
            format!(
                r#"{{"externalId":"a","payments":[{{"externalId":"a","amount":1,"currency":"XXX",{recipient}}}]}}"#
            ),
        ),
        (
            JSON,
            format!(r#"{{"externalId":"a","payments":[{{"externalId":"a","currency":"USD",{recipient}}}]}}"#),
        ),
        (JSON, r#"{"externalId":"a","payments":[]}"#.to_owned()),
        (JSON, r#"{"externalId":"a","payments":["#.to_owned()),
        (
            "text/plain",
            format!(
                r#"{{"externalId":"a","payments":[{{"externalId":"a","amount":1,"currency":"USD",{recipient}}}]}}"#
            ),
        ),
    ];
    for (content_type, body) in bodies {
        let response = client.raw_intent(&token, content_type, body.clone()).await;
        let refused = error_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(refused.error_code.as_deref(), Some("BAD_REQUEST"), "{body}");
        assert!(refused.error_message.is_some(), "{body}");
    }
    assert!(sb.ledger().is_empty());
    assert_eq!(sb.stats().bad_requests, 8);

    // One decimal for USD is fine, and answered at the currency's scale.
    let id = client.pay(&token, &intent("usd-1", "10.5", "USD")).await;
    let text = client.get(&token, &id).await.text().await.expect("body");
    assert!(text.contains(r#""amount":10.50,"#), "{text}");
    let entry = sb.entry(&id).expect("entry");
    assert_eq!((entry.amount, entry.amount_as_sent.as_str()), (Decimal::new(1050, 2), "10.5"));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_unknown_disbursement_is_404() {
    let sb = sandbox(|_| ()).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let missing = error_of(client.get(&token, "d-0123456789abcdef").await, StatusCode::NOT_FOUND).await;
    assert_eq!(missing.error_code.as_deref(), Some("NOT_FOUND"));
    let stats = sb.stats();
    assert_eq!((stats.status_gets, stats.status_not_found, stats.status_before_ingestion), (1, 1, 0));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn delayed_ingestion_hides_a_fresh_disbursement_from_get() {
    let sb = sandbox(|c| c.faults.ingestion_delay = Duration::from_millis(500)).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let id = client.pay(&token, &intent("po-1", "100", "IDR")).await;
    error_of(client.get(&token, &id).await, StatusCode::NOT_FOUND).await;
    // The money moved all the same.
    assert_eq!(sb.balance(), Decimal::from(999_900));

    let mut found = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = client.get(&token, &id).await;
        if response.status() == StatusCode::OK {
            found = Some(response.json::<DisbursementAnswer>().await.expect("status"));
            break;
        }
    }
    let found = found.expect("visible after the ingestion delay");
    assert_eq!(found.external_id, "po-1");
    assert!(sb.stats().status_before_ingestion >= 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_declined_disbursement_is_refunded_and_its_webhook_redelivered_until_2xx() {
    let receiver = Receiver::start(vec![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::NOT_FOUND]).await;
    let sb = sandbox(|c| {
        c.webhook_base_url = Some(receiver.base.clone());
        c.faults.decline_rate = 1.0;
    })
    .await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let id = client.pay(&token, &intent("po-1", "150000", "IDR")).await;
    assert_eq!(sb.balance(), Decimal::from(850_000));

    assert!(eventually(|| sb.entry(&id).is_some_and(|e| e.webhook_acknowledged)).await);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for (hook_id, webhook) in &seen {
        assert_eq!(hook_id, &id);
        assert_eq!(
            (webhook.status.as_str(), webhook.error_code.as_deref()),
            ("DECLINED", Some(DECLINE_ERROR_CODE))
        );
        assert!(webhook.error_message.is_some());
    }
    let done: DisbursementAnswer = client.get(&token, &id).await.json().await.expect("status");
    assert_eq!((done.status.as_str(), done.error_code.as_deref()), ("DECLINED", Some(DECLINE_ERROR_CODE)));
    assert_eq!(sb.balance(), Decimal::from(1_000_000));
    let stats = sb.stats();
    assert_eq!(
        (stats.declined, stats.webhooks_sent, stats.webhooks_failed, stats.webhooks_acknowledged),
        (1, 3, 2, 1)
    );
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn front_door_faults_and_rejects_execute_nothing() {
    let sb = sandbox(|c| c.faults.rate_limit_rate = 1.0).await;
    let client = Client::new(&sb);
    // Authorize sits behind the same front door.
    let limited = client.authorize_as(LOGIN, PASSWORD).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));

    sb.set_faults(Faults::default());
    let token = client.tokens().await.access_token;
    let request = intent("po-1", "100", "IDR");
    sb.set_faults(Faults { rate_limit_rate: 1.0, ..Faults::default() });
    let limited = client.intent(&token, &request).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    sb.set_faults(Faults { error_5xx_rate: 1.0, ..Faults::default() });
    assert_eq!(client.intent(&token, &request).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    sb.set_faults(Faults { reject_rate: 1.0, ..Faults::default() });
    let rejected = error_of(client.intent(&token, &request).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(rejected.error_code.as_deref(), Some("REJECTED"));

    sb.set_faults(Faults::default());
    let too_much = error_of(
        client.intent(&token, &intent("po-2", "2000000", "IDR")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(too_much.error_code.as_deref(), Some("INSUFFICIENT_FUNDS"));

    assert!(sb.ledger().is_empty());
    assert_eq!(sb.balance(), Decimal::from(1_000_000));
    let stats = sb.stats();
    assert_eq!(
        (stats.rate_limited, stats.errors_5xx, stats.rejected, stats.insufficient_balance),
        (2, 1, 1, 1)
    );
    assert_eq!((stats.intents_received, stats.authorize_calls), (4, 1));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_timeout_after_execution_leaves_the_money_moved_and_shutdown_stays_prompt() {
    let sb = sandbox(|c| c.faults.timeout_after_execute_rate = 1.0).await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;
    let impatient = Client::with_timeout(&sb, Duration::from_millis(200));
    let outcome = impatient
        .http
        .post(impatient.url(INTENTS_PATH))
        .bearer_auth(&token)
        .json(&intent("po-1", "100", "IDR"))
        .send()
        .await;
    assert!(outcome.is_err_and(|e| e.is_timeout()));

    let entries = sb.entries_for("po-1");
    assert_eq!(entries.len(), 1);
    assert_eq!(sb.balance(), Decimal::from(999_900));
    assert_eq!(sb.stats().timeouts_after_execute, 1);
    // The held answer (60 s) ends with the sandbox.
    tokio::time::timeout(Duration::from_secs(5), sb.shutdown())
        .await
        .expect("shutdown does not wait out the held answer")
        .expect("clean shutdown");
}

#[tokio::test]
async fn webhooks_can_come_early_twice_or_not_at_all() {
    let receiver = Receiver::start(vec![]).await;
    let sb = sandbox(|c| {
        c.webhook_base_url = Some(receiver.base.clone());
        c.faults.early_callback_rate = 1.0;
    })
    .await;
    let client = Client::new(&sb);
    let token = client.tokens().await.access_token;

    // Early: told before the intent answer returns.
    let early = client.pay(&token, &intent("po-early", "100", "IDR")).await;
    assert_eq!(receiver.seen(), [(early.clone(), accepted())]);
    assert_eq!(sb.stats().early_webhooks, 1);

    // Duplicated.
    sb.set_faults(Faults { duplicate_callback_rate: 1.0, ..Faults::default() });
    let twice = client.pay(&token, &intent("po-twice", "100", "IDR")).await;
    assert!(eventually(|| receiver.count() == 3).await);
    assert_eq!(&receiver.seen()[1..], [(twice.clone(), accepted()), (twice, accepted())]);

    // Dropped: the status is final all the same, only polling tells.
    sb.set_faults(Faults { drop_callback_rate: 1.0, ..Faults::default() });
    let dropped = client.pay(&token, &intent("po-dropped", "100", "IDR")).await;
    assert!(eventually(|| sb.stats().webhooks_dropped == 1).await);
    let done: DisbursementAnswer = client.get(&token, &dropped).await.json().await.expect("status");
    assert_eq!(done.status, "ACCEPTED");
    assert_eq!(receiver.count(), 3);

    // No URL: nothing is sent, and setting one at runtime works for later disbursements.
    sb.set_faults(Faults::default());
    sb.set_webhook_base_url(None);
    let silent = client.pay(&token, &intent("po-silent", "100", "IDR")).await;
    assert!(eventually(|| sb.entry(&silent).is_some_and(|e| e.status == DisbursementStatus::Accepted)).await);
    sb.set_webhook_base_url(Some(receiver.base.clone()));
    let loud = client.pay(&token, &intent("po-loud", "100", "IDR")).await;
    assert!(eventually(|| receiver.count() == 4).await);
    assert_eq!(receiver.seen()[3].0, loud);

    // The receiver records a body before it answers: the last acknowledgement may still be on
    // its way back.
    assert!(eventually(|| sb.stats().webhooks_acknowledged == 4).await);
    let stats = sb.stats();
    assert_eq!((stats.webhooks_sent, stats.duplicate_webhooks_sent, stats.webhooks_acknowledged), (4, 1, 4));
    sb.shutdown().await.expect("clean shutdown");
}
