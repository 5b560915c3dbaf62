//! Signing in and out, the session behind each request, and the checks every POST passes.
//!
//! - Sign-in exchanges an operator's API token (the same tokens and scopes as the API) for a
//!   session. The browser keeps only a random session id in an HttpOnly, SameSite=Strict cookie
//!   (Secure when the console is served over TLS); Postgres keeps the id's hash, the token it
//!   stands for and the session's CSRF token ([`payoutd_store::console_sessions`]). The token
//!   is not kept anywhere, in the browser or on the server.
//! - Every POST carries the session's CSRF token (a synchronizer token, compared in constant
//!   time) and must come from the console's own origin (`Origin`, `Sec-Fetch-Site`). The
//!   sign-in form, which has no session yet, carries a token that must match a short-lived
//!   cookie of its own (double submit), so a third-party page cannot sign a browser in either.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use payoutd_store::api_tokens;
use payoutd_store::console_sessions::{self, Session};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::html::{self, Nav, PageOptions, esc};
use super::{ConsoleConfig, ConsoleError, html_response};
use crate::AppState;
use crate::auth::{SCOPE_OPERATOR_ACT, SCOPE_OPERATOR_READ};
use crate::batches_api::{SCOPE_BATCHES_APPROVE, SCOPE_BATCHES_CREATE, SCOPE_BATCHES_READ};

/// The session cookie: a random id, nothing else.
pub const SESSION_COOKIE: &str = "payoutd_console";
/// The sign-in form's double-submit cookie.
const SIGN_IN_COOKIE: &str = "payoutd_console_signin";
/// Scopes that make a token useful in the console; a token with none of them cannot sign in.
const CONSOLE_SCOPES: &[&str] = &[
    SCOPE_OPERATOR_READ,
    SCOPE_OPERATOR_ACT,
    SCOPE_BATCHES_READ,
    SCOPE_BATCHES_CREATE,
    SCOPE_BATCHES_APPROVE,
];

/// A signed-in request: the session (caller, scopes, CSRF token) and its cookie value.
#[derive(Debug, Clone)]
pub struct Signed {
    pub session: Session,
    /// `<client>/<token label>`, shown in the header (actions write the API's actor).
    pub actor: String,
    cookie_id: String,
    pub config: Arc<ConsoleConfig>,
}

impl Signed {
    pub fn has(&self, scope: &str) -> bool {
        self.session.caller.has_scope(scope)
    }

    pub fn require(&self, scope: &'static str) -> Result<(), ConsoleError> {
        if self.has(scope) { Ok(()) } else { Err(ConsoleError::Forbidden(scope)) }
    }

    pub fn can_read_payouts(&self) -> bool {
        self.has(SCOPE_OPERATOR_READ)
    }

    pub fn can_act(&self) -> bool {
        self.has(SCOPE_OPERATOR_ACT)
    }

    pub fn can_use_batches(&self) -> bool {
        self.has(SCOPE_BATCHES_READ) || self.has(SCOPE_BATCHES_CREATE) || self.has(SCOPE_BATCHES_APPROVE)
    }

