//! The operator console: server-rendered pages at `/console` for payouts, the review queue and
//! batches, served by `payoutd serve` itself (no front-end build; one small script and one
//! stylesheet, embedded in the binary).
//!
//! Layout:
//! - [`session`]: sign-in with an API token, the session cookie, CSRF and origin checks.
//! - [`html`]: escaping (every piece of data goes through [`html::esc`]) and the page layout.
//! - [`overview`]: open and parked payouts by account and state, due work, pauses, the log.
//! - [`payouts`]: the filtered, cursor-paged list and a payout's page with its timeline.
//! - [`actions`]: resolve, retry, cancel, force a status query: a confirmation page with a
//!   reason, then the same store functions the operator API calls.
//! - [`review`]: the needs_review queue with why each payout is there.
//! - [`batches`]: upload (per-row errors shown against the rows), approve, cancel, progress,
//!   report download.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline script, no framing) and `Cache-Control: no-store`. Pages read and act
//! through the functions the JSON API uses, with the same scopes: a page or button the
//! session's token has no scope for is not shown, and the server refuses it anyway.

pub mod actions;
pub mod batches;
pub mod html;
pub mod overview;
pub mod payouts;
pub mod review;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use payoutd_store::StoreError;
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::ApiError;
use crate::{AppState, HttpLimits};
use html::{Nav, PageOptions};

/// The console's Content-Security-Policy: nothing from anywhere but this origin, no inline
/// script or style, forms post only here, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Settings of the console (`[console]`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How long a sign-in lasts (default 8 hours).
    pub session_ttl: Duration,
    /// Always mark cookies `Secure` (set when the public base URL is https). Requests that
    /// arrive with `X-Forwarded-Proto: https` get `Secure` cookies either way.
    pub secure_cookies: bool,
    /// The console's public origin (`https://ops.example`) when it is served behind a proxy
    /// that changes the Host header; POSTs from it are accepted.
    pub public_origin: Option<String>,
    /// A trace viewer URL with `{trace_id}` in it; payout pages link their trace there.
    pub trace_url: Option<String>,
    /// Seconds between refreshes of the overview and of a running batch's page.
    pub refresh_secs: u32,
    /// The batch upload settings (the same the API applies).
    pub batches: crate::batches_api::BatchSettings,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookies: false,
            public_origin: None,
            trace_url: None,
            refresh_secs: 10,
            batches: Default::default(),
        }
    }
}

impl ConsoleConfig {
    /// `public_base_url` (e.g. `https://ops.example/`) sets the origin and, for https, `Secure`.
    pub fn with_public_base(mut self, base: &str) -> Self {
        let base = base.trim().trim_end_matches('/');
        let origin = match base.find("://") {
            Some(i) => match base[i + 3..].find('/') {
                Some(j) => &base[..i + 3 + j],
                None => base,
            },
            None => base,
        };
        self.secure_cookies = origin.to_ascii_lowercase().starts_with("https://");
        self.public_origin = Some(origin.to_owned());
        self
    }
}

/// The console's routes (merge them with [`crate::router_with_extra`], as `payoutd serve` does).
pub fn routes(config: ConsoleConfig, limits: &HttpLimits) -> Router<AppState> {
    // A CSV upload arrives form-encoded: up to three bytes per byte of the file, plus the form.
    let upload_limit = config.batches.limits.max_bytes.saturating_mul(3).saturating_add(64 * 1024);
    let form_limit = limits.max_body_bytes.max(1);
    let upload = Router::new()
        .route("/console/batches", get(batches::list).post(batches::upload))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(upload_limit));
    Router::new()
        .route("/console", get(overview::page))
        .route("/console/sign-in", get(session::sign_in_form).post(session::sign_in))
        .route("/console/sign-out", axum::routing::post(session::sign_out))
        .route("/console/assets/console.js", get(script))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/payouts", get(payouts::list))
        .route("/console/payouts/{id}", get(payouts::show))
        .route("/console/payouts/{id}/confirm", get(actions::confirm))
        .route("/console/payouts/{id}/act", axum::routing::post(actions::act))
        .route("/console/review", get(review::page))
        .route("/console/batches/{id}", get(batches::show))
        .route("/console/batches/{id}/report.csv", get(batches::report))
        .route("/console/batches/{id}/confirm", get(batches::confirm))
        .route("/console/batches/{id}/act", axum::routing::post(batches::act))
        .layer(RequestBodyLimitLayer::new(form_limit))
        .merge(upload)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::Extension(Arc::new(config)))
}

/// Headers on every console response, pages and errors alike.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const SCRIPT: &str = include_str!("assets/console.js");
const STYLESHEET: &str = include_str!("assets/console.css");

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")],
        body,
    )
        .into_response()
}

/// An HTML answer.
pub fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Why a console request was not served, as a page. Never carries secrets or internals.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("not signed in")]
    NotSignedIn,
    #[error("this needs the scope {0}")]
    Forbidden(&'static str),
    #[error("the form's CSRF token is missing or wrong")]
    Csrf,
    #[error("the request came from another site")]
    CrossOrigin,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        Self::Api(ApiError::Internal(e))
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::NotSignedIn => (
                StatusCode::UNAUTHORIZED,
                "You are not signed in (or your session ended). Sign in again.".to_owned(),
            ),
            Self::Forbidden(scope) => {
                (StatusCode::FORBIDDEN, format!("Your token does not have the scope {scope} this needs."))
            }
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "The form's security token is missing or does not belong to your session. Reload the page and try again."
                    .to_owned(),
            ),
            Self::CrossOrigin => {
                (StatusCode::FORBIDDEN, "Refused: the request did not come from the console itself.".to_owned())
            }
            Self::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Self::Internal(m) => {
                tracing::error!(error = %m, "console internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.".to_owned())
            }
            Self::Api(ApiError::Internal(e)) if crate::error::database_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable; console answers 503");
                (StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; retry in a moment.".to_owned())
            }
            Self::Api(ApiError::Internal(e)) => {
                tracing::error!(error = %e, "internal error serving a console page");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.".to_owned())
            }
            Self::Api(ApiError::Invalid(fields)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                fields.iter().map(|f| format!("{}: {}", f.field, f.reason)).collect::<Vec<_>>().join("; "),
            ),
            Self::Api(ApiError::Forbidden(scope)) => {
                (StatusCode::FORBIDDEN, format!("Your token does not have the scope {scope} this needs."))
            }
            Self::Api(ApiError::NotFound) => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
            Self::Api(other) => (StatusCode::BAD_REQUEST, other.to_string()),
        };
        let body = format!(
            r#"{}<p><a href="/console">Back to the console</a></p>"#,
            html::notice("error", &message)
        );
        let title = status.canonical_reason().unwrap_or("Error");
        html_response(status, html::page(title, None, Nav::None, PageOptions::default(), &body))
    }
}
