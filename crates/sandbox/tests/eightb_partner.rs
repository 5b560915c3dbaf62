//! The real 8B partner connector against the in-process sandbox, over loopback HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use payoutd_core::{Currency, Destination, Money, Secret};
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_providers::{
    CallbackVerdict, CheckOutcome, Connector, FrozenRequest, PayoutForProvider, ProviderError,
    ProviderStatus, SubmitOutcome, VerifiedCallback,
};
use payoutd_sandbox::{Faults, LedgerStatus, Sandbox, SandboxConfig, SandboxHandle};
use rust_decimal::Decimal;

const SERVICE: &str = "4321";
const SECRET: &str = "sandbox-secret";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A sandbox with fast timings, changed by `tweak`.
async fn sandbox(tweak: impl FnOnce(&mut SandboxConfig)) -> SandboxHandle {
    let mut config = SandboxConfig::new(SERVICE, Secret::new(SECRET));
    config.processing_delay = Duration::from_millis(100);
    config.min_check_delay = Duration::from_millis(50);
    config.callback_schedule_scale = 0.001;
    config.initial_balance = Decimal::from(1_000_000);
    tweak(&mut config);
    Sandbox::start(config, loopback()).await.expect("sandbox starts")
}

fn connector_with(handle: &SandboxHandle, secret: &str, timeout: Duration) -> EightBPartner {
    let mut config = EightBPartnerConfig::new(handle.base_url(), SERVICE, Secret::new(secret));
    config.request_timeout = timeout;
    config.min_status_interval = Duration::from_millis(50);
    EightBPartner::new(config).expect("valid connector config")
}

fn connector(handle: &SandboxHandle) -> EightBPartner {
    connector_with(handle, SECRET, Duration::from_secs(5))
}

fn payout(amount: &str, currency: &str) -> PayoutForProvider {
    PayoutForProvider {
        money: Money::parse(amount, Currency::parse(currency).expect("currency")).expect("money"),
        destination: Destination {
            phone: "622851280".into(),
            client: "1234567890".into(),
            destination: "bank_bca".into(),
            receiver_name: "Budi Santoso".into(),
            receiver_bic: None,
        },
    }
}

