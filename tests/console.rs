//! Issue 11: the operator console. Every test runs the real API with the console and operator
//! routes merged in exactly as `payoutd serve` does, on a fresh database, with the real engine
//! and the 8B partner sandbox.
//!
//! - `http_*` tests speak HTTP to the console like a browser would (cookies by hand, redirects
//!   not followed): sign-in, cookie flags, CSRF and origin refusals, scopes, headers, escaping.
//! - `browser_*` tests drive headless Chromium through chromedriver ([`payoutd_tests::webdriver`])
//!   and write a screenshot of each page to `<cargo target dir>/console-screenshots/`. Without
//!   chromedriver they fail, saying how to install it (`.ci/install-browser.sh`).

use std::time::{Duration, Instant};

use payoutd_core::PayoutState;
use payoutd_server::batches_api::BatchSettings;
use payoutd_server::console::{self, CONTENT_SECURITY_POLICY, ConsoleConfig};
use payoutd_server::operator_api::{self, OperatorApi};
use payoutd_server::{AppState, HttpLimits};
use payoutd_tests::webdriver::Browser;
use payoutd_tests::{AppOptions, TestApp, payout_body};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const OPERATOR: &str = "operator:ops-team/alice";
const CSV_HEADER: &str = "external_id,account,amount,currency,phone,client,destination,receiver_name\n";

/// A test app serving the console, with tokens of every kind the tests need.
struct Console {
    app: TestApp,
    base: String,
    stop: CancellationToken,
    /// ops-team/alice: operator.read, operator.act, batches.create, batches.read.
    operator: String,
    /// ops-team/bob: operator.read only.
    reader: String,
    /// client-a/backend: payouts.create, payouts.read (no console scope).
    client: String,
    /// A client that does not follow redirects, so tests see every 303 and Set-Cookie.
    http: reqwest::Client,
}

impl Console {
    async fn start(options: AppOptions) -> Console {
        let batches = BatchSettings { preflight_balance: false, ..BatchSettings::default() };
        Self::start_with(options, ConsoleConfig { refresh_secs: 2, batches, ..ConsoleConfig::default() })
            .await
    }

    async fn start_with(options: AppOptions, config: ConsoleConfig) -> Console {
        let app = TestApp::spawn(options).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let limits = HttpLimits { batches: config.batches.clone(), ..HttpLimits::default() };
        let state = AppState::new(app.db.pool.clone(), app.connectors.clone());
        // As crates/payoutd/src/app.rs merges them.
        let extra =
            operator_api::routes(OperatorApi::default(), &limits).merge(console::routes(config, &limits));
        let router = payoutd_server::router_with_extra(state, &limits, extra);
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = payoutd_server::serve_router(listener, router, async move { s.cancelled().await }).await;
        });
        let operator = token(
            &app,
            "ops-team",
            "alice",
            &["operator.read", "operator.act", "batches.create", "batches.read"],
        )
        .await;
        let reader = token(&app, "ops-team", "bob", &["operator.read"]).await;
        let client = token(&app, "client-a", "backend", &["payouts.create", "payouts.read"]).await;
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Console { app, base, stop, operator, reader, client, http }
    }

    fn pool(&self) -> &payoutd_store::PgPool {
        &self.app.db.pool
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn enqueue(&self, external_id: &str) -> Uuid {
        self.app.enqueue(&self.client, &payout_body(external_id, "150000", "IDR")).await
    }

    /// Signs in over HTTP as a browser would; the session's cookie and CSRF token.
    async fn sign_in(&self, token: &str) -> Session {
        let r = self.http.get(self.url("/console/sign-in")).send().await.expect("sign-in form");
        assert_eq!(r.status(), StatusCode::OK);
        let pre = set_cookie(r.headers(), "payoutd_console_signin").expect("the sign-in form's cookie");
        let form_token = csrf_in(&r.text().await.expect("html"));
        let r = self
            .http
            .post(self.url("/console/sign-in"))
            .header(COOKIE, format!("payoutd_console_signin={}", pre.value))
            .form(&[("token", token), ("csrf", form_token.as_str())])
            .send()
            .await
            .expect("sign in");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in answers a redirect");
        let cookie = set_cookie(r.headers(), "payoutd_console").expect("a session cookie");
        let r = self.get_with(&cookie.value, "/console/sign-in").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "signed in, the sign-in page sends you on");
        let html = self.get_with(&cookie.value, "/console/payouts").await.text().await.expect("html");
        let csrf = if html.contains("name=\"csrf\"") {
            csrf_in(&html)
        } else {
            csrf_in(&self.get_with(&cookie.value, "/console/batches").await.text().await.expect("html"))
        };
        Session { cookie: cookie.value, raw_cookie: cookie.raw, csrf }
    }

    async fn get_with(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header(COOKIE, format!("payoutd_console={cookie}"))
            .send()
            .await
            .expect("get")
    }

    async fn post_with(&self, cookie: &str, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header(COOKIE, format!("payoutd_console={cookie}"))
            .form(form)
            .send()
            .await
            .expect("post")
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.app.shutdown().await;
    }
}

struct Session {
    cookie: String,
    raw_cookie: String,
    csrf: String,
}

struct Cookie {
    value: String,
    raw: String,
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<Cookie> {
    headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|raw| {
        let (k, rest) = raw.split_once('=')?;
        (k == name)
            .then(|| Cookie { value: rest.split(';').next().unwrap_or("").to_owned(), raw: raw.to_owned() })
    })
}

/// The CSRF token of the first form on a page.
fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).unwrap_or_else(|| panic!("no CSRF field in {html}")) + marker.len();
    html[at..].split('"').next().unwrap_or_default().to_owned()
}

