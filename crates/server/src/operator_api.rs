//! The operator API: every client's payouts, the actions on them, pausing provider accounts,
//! client limits, retention. Operators see every client's payouts (client tokens only their
//! own). Every action needs a `reason` (422 naming the field without one) and is written to the
//! event log with the operator's identity, `operator:<client>/<token label>`; a refusal because
//! of the payout's state is 409 with the reason.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /v1/operator/payouts?state=&account=&client=&external_id=&created_from=&created_to=&batch=&cursor=&limit=` | `operator.read` | newest first, cursor pages, `limit` at most 500 |
//! | `GET /v1/operator/payouts/{id}` | `operator.read` | one payout with its timeline and retry links |
//! | `POST /v1/operator/payouts/{id}/resolve` | `operator.act` | `{to: paid\|failed, reason}`: only needs_review |
//! | `POST /v1/operator/payouts/{id}/retry` | `operator.act` | `{reason}`: needs_review asks the provider first; failed: a new payout (201) |
//! | `POST /v1/operator/payouts/{id}/cancel` | `operator.act` | `{reason}`: only pending or checked (no intent) |
//! | `POST /v1/operator/payouts/{id}/status-query` | `operator.act` | `{reason}`: in_doubt or submitted; answers when |
//! | `POST /v1/operator/payouts/bulk` | `operator.act` | `{action, filter, reason, confirmation_token?}`: first the count and a token, then the action |
//! | `GET /v1/operator/pauses` | `operator.read` | paused accounts |
//! | `POST /v1/operator/accounts/{account}/pause` | `operator.admin` | `{reason}`; `*` pauses all |
//! | `POST /v1/operator/accounts/{account}/resume` | `operator.admin` | `{reason}` |
//! | `GET /v1/operator/clients/{client}/limits` | `operator.read` | the client's limits |
//! | `PUT /v1/operator/clients/{client}/limits` | `operator.admin` | replace them: `{currencies, allowed_destination_codes, allowed_accounts, reason}` |
//! | `DELETE /v1/operator/clients/{client}/limits` | `operator.admin` | `{reason}`: no limits |
//! | `POST /v1/operator/retention/run` | `operator.admin` | `{reason}`: one retention pass now |
//! | `GET /v1/operator/events?action=&before=&limit=` | `operator.read` | the operator log (pauses, limits, bulk, retention) |

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use payoutd_core::{Currency, FieldError, PayoutState, StatusLookup};
use payoutd_providers::Connectors;
use payoutd_store::account_pauses::{self, ALL_ACCOUNTS};
use payoutd_store::client_limits::{self, ClientLimits, CurrencyLimits, LimitViolation};
use payoutd_store::operator::{self, ActionError, Reason, ResolveTo, Retried};
use payoutd_store::operator_bulk::{self, BulkAction, BulkError, BulkRequest};
use payoutd_store::operator_filter::{self, Cursor, OperatorPayout, PayoutFilter};
use payoutd_store::retention::{self, RetentionPolicy, RetentionRun};
use payoutd_store::{StoreError, operator_events, payout_view, payouts};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use uuid::Uuid;

use crate::auth::{Authenticated, SCOPE_OPERATOR_ACT, SCOPE_OPERATOR_ADMIN, SCOPE_OPERATOR_READ};
use crate::error::ApiError;
use crate::{AppState, HttpLimits};

/// The most payouts one page lists.
pub const MAX_PAGE: i64 = 500;
const DEFAULT_PAGE: i64 = 100;
/// The most entries an allow-list may hold, and the longest entry.
const MAX_ALLOW_LIST: usize = 10_000;
const MAX_ALLOW_ENTRY: usize = 200;

/// Settings of the operator API.
#[derive(Debug, Clone)]
pub struct OperatorApi {
    /// The most payouts one bulk action may touch (default 1,000).
    pub bulk_cap: i64,
    /// How long a bulk confirmation token stays valid (default 5 minutes).
    pub confirmation_ttl: Duration,
    /// What `POST /v1/operator/retention/run` applies.
    pub retention: RetentionPolicy,
}

impl Default for OperatorApi {
    fn default() -> Self {
        Self {
            bulk_cap: 1_000,
            confirmation_ttl: Duration::from_secs(300),
            retention: RetentionPolicy::default(),
        }
    }
}

