//! Issue 5, items 9, 10 and 12 over real HTTP: one payout per (client, external_id); bounded
//! request and callback bodies, bounded stored callbacks, request timeouts and a concurrency
//! limit; 503 with Retry-After (and never the provider's "ERROR") while the database is down.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payoutd_core::Secret;
use payoutd_providers::Connectors;
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_server::{AppState, HttpLimits};
use payoutd_tests::{AppOptions, PARTNER_SECRET, TestApp, connector_config, payout_body};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

fn no_workers() -> AppOptions {
    AppOptions { workers: 0, ..AppOptions::default() }
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db.pool).await.expect("count")
}

/// POST /v1/payouts with an optional Idempotency-Key: (status, replayed header, JSON body).
async fn post_payout(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> (u16, bool, Value) {
    let mut request = app.http.post(format!("{}/v1/payouts", app.api)).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.expect("post");
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    (status, replayed, r.json().await.unwrap_or(Value::Null))
}

/// A signed 8B partner callback body for `reference`.
fn signed_callback(reference: &str, amount: &str, result: &str) -> String {
    let dt = "2026-11-21 10:00:00";
    let destination = "bank_transfer";
    let hash = payoutd_providers::eightb_partner::signature::sign_callback(
        reference,
        dt,
        amount,
        result,
        destination,
        &Secret::new(PARTNER_SECRET),
    );
    serde_urlencoded::to_string([
        ("id", reference),
        ("dt", dt),
        ("amount", amount),
        ("result", result),
        ("error", ""),
        ("destination", destination),
        ("hash", hash.as_str()),
    ])
    .expect("form")
}

/// Writes `request` (complete or not: a stalled client) on a fresh connection and reads the
/// answer: (status, body, seconds until the answer was complete).
async fn raw_http(addr: SocketAddr, request: Vec<u8>) -> (u16, String, f64) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        stream.write_all(&request).expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if complete(&answer) {
                        break;
                    }
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body, elapsed)
    })
    .await
    .expect("raw client")
}

/// A response with a Content-Length whose body has fully arrived.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<usize>().ok());
    length.is_some_and(|n| body.len() >= n)
}

fn api_addr(app: &TestApp) -> SocketAddr {
    app.api.trim_start_matches("http://").parse().expect("api address")
}

/// The API served with `limits` on a loopback port, over `pool`; stopped by the token.
async fn serve(
    pool: sqlx::PgPool,
    connectors: Connectors,
    limits: HttpLimits,
) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    tokio::spawn(async move {
        let state = AppState::new(pool, connectors);
        let _ = payoutd_server::serve_with_limits(listener, state, &limits, async move {
            cancelled.cancelled().await
        })
        .await;
    });
    (api, stop)
}

/// A pool whose server is gone: a loopback port nobody listens on.
async fn unreachable_pool() -> sqlx::PgPool {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let options =
        PgConnectOptions::new().host("127.0.0.1").port(port).username("payoutd").database("payoutd");
    PgPoolOptions::new().acquire_timeout(Duration::from_secs(1)).connect_lazy_with(options)
}

fn partner_connectors() -> Connectors {
    let config = connector_config("http://127.0.0.1:9", Duration::from_millis(500), Duration::from_secs(1));
    Connectors::new().with(Arc::new(EightBPartner::new(config).expect("connector")))
}

// ---------------------------------------------------------------------------------------------
// Item 9: one payout per (client, external_id)

#[tokio::test]
async fn item9_same_external_id_with_a_fresh_key_replays_or_conflicts() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let body = payout_body("order-9", "150000", "IDR");

    let (status, replayed, first) = post_payout(&app, &token, Some("key-1"), &body).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let id = first["id"].clone();

    // A retry of the same order under a fresh key: the original payout, not a second one.
    let (status, replayed, again) = post_payout(&app, &token, Some("key-2"), &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], id);
    // Without any key (external_id is the key) as well.
    let (status, replayed, again) = post_payout(&app, &token, None, &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], id);

    // The same external_id for a different payout is a conflict naming the existing one.
    let other = payout_body("order-9", "150001", "IDR");
    let (status, _, conflict) = post_payout(&app, &token, Some("key-3"), &other).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["existing_payout_id"], id);
    assert_eq!(conflict["error"], "external_id_conflict");
    let (status, _, conflict) = post_payout(&app, &token, None, &other).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["existing_payout_id"], id);
    // The key still decides first: key-1 with another body is the idempotency conflict.
    let (status, _, conflict) = post_payout(&app, &token, Some("key-1"), &other).await;
    assert_eq!((status, conflict["error"].as_str()), (409, Some("idempotency_conflict")));

    assert_eq!(count(&app, "SELECT count(*) FROM payouts").await, 1);

    // External ids are per client: another client's order-9 is its own payout.
    let token_b = app.token_for("client-b", &["*"]).await;
    let (status, _, theirs) = post_payout(&app, &token_b, Some("key-1"), &body).await;
    assert_eq!(status, 201, "{theirs}");
    assert_ne!(theirs["id"], id);
    assert_eq!(count(&app, "SELECT count(*) FROM payouts").await, 2);
    app.shutdown().await;
}