async fn token(app: &TestApp, client: &str, label: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    payoutd_store::api_tokens::create(&app.db.pool, client, label, &scopes, None)
        .await
        .expect("token")
        .token
        .expose()
        .to_owned()
}

/// Parks a payout in needs_review as the engine leaves one whose outcome stayed unknown: the
/// state, an intent, no next run, and the event that says why (a factory, as in tests/operator.rs).
async fn park(c: &Console, id: Uuid, why: &str) {
    let mut tx = c.pool().begin().await.expect("tx");
    let from: String = sqlx::query_scalar(
        "UPDATE payouts p SET state = 'needs_review', next_run_at = NULL, parked_at = now(), finalized_at = NULL,
                provider_reference = COALESCE(provider_reference, 'PO' || lpad(nextval('provider_reference_seq')::text, 18, '0')),
                submit_request = COALESCE(submit_request, jsonb_build_object('amount', amount::text)),
                fencing_token = fencing_token + 1, lease_owner = NULL, lease_expires_at = NULL
           FROM (SELECT id, state::text AS old FROM payouts WHERE id = $1 FOR UPDATE) o
          WHERE p.id = o.id RETURNING o.old",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .expect("park");
    sqlx::query(
        "INSERT INTO payout_events (payout_id, from_state, to_state, actor, reason)
         VALUES ($1, $2::text::payout_state, 'needs_review', 'engine:test', $3)",
    )
    .bind(id)
    .bind(from)
    .bind(why)
    .execute(&mut *tx)
    .await
    .expect("event");
    tx.commit().await.expect("commit");
}

/// Enqueues `n` payouts, lets the engine pay them, parks the first one; its id.
async fn paid_payouts_and_one_parked(c: &Console, n: usize) -> (Vec<Uuid>, Uuid) {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(c.enqueue(&format!("console-{i}")).await);
    }
    c.app.wait_all_final(Duration::from_secs(30)).await;
    let parked = ids[0];
    park(c, parked, "outcome unknown after 8 status queries; needs a person").await;
    (ids, parked)
}

async fn last_event(c: &Console, id: Uuid) -> payoutd_store::payouts::Event {
    payoutd_store::payouts::timeline(c.pool(), id).await.expect("timeline").pop().expect("an event")
}

fn screenshots() -> std::path::PathBuf {
    let (target, _) = payoutd_tests::binary::target_and_profile();
    target.join("console-screenshots")
}

// ---- HTTP-level ---------------------------------------------------------------------------

#[tokio::test]
async fn http_sign_in_gives_an_http_only_strict_cookie_and_postgres_keeps_only_its_hash() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let r = c.http.get(c.url("/console")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "not signed in: to the sign-in page");
    assert_eq!(r.headers()[LOCATION], "/console/sign-in");

    let s = c.sign_in(&c.operator).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(s.raw_cookie.contains(flag), "{flag} missing: {}", s.raw_cookie);
    }
    assert!(!s.raw_cookie.contains("Secure"), "plain HTTP on loopback: no Secure flag: {}", s.raw_cookie);
    assert!(!s.raw_cookie.contains(&c.operator) && !s.cookie.contains("pyd_"), "the cookie is not the token");

    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT id_hash, csrf_token FROM console_sessions")
        .fetch_all(c.pool())
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, Sha256::digest(s.cookie.as_bytes()).to_vec(), "only the id's SHA-256 is stored");
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM console_sessions t")
        .fetch_one(c.pool())
        .await
        .expect("dump");
    assert!(
        !dump.contains(&s.cookie) && !dump.contains(&c.operator),
        "neither session id nor token in clear"
    );

    // Behind a TLS-terminating proxy the cookie is Secure.
    let r =
        c.http.get(c.url("/console/sign-in")).header("x-forwarded-proto", "https").send().await.expect("get");
    let pre = set_cookie(r.headers(), "payoutd_console_signin").expect("cookie");
    assert!(pre.raw.contains("; Secure"), "{}", pre.raw);
    c.shutdown().await;

    // A configured https public base makes every cookie Secure.
    let c = Console::start_with(
        AppOptions { workers: 0, ..AppOptions::default() },
        ConsoleConfig::default().with_public_base("https://ops.example/console"),
    )
    .await;
    let r = c.http.get(c.url("/console/sign-in")).send().await.expect("get");
    assert!(set_cookie(r.headers(), "payoutd_console_signin").expect("cookie").raw.contains("; Secure"));
    c.shutdown().await;
}

#[tokio::test]
async fn http_every_console_answer_carries_a_strict_csp_and_no_framing() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let s = c.sign_in(&c.operator).await;
    for path in [
        "/console/sign-in",
        "/console",
        "/console/payouts",
        "/console/review",
        "/console/batches",
        "/console/payouts/not-a-uuid",
    ] {
        let r = c.get_with(&s.cookie, path).await;
        let h = r.headers();
        assert_eq!(h["content-security-policy"], CONTENT_SECURITY_POLICY, "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let body = r.text().await.expect("body");
        assert!(!body.contains("<script>") && !body.contains(" style="), "{path}: no inline script or style");
    }
    let csp = CONTENT_SECURITY_POLICY;
    assert!(
        csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe")
    );
    let js = c.get_with(&s.cookie, "/console/assets/console.js").await;
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    c.shutdown().await;
}