/// The operator routes, bounded like the rest of the API (merge them with
/// [`crate::router_with_extra`]).
pub fn routes(config: OperatorApi, limits: &HttpLimits) -> Router<AppState> {
    Router::new()
        .route("/v1/operator/payouts", get(list))
        .route("/v1/operator/payouts/bulk", post(bulk))
        .route("/v1/operator/payouts/{id}", get(show))
        .route("/v1/operator/payouts/{id}/resolve", post(resolve))
        .route("/v1/operator/payouts/{id}/retry", post(retry))
        .route("/v1/operator/payouts/{id}/cancel", post(cancel))
        .route("/v1/operator/payouts/{id}/status-query", post(status_query))
        .route("/v1/operator/pauses", get(pauses))
        .route("/v1/operator/accounts/{account}/pause", post(pause))
        .route("/v1/operator/accounts/{account}/resume", post(resume))
        .route("/v1/operator/clients/{client}/limits", get(get_limits).put(put_limits).delete(delete_limits))
        .route("/v1/operator/retention/run", post(run_retention))
        .route("/v1/operator/events", get(events))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes.max(1)))
        .layer(Extension(Arc::new(config)))
}

/// The answer to a payout over a client limit: 422 naming the limit.
pub fn limit_exceeded(v: &LimitViolation) -> Response {
    let body = json!({ "error": "limit_exceeded", "limit": v.limit.as_str(), "detail": v.detail });
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

// ---- errors ---------------------------------------------------------------------------------

/// Errors of this module: the API's, plus refusals (409) and the bulk cap (422).
#[derive(Debug)]
pub enum OperatorError {
    Api(ApiError),
    /// The state forbids the action: 409 with the reason.
    Refused(String),
    OverCap {
        cap: i64,
        count: i64,
    },
}

impl From<ApiError> for OperatorError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<StoreError> for OperatorError {
    fn from(e: StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl From<ActionError> for OperatorError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::NotFound(_) => Self::Api(ApiError::NotFound),
            ActionError::Refused(why) => Self::Refused(why),
            ActionError::Store(e) => e.into(),
        }
    }
}

impl From<BulkError> for OperatorError {
    fn from(e: BulkError) -> Self {
        match e {
            BulkError::OverCap { cap, count } => Self::OverCap { cap, count },
            BulkError::Refused(why) => Self::Refused(why),
            BulkError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for OperatorError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Refused(why) => {
                (StatusCode::CONFLICT, Json(json!({ "error": "refused", "reason": why }))).into_response()
            }
            Self::OverCap { cap, count } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "bulk_cap_exceeded",
                    "cap": cap,
                    "count": count,
                    "message": format!(
                        "the filter matches {count} payouts, more than the bulk cap of {cap} (operator.bulk_cap); narrow it"
                    ),
                })),
            )
                .into_response(),
        }
    }
}

type Answer = Result<Response, OperatorError>;

fn invalid(field: &str, reason: impl Into<String>) -> OperatorError {
    OperatorError::Api(ApiError::Invalid(vec![FieldError::new(field, reason)]))
}

/// A JSON body: malformed is 400, well-formed but wrong (missing, unknown or mistyped field) 422.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, OperatorError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid("body", e.to_string()),
        _ => OperatorError::Api(ApiError::BadRequest(format!("the body is not JSON: {e}"))),
    })
}

fn reason_of(text: Option<&str>) -> Result<Reason, OperatorError> {
    Reason::parse(text.unwrap_or_default()).map_err(|why| invalid("reason", why))
}

fn payout_id(text: &str) -> Result<Uuid, OperatorError> {
    Uuid::parse_str(text).map_err(|_| OperatorError::Api(ApiError::NotFound))
}

/// The preamble of every action whose body is only a reason: the scope, the reason (422 naming
/// `reason` without one) and who acts.
async fn reasoned(
    state: &AppState,
    auth: &Authenticated,
    scope: &'static str,
    body: &Bytes,
) -> Result<(Reason, String), OperatorError> {
    auth.require(scope)?;
    let b: ReasonBody = parse_body(body)?;
    Ok((reason_of(b.reason.as_deref())?, actor(state, auth).await?))
}

/// Who acts: `operator:<client>/<token label>`.
async fn actor(state: &AppState, auth: &Authenticated) -> Result<String, OperatorError> {
    Ok(operator::actor_for_token(&state.pool, auth.0.token_id, &auth.0.client_id).await?)
}

