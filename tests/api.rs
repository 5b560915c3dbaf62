//! The HTTP API over loopback: auth (401 / 403), validation (422 naming fields, nothing
//! stored), idempotency (replay / 409), reads with the timeline, traceparent.

use payoutd_tests::{AppOptions, TestApp, payout_body};
use serde_json::{Value, json};

async fn payout_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payouts").fetch_one(&app.db.pool).await.unwrap()
}

fn no_workers() -> AppOptions {
    AppOptions { workers: 0, ..AppOptions::default() }
}

#[tokio::test]
async fn missing_or_unknown_token_is_401_and_missing_scope_is_403() {
    let app = TestApp::spawn(no_workers()).await;
    let url = format!("{}/v1/payouts", app.api);
    let body = payout_body("a-1", "10.00", "USD");

    let r = app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = app.http.post(&url).bearer_auth("pyd_not-a-real-token").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let read_only = app.token(&["payouts.read"]).await;
    let r = app.http.post(&url).bearer_auth(&read_only).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["required_scope"], "payouts.create");

    let create_only = app.token(&["payouts.create"]).await;
    let r = app.http.post(&url).bearer_auth(&create_only).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = app.http.get(format!("{url}/{id}")).bearer_auth(&create_only).send().await.unwrap();
    assert_eq!(r.status(), 403, "reading needs payouts.read");
    let r = app.http.get(format!("{url}/{id}")).bearer_auth(&read_only).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(payout_count(&app).await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn revoked_tokens_are_401_and_tokens_are_stored_hashed() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM api_tokens").fetch_all(&app.db.pool).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], token.as_bytes(), "the token itself is never stored");
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_tokens").fetch_one(&app.db.pool).await.unwrap();
    assert!(payoutd_store::api_tokens::revoke(&app.db.pool, id).await.unwrap());
    let r = app
        .http
        .post(format!("{}/v1/payouts", app.api))
        .bearer_auth(&token)
        .json(&payout_body("x", "1", "USD"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_requests_name_every_field_and_store_nothing() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let url = format!("{}/v1/payouts", app.api);
    let cases = [
        (
            json!({"external_id": "b1", "amount": "-5", "currency": "USD", "destination": {"phone": "1", "client": "2", "destination": "d", "receiver_name": "n"}}),
            vec!["amount"],
        ),
        (
            json!({"external_id": "b2", "amount": "150000.5", "currency": "IDR", "destination": {"phone": "1", "client": "2", "destination": "d", "receiver_name": "n"}}),
            vec!["amount"],
        ),
        (
            json!({"external_id": "b3", "amount": "1.00", "currency": "XYZ", "destination": {"phone": "1", "client": "2", "destination": "d", "receiver_name": "n"}}),
            vec!["currency"],
        ),
        (
            json!({"external_id": "b4", "amount": 10, "currency": "USD", "destination": {"phone": "1", "destination": "d"}}),
            vec!["amount", "destination.client", "destination.receiver_name"],
        ),
        (json!({"amount": "1", "currency": "USD"}), vec!["destination", "external_id"]),
    ];
    for (body, fields) in cases {
        let r = app.http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        let mut got: Vec<String> =
            v["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap().to_owned()).collect();
        got.sort();
        let mut want: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{v}");
        for f in v["fields"].as_array().unwrap() {
            assert!(!f["reason"].as_str().unwrap().is_empty());
        }
    }
    let r = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(payout_count(&app).await, 0, "nothing stored on rejection");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payout_events").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(events, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn idempotency_replays_the_same_request_and_refuses_a_different_one() {
    let app = TestApp::spawn(no_workers()).await;
    let token = app.token(&["*"]).await;
    let url = format!("{}/v1/payouts", app.api);
    let body = payout_body("ext-1", "10.5", "USD");
    let first = app.http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["amount"], "10.50");

    // Same external id, same meaning ("10.50" == "10.5"): the original comes back.
    let again = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&payout_body("ext-1", "10.50", "USD"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);

    // Same external id, different amount: conflict.
    let conflict = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&payout_body("ext-1", "11.00", "USD"))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["existing_payout_id"], first["id"]);

    // An explicit Idempotency-Key wins over the external id.
    let k1 = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("Idempotency-Key", "k-1")
        .json(&payout_body("ext-2", "1", "USD"))
        .send()
        .await
        .unwrap();
    assert_eq!(k1.status(), 201);
    let k1b = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("Idempotency-Key", "k-1")
        .json(&payout_body("ext-3", "1", "USD"))
        .send()
        .await
        .unwrap();
    assert_eq!(k1b.status(), 409);

    // Concurrent duplicates: exactly one payout.
    let mut handles = Vec::new();
    for _ in 0..10 {
        let (http, url, token) = (app.http.clone(), url.clone(), token.clone());
        handles.push(tokio::spawn(async move {
            http.post(&url)
                .bearer_auth(&token)
                .json(&payout_body("ext-race", "5", "USD"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE external_id = 'ext-race'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_payout_is_read_with_its_timeline_and_traceparent_and_only_by_its_client() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let token = app.token(&["*"]).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = app
        .http
        .post(format!("{}/v1/payouts", app.api))
        .bearer_auth(&token)
        .header("traceparent", tp)
        .json(&payout_body("t-1", "150000", "IDR"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.wait_all_final(std::time::Duration::from_secs(20)).await;

    let v: Value = app
        .http
        .get(format!("{}/v1/payouts/{id}", app.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "paid");
    assert_eq!(v["traceparent"], tp);
    assert_eq!(v["destination"]["client"], "******7890");
    let events = v["events"].as_array().unwrap();
    let path: Vec<&str> = events.iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert_eq!(path.first(), Some(&"pending"));
    assert_eq!(path.last(), Some(&"paid"));
    for wanted in ["checked", "intent_recorded"] {
        assert!(path.contains(&wanted), "{path:?}");
    }

    let other = app.token_for("client-b", &["*"]).await;
    let r = app.http.get(format!("{}/v1/payouts/{id}", app.api)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404, "another client's payout is invisible");
    let r = app
        .http
        .get(format!("{}/v1/payouts/{}", app.api, uuid::Uuid::new_v4()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}
