//! Webhook management for API clients, under its own scope `webhooks.manage`. A client sees
//! and changes only its own endpoints and events.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/webhooks/endpoints` | create: `{url, event_types, description?}`; the answer shows the secret, once |
//! | `GET /v1/webhooks/endpoints` | list (never a secret) |
//! | `GET /v1/webhooks/endpoints/{id}` | one endpoint, with its failure state |
//! | `DELETE /v1/webhooks/endpoints/{id}` | delete; pending deliveries are cancelled, the log stays |
//! | `POST /v1/webhooks/endpoints/{id}/rotate-secret` | `{overlap_secs?}` (default 24 h, at most 7 days): a new secret, shown once; the old one signs too until the overlap ends |
//! | `POST /v1/webhooks/endpoints/{id}/enable` | enable again after it was disabled for constant failure |
//! | `GET /v1/webhooks/events?payout_id=&limit=` | events, newest first |
//! | `GET /v1/webhooks/events/{id}` | one event with its delivery log (attempts, status, latency, answer excerpt) |
//! | `POST /v1/webhooks/events/{id}/redeliver` | `{endpoint_id?}`: send it again |
//! | `POST /v1/webhooks/redeliver` | `{from, to, endpoint_id?}`: send again every event created in `[from, to)` (at most 10,000 per call) |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use payoutd_core::FieldError;
use payoutd_core::net_policy::{self, AddressPolicy};
use payoutd_core::sealing::SealingKey;
use payoutd_core::webhook::EventType;
use payoutd_store::webhooks::{self, Endpoint, EndpointWithSecret, NewEndpoint};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use uuid::Uuid;

use crate::auth::{Authenticated, SCOPE_WEBHOOKS};
use crate::error::ApiError;
use crate::{AppState, HttpLimits};

/// How long the old secret signs after a rotation, unless the request says otherwise.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap a rotation may ask for.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Events one range redelivery may schedule.
pub const MAX_REDELIVER_EVENTS: i64 = 10_000;
const MAX_DESCRIPTION: usize = 500;

/// What webhook management needs besides the database.
#[derive(Debug, Clone, Default)]
pub struct WebhooksApi {
    /// Seals new secrets. Without it, endpoints cannot be created or rotated (503 naming the
    /// setting); reading the log and redelivering still work.
    pub sealing_key: Option<Arc<SealingKey>>,
    /// The same address policy the delivery workers use: literal addresses in a new URL are
    /// checked against it at once (host names are checked on every connection).
    pub policy: AddressPolicy,
}

/// The webhook routes, bounded like the rest of the API (merge them with
/// [`crate::router_with_extra`]).
pub fn routes(config: WebhooksApi, limits: &HttpLimits) -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/endpoints", post(create).get(list))
        .route("/v1/webhooks/endpoints/{id}", get(show).delete(delete))
        .route("/v1/webhooks/endpoints/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/endpoints/{id}/enable", post(enable))
        .route("/v1/webhooks/events", get(list_events))
        .route("/v1/webhooks/events/{id}", get(show_event))
        .route("/v1/webhooks/events/{id}/redeliver", post(redeliver_event))
        .route("/v1/webhooks/redeliver", post(redeliver_range))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes.max(1)))
        .layer(Extension(Arc::new(config)))
}

/// Errors of this module: the API's, plus "not configured".
pub enum WebhookApiError {
    Api(ApiError),
    NotConfigured,
}

impl From<ApiError> for WebhookApiError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<payoutd_store::StoreError> for WebhookApiError {
    fn from(e: payoutd_store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for WebhookApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::NotConfigured => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "webhooks_not_configured",
                    "message": "webhook secrets cannot be sealed: the operator has not set PAYOUTD_WEBHOOK_SECRET_KEY",
                })),
            )
                .into_response(),
        }
    }
}

type Result<T> = std::result::Result<T, WebhookApiError>;

fn parse_id(id: &str) -> std::result::Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> std::result::Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
}