// ---- views ----------------------------------------------------------------------------------

/// A payout as operators see it: the client's view (account masked) plus the client, the
/// retry links, redaction and what the engine holds.
pub fn operator_json(p: &OperatorPayout) -> Value {
    let row = &p.row;
    let mut v = payout_view::payout_json(row);
    v["client_id"] = json!(row.client_id);
    v["retry_of"] = json!(p.retry_of);
    v["retried_by"] = json!(p.retried_by);
    v["redacted_at"] = json!(p.redacted_at);
    v["parked_at"] = json!(row.parked_at);
    v["provider_payout_id"] = json!(row.provider_payout_id);
    v["provider_contact_bound"] = json!(row.provider_contact_bound);
    v["status_queries"] = json!(row.status_queries);
    v["submit_in_flight"] = json!(row.submit_in_flight);
    v["lease_owner"] = json!(row.lease_owner);
    v["lease_expires_at"] = json!(row.lease_expires_at);
    v["fencing_token"] = json!(row.fencing_token);
    v
}

async fn payout_answer(state: &AppState, id: Uuid, status: StatusCode) -> Answer {
    let p = operator_filter::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    Ok((status, Json(json!({ "payout": operator_json(&p) }))).into_response())
}

// ---- listing --------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub(crate) state: Option<String>,
    pub(crate) account: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) external_id: Option<String>,
    pub(crate) created_from: Option<String>,
    pub(crate) created_to: Option<String>,
    pub(crate) batch: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<String>,
}

fn time_field(field: &str, text: Option<&str>, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let text = text?;
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            errors.push(FieldError::new(field, "an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"));
            None
        }
    }
}

