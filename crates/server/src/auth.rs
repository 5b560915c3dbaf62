//! Bearer client tokens (modelled on the gateway spec): no or unknown token is 401, a valid
//! token without the endpoint's scope is 403.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use payoutd_store::api_tokens::{self, Caller};

use crate::AppState;
use crate::error::ApiError;

pub const SCOPE_CREATE: &str = "payouts.create";
pub const SCOPE_READ: &str = "payouts.read";
/// Webhook endpoints, the delivery log and redelivery.
pub const SCOPE_WEBHOOKS: &str = "webhooks.manage";
/// Operators: list and show every client's payouts, pauses, limits, the operator log.
pub const SCOPE_OPERATOR_READ: &str = "operator.read";
/// Operators: resolve, retry, cancel, force a status query (one payout or in bulk).
pub const SCOPE_OPERATOR_ACT: &str = "operator.act";
/// Operators: pause and resume accounts, set client limits, run retention.
pub const SCOPE_OPERATOR_ADMIN: &str = "operator.admin";
/// Every scope a token may carry.
pub const KNOWN_SCOPES: &[&str] = &[
    SCOPE_CREATE,
    SCOPE_READ,
    SCOPE_WEBHOOKS,
    SCOPE_OPERATOR_READ,
    SCOPE_OPERATOR_ACT,
    SCOPE_OPERATOR_ADMIN,
    crate::batches_api::SCOPE_BATCHES_CREATE,
    crate::batches_api::SCOPE_BATCHES_READ,
    crate::batches_api::SCOPE_BATCHES_APPROVE,
    crate::batches_api::SCOPE_RECONCILIATIONS_READ,
    "*",
];

/// An authenticated caller. Handlers then call [`Authenticated::require`] with their scope.
pub struct Authenticated(pub Caller);

impl Authenticated {
    pub fn require(&self, scope: &'static str) -> Result<&Caller, ApiError> {
        if self.0.has_scope(scope) { Ok(&self.0) } else { Err(ApiError::Forbidden(scope)) }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let caller = api_tokens::authenticate(&state.pool, token).await?.ok_or(ApiError::Unauthenticated)?;
        Ok(Authenticated(caller))
    }
}