#[tokio::test]
async fn http_a_post_without_or_with_a_wrong_csrf_token_or_from_another_site_is_refused() {
    let c = Console::start(AppOptions::default()).await;
    let (_, parked) = paid_payouts_and_one_parked(&c, 1).await;
    let s = c.sign_in(&c.operator).await;
    let path = format!("/console/payouts/{parked}/act");
    let reason = "checked with the bank";
    let base = [("action", "resolve_paid"), ("reason", reason)];

    let r = c.post_with(&s.cookie, &path, &base).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let wrong = [("action", "resolve_paid"), ("reason", reason), ("csrf", "0123abcd")];
    assert_eq!(c.post_with(&s.cookie, &path, &wrong).await.status(), StatusCode::FORBIDDEN, "wrong token");
    let other = c.sign_in(&c.reader).await;
    let others = [("action", "resolve_paid"), ("reason", reason), ("csrf", other.csrf.as_str())];
    assert_eq!(
        c.post_with(&s.cookie, &path, &others).await.status(),
        StatusCode::FORBIDDEN,
        "another session's token"
    );

    let good = [("action", "resolve_paid"), ("reason", reason), ("csrf", s.csrf.as_str())];
    let r = c
        .http
        .post(c.url(&path))
        .header(COOKIE, format!("payoutd_console={}", s.cookie))
        .header("origin", "http://evil.example")
        .form(&good)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another origin, even with the right token");
    assert_eq!(c.app.state(parked).await, PayoutState::NeedsReview, "nothing was done");

    // Sign-in itself: a form without the token of its own cookie (login CSRF) is refused.
    let r = c
        .http
        .post(c.url("/console/sign-in"))
        .form(&[("token", c.operator.as_str()), ("csrf", "x")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(r.headers(), "payoutd_console").is_none());

    // The same request with the token goes through, with the operator's identity.
    let r = c.post_with(&s.cookie, &path, &good).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.app.state(parked).await, PayoutState::Paid);
    let resolved = payoutd_store::payouts::timeline(c.pool(), parked).await.expect("timeline");
    assert!(resolved.iter().any(|e| e.actor == OPERATOR && e.reason.contains(reason)), "{resolved:?}");
    c.shutdown().await;
}