/// Checks a new endpoint, naming every bad field.
fn validate(
    body: &CreateBody,
    policy: &AddressPolicy,
) -> std::result::Result<(String, Vec<EventType>, String), ApiError> {
    let mut fields = Vec::new();
    let url = match body.url.as_deref().map(str::trim) {
        None | Some("") => {
            fields.push(FieldError::new("url", "required"));
            String::new()
        }
        Some(url) => match net_policy::check_url(url, policy) {
            Ok(parsed) => parsed.to_string(),
            Err(e) => {
                fields.push(FieldError::new("url", e.to_string()));
                String::new()
            }
        },
    };
    let mut types = Vec::new();
    match &body.event_types {
        None => fields.push(FieldError::new("event_types", "required: a list of event types")),
        Some(list) if list.is_empty() => {
            fields.push(FieldError::new("event_types", "at least one event type"))
        }
        Some(list) => {
            for t in list {
                match t.parse::<EventType>() {
                    Ok(t) if !types.contains(&t) => types.push(t),
                    Ok(_) => {}
                    Err(e) => fields.push(FieldError::new("event_types", e.to_string())),
                }
            }
        }
    }
    let description = body.description.clone().unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION {
        fields.push(FieldError::new("description", format!("at most {MAX_DESCRIPTION} characters")));
    }
    if fields.is_empty() { Ok((url, types, description)) } else { Err(ApiError::Invalid(fields)) }
}

fn with_secret(created: EndpointWithSecret) -> Value {
    let mut v = json!(created.endpoint);
    v["secret"] = json!(created.secret.expose());
    v["secret_note"] =
        json!("shown once: store it now; payoutd keeps it only sealed and never shows it again");
    v
}

#[utoipa::path(post, path = "/v1/webhooks/endpoints", tag = "webhooks", operation_id = "webhooks_create", summary = "Create a webhook endpoint",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{url, event_types, description?}"),
    responses((status = 201, description = "the endpoint and its secret, shown once", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(config): Extension<Arc<WebhooksApi>>,
    auth: Authenticated,
    body: Bytes,
) -> Result<Response> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let body: CreateBody = parse_body(&body)?;
    let (url, types, description) = validate(&body, &config.policy)?;
    let key = config.sealing_key.as_ref().ok_or(WebhookApiError::NotConfigured)?;
    let new = NewEndpoint {
        client_id: &caller.client_id,
        url: &url,
        event_types: &types,
        description: &description,
    };
    let created = webhooks::create_endpoint(&state.pool, key, &new).await?;
    Ok((StatusCode::CREATED, Json(with_secret(created))).into_response())
}