fn states_field(text: &str, errors: &mut Vec<FieldError>) -> Vec<PayoutState> {
    let mut states = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match PayoutState::from_str(name) {
            Ok(s) => states.push(s),
            Err(_) => errors.push(FieldError::new(
                "state",
                format!(
                    "unknown state {name:?}; one of {}",
                    PayoutState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
    states
}

pub(crate) fn filter_of(q: &ListQuery, errors: &mut Vec<FieldError>) -> PayoutFilter {
    let nonempty =
        |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    PayoutFilter {
        states: q.state.as_deref().map(|s| states_field(s, errors)).unwrap_or_default(),
        account: nonempty(&q.account),
        client: nonempty(&q.client),
        external_id: nonempty(&q.external_id),
        created_from: time_field("created_from", q.created_from.as_deref(), errors),
        created_to: time_field("created_to", q.created_to.as_deref(), errors),
        batch: nonempty(&q.batch).and_then(|b| match Uuid::parse_str(&b) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(FieldError::new("batch", "a batch id"));
                None
            }
        }),
    }
}

#[utoipa::path(get, path = "/v1/operator/payouts", tag = "operator", operation_id = "operator_list", summary = "List every client's payouts",
    params(("state" = Option<String>, Query), ("account" = Option<String>, Query), ("client" = Option<String>, Query), ("external_id" = Option<String>, Query), ("created_from" = Option<String>, Query), ("created_to" = Option<String>, Query), ("batch" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<String>, Query)),
    responses((status = 200, description = "{payouts, next_cursor}", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.read"])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Authenticated,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    auth.require(SCOPE_OPERATOR_READ)?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let mut errors = Vec::new();
    let filter = filter_of(&q, &mut errors);
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new("limit", format!("1 to {MAX_PAGE}")));
            DEFAULT_PAGE
        }
    };
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => match Cursor::decode(text) {
            Some(c) => Some(c),
            None => {
                errors.push(FieldError::new("cursor", "not a cursor this API issued"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(OperatorError::Api(ApiError::Invalid(errors)));
    }
    let mut ignored = Vec::new();
    let mut filter = filter;
    if filter.batch.is_some() && !operator_filter::batch_filter_available(&state.pool).await? {
        // No batches in this schema: no payout belongs to one. Said in the answer.
        filter.batch = None;
        ignored.push("batch");
    }
    let (payouts, next) = operator_filter::list(&state.pool, &filter, cursor, limit).await?;
    let mut body = json!({
        "payouts": payouts.iter().map(operator_json).collect::<Vec<_>>(),
        "next_cursor": next.map(|c| c.encode()),
    });
    if !ignored.is_empty() {
        body["ignored_filters"] = json!(ignored);
    }
    Ok(Json(body).into_response())
}

#[utoipa::path(get, path = "/v1/operator/payouts/{id}", tag = "operator", operation_id = "operator_show", summary = "One payout, operator's view",
    params(("id" = String, Path)),
    responses((status = 200, description = "the payout with its timeline and retry links", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["operator.read"])),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Answer {
    auth.require(SCOPE_OPERATOR_READ)?;
    let id = payout_id(&id)?;
    let p = operator_filter::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    let events = payouts::timeline(&state.pool, id).await?;
    let mut v = operator_json(&p);
    v["events"] = json!(events);
    Ok(Json(json!({ "payout": v })).into_response())
}

// ---- actions on one payout ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    to: Option<String>,
    reason: Option<String>,
}

pub(crate) fn resolve_to(text: Option<&str>) -> Result<ResolveTo, FieldError> {
    match text {
        Some("paid") => Ok(ResolveTo::Paid),
        Some("failed") => Ok(ResolveTo::Failed),
        _ => Err(FieldError::new("to", "paid or failed")),
    }
}

#[utoipa::path(post, path = "/v1/operator/payouts/{id}/resolve", tag = "operator", operation_id = "operator_resolve", summary = "Resolve a needs_review payout",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{to: paid|failed, reason}"),
    responses((status = 200, description = "the resolved payout", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.act"])),
)]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    auth.require(SCOPE_OPERATOR_ACT)?;
    let id = payout_id(&id)?;
    let b: ResolveBody = parse_body(&body)?;
    let mut errors = Vec::new();
    let to = resolve_to(b.to.as_deref()).map_err(|e| errors.push(e)).ok();
    let reason = Reason::parse(b.reason.as_deref().unwrap_or_default())
        .map_err(|why| errors.push(FieldError::new("reason", why)))
        .ok();
    let (Some(to), Some(reason)) = (to, reason) else {
        return Err(OperatorError::Api(ApiError::Invalid(errors)));
    };
    let actor = actor(&state, &auth).await?;
    operator::resolve(&state.pool, id, to, &actor, &reason).await?;
    payout_answer(&state, id, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/operator/payouts/{id}/retry", tag = "operator", operation_id = "operator_retry", summary = "Retry a payout",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "needs_review: the payout runs again", body = serde_json::Value), (status = 201, description = "failed: the new, linked payout", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.act"])),
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ACT, &body).await?;
    let id = payout_id(&id)?;
    match operator::retry(&state.pool, id, &actor, &reason).await? {
        Retried::Requeued(_) => payout_answer(&state, id, StatusCode::OK).await,
        Retried::NewPayout(new) => {
            let p = operator_filter::get(&state.pool, new).await?.ok_or(ApiError::NotFound)?;
            let body = json!({ "payout": operator_json(&p), "retry_of": id });
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
    }
}

#[utoipa::path(post, path = "/v1/operator/payouts/{id}/cancel", tag = "operator", operation_id = "operator_cancel", summary = "Cancel a payout before its intent",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "the cancelled payout", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.act"])),
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ACT, &body).await?;
    let id = payout_id(&id)?;
    operator::cancel(&state.pool, id, &actor, &reason).await?;
    payout_answer(&state, id, StatusCode::OK).await
}

/// The status interval of an account this process knows, or why it cannot be asked.
pub fn interval_of(connectors: &Connectors) -> impl Fn(&str) -> Result<Duration, String> + Send + Sync + '_ {
    move |account: &str| {
        let c = connectors.get(account).ok_or_else(|| format!("account {account} is not configured here"))?;
        match c.status_lookup() {
            StatusLookup::None => Err(format!(
                "account {account} ({}) has no status call; only its webhook finishes the payout",
                c.kind()
            )),
            StatusLookup::ByReference | StatusLookup::ByProviderId => Ok(c.min_status_interval()),
        }
    }
}

#[utoipa::path(post, path = "/v1/operator/payouts/{id}/status-query", tag = "operator", operation_id = "operator_status_query", summary = "Force a status query",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "{payout_id, status_query_at}", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.act"])),
)]
pub(crate) async fn status_query(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ACT, &body).await?;
    let id = payout_id(&id)?;
    let at = operator::force_status_query(&state.pool, id, &interval_of(&state.connectors), &actor, &reason)
        .await?;
    Ok(Json(json!({ "payout_id": id, "status_query_at": at })).into_response())
}