#[tokio::test]
async fn item9_concurrent_retries_with_fresh_keys_create_one_payout() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let body = payout_body("order-race", "12.50", "USD");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12 {
        let (http, url, token, body) =
            (app.http.clone(), format!("{}/v1/payouts", app.api), token.clone(), body.clone());
        tasks.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", format!("race-{n}"))
                .json(&body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            let v: Value = r.json().await.expect("json");
            (status, v["id"].as_str().map(str::to_owned))
        });
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let (status, id) = result.expect("task");
        assert!(status == 201 || status == 200, "status {status}");
        created += usize::from(status == 201);
        ids.extend(id);
    }
    assert_eq!(created, 1, "exactly one request creates the payout");
    assert_eq!(ids.len(), 1, "every answer names the same payout: {ids:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM payouts").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn item9_migration_refuses_to_pick_between_existing_duplicates() {
    let app = TestApp::spawn(no_workers()).await;
    let pool = &app.db.pool;
    // A database from before the rule: the index gone, one order paid out twice.
    sqlx::query("DROP INDEX payouts_client_external_id").execute(pool).await.expect("drop index");
    for key in ["external_id:dup-1", "key:retry"] {
        sqlx::query(
            "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider,
                                  account, amount, currency, destination, state, next_run_at)
             VALUES ($1, 'client-a', 'dup-1', $2, '\\x00', '8b_partner', 'acc', 10, 'USD', '{}', 'pending', now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(key)
        .execute(pool)
        .await
        .expect("insert");
    }
    let migration = payoutd_store::MIGRATOR
        .iter()
        .find(|m| m.version == 20261122000002)
        .expect("the (client, external_id) migration is embedded");
    let mut tx = pool.begin().await.expect("begin");
    let err = sqlx::raw_sql(migration.sql.clone()).execute(&mut *tx).await.expect_err("must refuse");
    drop(tx);
    let message = err.to_string();
    assert!(message.contains("1 (client_id, external_id) pair"), "{message}");
    // Nothing was deleted or renamed.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE external_id = 'dup-1'")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(rows, 2);
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 10: bounded bodies, bounded stored callbacks, timeouts, a concurrency limit

#[tokio::test]
async fn item10_callback_body_over_16_kib_is_refused_and_nothing_stored() {
    let app = TestApp::spawn(no_workers()).await;
    let url = format!("{}/v1/callbacks/8b_partner", app.api);
    let big = format!("{}&pad={}", signed_callback("PO000000000000000001", "10", "1"), "x".repeat(17 * 1024));
    let r = app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunk = big.as_bytes();
    let mut request = format!(
        "POST /v1/callbacks/8b_partner HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    request.extend_from_slice(chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _, _) = raw_http(api_addr(&app), request).await;
    assert_eq!(status, 413);

    assert_eq!(count(&app, "SELECT count(*) FROM provider_callbacks").await, 0, "nothing stored");
    // Just under the limit is still read (and, unverifiable here, answered ERROR).
    let r = app.http.post(&url).body("x".repeat(16 * 1024 - 1)).send().await.expect("post");
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn item10_unverifiable_callback_is_stored_cut_to_2_kib() {
    let app = TestApp::spawn(no_workers()).await;
    let body = format!("id=PO1&dt=x&amount=1&result=1&destination=d&hash=bad&junk={}", "j".repeat(12 * 1024));
    let r = app
        .http
        .post(format!("{}/v1/callbacks/8b_partner", app.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "ERROR");
    let (stored, verified): (String, bool) = sqlx::query_as("SELECT body, verified FROM provider_callbacks")
        .fetch_one(&app.db.pool)
        .await
        .expect("row");
    assert!(!verified);
    assert!(stored.len() <= 2048 + 64, "stored {} bytes", stored.len());
    assert!(stored.starts_with(&body[..2000]), "the start is kept as received");
    assert!(stored.contains(&format!("truncated by payoutd: {} bytes received", body.len())), "{stored}");
    app.shutdown().await;
}

#[tokio::test]
async fn item10_payout_body_over_64_kib_is_refused() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let mut body = payout_body("big-1", "10.00", "USD");
    body["destination"]["receiver_name"] = Value::String("n".repeat(65 * 1024));
    let (status, _, _) = post_payout(&app, &token, None, &body).await;
    assert_eq!(status, 413);
    assert_eq!(count(&app, "SELECT count(*) FROM payouts").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn item10_a_stalled_request_times_out_and_holds_at_most_its_share() {
    let app = TestApp::spawn(no_workers()).await;
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(1500),
        max_concurrent_requests: 1,
        ..HttpLimits::default()
    };
    let (api, stop) = serve(app.db.pool.clone(), app.connectors.clone(), limits).await;
    let addr: SocketAddr = api.trim_start_matches("http://").parse().expect("addr");

    // A client that announces 100 bytes and sends 10: it holds the only slot until the
    // timeout answers it 503.
    let stalled = tokio::spawn(raw_http(
        addr,
        b"POST /v1/callbacks/8b_partner HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nid=PO00000"
            .to_vec(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Health checks are not counted.
    let started = Instant::now();
    let r = app.http.get(format!("{api}/health/live")).send().await.expect("live");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500), "health waited {:?}", started.elapsed());

    // A second callback waits for the slot: it is served only once the stalled one timed out.
    let started = Instant::now();
    let r =
        app.http.post(format!("{api}/v1/callbacks/8b_partner")).body("id=x").send().await.expect("second");
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(waited >= Duration::from_millis(800), "served after {waited:?}: no concurrency limit");

    let (status, body, elapsed) = stalled.await.expect("stalled client");
    assert_eq!(status, 503, "{body}");
    assert!((1.2..3.5).contains(&elapsed), "timed out after {elapsed:.2}s");
    assert_ne!(body, "ERROR");
    eprintln!("stalled request answered 503 after {elapsed:.2}s; the queued one was served after {waited:?}");

    stop.cancel();
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 12: database outage

#[tokio::test]
async fn item12_enqueue_during_database_outage_is_503_with_retry_after() {
    let (api, stop) = serve(unreachable_pool().await, partner_connectors(), HttpLimits::default()).await;
    let http = reqwest::Client::new();

    let r = http
        .post(format!("{api}/v1/payouts"))
        .bearer_auth("pyd_some-token")
        .header("idempotency-key", "k-1")
        .json(&payout_body("outage-1", "10.00", "USD"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_some(), "{retry_after:?}");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "unavailable");

    let r = http
        .get(format!("{api}/v1/payouts/{}", uuid::Uuid::now_v7()))
        .bearer_auth("pyd_some-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    let r = http.get(format!("{api}/health/ready")).send().await.expect("ready");
    assert_eq!(r.status(), 503);
    stop.cancel();
}

#[tokio::test]
async fn item12_unstorable_callback_is_not_answered_error() {
    let (api, stop) = serve(unreachable_pool().await, partner_connectors(), HttpLimits::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{api}/v1/callbacks/8b_partner");

    // A verified callback that cannot be stored: the provider must deliver it again, and 8B
    // stops on "ERROR".
    let r = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(signed_callback("PO000000000000000042", "10", "1"))
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let body = r.text().await.expect("text");
    assert_eq!(status, 503);
    assert!(!body.contains("ERROR") && body != "OK", "answered {body:?}");

    // An unverifiable one that cannot be recorded is not answered 200 either.
    let r = http.post(&url).body("id=PO1&hash=forged").send().await.expect("post");
    let status = r.status().as_u16();
    let body = r.text().await.expect("text");
    assert_eq!(status, 503, "answered {body:?}");
    assert!(!body.contains("ERROR"), "answered {body:?}");
    stop.cancel();
}