    /// What every POST of a signed-in page must pass: same origin, and the session's CSRF
    /// token in the form.
    pub fn check_post(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), ConsoleError> {
        if !same_origin(headers, &self.config) {
            return Err(ConsoleError::CrossOrigin);
        }
        let given = csrf.unwrap_or_default().as_bytes();
        let expected = self.session.csrf_token.as_bytes();
        if given.is_empty() || !bool::from(given.ct_eq(expected)) {
            return Err(ConsoleError::Csrf);
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let config = parts
            .extensions
            .get::<Arc<ConsoleConfig>>()
            .cloned()
            .ok_or_else(|| ConsoleError::Internal("console settings missing".into()).into_response())?;
        let not_signed_in = || {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                Redirect::to("/console/sign-in").into_response()
            } else {
                ConsoleError::NotSignedIn.into_response()
            }
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(not_signed_in()) };
        let session = console_sessions::lookup(&state.pool, id)
            .await
            .map_err(|e| ConsoleError::from(e).into_response())?;
        let Some(session) = session else { return Err(not_signed_in()) };
        let label = if session.token_label.trim().is_empty() {
            session.caller.token_id.to_string()
        } else {
            session.token_label.clone()
        };
        let actor = format!("{}/{label}", session.caller.client_id);
        Ok(Signed { session, actor, cookie_id: id.to_owned(), config })
    }
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether cookies get `Secure`: the console's public base is https, or the request came over
/// TLS (as the terminating proxy says in `X-Forwarded-Proto`).
fn secure(headers: &HeaderMap, config: &ConsoleConfig) -> bool {
    config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// Whether a POST comes from the console's own origin. Browsers send `Origin` on every POST and
/// `Sec-Fetch-Site` on every request; either naming another site refuses the request.
fn same_origin(headers: &HeaderMap, config: &ConsoleConfig) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site.trim(), "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = text(header::ORIGIN) else { return true };
    if config.public_origin.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = text(header::HOST) else { return false };
    origin.eq_ignore_ascii_case(&format!("http://{host}"))
        || origin.eq_ignore_ascii_case(&format!("https://{host}"))
}

fn sign_in_page(status: StatusCode, form_token: &str, problem: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(p) = problem {
        body.push_str(&html::notice("error", p));
    }
    body.push_str(&format!(
        r#"<form method="post" action="/console/sign-in" class="sign-in">
<p>Sign in with an operator API token (<code>payoutd token create --scope operator.read,...</code>).
The token is exchanged for a session and is not kept by your browser or by payoutd.</p>
<label>API token <input type="password" name="token" id="token" autocomplete="off" required maxlength="200"></label>
<input type="hidden" name="csrf" value="{}">
<button type="submit" id="sign-in">Sign in</button>
</form>"#,
        esc(form_token)
    ));
    html_response(status, html::page("Sign in", None, Nav::None, PageOptions::default(), &body))
}

/// `GET /console/sign-in`: the form, with a fresh double-submit token in a cookie of its own.
pub async fn sign_in_form(
    State(state): State<AppState>,
    axum::Extension(config): axum::Extension<Arc<ConsoleConfig>>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Ok(Some(_)) = console_sessions::lookup(&state.pool, id).await
    {
        return Redirect::to("/console").into_response();
    }
    let token = console_sessions::random_hex();
    let mut response = sign_in_page(StatusCode::OK, &token, None);
    if let Some(c) = set_cookie(SIGN_IN_COOKIE, &token, "/console/sign-in", 1800, secure(&headers, &config)) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/sign-in`: checks the form token and the API token, opens a session.
pub async fn sign_in(
    State(state): State<AppState>,
    axum::Extension(config): axum::Extension<Arc<ConsoleConfig>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !same_origin(&headers, &config) {
        return Err(ConsoleError::CrossOrigin);
    }
    if form.csrf.is_empty()
        || expected.is_empty()
        || !bool::from(form.csrf.as_bytes().ct_eq(expected.as_bytes()))
    {
        return Err(ConsoleError::Csrf);
    }
    let token = form.token.trim();
    let caller = if token.is_empty() || token.len() > 200 {
        None
    } else {
        api_tokens::authenticate(&state.pool, token).await?
    };
    let Some(caller) = caller else {
        tracing::info!("console sign-in refused: unknown, revoked or expired token");
        return Ok(sign_in_page(
            StatusCode::UNAUTHORIZED,
            expected,
            Some("That token is unknown, revoked or expired."),
        ));
    };
    if !CONSOLE_SCOPES.iter().any(|s| caller.has_scope(s)) {
        tracing::info!(client = %caller.client_id, token_id = %caller.token_id, "console sign-in refused: no console scope");
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            expected,
            Some(&format!("This token has none of the console's scopes ({}).", CONSOLE_SCOPES.join(", "))),
        ));
    }
    let opened = console_sessions::open(&state.pool, caller.token_id, config.session_ttl).await?;
    tracing::info!(client = %caller.client_id, token_id = %caller.token_id, "console sign-in");
    let home = if caller.has_scope(SCOPE_OPERATOR_READ) { "/console" } else { "/console/batches" };
    let mut response = Redirect::to(home).into_response();
    let secure = secure(&headers, &config);
    let ttl = config.session_ttl.as_secs();
    if let Some(c) = set_cookie(SESSION_COOKIE, opened.id.expose(), "/console", ttl, secure) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    if let Some(c) = set_cookie(SIGN_IN_COOKIE, "", "/console/sign-in", 0, secure) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /console/sign-out`: ends the session server-side and clears the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    signed.check_post(&headers, form.csrf.as_deref())?;
    console_sessions::close(&state.pool, &signed.cookie_id).await?;
    let mut response = Redirect::to("/console/sign-in").into_response();
    if let Some(c) = set_cookie(SESSION_COOKIE, "", "/console", 0, secure(&headers, &signed.config)) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsoleConfig {
        ConsoleConfig::default()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; payoutd_console_signin=x; payoutd_console=abc")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, SIGN_IN_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn only_the_console_s_own_origin_may_post() {
        let c = config();
        assert!(same_origin(
            &headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]),
            &c
        ));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]), &c));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]), &c));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]), &c));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")]), &c), "non-browser clients send neither");
        let behind_proxy = ConsoleConfig { public_origin: Some("https://ops.example".into()), ..config() };
        assert!(same_origin(
            &headers(&[("host", "10.0.0.5:8080"), ("origin", "https://ops.example")]),
            &behind_proxy
        ));
    }

    #[test]
    fn session_cookies_are_http_only_and_strict() {
        let c = set_cookie(SESSION_COOKIE, "v", "/console", 60, false).expect("cookie");
        let c = c.to_str().expect("text");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"), "{c}");
        let tls = set_cookie(SESSION_COOKIE, "v", "/console", 60, true).expect("cookie");
        assert!(tls.to_str().expect("text").ends_with("; Secure"));
    }
}
