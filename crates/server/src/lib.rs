//! payoutd's HTTP surface (axum).
//!
//! - [`auth`]: bearer client tokens with scopes; 401 for no/unknown token, 403 for a missing scope.
//! - [`payouts_api`]: `POST /v1/payouts` (idempotent) and `GET /v1/payouts/{id}`;
//!   [`enqueue_batcher`]: concurrent enqueues stored in one commit, each answered after it.
//! - [`request`]: turning a JSON body into a [`payoutd_core::NewPayout`], naming every bad field.
//! - [`callbacks_api`]: `POST /v1/callbacks/{provider}`, verified over the exact bytes.
//! - [`error`]: the one place API errors become HTTP status codes.
//! - [`telemetry`]: a server span per request (continuing the caller's trace) and the
//!   callback counters.
//! - [`admin`]: the admin listener's routes: `/metrics`, `/health/live`, `/health/ready`.
//! - [`webhooks_api`]: webhook endpoints, the delivery log and redelivery (scope
//!   `webhooks.manage`), merged in with [`router_with_extra`].
//! - [`operator_api`]: operators' view of every client's payouts and their actions, pauses,
//!   client limits, retention (scopes `operator.read`, `operator.act`, `operator.admin`),
//!   merged in with [`router_with_extra`].
//! - [`batches_api`]: mass-payout batches (upload, approve, cancel, summary, report) and
//!   reconciliation reports (scopes `batches.*`, `reconciliations.read`).
//!
//! - [`openapi`]: the OpenAPI 3.1 document of this API, generated from the handlers'
//!   annotations, at `GET /openapi.json`.
//! - [`console`]: the operator console, HTML pages at `/console` (not part of the API document).
//!
//! Every route is bounded by [`HttpLimits`]: body sizes, a request timeout and a concurrency
//! limit; a 503 always carries `Retry-After`.

pub mod admin;
pub mod auth;
pub mod batches_api;
pub mod callbacks_api;
pub mod console;
pub mod enqueue_batcher;
pub mod error;
pub mod health;
pub mod openapi;
pub mod operator_api;
pub mod payouts_api;
pub mod request;
pub mod telemetry;
pub mod webhooks_api;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use payoutd_providers::Connectors;
use payoutd_store::PgPool;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub connectors: Connectors,
    /// Group commit of `POST /v1/payouts`.
    pub enqueues: enqueue_batcher::EnqueueBatcher,
}

impl AppState {
    /// The state of one API process; starts its enqueue lanes (inside a Tokio runtime).
    pub fn new(pool: PgPool, connectors: Connectors) -> Self {
        let enqueues = enqueue_batcher::EnqueueBatcher::start(pool.clone());
        Self { pool, connectors, enqueues }
    }
}

/// Bounds of the HTTP server (DESIGN rule 13). The callback endpoint needs no token, so these
/// are what stands between it and anyone who can reach the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request not answered within this is answered 503 with Retry-After (the handler is
    /// dropped; a payout it already committed is found again by its Idempotency-Key).
    pub request_timeout: Duration,
    /// Requests (payouts and callbacks) handled at once; more wait their turn within
    /// `request_timeout`. The health endpoints are not counted.
    pub max_concurrent_requests: usize,
    /// Largest `POST /v1/payouts` body; larger is 413 and nothing is stored.
    pub max_body_bytes: usize,
    /// Largest provider callback body; larger is 413 and nothing is stored.
    pub max_callback_body_bytes: usize,
    /// Batch uploads: their own size and row limits (`[batches]`), and the approval step.
    pub batches: batches_api::BatchSettings,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(15),
            max_concurrent_requests: 256,
            max_body_bytes: 64 * 1024,
            max_callback_body_bytes: 16 * 1024,
            batches: batches_api::BatchSettings::default(),
        }
    }
}

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The API with the default [`HttpLimits`].
pub fn router(state: AppState) -> Router {
    router_with_limits(state, &HttpLimits::default())
}

pub fn router_with_limits(state: AppState, limits: &HttpLimits) -> Router {
    router_with_extra(state, limits, Router::new())
}

/// The API with `extra` routes (e.g. [`webhooks_api::routes`]) under the same concurrency
/// limit, request timeout and 503 handling.
pub fn router_with_extra(state: AppState, limits: &HttpLimits, extra: Router<AppState>) -> Router {
    let api_body = RequestBodyLimitLayer::new(limits.max_body_bytes.max(1));
    let callback_body = RequestBodyLimitLayer::new(limits.max_callback_body_bytes.max(1));
    // Each `layer` call puts a route boundary between the layers, so the wait for a
    // concurrency permit happens inside the timeout's future and is bounded by it.
    Router::new()
        .route("/v1/payouts", post(payouts_api::create).layer(api_body))
        .route("/v1/payouts/{id}", get(payouts_api::show))
        .route("/v1/callbacks/{provider}", post(callbacks_api::receive).layer(callback_body))
        .route(
            "/v1/callbacks/{provider}/{*rest}",
            post(callbacks_api::receive_with_path).layer(callback_body),
        )
        .merge(batches_api::routes(limits))
        .merge(extra)
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests.max(1)))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route(openapi::PATH, get(openapi::serve_document))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits.request_timeout))
        .layer(axum::middleware::from_fn(telemetry::trace_request))
        .layer(axum::middleware::map_response(retry_after_on_503))
        .with_state(state)
}

/// Every 503 (database outage, request timeout) tells the client when to come back.
async fn retry_after_on_503(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// Serves the API with the default [`HttpLimits`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, state, &HttpLimits::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves; in-flight requests finish first
/// (each within `limits.request_timeout`).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: &HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with_limits(state, limits)).with_graceful_shutdown(shutdown).await
}

/// Serves `router` (see [`router_with_extra`]) on `listener` until `shutdown` resolves.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
