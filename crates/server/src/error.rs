//! API errors, mapped to status codes in one place. Bodies never carry secrets or internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payoutd_core::FieldError;
use payoutd_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("insufficient permissions: requires scope {0}")]
    Forbidden(&'static str),
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("validation failed")]
    Invalid(Vec<FieldError>),
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict { existing_id: uuid::Uuid },
    #[error("external_id already used by a payout with a different request")]
    ExternalIdConflict { existing_id: uuid::Uuid },
    #[error("not found")]
    NotFound,
    #[error("internal error")]
    Internal(#[from] payoutd_store::StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthenticated", "message": "missing, unknown, revoked or expired bearer token"}),
            ),
            ApiError::Forbidden(scope) => {
                (StatusCode::FORBIDDEN, json!({"error": "insufficient_permissions", "required_scope": scope}))
            }
            ApiError::BadRequest(msg) => {
                (StatusCode::BAD_REQUEST, json!({"error": "bad_request", "message": msg}))
            }
            ApiError::Invalid(fields) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": "validation_failed", "fields": fields}))
            }
            ApiError::IdempotencyConflict { existing_id } => (
                StatusCode::CONFLICT,
                json!({
                    "error": "idempotency_conflict",
                    "message": "this idempotency key was used with a different request body",
                    "existing_payout_id": existing_id,
                }),
            ),
            ApiError::ExternalIdConflict { existing_id } => (
                StatusCode::CONFLICT,
                json!({
                    "error": "external_id_conflict",
                    "message": "this external_id belongs to a payout created from a different request",
                    "existing_payout_id": existing_id,
                }),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            ApiError::Internal(e) if database_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable; answering 503");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "error": "unavailable",
                        "message": "the database is unavailable; retry later (with the same Idempotency-Key)",
                    }),
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error serving a request");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "internal"}))
            }
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthenticated) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(crate::RETRY_AFTER_SECS));
        }
        response
    }
}

/// Whether a store error means "the database cannot be reached or cannot serve right now"
/// (a retry may succeed) rather than a bug or bad data. Such errors are 503, not 500.
pub fn database_unavailable(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else { return false };
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 53: insufficient resources (too many
            // connections, disk full); 57P01-57P03: shutdown / not yet accepting; 40001 and
            // 40P01: serialization failure and deadlock (nothing was written).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }),
        _ => false,
    }
}