// ---- bulk -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: Option<String>,
    /// For `resolve`: paid or failed.
    to: Option<String>,
    #[serde(default)]
    filter: ListFilterBody,
    reason: Option<String>,
    confirmation_token: Option<String>,
}

/// The filter of a bulk request: the list's query parameters as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFilterBody {
    state: Option<StateList>,
    account: Option<String>,
    client: Option<String>,
    external_id: Option<String>,
    created_from: Option<String>,
    created_to: Option<String>,
    batch: Option<String>,
}

/// `"needs_review"`, `"pending,checked"` or `["pending", "checked"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StateList {
    One(String),
    Many(Vec<String>),
}

fn bulk_action(action: Option<&str>, to: Option<&str>, errors: &mut Vec<FieldError>) -> Option<BulkAction> {
    let action = match action {
        Some("resolve") => match resolve_to(to) {
            Ok(ResolveTo::Paid) => BulkAction::ResolvePaid,
            Ok(ResolveTo::Failed) => BulkAction::ResolveFailed,
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
        Some("retry") => BulkAction::Retry,
        Some("cancel") => BulkAction::Cancel,
        Some("status_query") => BulkAction::StatusQuery,
        _ => {
            errors.push(FieldError::new("action", "resolve, retry, cancel or status_query"));
            return None;
        }
    };
    if to.is_some() && !matches!(action, BulkAction::ResolvePaid | BulkAction::ResolveFailed) {
        errors.push(FieldError::new("to", "only for action resolve"));
        return None;
    }
    Some(action)
}

#[utoipa::path(post, path = "/v1/operator/payouts/bulk", tag = "operator", operation_id = "operator_bulk", summary = "A bulk action behind a confirmation token",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{action, to?, filter, reason, confirmation_token?}"),
    responses((status = 200, description = "without a token: the count and a confirmation token; with it: the results", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.act"])),
)]
pub(crate) async fn bulk(
    State(state): State<AppState>,
    Extension(config): Extension<Arc<OperatorApi>>,
    auth: Authenticated,
    body: Bytes,
) -> Answer {
    auth.require(SCOPE_OPERATOR_ACT)?;
    let b: BulkBody = parse_body(&body)?;
    let mut errors = Vec::new();
    let action = bulk_action(b.action.as_deref(), b.to.as_deref(), &mut errors);
    let states = match &b.filter.state {
        None => None,
        Some(StateList::One(s)) => Some(s.clone()),
        Some(StateList::Many(v)) => Some(v.join(",")),
    };
    let q = ListQuery {
        state: states,
        account: b.filter.account.clone(),
        client: b.filter.client.clone(),
        external_id: b.filter.external_id.clone(),
        created_from: b.filter.created_from.clone(),
        created_to: b.filter.created_to.clone(),
        batch: b.filter.batch.clone(),
        ..Default::default()
    };
    let filter = filter_of(&q, &mut errors);
    for e in &mut errors {
        if e.field != "action" && e.field != "to" {
            e.field = format!("filter.{}", e.field);
        }
    }
    let reason = Reason::parse(b.reason.as_deref().unwrap_or_default())
        .map_err(|why| errors.push(FieldError::new("reason", why)))
        .ok();
    let (Some(action), Some(reason), true) = (action, reason, errors.is_empty()) else {
        return Err(OperatorError::Api(ApiError::Invalid(errors)));
    };
    let request = BulkRequest { action, filter };
    let Some(token) = b.confirmation_token.as_deref().filter(|t| !t.trim().is_empty()) else {
        let preview = operator_bulk::preview(
            &state.pool,
            &request,
            auth.0.token_id,
            config.bulk_cap,
            config.confirmation_ttl,
        )
        .await?;
        let (token, expires_at) = match &preview.confirmation {
            Some(c) => (Some(c.token.expose().to_owned()), Some(c.expires_at)),
            None => (None, None),
        };
        return Ok(Json(json!({
            "action": action.as_str(),
            "count": preview.count,
            "confirmation_token": token,
            "expires_at": expires_at,
            "cap": config.bulk_cap,
            "done": false,
        }))
        .into_response());
    };
    let ids = operator_bulk::confirm(&state.pool, &request, auth.0.token_id, token).await?;
    let actor = actor(&state, &auth).await?;
    let outcome =
        operator_bulk::act(&state.pool, &request, &ids, &interval_of(&state.connectors), &actor, &reason)
            .await?;
    Ok(Json(json!({
        "action": action.as_str(),
        "count": ids.len(),
        "done": true,
        "results": outcome.done,
        "refused": outcome.refused,
    }))
    .into_response())
}

// ---- pauses ---------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/operator/pauses", tag = "operator", operation_id = "operator_pauses", summary = "Paused accounts",
    responses((status = 200, description = "paused accounts", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["operator.read"])),
)]
pub(crate) async fn pauses(State(state): State<AppState>, auth: Authenticated) -> Answer {
    auth.require(SCOPE_OPERATOR_READ)?;
    let pauses = account_pauses::list(&state.pool).await?;
    Ok(Json(json!({ "pauses": pauses })).into_response())
}