#[utoipa::path(get, path = "/v1/webhooks/endpoints", tag = "webhooks", operation_id = "webhooks_list", summary = "List webhook endpoints",
    responses((status = 200, description = "the client's endpoints (never a secret)", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn list(State(state): State<AppState>, auth: Authenticated) -> Result<Json<Value>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let endpoints = webhooks::list_endpoints(&state.pool, Some(&caller.client_id)).await?;
    Ok(Json(json!({ "endpoints": endpoints })))
}

#[utoipa::path(get, path = "/v1/webhooks/endpoints/{id}", tag = "webhooks", operation_id = "webhooks_show", summary = "One webhook endpoint",
    params(("id" = String, Path)),
    responses((status = 200, description = "one endpoint with its failure state", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let endpoint = webhooks::get_endpoint(&state.pool, parse_id(&id)?, Some(&caller.client_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(endpoint))
}

#[utoipa::path(delete, path = "/v1/webhooks/endpoints/{id}", tag = "webhooks", operation_id = "webhooks_delete", summary = "Delete a webhook endpoint",
    params(("id" = String, Path)),
    responses((status = 200, description = "deleted; pending deliveries cancelled", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    if webhooks::delete_endpoint(&state.pool, parse_id(&id)?, Some(&caller.client_id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound.into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    overlap_secs: Option<u64>,
}

#[utoipa::path(post, path = "/v1/webhooks/endpoints/{id}/rotate-secret", tag = "webhooks", operation_id = "webhooks_rotate", summary = "Rotate an endpoint's secret",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{overlap_secs?}"),
    responses((status = 200, description = "the new secret, shown once", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    Extension(config): Extension<Arc<WebhooksApi>>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let id = parse_id(&id)?;
    let body: RotateBody = parse_body(&body)?;
    let overlap = body.overlap_secs.map_or(DEFAULT_OVERLAP, Duration::from_secs);
    if overlap > MAX_OVERLAP {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "overlap_secs",
            format!("at most {} (7 days)", MAX_OVERLAP.as_secs()),
        )])
        .into());
    }
    let key = config.sealing_key.as_ref().ok_or(WebhookApiError::NotConfigured)?;
    let rotated = webhooks::rotate_secret(&state.pool, key, id, Some(&caller.client_id), overlap)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(with_secret(rotated)))
}

#[utoipa::path(post, path = "/v1/webhooks/endpoints/{id}/enable", tag = "webhooks", operation_id = "webhooks_enable", summary = "Enable a disabled endpoint",
    params(("id" = String, Path)),
    responses((status = 200, description = "enabled again", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn enable(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let id = parse_id(&id)?;
    if !webhooks::enable_endpoint(&state.pool, id, Some(&caller.client_id)).await? {
        return Err(ApiError::NotFound.into());
    }
    let endpoint =
        webhooks::get_endpoint(&state.pool, id, Some(&caller.client_id)).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(endpoint))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    payout_id: Option<Uuid>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/webhooks/events", tag = "webhooks", operation_id = "webhooks_list_events", summary = "List webhook events",
    params(("payout_id" = Option<String>, Query), ("limit" = Option<String>, Query)),
    responses((status = 200, description = "events, newest first", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = webhooks::events(&state.pool, Some(&caller.client_id), q.payout_id, limit).await?;
    Ok(Json(json!({ "events": events })))
}

#[utoipa::path(get, path = "/v1/webhooks/events/{id}", tag = "webhooks", operation_id = "webhooks_show_event", summary = "One webhook event",
    params(("id" = String, Path)),
    responses((status = 200, description = "one event with its delivery log", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn show_event(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let id = parse_id(&id)?;
    let event = webhooks::event(&state.pool, id, Some(&caller.client_id)).await?.ok_or(ApiError::NotFound)?;
    let deliveries = webhooks::deliveries_of_event(&state.pool, id).await?;
    let mut v = json!(event);
    v["deliveries"] = json!(deliveries);
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeliverEventBody {
    endpoint_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/webhooks/events/{id}/redeliver", tag = "webhooks", operation_id = "webhooks_redeliver_event", summary = "Redeliver one event",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{endpoint_id?}"),
    responses((status = 202, description = "scheduled", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn redeliver_event(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let id = parse_id(&id)?;
    let body: RedeliverEventBody = parse_body(&body)?;
    let scheduled = webhooks::redeliver_event(&state.pool, id, Some(&caller.client_id), body.endpoint_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::ACCEPTED, Json(json!(scheduled))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeliverRangeBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    endpoint_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/webhooks/redeliver", tag = "webhooks", operation_id = "webhooks_redeliver_range", summary = "Redeliver the events of a time range",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{from, to, endpoint_id?}"),
    responses((status = 202, description = "scheduled", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["webhooks.manage"])),
)]
pub(crate) async fn redeliver_range(
    State(state): State<AppState>,
    auth: Authenticated,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let caller = auth.require(SCOPE_WEBHOOKS)?;
    let body: RedeliverRangeBody = parse_body(&body)?;
    if body.to <= body.from {
        return Err(ApiError::Invalid(vec![FieldError::new("to", "must be after from")]).into());
    }
    let scheduled = webhooks::redeliver_range(
        &state.pool,
        &caller.client_id,
        body.from,
        body.to,
        body.endpoint_id,
        MAX_REDELIVER_EVENTS,
    )
    .await?;
    let mut v = json!(scheduled);
    v["limit"] = json!(MAX_REDELIVER_EVENTS);
    Ok((StatusCode::ACCEPTED, Json(v)))
}