#[tokio::test]
async fn http_scopes_decide_what_a_session_sees_and_may_do() {
    let c = Console::start(AppOptions::default()).await;
    let (_, parked) = paid_payouts_and_one_parked(&c, 1).await;

    // A read-only operator sees the payout, no action, and is refused anyway.
    let ro = c.sign_in(&c.reader).await;
    let page =
        c.get_with(&ro.cookie, &format!("/console/payouts/{parked}")).await.text().await.expect("html");
    assert!(page.contains("id=\"read-only\"") && !page.contains("confirm?action="), "no action links");
    let review = c.get_with(&ro.cookie, "/console/review").await.text().await.expect("html");
    assert!(!review.contains("confirm?action="));
    let r = c.get_with(&ro.cookie, &format!("/console/payouts/{parked}/confirm?action=resolve_paid")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let forged = [("action", "resolve_paid"), ("reason", "forged"), ("csrf", ro.csrf.as_str())];
    let r = c.post_with(&ro.cookie, &format!("/console/payouts/{parked}/act"), &forged).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.expect("html").contains("operator.act"));
    assert_eq!(c.app.state(parked).await, PayoutState::NeedsReview);
    let r = c.post_with(&ro.cookie, "/console/batches", &[("csv", "x"), ("csrf", ro.csrf.as_str())]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no batches.create");

    // A client token has no console scope: it cannot sign in.
    let r = c.http.get(c.url("/console/sign-in")).send().await.expect("form");
    let pre = set_cookie(r.headers(), "payoutd_console_signin").expect("cookie");
    let form_token = csrf_in(&r.text().await.expect("html"));
    let r = c
        .http
        .post(c.url("/console/sign-in"))
        .header(COOKIE, format!("payoutd_console_signin={}", pre.value))
        .form(&[("token", c.client.as_str()), ("csrf", form_token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(r.headers(), "payoutd_console").is_none());
    // An unknown token neither signs in nor shows up in the answer.
    let r = c
        .http
        .post(c.url("/console/sign-in"))
        .header(COOKIE, format!("payoutd_console_signin={}", pre.value))
        .form(&[("token", "pyd_not-a-token-4242"), ("csrf", form_token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.text().await.expect("html").contains("not-a-token-4242"));

    // Revoking the token ends its sessions; signing out ends one at once.
    let ops = c.sign_in(&c.operator).await;
    assert_eq!(c.get_with(&ro.cookie, "/console/payouts").await.status(), StatusCode::OK);
    let token_id: Uuid = sqlx::query_scalar("SELECT id FROM api_tokens WHERE label = 'bob'")
        .fetch_one(c.pool())
        .await
        .expect("id");
    payoutd_store::api_tokens::revoke(c.pool(), token_id).await.expect("revoke");
    assert_eq!(
        c.get_with(&ro.cookie, "/console/payouts").await.status(),
        StatusCode::SEE_OTHER,
        "revoked: signed out"
    );
    let r = c.post_with(&ops.cookie, "/console/sign-out", &[("csrf", ops.csrf.as_str())]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(r.headers(), "payoutd_console").expect("cleared").raw.contains("Max-Age=0"));
    assert_eq!(
        c.get_with(&ops.cookie, "/console/payouts").await.status(),
        StatusCode::SEE_OTHER,
        "the old cookie is dead"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn http_pages_escape_what_they_show_and_mask_account_numbers_as_the_api_does() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let mut body = payout_body("escape-1", "150000", "IDR");
    body["destination"]["receiver_name"] = serde_json::json!("<script>alert('x')</script> & \"Budi\"");
    let id = c.app.enqueue(&c.client, &body).await;
    let s = c.sign_in(&c.operator).await;
    for path in [format!("/console/payouts/{id}"), "/console/payouts".to_owned()] {
        let html = c.get_with(&s.cookie, &path).await.text().await.expect("html");
        assert!(!html.contains("<script>alert"), "{path}: raw markup from data");
        assert!(!html.contains("1234567890"), "{path}: the full account number");
        assert!(html.contains("******7890"), "{path}: masked as the API masks it");
    }
    let html = c.get_with(&s.cookie, &format!("/console/payouts/{id}")).await.text().await.expect("html");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;Budi&quot;"));
    let api: serde_json::Value = c
        .app
        .http
        .get(c.url(&format!("/v1/operator/payouts/{id}")))
        .bearer_auth(&c.operator)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    assert_eq!(api["payout"]["destination"]["client"], "******7890");
    c.shutdown().await;
}

#[tokio::test]
async fn http_the_list_filters_and_pages_with_a_cursor() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    for i in 0..55 {
        c.enqueue(&format!("page-{i:02}")).await;
    }
    let s = c.sign_in(&c.reader).await;
    let first = c.get_with(&s.cookie, "/console/payouts?state=pending").await.text().await.expect("html");
    assert_eq!(first.matches("<tr data-payout=").count(), 50);
    let marker = "id=\"next-page\"";
    assert!(first.contains(marker));
    let href_at = first.find("href=\"/console/payouts?state=pending&amp;cursor=").expect("next link") + 6;
    let href = first[href_at..].split('"').next().expect("href").replace("&amp;", "&");
    let second = c.get_with(&s.cookie, &href).await.text().await.expect("html");
    assert_eq!(second.matches("<tr data-payout=").count(), 5);
    assert!(!second.contains(marker));
    let one = c.get_with(&s.cookie, "/console/payouts?external_id=page-07").await.text().await.expect("html");
    assert_eq!(one.matches("<tr data-payout=").count(), 1);
    let none = c.get_with(&s.cookie, "/console/payouts?state=paid").await.text().await.expect("html");
    assert_eq!(none.matches("<tr data-payout=").count(), 0);
    let r = c.get_with(&s.cookie, "/console/payouts?state=bogus&created_from=yesterday").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = r.text().await.expect("html");
    assert!(text.contains("state: unknown state") && text.contains("created_from"), "names each bad field");
    c.shutdown().await;
}

#[tokio::test]
async fn http_cancel_retry_and_status_query_go_through_the_operator_functions_with_the_operator_s_identity() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let s = c.sign_in(&c.operator).await;
    let pending = c.enqueue("act-cancel").await;
    let parked = c.enqueue("act-retry").await;
    park(&c, parked, "outcome unknown").await;
    let act = |id: Uuid, action: &'static str, reason: &'static str| {
        let (cookie, csrf) = (s.cookie.clone(), s.csrf.clone());
        let c = &c;
        async move {
            c.post_with(
                &cookie,
                &format!("/console/payouts/{id}/act"),
                &[("action", action), ("reason", reason), ("csrf", &csrf)],
            )
            .await
        }
    };

    // The confirmation page says what will happen before anything does.
    let page = c.get_with(&s.cookie, &format!("/console/payouts/{pending}/confirm?action=cancel")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("becomes final: cancelled"));
    assert_eq!(c.app.state(pending).await, PayoutState::Pending);

    // A reason is required: 422 on the confirmation page, nothing done.
    let r = act(pending, "cancel", "   ").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.expect("html").contains("a reason is required"));
    assert_eq!(c.app.state(pending).await, PayoutState::Pending);

    let r = act(pending, "cancel", "customer withdrew the request").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], format!("/console/payouts/{pending}?done=cancel").as_str());
    assert_eq!(c.app.state(pending).await, PayoutState::Cancelled);
    let e = last_event(&c, pending).await;
    assert_eq!((e.actor.as_str(), e.to_state.as_str()), (OPERATOR, "cancelled"));
    assert!(e.reason.contains("customer withdrew the request"), "{}", e.reason);

    // Retry of a parked payout with an intent: in_doubt (ask the provider first).
    let r = act(parked, "retry", "provider says it has no record; ask again").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.app.state(parked).await, PayoutState::InDoubt);
    // A status query of the in_doubt payout is scheduled; of the cancelled one refused with the reason.
    let r = act(parked, "status_query", "ask now").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(last_event(&c, parked).await.actor, OPERATOR);
    let r = act(pending, "status_query", "ask now").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.expect("html").contains("Refused by the server"));
    c.shutdown().await;
}