fn known_account(state: &AppState, account: &str) -> Result<(), OperatorError> {
    if account == ALL_ACCOUNTS || state.connectors.get(account).is_some() {
        Ok(())
    } else {
        let names = state.connectors.names().join(", ");
        Err(invalid("account", format!("unknown account {account:?}; configured: {names}, or * for all")))
    }
}

#[utoipa::path(post, path = "/v1/operator/accounts/{account}/pause", tag = "operator", operation_id = "operator_pause", summary = "Pause an account (or * for all)",
    params(("account" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 201, description = "the pause", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.admin"])),
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(account): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ADMIN, &body).await?;
    known_account(&state, &account)?;
    let pause = account_pauses::pause(&state.pool, &account, &actor, &reason).await?;
    Ok((StatusCode::CREATED, Json(json!({ "pause": pause }))).into_response())
}

#[utoipa::path(post, path = "/v1/operator/accounts/{account}/resume", tag = "operator", operation_id = "operator_resume", summary = "Resume an account",
    params(("account" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "resumed; waiting payouts woken", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.admin"])),
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(account): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ADMIN, &body).await?;
    let woken = account_pauses::resume(&state.pool, &account, &actor, &reason).await?;
    Ok(Json(json!({ "account": account, "resumed": true, "payouts_woken": woken })).into_response())
}