fn idr(c: &EightBPartner, reference: &str) -> FrozenRequest {
    c.freeze_submit(&payout("150000", "IDR"), reference, Utc::now())
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

/// A partner-side callback endpoint: records every body and answers from `script` in order,
/// then "OK".
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start(script: Vec<(StatusCode, &'static str)>) -> Self {
        type Shared = (Arc<Mutex<Vec<Bytes>>>, Arc<Vec<(StatusCode, &'static str)>>);
        async fn receive(State((bodies, script)): State<Shared>, body: Bytes) -> (StatusCode, &'static str) {
            let mut bodies = bodies.lock().expect("lock");
            bodies.push(body);
            script.get(bodies.len() - 1).copied().unwrap_or((StatusCode::OK, "OK"))
        }
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/callbacks/8b", axum::routing::post(receive))
            .with_state((bodies.clone(), Arc::new(script)));
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("http://{}/callbacks/8b", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, bodies }
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().expect("lock").clone()
    }

    fn count(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }
}

fn verified(c: &EightBPartner, body: &[u8]) -> VerifiedCallback {
    let headers = reqwest::header::HeaderMap::new();
    match c.verify_callback(&payoutd_providers::IncomingCallback { path: "", headers: &headers, body }) {
        CallbackVerdict::Verified(v) => v,
        other => panic!("callback did not verify: {other:?}"),
    }
}

#[tokio::test]
async fn submit_is_accepted_then_paid_after_the_processing_delay() {
    // The first check comes well inside min_check_delay, the second well after it.
    let sb = sandbox(|config| {
        config.processing_delay = Duration::from_millis(300);
        config.min_check_delay = Duration::from_millis(200);
    })
    .await;
    let c = connector(&sb);
    let p = payout("150000", "IDR");

    assert_eq!(c.check(&p).await, Ok(CheckOutcome::Go));
    let request = c.freeze_submit(&p, "ord-1", Utc::now());
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    assert_eq!(c.status(&request, None).await, Ok(ProviderStatus::Processing));

    assert!(eventually(|| sb.entry("ord-1").is_some_and(|e| e.status == LedgerStatus::Paid)).await);
    assert_eq!(c.status(&request, None).await, Ok(ProviderStatus::Paid));

    let entry = sb.entry("ord-1").expect("entry");
    assert_eq!((entry.amount.as_str(), entry.currency.as_str()), ("150000", "IDR"));
    assert_eq!(entry.executions, 1);
    assert_eq!(sb.balance(), Decimal::from(850_000));
    let stats = sb.stats();
    assert_eq!((stats.payouts_received, stats.payouts_executed, stats.double_executions), (1, 1, 0));
    assert_eq!((stats.checks, stats.early_checks, stats.balance_requests), (2, 1, 1));
    assert_eq!(stats.checks_per_id.get("ord-1"), Some(&2));
    assert_eq!(stats.bad_signatures, 0);
    // No callback URL configured: nothing sent, nothing counted.
    assert_eq!((stats.callbacks_sent, stats.callbacks_answered_error, stats.callbacks_dropped), (0, 0, 0));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn usd_amounts_travel_with_two_decimals() {
    let sb = sandbox(|_| ()).await;
    let c = connector(&sb);
    let request = c.freeze_submit(&payout("10.5", "USD"), "usd-1", Utc::now());
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    assert_eq!(sb.entry("usd-1").expect("entry").amount, "10.50");
    assert_eq!(sb.balance(), Decimal::new(99_998_950, 2));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_is_executed() {
    let sb = sandbox(|_| ()).await;
    let c = connector_with(&sb, "not-the-secret", Duration::from_secs(5));
    let request = idr(&c, "ord-bad");

    let outcome = c.submit(&request).await;
    assert!(
        matches!(outcome, SubmitOutcome::Rejected { ref reason } if reason.contains("invalid hash")),
        "{outcome:?}"
    );
    assert!(matches!(c.status(&request, None).await, Err(ProviderError::Refused { .. })));
    assert!(matches!(c.check(&payout("1", "IDR")).await, Err(ProviderError::Refused { .. })));

    assert!(sb.ledger().is_empty());
    assert_eq!(sb.stats().bad_signatures, 3);
    assert_eq!(sb.balance(), Decimal::from(1_000_000));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_same_id_sent_twice_is_executed_twice() {
    let sb = sandbox(|_| ()).await;
    let c = connector(&sb);
    let request = idr(&c, "ord-dup");
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });

    assert_eq!(sb.entry("ord-dup").expect("entry").executions, 2);
    let stats = sb.stats();
    assert_eq!((stats.payouts_executed, stats.double_executions), (2, 1));
    assert_eq!(sb.balance(), Decimal::from(700_000));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_timeout_after_execution_is_in_doubt_while_the_money_moved() {
    let sb = sandbox(|config| {
        config.faults = Faults {
            timeout_after_execute_rate: 1.0,
            timeout_delay: Duration::from_secs(30),
            ..Faults::default()
        };
    })
    .await;
    let c = connector_with(&sb, SECRET, Duration::from_millis(300));
    let request = idr(&c, "ord-slow");

    let outcome = c.submit(&request).await;
    assert!(matches!(outcome, SubmitOutcome::InDoubt { .. }), "{outcome:?}");
    assert_eq!(sb.entry("ord-slow").expect("executed").executions, 1);
    assert_eq!(sb.stats().timeouts_after_execute, 1);

    // Querying by the same reference resolves the doubt.
    sb.set_faults(Faults::default());
    assert!(eventually(|| sb.entry("ord-slow").is_some_and(|e| e.status == LedgerStatus::Paid)).await);
    assert_eq!(c.status(&request, None).await, Ok(ProviderStatus::Paid));
    // Shutdown cuts the 30 s hold short.
    tokio::time::timeout(Duration::from_secs(5), sb.shutdown())
        .await
        .expect("shutdown ends held answers")
        .expect("clean shutdown");
}

#[tokio::test]
async fn rate_limits_are_not_sent_with_retry_after() {
    let sb = sandbox(|config| config.faults.rate_limit_rate = 1.0).await;
    let c = connector(&sb);
    let request = idr(&c, "ord-429");

    let outcome = c.submit(&request).await;
    assert!(
        matches!(outcome, SubmitOutcome::NotSent { retry_after: Some(d), .. } if d == Duration::from_secs(1)),
        "{outcome:?}"
    );
    assert_eq!(
        c.status(&request, None).await,
        Err(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(1)) })
    );
    assert!(sb.ledger().is_empty());
    assert_eq!(sb.stats().rate_limited, 2);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn server_errors_are_in_doubt_for_submit_and_transient_for_status() {
    let sb = sandbox(|config| config.faults.error_5xx_rate = 1.0).await;
    let c = connector(&sb);
    let request = idr(&c, "ord-500");
    assert!(matches!(c.submit(&request).await, SubmitOutcome::InDoubt { .. }));
    assert!(matches!(c.status(&request, None).await, Err(ProviderError::Transient { .. })));
    assert!(matches!(c.check(&payout("1", "IDR")).await, Err(ProviderError::Transient { .. })));
    assert_eq!(sb.stats().errors_5xx, 3);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn reject_fault_is_rejected_and_not_executed() {
    let sb = sandbox(|config| config.faults.reject_rate = 1.0).await;
    let c = connector(&sb);
    let request = idr(&c, "ord-rej");
    assert!(matches!(c.submit(&request).await, SubmitOutcome::Rejected { .. }));
    assert_eq!(c.status(&request, None).await, Ok(ProviderStatus::NotFound));
    assert_eq!(sb.stats().rejected, 1);
    assert!(sb.ledger().is_empty());
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_low_balance_says_not_now_and_answers_not_paid() {
    let sb = sandbox(|config| config.initial_balance = Decimal::from(100_000)).await;
    let c = connector(&sb);
    let p = payout("150000", "IDR");
    assert_eq!(
        c.check(&p).await,
        Ok(CheckOutcome::NotNow { reason: "balance 100000 below amount 150000".into() })
    );
    let request = c.freeze_submit(&p, "ord-poor", Utc::now());
    let outcome = c.submit(&request).await;
    assert!(
        matches!(outcome, SubmitOutcome::Rejected { ref reason } if reason.contains("insufficient balance")),
        "{outcome:?}"
    );
    assert!(matches!(c.status(&request, None).await, Ok(ProviderStatus::Failed { .. })));
    assert_eq!(sb.entry("ord-poor").expect("recorded").executions, 0);
    assert_eq!(sb.balance(), Decimal::from(100_000));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_refused_connection_is_not_sent() {
    let sb = sandbox(|_| ()).await;
    let c = connector(&sb);
    sb.shutdown().await.expect("clean shutdown");
    let outcome = c.submit(&idr(&c, "ord-down")).await;
    assert!(matches!(outcome, SubmitOutcome::NotSent { retry_after: None, .. }), "{outcome:?}");
}

#[tokio::test]
async fn callbacks_are_signed_and_verify_with_the_connector() {
    let receiver = Receiver::start(vec![]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| config.callback_url = Some(url)).await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-cb")).await, SubmitOutcome::Accepted { provider_id: None });

    assert!(eventually(|| sb.stats().callbacks_acknowledged == 1).await);
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1);
    let callback = verified(&c, &bodies[0]);
    assert_eq!(callback.reference, "ord-cb");
    assert_eq!(callback.amount, Decimal::from(150_000));
    assert_eq!(callback.status, ProviderStatus::Paid);
    assert!(sb.entry("ord-cb").expect("entry").callback_acknowledged);
    // Another partner's secret does not verify the same body.
    let stranger = connector_with(&sb, "other-secret", Duration::from_secs(1));
    let headers = reqwest::header::HeaderMap::new();
    let incoming = payoutd_providers::IncomingCallback { path: "", headers: &headers, body: &bodies[0] };
    assert!(matches!(stranger.verify_callback(&incoming), CallbackVerdict::Unverifiable { .. }));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn callbacks_are_redelivered_until_ok() {
    let receiver =
        Receiver::start(vec![(StatusCode::INTERNAL_SERVER_ERROR, "oops"), (StatusCode::OK, "maybe")]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| config.callback_url = Some(url)).await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-retry")).await, SubmitOutcome::Accepted { provider_id: None });

    assert!(eventually(|| sb.stats().callbacks_acknowledged == 1).await);
    let stats = sb.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (3, 2));
    let bodies = receiver.bodies();
    // A redelivery is the same notification, byte for byte.
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_callback_answered_error_is_not_repeated() {
    let receiver = Receiver::start(vec![(StatusCode::OK, "ERROR")]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| config.callback_url = Some(url)).await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-err")).await, SubmitOutcome::Accepted { provider_id: None });
    assert!(eventually(|| sb.stats().callbacks_answered_error == 1).await);
    // The compressed schedule would have retried within ~0.1 s.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn duplicate_callbacks_share_a_dedupe_key() {
    let receiver = Receiver::start(vec![]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| {
        config.callback_url = Some(url);
        config.faults.duplicate_callback_rate = 1.0;
    })
    .await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-twice")).await, SubmitOutcome::Accepted { provider_id: None });

    assert!(eventually(|| receiver.count() == 2).await);
    let bodies = receiver.bodies();
    let (first, second) = (verified(&c, &bodies[0]), verified(&c, &bodies[1]));
    assert_eq!(first.dedupe_key, second.dedupe_key);
    assert_eq!(sb.stats().duplicate_callbacks_sent, 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_early_callback_arrives_before_the_payout_answer() {
    let receiver = Receiver::start(vec![]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| {
        config.callback_url = Some(url);
        config.processing_delay = Duration::from_secs(30);
        config.faults.early_callback_rate = 1.0;
    })
    .await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-early")).await, SubmitOutcome::Accepted { provider_id: None });
    // No waiting: the callback was delivered before the answer came back.
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(verified(&c, &bodies[0]).status, ProviderStatus::Paid);
    assert_eq!(sb.entry("ord-early").expect("entry").status, LedgerStatus::Paid);
    assert_eq!(sb.stats().early_callbacks, 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_dropped_callback_leaves_polling_to_find_the_result() {
    let receiver = Receiver::start(vec![]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| {
        config.callback_url = Some(url);
        config.faults.drop_callback_rate = 1.0;
    })
    .await;
    let c = connector(&sb);
    let request = idr(&c, "ord-quiet");
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    assert!(eventually(|| sb.stats().callbacks_dropped == 1).await);
    assert_eq!(receiver.count(), 0);
    assert_eq!(c.status(&request, None).await, Ok(ProviderStatus::Paid));
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_declined_payout_fails_by_callback_and_status_and_refunds() {
    let receiver = Receiver::start(vec![]).await;
    let url = receiver.url.clone();
    let sb = sandbox(|config| {
        config.callback_url = Some(url);
        config.faults.decline_rate = 1.0;
    })
    .await;
    let c = connector(&sb);
    let request = idr(&c, "ord-no");
    assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    assert!(eventually(|| receiver.count() == 1).await);
    let callback = verified(&c, &receiver.bodies()[0]);
    assert!(matches!(callback.status, ProviderStatus::Failed { ref reason } if reason.contains("declined")));
    assert!(matches!(c.status(&request, None).await, Ok(ProviderStatus::Failed { .. })));
    assert_eq!(sb.balance(), Decimal::from(1_000_000));
    assert_eq!(sb.stats().declined, 1);
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn ledger_and_stats_are_served_as_json() {
    let sb = sandbox(|_| ()).await;
    let c = connector(&sb);
    assert_eq!(c.submit(&idr(&c, "ord-json")).await, SubmitOutcome::Accepted { provider_id: None });

    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let ledger: serde_json::Value = http
        .get(format!("{}/_sandbox/ledger", sb.base_url()))
        .send()
        .await
        .expect("ledger")
        .json()
        .await
        .expect("json");
    assert_eq!(ledger[0]["id"], "ord-json");
    assert_eq!(ledger[0]["amount"], "150000");
    assert_eq!(ledger[0]["executions"], 1);
    let stats: serde_json::Value = http
        .get(format!("{}/_sandbox/stats", sb.base_url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["payouts_executed"], 1);
    assert_eq!(stats["balance"], "850000");
    sb.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn standalone_mode_stops_on_its_shutdown_future() {
    let config = SandboxConfig::new(SERVICE, Secret::new(SECRET));
    let run = payoutd_sandbox::run_standalone(config, loopback(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("stops").expect("runs cleanly");
}

#[tokio::test]
async fn callbacks_to_a_slow_receiver_stay_within_a_bounded_number_in_flight() {
    // A receiver that takes 100 ms per callback and records how many it held at once.
    type Gauge = Arc<Mutex<(usize, usize, usize)>>; // (now, most, total)
    async fn slow(State(gauge): State<Gauge>) -> &'static str {
        {
            let mut g = gauge.lock().expect("lock");
            g.0 += 1;
            g.1 = g.1.max(g.0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut g = gauge.lock().expect("lock");
        g.0 -= 1;
        g.2 += 1;
        "OK"
    }
    let gauge: Gauge = Arc::default();
    let app = axum::Router::new().route("/callbacks/8b", axum::routing::post(slow)).with_state(gauge.clone());
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}/callbacks/8b", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sb = sandbox(|config| {
        config.callback_url = Some(url);
        config.processing_delay = Duration::ZERO;
    })
    .await;
    let c = connector(&sb);
    let payouts = 120;
    for n in 0..payouts {
        let request = c.freeze_submit(&payout("1000", "IDR"), &format!("slow-{n}"), Utc::now());
        assert_eq!(c.submit(&request).await, SubmitOutcome::Accepted { provider_id: None });
    }
    // All 120 finish at once; at 100 ms each, one at a time would take 12 s.
    for _ in 0..1000 {
        if gauge.lock().expect("lock").2 >= payouts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, most, total) = *gauge.lock().expect("lock");
    assert_eq!(total, payouts, "every callback delivered");
    assert!(most <= 32, "{most} callbacks in flight at once");
    assert!(most > 1, "deliveries still run side by side: {most}");
    sb.shutdown().await.expect("clean shutdown");
}
