//! API errors, mapped to status codes in one place. Bodies never carry secrets or internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payoutd_core::FieldError;
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
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error serving a request");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "internal"}))
            }
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthenticated) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