// ---- limits ---------------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/operator/clients/{client}/limits", tag = "operator", operation_id = "operator_get_limits", summary = "A client's limits",
    params(("client" = String, Path)),
    responses((status = 200, description = "the client's limits", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["operator.read"])),
)]
pub(crate) async fn get_limits(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(client): Path<String>,
) -> Answer {
    auth.require(SCOPE_OPERATOR_READ)?;
    let limits = client_limits::get_recorded(&state.pool, &client).await?;
    Ok(Json(json!({ "client_id": client, "limits": limits })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    currencies: BTreeMap<String, CurrencyLimitsBody>,
    allowed_destination_codes: Option<Vec<String>>,
    allowed_accounts: Option<Vec<String>>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrencyLimitsBody {
    max_amount_per_payout: Option<String>,
    max_total_per_day: Option<String>,
}

fn limit_amount(
    field: String,
    text: Option<&str>,
    currency: Currency,
    errors: &mut Vec<FieldError>,
) -> Option<Decimal> {
    let text = text?;
    let ok = Decimal::from_str_exact(text.trim())
        .ok()
        .filter(|d| !d.is_sign_negative())
        .filter(|d| d.normalize().scale() <= currency.minor_units());
    if ok.is_none() {
        errors.push(FieldError::new(
            field,
            format!(
                "a decimal string, 0 or more, with at most {} decimals for {}",
                currency.minor_units(),
                currency.code()
            ),
        ));
    }
    ok
}

fn allow_list(field: &str, list: Option<Vec<String>>, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let list = list?;
    if list.len() > MAX_ALLOW_LIST {
        errors.push(FieldError::new(field, format!("at most {MAX_ALLOW_LIST} entries")));
    }
    if list.iter().any(|e| e.trim().is_empty() || e.chars().count() > MAX_ALLOW_ENTRY) {
        errors.push(FieldError::new(field, format!("entries must be 1 to {MAX_ALLOW_ENTRY} characters")));
    }
    Some(list)
}

#[utoipa::path(put, path = "/v1/operator/clients/{client}/limits", tag = "operator", operation_id = "operator_put_limits", summary = "Replace a client's limits",
    params(("client" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{currencies, allowed_destination_codes, allowed_accounts, reason}"),
    responses((status = 200, description = "the limits now", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.admin"])),
)]
pub(crate) async fn put_limits(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(client): Path<String>,
    body: Bytes,
) -> Answer {
    auth.require(SCOPE_OPERATOR_ADMIN)?;
    let b: LimitsBody = parse_body(&body)?;
    let mut errors = Vec::new();
    let mut currencies = BTreeMap::new();
    for (code, l) in &b.currencies {
        let Ok(currency) = Currency::parse(code) else {
            errors.push(FieldError::new(format!("currencies.{code}"), "an ISO 4217 currency payoutd knows"));
            continue;
        };
        let limits = CurrencyLimits {
            max_amount_per_payout: limit_amount(
                format!("currencies.{code}.max_amount_per_payout"),
                l.max_amount_per_payout.as_deref(),
                currency,
                &mut errors,
            ),
            max_total_per_day: limit_amount(
                format!("currencies.{code}.max_total_per_day"),
                l.max_total_per_day.as_deref(),
                currency,
                &mut errors,
            ),
        };
        currencies.insert(currency.code().to_owned(), limits);
    }
    let limits = ClientLimits {
        client_id: client.clone(),
        currencies,
        allowed_destination_codes: allow_list(
            "allowed_destination_codes",
            b.allowed_destination_codes,
            &mut errors,
        ),
        allowed_accounts: allow_list("allowed_accounts", b.allowed_accounts, &mut errors),
    };
    let reason = Reason::parse(b.reason.as_deref().unwrap_or_default())
        .map_err(|why| errors.push(FieldError::new("reason", why)))
        .ok();
    let (Some(reason), true) = (reason, errors.is_empty()) else {
        return Err(OperatorError::Api(ApiError::Invalid(errors)));
    };
    let actor = actor(&state, &auth).await?;
    client_limits::set(&state.pool, &limits, &actor, &reason).await?;
    let limits = client_limits::get_recorded(&state.pool, &client).await?;
    Ok(Json(json!({ "client_id": client, "limits": limits })).into_response())
}

#[utoipa::path(delete, path = "/v1/operator/clients/{client}/limits", tag = "operator", operation_id = "operator_delete_limits", summary = "Clear a client's limits",
    params(("client" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "no limits", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.admin"])),
)]
pub(crate) async fn delete_limits(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(client): Path<String>,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ADMIN, &body).await?;
    if !client_limits::clear(&state.pool, &client, &actor, &reason).await? {
        return Err(OperatorError::Refused(format!("client {client} has no limits")));
    }
    Ok(Json(json!({ "client_id": client, "limits": null })).into_response())
}

// ---- retention and the log ------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/operator/retention/run", tag = "operator", operation_id = "operator_run_retention", summary = "Run one retention pass",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason}"),
    responses((status = 200, description = "the pass's report", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "refused: the state forbids it (`{\"error\":\"refused\",\"reason\":...}`)"), (status = 422, description = "validation failed, naming each field")),
    security(("bearer" = ["operator.admin"])),
)]
pub(crate) async fn run_retention(
    State(state): State<AppState>,
    Extension(config): Extension<Arc<OperatorApi>>,
    auth: Authenticated,
    body: Bytes,
) -> Answer {
    let (reason, actor) = reasoned(&state, &auth, SCOPE_OPERATOR_ADMIN, &body).await?;
    match retention::run(&state.pool, &config.retention, &actor, reason.as_str(), None).await? {
        RetentionRun::Done(report) => Ok(Json(json!({ "report": report })).into_response()),
        RetentionRun::Skipped(why) => Err(OperatorError::Refused(why)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    action: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/operator/events", tag = "operator", operation_id = "operator_events", summary = "The operator log",
    params(("action" = Option<String>, Query), ("before" = Option<String>, Query), ("limit" = Option<String>, Query)),
    responses((status = 200, description = "the operator log", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["operator.read"])),
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    auth: Authenticated,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Answer {
    auth.require(SCOPE_OPERATOR_READ)?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let events = operator_events::list(&state.pool, q.action.as_deref(), q.before, limit).await?;
    Ok(Json(json!({ "events": events })).into_response())
}
