//! payoutd's HTTP surface (axum).
//!
//! - [`auth`]: bearer client tokens with scopes; 401 for no/unknown token, 403 for a missing scope.
//! - [`payouts_api`]: `POST /v1/payouts` (idempotent) and `GET /v1/payouts/{id}`.
//! - [`request`]: turning a JSON body into a [`payoutd_core::NewPayout`], naming every bad field.
//! - [`callbacks_api`]: `POST /v1/callbacks/{provider}`, verified over the exact bytes.
//! - [`error`]: the one place API errors become HTTP status codes.

pub mod auth;
pub mod callbacks_api;
pub mod error;
pub mod health;
pub mod payouts_api;
pub mod request;

use axum::Router;
use axum::routing::{get, post};
use payoutd_providers::Connectors;
use payoutd_store::PgPool;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub connectors: Connectors,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/payouts", post(payouts_api::create))
        .route("/v1/payouts/{id}", get(payouts_api::show))
        .route("/v1/callbacks/{provider}", post(callbacks_api::receive))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
