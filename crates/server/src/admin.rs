//! The admin listener: `GET /metrics` (Prometheus text format), `GET /health/live` and
//! `GET /health/ready`, on an address of its own, separate from the API and callback port, so
//! that a worker pod can be probed and scraped and `/metrics` is never reachable where
//! providers call in.
//!
//! - live: the process answers (200 "ok"). Kubernetes restarts a pod that stops answering.
//! - ready: the database answers, this release's migrations are all applied, and the worker
//!   loop (where the process runs one) turned recently. 200 or 503, with a JSON body naming
//!   each check. A draining worker is not ready.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use payoutd_store::{PgPool, health};
use serde_json::json;

/// Renders the current metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;
/// Whether the worker loop turned recently.
pub type WorkerAlive = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long each readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AdminState {
    pub pool: PgPool,
    pub metrics: RenderMetrics,
    /// `None` in a process without a worker loop (nothing to check).
    pub worker: Option<WorkerAlive>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[utoipa::path(get, path = "/metrics", tag = "admin", operation_id = "admin_metrics", summary = "Metrics (admin listener)",
    responses((status = 200, description = "Prometheus text exposition (admin listener)", body = String, content_type = "text/plain")),
    security(()),
)]
pub(crate) async fn metrics(State(state): State<AdminState>) -> Response {
    match (state.metrics)() {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be rendered").into_response()
        }
    }
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AdminState>) -> Response {
    let database = match tokio::time::timeout(CHECK_TIMEOUT, health::ping(&state.pool)).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(_)) => "unreachable".to_owned(),
        Err(_) => "timed out".to_owned(),
    };
    let migrations = if database != "ok" {
        "unknown (database not reachable)".to_owned()
    } else {
        match tokio::time::timeout(CHECK_TIMEOUT, health::pending_migrations(&state.pool)).await {
            Ok(Ok(pending)) if pending.is_empty() => "ok".to_owned(),
            Ok(Ok(pending)) => format!("pending: {pending:?}"),
            Ok(Err(_)) => "unknown (query failed)".to_owned(),
            Err(_) => "unknown (timed out)".to_owned(),
        }
    };
    let worker = match &state.worker {
        None => "not run in this process",
        Some(alive) if alive() => "ok",
        Some(_) => "stopped or stalled",
    };
    let ready = database == "ok" && migrations == "ok" && worker != "stopped or stalled";
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": { "database": database, "migrations": migrations, "worker": worker },
    });
    (status, axum::Json(body)).into_response()
}