#[tokio::test]
async fn http_a_batch_waiting_for_approval_is_approved_by_another_client_and_cancelled_by_its_own() {
    let config = ConsoleConfig {
        batches: BatchSettings {
            require_approval: true,
            preflight_balance: false,
            ..BatchSettings::default()
        },
        ..ConsoleConfig::default()
    };
    let c = Console::start_with(AppOptions { workers: 0, ..AppOptions::default() }, config).await;
    let maker = c.sign_in(&c.operator).await;
    let mut csv = String::from(CSV_HEADER);
    for i in 1..=3 {
        csv.push_str(&csv_line(&format!("appr-{i}"), "10000"));
    }
    let r = c
        .post_with(&maker.cookie, "/console/batches", &[("csv", csv.as_str()), ("csrf", maker.csrf.as_str())])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()[LOCATION].to_str().expect("location").to_owned();
    let id = location.trim_start_matches("/console/batches/").split('?').next().expect("id").to_owned();
    let page = c.get_with(&maker.cookie, &location).await.text().await.expect("html");
    assert!(
        page.contains("awaiting_approval") && !page.contains("id=\"approve\""),
        "the maker cannot approve"
    );

    // The maker's own client is refused even when it forges the POST with an approver token.
    let r = c
        .post_with(
            &maker.cookie,
            &format!("/console/batches/{id}/act"),
            &[("action", "approve"), ("csrf", maker.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no batches.approve");

    let approver_token = token(&c.app, "finance", "carol", &["batches.approve"]).await;
    let checker = c.sign_in(&approver_token).await;
    let list = c.get_with(&checker.cookie, "/console/batches").await.text().await.expect("html");
    assert!(list.contains(&id), "the approver sees what waits for approval");
    let page = c.get_with(&checker.cookie, &location).await.text().await.expect("html");
    assert!(page.contains("id=\"approve\"") && !page.contains("id=\"cancel\""));
    let r = c
        .post_with(
            &checker.cookie,
            &format!("/console/batches/{id}/act"),
            &[("action", "approve"), ("csrf", checker.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let state: String =
        sqlx::query_scalar("SELECT state::text FROM batches").fetch_one(c.pool()).await.expect("state");
    assert_eq!(state, "processing");
    let approved_by: Option<String> =
        sqlx::query_scalar("SELECT approved_by_client FROM batches").fetch_one(c.pool()).await.expect("by");
    assert_eq!(approved_by.as_deref(), Some("finance"));
    let r = c
        .post_with(
            &checker.cookie,
            &format!("/console/batches/{id}/act"),
            &[("action", "approve"), ("csrf", checker.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "approved once");

    // The maker cancels: no worker runs, so every payout is still before its intent.
    let r = c
        .post_with(
            &maker.cookie,
            &format!("/console/batches/{id}/act"),
            &[("action", "cancel"), ("reason", ""), ("csrf", maker.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a reason is required");
    let r = c
        .post_with(
            &maker.cookie,
            &format!("/console/batches/{id}/act"),
            &[("action", "cancel"), ("reason", "wrong file"), ("csrf", maker.csrf.as_str())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM payouts WHERE state = 'cancelled'")
        .fetch_one(c.pool())
        .await
        .expect("n");
    assert_eq!(cancelled, 3);
    c.shutdown().await;
}

#[tokio::test]
async fn http_the_api_serves_its_openapi_3_1_document() {
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let r = c.http.get(c.url("/openapi.json")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/payouts",
        "/v1/operator/payouts/{id}/resolve",
        "/v1/batches",
        "/v1/callbacks/{provider}",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }
    assert_eq!(
        doc["paths"]["/v1/operator/payouts/{id}/resolve"]["post"]["security"][0]["bearer"][0],
        "operator.act"
    );
    c.shutdown().await;
}

// ---- in a browser -------------------------------------------------------------------------

async fn browser_sign_in(b: &Browser, c: &Console, token: &str) {
    b.goto(&c.url("/console")).await;
    let field = b.find("#token").await;
    b.type_into(&field, token).await;
    b.click_on("#sign-in").await;
    b.find("header nav").await;
}

#[tokio::test]
async fn browser_signs_in_sees_the_overview_filters_the_list_and_opens_a_timeline() {
    let c = Console::start(AppOptions::default()).await;
    let (_, parked) = paid_payouts_and_one_parked(&c, 6).await;
    let b = Browser::start(&screenshots()).await;
    b.goto(&c.url("/console")).await;
    assert!(b.current_url().await.ends_with("/console/sign-in"), "the console asks to sign in first");
    b.screenshot("01-sign-in").await;

    browser_sign_in(&b, &c, &c.operator).await;
    assert_eq!(b.text_of("h1").await, "Overview");
    assert!(b.text_of("#needs-review-count").await.starts_with('1'), "one payout waits for review");
    assert!(b.text_of("#by-account").await.contains("8b_partner"));
    b.screenshot("02-overview").await;

    b.click_on("header nav a[href='/console/payouts']").await;
    b.find("#payouts").await;
    assert_eq!(b.count("#payouts tbody tr").await, 6);
    b.screenshot("03-payouts").await;

    b.click_on("#filter-state option[value='needs_review']").await;
    b.click_on("#apply-filters").await;
    b.wait_for_text("#payouts", "needs_review", Duration::from_secs(10)).await;
    assert!(b.current_url().await.contains("state=needs_review"));
    assert_eq!(b.count("#payouts tbody tr").await, 1);
    b.screenshot("04-payouts-filtered").await;

    b.click_on(&format!("#payouts a[href='/console/payouts/{parked}']")).await;
    let timeline = b.text_of("#timeline").await;
    assert!(timeline.contains("outcome unknown after 8 status queries"), "{timeline}");
    assert!(timeline.contains("paid") && timeline.contains("engine:test"), "{timeline}");
    let facts = b.text_of("#payout-facts").await;
    assert!(facts.contains("******7890") && !facts.contains("1234567890"), "{facts}");
    b.screenshot("05-payout-timeline").await;
    b.quit().await;
    c.shutdown().await;
}

#[tokio::test]
async fn browser_resolves_a_needs_review_payout_with_a_reason_and_sees_the_event() {
    let c = Console::start(AppOptions::default()).await;
    let (_, parked) = paid_payouts_and_one_parked(&c, 2).await;
    let b = Browser::start(&screenshots()).await;
    browser_sign_in(&b, &c, &c.operator).await;

    b.goto(&c.url("/console/review")).await;
    let review = b.text_of("#review").await;
    assert!(review.contains("outcome unknown after 8 status queries"), "why it is there: {review}");
    b.screenshot("06-review-queue").await;

    b.click(
        &b.find(&format!("#review a[href='/console/payouts/{parked}/confirm?action=resolve_paid']")).await,
    )
    .await;
    assert!(b.text_of("#explain").await.contains("becomes final: paid"));
    let reason = "bank statement of 2026-11-22 shows the transfer";
    b.type_into(&b.find("#reason").await, reason).await;
    b.screenshot("07-confirm-resolve").await;
    b.click_on("#confirm").await;

    b.wait_for_text(".notice", "Resolved as paid", Duration::from_secs(10)).await;
    let timeline = b.text_of("#timeline").await;
    assert!(timeline.contains(reason) && timeline.contains(OPERATOR), "{timeline}");
    b.screenshot("08-resolved").await;
    assert_eq!(c.app.state(parked).await, PayoutState::Paid);
    let event = last_event(&c, parked).await;
    assert_eq!(event.actor, OPERATOR);
    assert_eq!(event.to_state, "paid");

    // The state forbids it now: refused with the server's reason, nothing written.
    let before = payoutd_store::payouts::timeline(c.pool(), parked).await.expect("timeline").len();
    b.goto(&c.url(&format!("/console/payouts/{parked}/confirm?action=resolve_failed"))).await;
    b.type_into(&b.find("#reason").await, "second thoughts").await;
    b.click_on("#confirm").await;
    let refusal = b.wait_for_text(".notice.error", "Refused by the server", Duration::from_secs(10)).await;
    assert!(refusal.contains("only needs_review can be resolved"), "{refusal}");
    b.screenshot("09-refused").await;
    assert_eq!(payoutd_store::payouts::timeline(c.pool(), parked).await.expect("timeline").len(), before);
    assert_eq!(c.app.state(parked).await, PayoutState::Paid);
    b.quit().await;
    c.shutdown().await;
}

fn csv_line(external_id: &str, amount: &str) -> String {
    format!("{external_id},8b_partner,{amount},IDR,622851280,1234567890,bank_transfer,Budi Santoso\n")
}

#[tokio::test]
async fn browser_uploads_a_csv_with_a_bad_row_then_a_good_one_and_watches_it_finish() {
    let c = Console::start(AppOptions::default()).await;
    let b = Browser::start(&screenshots()).await;
    browser_sign_in(&b, &c, &c.operator).await;
    b.click_on("header nav a[href='/console/batches']").await;
    b.find("#upload-form").await;
    b.screenshot("10-batches").await;

    // One bad row (row 2): typed into the text area; nothing is stored.
    let bad = format!(
        "{CSV_HEADER}{}{}{}",
        csv_line("bad-1", "10000"),
        csv_line("bad-2", "ten"),
        csv_line("bad-3", "10000")
    );
    b.type_into(&b.find("#csv").await, &bad).await;
    b.click_on("#upload").await;
    let errors = b.text_of("#row-errors").await;
    assert!(errors.contains("bad-2") && errors.contains("amount"), "{errors}");
    assert_eq!(b.count("#row-errors tbody tr").await, 1, "only the bad row: {errors}");
    assert!(b.find_now("#row-errors tr[data-row='2']").await.is_some());
    b.screenshot("11-batch-row-error").await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM batches").fetch_one(c.pool()).await.expect("count");
    assert_eq!(stored, 0);
    assert!(!b.source().await.contains("1234567890"), "the uploaded file is not shown back");

    // A good file, picked with the file input (the script reads it into the form).
    let mut good = String::from(CSV_HEADER);
    for i in 1..=5 {
        good.push_str(&csv_line(&format!("good-{i}"), "10000"));
    }
    let file = std::env::temp_dir().join(format!("console-batch-{}.csv", Uuid::new_v4().simple()));
    std::fs::write(&file, &good).expect("write file");
    b.type_into(&b.find("#file").await, &file.to_string_lossy()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.property(&b.find("#csv").await, "value").await.as_str().unwrap_or_default() != good {
        assert!(Instant::now() < deadline, "the script did not load the file into the form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.text_of("#file-status").await.contains("loaded"));
    let _ = std::fs::remove_file(&file);
    b.type_into(&b.find("#reference").await, "payroll-2026-11").await;
    b.click_on("#upload").await;
    b.wait_for_text(".notice", "Uploaded", Duration::from_secs(10)).await;
    b.screenshot("12-batch-uploaded").await;
    // The page reloads itself until every payout is final.
    b.wait_for_text("#batch-state", "completed", Duration::from_secs(60)).await;
    assert_eq!(b.text_of("#batch-final").await, "5 of 5");
    b.screenshot("13-batch-completed").await;

    // The report, with the session's cookie as the browser holds it.
    let session =
        b.cookies().await.into_iter().find(|c| c["name"] == "payoutd_console").expect("session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    let href = b.find("#report").await;
    let href = b.property(&href, "href").await.as_str().unwrap_or_default().to_owned();
    let report = c
        .http
        .get(&href)
        .header(COOKIE, format!("payoutd_console={}", session["value"].as_str().unwrap_or_default()))
        .send()
        .await
        .expect("report");
    assert_eq!(report.status(), StatusCode::OK);
    let report = report.text().await.expect("csv");
    assert_eq!(report.lines().filter(|l| l.contains(",paid,true,")).count(), 5, "{report}");
    b.quit().await;
    c.shutdown().await;
}

#[tokio::test]
async fn browser_read_only_operator_sees_no_actions_and_forged_or_csrf_less_posts_are_refused() {
    let c = Console::start(AppOptions::default()).await;
    let (_, parked) = paid_payouts_and_one_parked(&c, 1).await;
    let b = Browser::start(&screenshots()).await;
    browser_sign_in(&b, &c, &c.reader).await;
    b.goto(&c.url(&format!("/console/payouts/{parked}"))).await;
    b.find("#read-only").await;
    assert_eq!(b.count("a[href*='confirm?action=']").await, 0, "no action buttons");
    assert!(
        b.find_now("header nav a[href='/console/batches']").await.is_none(),
        "no batch scope: no Batches page"
    );
    b.screenshot("14-read-only-payout").await;
    b.goto(&c.url("/console/review")).await;
    assert_eq!(b.count("#review a.button").await, 0);

    // A forged POST with this browser's session cookie and its valid CSRF token: the scope
    // is missing, so the server refuses it.
    let cookie = b.cookies().await.into_iter().find(|c| c["name"] == "payoutd_console").expect("cookie");
    let cookie = cookie["value"].as_str().unwrap_or_default().to_owned();
    let csrf = csrf_in(&b.source().await);
    let path = format!("/console/payouts/{parked}/act");
    let forged = [("action", "resolve_failed"), ("reason", "forged"), ("csrf", csrf.as_str())];
    assert_eq!(c.post_with(&cookie, &path, &forged).await.status(), StatusCode::FORBIDDEN);

    // The confirmation page typed into by hand: refused, and shown so.
    b.goto(&c.url(&format!("/console/payouts/{parked}/confirm?action=resolve_paid"))).await;
    assert!(b.text_of(".notice.error").await.contains("operator.act"));
    b.screenshot("15-read-only-refused").await;
    b.quit().await;

    // An operator who may act, but a POST without the CSRF token: refused.
    let b = Browser::start(&screenshots()).await;
    browser_sign_in(&b, &c, &c.operator).await;
    let cookie = b.cookies().await.into_iter().find(|c| c["name"] == "payoutd_console").expect("cookie");
    let cookie = cookie["value"].as_str().unwrap_or_default().to_owned();
    let r = c.post_with(&cookie, &path, &[("action", "resolve_paid"), ("reason", "no token")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.expect("html").contains("security token"));
    assert_eq!(c.app.state(parked).await, PayoutState::NeedsReview, "nothing was done");
    b.quit().await;
    c.shutdown().await;
}

/// The console as `payoutd serve` itself serves it: the real binary (its own config loading,
/// router and worker) against a fresh database and the sandbox. Sign in, see the overview, upload
/// a batch and watch the binary's worker pay it.
#[tokio::test]
async fn browser_against_payoutd_serve_signs_in_uploads_a_batch_and_watches_it_finish() {
    let (target, profile) = payoutd_tests::binary::target_and_profile();
    let bin = payoutd_tests::binary::payoutd_binary(&target, &profile);
    let app = TestApp::spawn(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = tokio::process::Command::new(&bin);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("PAYOUTD_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    let mut serve = command
        .arg("serve")
        .env("DATABASE_URL", app.db.options.to_url_lossy().to_string())
        .env("PAYOUTD_LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYOUTD_ADMIN_LISTEN", "off")
        .env("PAYOUTD_8B_PARTNER_BASE_URL", app.sandbox.base_url())
        .env("PAYOUTD_8B_PARTNER_SERVICE_ID", payoutd_tests::SERVICE_ID)
        .env("PAYOUTD_8B_PARTNER_SECRET", payoutd_tests::PARTNER_SECRET)
        .env("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS", "3")
        .env("PAYOUTD_8B_PARTNER_REQUEST_TIMEOUT_MS", "500")
        .env("PAYOUTD_LEASE_SECS", "2")
        .env("PAYOUTD_SAFETY_MARGIN_SECS", "0.3")
        .env("PAYOUTD_IDLE_POLL_MS", "100")
        .env("PAYOUTD_BATCH_PREFLIGHT_BALANCE", "false")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start payoutd serve");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/console/sign-in")).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
            break;
        }
        assert!(serve.try_wait().expect("wait").is_none(), "payoutd serve exited");
        assert!(Instant::now() < deadline, "payoutd serve did not answer within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let operator =
        token(&app, "ops-team", "alice", &["operator.read", "batches.create", "batches.read"]).await;

    let b = Browser::start(&screenshots()).await;
    b.goto(&format!("{base}/console")).await;
    b.type_into(&b.find("#token").await, &operator).await;
    b.click_on("#sign-in").await;
    assert_eq!(b.text_of("h1").await, "Overview");
    b.goto(&format!("{base}/console/batches")).await;
    let mut csv = String::from(CSV_HEADER);
    for i in 1..=3 {
        csv.push_str(&csv_line(&format!("serve-{i}"), "20000"));
    }
    b.type_into(&b.find("#csv").await, &csv).await;
    b.click_on("#upload").await;
    b.wait_for_text(".notice", "Uploaded", Duration::from_secs(10)).await;
    b.wait_for_text("#batch-state", "completed", Duration::from_secs(60)).await;
    assert_eq!(b.text_of("#batch-final").await, "3 of 3");
    b.screenshot("17-payoutd-serve-batch").await;
    let paid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payouts WHERE state = 'paid' AND external_id LIKE 'serve-%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(paid, 3);
    b.quit().await;
    let _ = serve.kill().await;
    app.shutdown().await;
}

// ---- measurement ---------------------------------------------------------------------------

/// Inserts `n` payouts with SQL (one statement): 20 clients, mostly paid, one in a thousand
/// parked, spread over the last 30 days, with destinations as clients send them.
async fn seed(c: &Console, n: i64) {
    sqlx::query(
        "INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                              currency, destination, state, next_run_at, provider_reference, submit_request, created_at,
                              updated_at, finalized_at, parked_at)
         SELECT gen_random_uuid(), 'client-' || (g % 20), 'seed-' || g, 'k-' || g, '\\x00', '8b_partner', 'test-service',
                150000 + g % 1000, 'IDR',
                jsonb_build_object('phone', '62' || (800000000 + g), 'client', (1000000000 + g)::text,
                                   'destination', 'bank_transfer', 'receiver_name', 'Budi Santoso ' || g),
                CASE WHEN g % 1000 = 0 THEN 'needs_review' ELSE 'paid' END::payout_state, NULL,
                'PO' || lpad(g::text, 18, '0'),
                jsonb_build_object('id', 'PO' || lpad(g::text, 18, '0'), 'amount', (150000 + g % 1000)::text),
                now() - make_interval(secs => g * 25.0), now() - make_interval(secs => g * 25.0),
                CASE WHEN g % 1000 <> 0 THEN now() - make_interval(secs => g * 25.0 - 5) END,
                CASE WHEN g % 1000 = 0 THEN now() - make_interval(secs => g * 25.0 - 5) END
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(c.pool())
    .await
    .expect("seed");
    sqlx::query("ANALYZE payouts").execute(c.pool()).await.expect("analyze");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The payouts list with 100,000 payouts in the database (`CONSOLE_BENCH_ROWS` to change it):
/// time to first byte and total time of the page over HTTP (median of 20), for the first page,
/// a filtered page and a page deep in the cursor chain; then in Chromium the page's weight
/// (HTML, stylesheet, script) and time to first contentful paint (Navigation and Paint Timing).
/// Run: `bench/console-list.sh` (release build), or
/// `cargo nextest run --release -p payoutd-tests --test console --run-ignored all --no-capture bench_`.
#[tokio::test]
#[ignore = "a measurement (about a minute): bench/console-list.sh"]
async fn bench_payouts_list_with_100k_payouts() {
    let rows: i64 = std::env::var("CONSOLE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let c = Console::start(AppOptions { workers: 0, ..AppOptions::default() }).await;
    let started = Instant::now();
    seed(&c, rows).await;
    println!("seeded {rows} payouts in {:.1} s", started.elapsed().as_secs_f64());
    let s = c.sign_in(&c.reader).await;

    // A page deep in the chain: follow 20 cursors.
    let mut deep = "/console/payouts".to_owned();
    for _ in 0..20 {
        let html = c.get_with(&s.cookie, &deep).await.text().await.expect("html");
        let at = html.find("id=\"next-page\"").expect("a next page");
        let start = html[..at].rfind("href=\"").expect("href") + 6;
        deep = html[start..].split('"').next().expect("link").replace("&amp;", "&");
    }
    let pages = [
        ("first page", "/console/payouts".to_owned()),
        ("state=needs_review", "/console/payouts?state=needs_review".to_owned()),
        ("client=client-7", "/console/payouts?client=client-7".to_owned()),
        ("external_id", "/console/payouts?external_id=seed-4242".to_owned()),
        ("21st page (cursor)", deep),
        ("overview", "/console".to_owned()),
        ("review queue", "/console/review".to_owned()),
    ];
    println!("{:<22} {:>9} {:>9} {:>8}", "page", "ttfb ms", "total ms", "bytes");
    for (name, path) in &pages {
        let (mut ttfb, mut total, mut bytes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..20 {
            let t = Instant::now();
            let r = c.get_with(&s.cookie, path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            ttfb.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = r.bytes().await.expect("body").len();
            total.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{name:<22} {:>9.1} {:>9.1} {bytes:>8}", median(ttfb), median(total));
    }

    let b = Browser::start(&screenshots()).await;
    browser_sign_in(&b, &c, &c.reader).await;
    let (mut fcp, mut dcl, mut load) = (Vec::new(), Vec::new(), Vec::new());
    let mut weight = 0.0;
    for round in 0..6 {
        // A distinct URL each round: a new navigation with its own paint entries.
        b.goto(&c.url(&format!("/console/payouts?round={round}"))).await;
        b.find("#payouts").await;
        let mut v = Value::Null;
        for _ in 0..30 {
            v = b
                .execute(
                    "const n = performance.getEntriesByType('navigation')[0];
                     const p = performance.getEntriesByName('first-contentful-paint')[0];
                     const r = performance.getEntriesByType('resource');
                     return { ttfb: n.responseStart - n.startTime, dcl: n.domContentLoadedEventEnd - n.startTime,
                              load: n.loadEventEnd - n.startTime, fcp: p ? p.startTime : null,
                              html: n.decodedBodySize, assets: r.reduce((s, e) => s + e.decodedBodySize, 0),
                              rows: document.querySelectorAll('#payouts tbody tr').length };",
                )
                .await;
            if v["fcp"].is_number() && v["load"].as_f64().unwrap_or(0.0) > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("browser round {round}: {v}");
        if round > 0 {
            fcp.push(v["fcp"].as_f64().unwrap_or(f64::NAN));
            dcl.push(v["dcl"].as_f64().unwrap_or(f64::NAN));
            load.push(v["load"].as_f64().unwrap_or(f64::NAN));
        }
        weight = v["html"].as_f64().unwrap_or(0.0) + v["assets"].as_f64().unwrap_or(0.0);
        assert_eq!(v["rows"], 50);
    }
    println!(
        "browser, warm (median of 5): first contentful paint {:.0} ms, DOMContentLoaded {:.0} ms, load {:.0} ms",
        median(fcp.clone()),
        median(dcl),
        median(load)
    );
    b.screenshot("16-payouts-100k").await;
    println!("payouts list, {rows} payouts: page weight {weight:.0} bytes (HTML + CSS + JS, uncompressed)");
    b.quit().await;
    c.shutdown().await;
}
