use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", operation_id = "health_live", summary = "Liveness",
    responses((status = 200, description = "the process answers", body = String)),
    security(()),
)]
pub async fn live() -> &'static str {
    "ok"
}

/// The database answers.
#[utoipa::path(get, path = "/health/ready", tag = "health", operation_id = "health_ready", summary = "Readiness",
    responses((status = 200, description = "the database answers and is migrated", body = String), (status = 503, description = "not ready", body = String)),
    security(()),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}
