//! Mass-payout batches and reconciliation reports over HTTP.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/batches?reference=&account=&force=` | `batches.create` | upload a CSV or JSON-lines file (Content-Type `text/csv` or `application/x-ndjson`) |
//! | `GET /v1/batches` | `batches.read` | the client's batches, newest first |
//! | `GET /v1/batches/{id}` | `batches.read` (own) or `batches.approve` | counts and sums per state and currency |
//! | `GET /v1/batches/{id}/report` | `batches.read` (own) | CSV, one line per row |
//! | `POST /v1/batches/{id}/approve` | `batches.approve` | release a batch waiting for approval (another client only) |
//! | `POST /v1/batches/{id}/cancel` | `batches.create` (own) | cancel its payouts that have no intent yet |
//! | `GET /v1/reconciliations[?account=]` | `reconciliations.read` | stored reconciliation runs |
//! | `GET /v1/reconciliations/{id}[?format=csv]` | `reconciliations.read` | one run: summary and items (JSON) or the items as CSV |
//!
//! An upload is answered `201` with the batch, `200` + `Idempotent-Replayed: true` for the same
//! reference and content again, `409` naming the existing batch for the same reference with
//! other content, `422` with EVERY bad row (`row`, `column`, `reason`) and nothing stored, `413`
//! over the byte limit (stated in the answer). Without a reference the content hash is the
//! reference, so sending the same file twice is a replay, never a second batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use payoutd_core::batch_file::{self, BatchFormat, BatchLimits, BatchRejection, ParseOptions, RowError};
use payoutd_core::{FieldError, NewPayout};
use payoutd_store::api_tokens::Caller;
use payoutd_store::batches::{self, Approval, BatchPayout, Cancellation, CreateBatch, NewBatch};
use payoutd_store::client_limits::{self, Limit};
use payoutd_store::reconciliation;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::{AppState, HttpLimits, request};

pub const SCOPE_BATCHES_CREATE: &str = "batches.create";
pub const SCOPE_BATCHES_READ: &str = "batches.read";
/// Releases batches that wait for approval; holders may read any client's batch summary.
pub const SCOPE_BATCHES_APPROVE: &str = "batches.approve";
/// Reconciliation reports cover every client of an account: an operator's scope.
pub const SCOPE_RECONCILIATIONS_READ: &str = "reconciliations.read";

const MAX_REFERENCE: usize = 128;

/// The `[batches]` settings the API applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    pub limits: BatchLimits,
    /// Every batch waits for another client's approval before its payouts are scheduled.
    pub require_approval: bool,
    /// Compare each account's total with its balance (where the provider has a balance call)
    /// before storing; an uncovered batch is refused unless `force=true`.
    pub preflight_balance: bool,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { limits: BatchLimits::default(), require_approval: false, preflight_balance: true }
    }
}

/// The batch and reconciliation routes (merged by [`crate::router_with_extra`]). The upload
/// route reads its body itself, bounded by `[batches] max_bytes`, so that the refusal can state
/// the limit.
pub fn routes(limits: &HttpLimits) -> Router<AppState> {
    let settings = Arc::new(limits.batches.clone());
    Router::new()
        .route("/v1/batches", post(upload).get(list).layer(DefaultBodyLimit::disable()))
        .route("/v1/batches/{id}", get(show))
        .route("/v1/batches/{id}/report", get(report))
        .route("/v1/batches/{id}/approve", post(approve))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .route("/v1/reconciliations", get(list_reconciliations))
        .route("/v1/reconciliations/{id}", get(show_reconciliation))
        .layer(axum::Extension(settings))
}

type Settings = axum::Extension<Arc<BatchSettings>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UploadQuery {
    pub reference: Option<String>,
    pub account: Option<String>,
    pub force: Option<bool>,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// What an upload came to: the answer's status and JSON body. The JSON handler sends it as it
/// is; the operator console renders the same body (its per-row errors) as a page.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    pub status: StatusCode,
    pub body: Value,
    /// The same reference and content were uploaded before: this is that batch.
    pub replayed: bool,
}

impl UploadOutcome {
    fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body, replayed: false }
    }
}

impl IntoResponse for UploadOutcome {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, self.body);
        if self.replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

fn rejected(
    status: StatusCode,
    error: &str,
    message: String,
    errors: &[RowError],
    rows: usize,
    truncated: bool,
) -> UploadOutcome {
    UploadOutcome::new(
        status,
        json!({
            "error": error,
            "message": message,
            "rows": rows,
            "errors": errors,
            "truncated": truncated,
            "stored": false,
        }),
    )
}

/// The field a client limit is about, named as the file names it.
fn limit_field(limit: Limit) -> &'static str {
    match limit {
        Limit::MaxAmountPerPayout | Limit::MaxTotalPerDay => "amount",
        Limit::DestinationAllowList => "destination.destination",
        Limit::AccountAllowList => "destination.client",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[utoipa::path(post, path = "/v1/batches", tag = "batches", operation_id = "batches_upload", summary = "Upload a batch file",
    params(("reference" = Option<String>, Query), ("account" = Option<String>, Query), ("force" = Option<String>, Query)),
    request_body(content = String, content_type = "text/csv", description = "a CSV file (text/csv) or JSON lines (application/x-ndjson)"),
    responses((status = 200, description = "the same reference and content again: that batch (Idempotent-Replayed: true)", body = serde_json::Value), (status = 201, description = "stored", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 409, description = "the reference names a batch with other content"), (status = 413, description = "over [batches] max_bytes"), (status = 422, description = "every bad row (row, column, reason); nothing stored")),
    security(("bearer" = ["batches.create"])),
)]
pub async fn upload(
    State(state): State<AppState>,
    axum::Extension(settings): Settings,
    auth: Authenticated,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_BATCHES_CREATE)?.clone();
    let max_bytes = settings.limits.max_bytes;
    let Ok(body) = axum::body::to_bytes(body, max_bytes).await else {
        return Ok(too_large(max_bytes).into_response());
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Ok(upload_file(&state, &settings, &caller, &query, content_type, body).await?.into_response())
}

/// The refusal of a file over `[batches] max_bytes`.
pub fn too_large(max_bytes: usize) -> UploadOutcome {
    rejected(
        StatusCode::PAYLOAD_TOO_LARGE,
        "batch_too_large",
        format!("the file is larger than {max_bytes} bytes ([batches] max_bytes); split it"),
        &[],
        0,
        false,
    )
}

/// Validates and stores one uploaded file for `caller` (who must hold `batches.create`): what
/// `POST /v1/batches` and the console's upload form both do. Counted by result.
pub async fn upload_file(
    state: &AppState,
    settings: &BatchSettings,
    caller: &Caller,
    query: &UploadQuery,
    content_type: Option<&str>,
    body: axum::body::Bytes,
) -> Result<UploadOutcome, ApiError> {
    let outcome = store_file(state, settings, caller, query, content_type, body).await;
    crate::telemetry::count_batch_upload(match &outcome {
        Ok(o) if o.status == StatusCode::CREATED => "accepted",
        Ok(o) if o.replayed => "replayed",
        Ok(o) if o.status == StatusCode::CONFLICT => "conflict",
        Ok(o) if o.status == StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        Ok(o) if o.status == StatusCode::UNPROCESSABLE_ENTITY => "rejected",
        Ok(_) => "other",
        Err(ApiError::Invalid(_)) => "rejected",
        Err(_) => "error",
    });
    outcome
}

async fn store_file(
    state: &AppState,
    settings: &BatchSettings,
    caller: &Caller,
    query: &UploadQuery,
    content_type: Option<&str>,
    body: axum::body::Bytes,
) -> Result<UploadOutcome, ApiError> {
    let max_bytes = settings.limits.max_bytes;
    if body.len() > max_bytes {
        return Ok(too_large(max_bytes));
    }
    if let Some(r) = &query.reference
        && (r.is_empty() || r.chars().count() > MAX_REFERENCE || r.chars().any(char::is_control))
    {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "reference",
            format!("must be 1 to {MAX_REFERENCE} printable characters"),
        )]));
    }
    let names: Vec<String> = state.connectors.names().into_iter().map(str::to_owned).collect();
    if let Some(a) = &query.account
        && !names.contains(a)
    {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "account",
            format!("unknown provider account {a:?}; configured: {}", names.join(", ")),
        )]));
    }
    let format = BatchFormat::detect(content_type, &body);
    let limits = settings.limits;
    let default_account = query.account.clone();
    // The client's limits (operator controls), checked row by row with the same pure function
    // single payouts go through; rows count against the daily maximum in file order.
    let client_limits = client_limits::get(&state.pool, &caller.client_id).await?;
    let mut spent: HashMap<String, Decimal> = HashMap::new();
    let mut daily_caps: Vec<(String, Decimal)> = Vec::new();
    if let Some(l) = &client_limits {
        for (currency, c) in &l.currencies {
            if let Some(max) = c.max_total_per_day {
                spent.insert(
                    currency.clone(),
                    client_limits::spent_today(&state.pool, &caller.client_id, currency).await?,
                );
                daily_caps.push((currency.clone(), max));
            }
        }
    }
    // Parsing 100,000 rows takes a moment of CPU: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let accounts: Vec<&str> = names.iter().map(String::as_str).collect();
        let spent = Mutex::new(spent);
        let check = |p: &NewPayout| -> Vec<FieldError> {
            let Some(l) = &client_limits else { return Vec::new() };
            let currency = p.money.currency().code();
            let mut spent = spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let so_far = spent.get(currency).copied().unwrap_or(Decimal::ZERO);
            match client_limits::check_payout(l, &p.money, &p.destination, so_far) {
                Ok(()) => {
                    *spent.entry(currency.to_owned()).or_default() += p.money.amount();
                    Vec::new()
                }
                Err(v) => vec![FieldError::new(limit_field(v.limit), format!("client limit: {}", v.detail))],
            }
        };
        let options = ParseOptions {
            accounts: &accounts,
            default_account: default_account.as_deref(),
            limits,
            row_check: Some(&check),
        };
        batch_file::parse(&body, format, &options)
    })
    .await
    .map_err(|e| ApiError::BadRequest(format!("the file could not be parsed: {e}")))?;
    let rows = match parsed {
        Ok(rows) => rows,
        Err(BatchRejection::Invalid { errors, rows, truncated }) => {
            let message = format!(
                "{} problem(s) in {rows} row(s); nothing was stored. Fix every listed row and upload the file again.",
                errors.len()
            );
            return Ok(rejected(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_rejected",
                message,
                &errors,
                rows,
                truncated,
            ));
        }
        Err(e @ BatchRejection::TooLarge { .. }) => {
            return Ok(rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                e.to_string(),
                &[],
                0,
                false,
            ));
        }
        Err(e @ BatchRejection::TooManyRows { rows, .. }) => {
            return Ok(rejected(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_too_many_rows",
                e.to_string(),
                &[],
                rows,
                false,
            ));
        }
        Err(e @ BatchRejection::Empty) => {
            return Ok(rejected(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_empty",
                e.to_string(),
                &[],
                0,
                false,
            ));
        }
    };
    let mut to_store = Vec::with_capacity(rows.len());
    let mut content = Sha256::new();
    for r in &rows {
        let connector = state.connectors.get(&r.payout.provider).ok_or(ApiError::NotFound)?;
        let hash = request::canonical_hash(&r.payout);
        content.update(&hash);
        to_store.push(BatchPayout {
            row: r.row,
            payout: &r.payout,
            request_hash: hash,
            account: connector.account(),
        });
    }
    let content_hash = content.finalize().to_vec();
    let reference = query.reference.clone().unwrap_or_else(|| format!("sha256:{}", hex(&content_hash)));
    if let Some(existing) = batches::by_reference(&state.pool, &caller.client_id, &reference).await? {
        return answer_existing(state, existing, &content_hash).await;
    }
    let preflight = if settings.preflight_balance { preflight(state, &rows).await } else { Vec::new() };
    if !query.force.unwrap_or(false) && preflight.iter().any(|p| p["covered"] == json!(false)) {
        return Ok(UploadOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": "insufficient_balance",
                "message": "the batch's total exceeds the provider balance of an account; nothing was stored. \
                            Top the account up, or send the same request with force=true to store it anyway \
                            (payouts wait in the check step until the balance covers them).",
                "preflight": preflight,
                "stored": false,
            }),
        ));
    }
    let created = batches::create(
        &state.pool,
        &NewBatch {
            client_id: &caller.client_id,
            reference: &reference,
            content_hash: &content_hash,
            format: format.as_str(),
            token_id: Some(caller.token_id),
            awaiting_approval: settings.require_approval,
            rows: &to_store,
            daily_caps: &daily_caps,
        },
    )
    .await?;
    match created {
        CreateBatch::Created(batch) => {
            crate::telemetry::count_batch_rows(batch.rows);
            let totals = batches::totals(&state.pool, batch.id).await?;
            let mut body = batches::summary_json(&batch, &totals);
            body["preflight"] = json!(preflight);
            Ok(UploadOutcome::new(StatusCode::CREATED, body))
        }
        CreateBatch::Replayed(batch) => replay(state, &batch).await,
        CreateBatch::ReferenceConflict { existing_id } => Ok(conflict(existing_id)),
        CreateBatch::OverDailyLimit { currency, max, spent_today, batch_total } => Ok(UploadOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": "client_limit",
                "limit": Limit::MaxTotalPerDay.as_str(),
                "message": format!(
                    "{spent_today} {currency} sent today (UTC) + this batch's {batch_total} {currency} is more than \
                     the client's daily maximum, {max} {currency}; nothing was stored"
                ),
                "stored": false,
            }),
        )),
        CreateBatch::ExternalIdsTaken(taken) => {
            let errors: Vec<RowError> = taken
                .iter()
                .map(|t| {
                    RowError::new(
                        t.row,
                        "external_id",
                        format!("{:?} is already used by payout {}", t.external_id, t.existing_payout_id),
                    )
                })
                .collect();
            let message = format!(
                "{} row(s) use an external_id this client already has; nothing was stored",
                errors.len()
            );
            Ok(rejected(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_rejected",
                message,
                &errors,
                rows.len(),
                false,
            ))
        }
    }
}

async fn answer_existing(
    state: &AppState,
    existing: batches::Batch,
    content_hash: &[u8],
) -> Result<UploadOutcome, ApiError> {
    if existing.content_hash == content_hash {
        replay(state, &existing).await
    } else {
        Ok(conflict(existing.id))
    }
}

async fn replay(state: &AppState, batch: &batches::Batch) -> Result<UploadOutcome, ApiError> {
    let totals = batches::totals(&state.pool, batch.id).await?;
    Ok(UploadOutcome { status: StatusCode::OK, body: batches::summary_json(batch, &totals), replayed: true })
}

fn conflict(existing_id: Uuid) -> UploadOutcome {
    UploadOutcome::new(
        StatusCode::CONFLICT,
        json!({
            "error": "batch_reference_conflict",
            "message": "this batch reference was used for a batch with different content",
            "existing_batch_id": existing_id,
        }),
    )
}

/// Totals per account against each account's balance, where its provider has a balance call
/// and the account's rows are all in one currency (a balance has no currency of its own).
async fn preflight(state: &AppState, rows: &[batch_file::BatchRow]) -> Vec<Value> {
    let mut totals: BTreeMap<&str, BTreeMap<&str, Decimal>> = BTreeMap::new();
    for r in rows {
        *totals
            .entry(r.payout.provider.as_str())
            .or_default()
            .entry(r.payout.money.currency().code())
            .or_default() += r.payout.money.amount();
    }
    let mut out = Vec::new();
    for (account, currencies) in totals {
        let Some(connector) = state.connectors.get(account) else { continue };
        let total: Vec<Value> =
            currencies.iter().map(|(c, a)| json!({ "currency": c, "amount": a.to_string() })).collect();
        let Some(balance) = connector.balance() else {
            out.push(json!({ "account": account, "totals": total, "checked": false,
                             "reason": "the provider has no balance call" }));
            continue;
        };
        if currencies.len() != 1 {
            out.push(json!({ "account": account, "totals": total, "checked": false,
                             "reason": "several currencies for one account; a balance has no currency" }));
            continue;
        }
        let sum: Decimal = currencies.values().copied().sum();
        match tokio::time::timeout(connector.request_timeout() * 2, balance).await {
            Ok(Ok(balance)) => out.push(json!({
                "account": account, "totals": total, "checked": true, "balance": balance.to_string(),
                "covered": balance >= sum,
            })),
            Ok(Err(e)) => out.push(json!({ "account": account, "totals": total, "checked": false,
                                           "reason": format!("balance call failed: {e}") })),
            Err(_) => out.push(json!({ "account": account, "totals": total, "checked": false,
                                       "reason": "balance call timed out" })),
        }
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub limit: Option<i64>,
    pub account: Option<String>,
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/v1/batches", tag = "batches", operation_id = "batches_list", summary = "List batches",
    params(("limit" = Option<String>, Query)),
    responses((status = 200, description = "the client's batches, newest first", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["batches.read"])),
)]
pub async fn list(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_BATCHES_READ)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = batches::list(&state.pool, &caller.client_id, limit).await?;
    Ok(json_response(StatusCode::OK, json!({ "batches": list })))
}

/// The batch if the caller may read it: its own (`batches.read`), or any (`batches.approve`).
async fn readable(state: &AppState, auth: &Authenticated, id: &str) -> Result<batches::Batch, ApiError> {
    readable_by(state, &auth.0, id).await
}

/// The batch `id` if `caller` may read it: its own (`batches.read`), or any
/// (`batches.approve`). Another client's batch is indistinguishable from none.
pub async fn readable_by(state: &AppState, caller: &Caller, id: &str) -> Result<batches::Batch, ApiError> {
    let approver = caller.has_scope(SCOPE_BATCHES_APPROVE);
    if !approver && !caller.has_scope(SCOPE_BATCHES_READ) {
        return Err(ApiError::Forbidden(SCOPE_BATCHES_READ));
    }
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let batch = batches::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    if batch.client_id != caller.client_id && !approver {
        return Err(ApiError::NotFound);
    }
    Ok(batch)
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", operation_id = "batches_show", summary = "One batch",
    params(("id" = String, Path)),
    responses((status = 200, description = "counts and sums per state and currency", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["batches.read"])),
)]
pub async fn show(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let batch = readable(&state, &auth, &id).await?;
    let totals = batches::totals(&state.pool, batch.id).await?;
    Ok(json_response(StatusCode::OK, batches::summary_json(&batch, &totals)))
}

/// The batch's report as CSV, one line per row in file order.
pub async fn report_csv(state: &AppState, id: Uuid) -> Result<String, ApiError> {
    let lines = batches::report(&state.pool, id).await?;
    Ok(batch_file::write_csv(
        REPORT_HEADER,
        lines.into_iter().map(|l| {
            let fin =
                l.state.parse::<payoutd_core::PayoutState>().is_ok_and(payoutd_core::PayoutState::is_final);
            vec![
                l.row.to_string(),
                l.external_id,
                l.state,
                fin.to_string(),
                l.account,
                l.amount.to_string(),
                l.currency,
                l.provider_reference.unwrap_or_default(),
                l.error.unwrap_or_default(),
            ]
        }),
    ))
}

/// The report's columns.
pub const REPORT_HEADER: &[&str] =
    &["row", "external_id", "state", "final", "account", "amount", "currency", "provider_reference", "error"];

#[utoipa::path(get, path = "/v1/batches/{id}/report", tag = "batches", operation_id = "batches_report", summary = "A batch's report (CSV)",
    params(("id" = String, Path)),
    responses((status = 200, description = "one CSV line per row", body = String, content_type = "text/csv"), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["batches.read"])),
)]
pub async fn report(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_BATCHES_READ)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let batch = batches::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    if batch.client_id != caller.client_id {
        return Err(ApiError::NotFound);
    }
    let csv = report_csv(&state, id).await?;
    let disposition = format!("attachment; filename=\"batch-{id}-report.csv\"");
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[utoipa::path(post, path = "/v1/batches/{id}/approve", tag = "batches", operation_id = "batches_approve", summary = "Approve a batch (another client)",
    params(("id" = String, Path)),
    responses((status = 200, description = "released", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "missing scope, or the uploader's own client"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "not awaiting approval")),
    security(("bearer" = ["batches.approve"])),
)]
pub async fn approve(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_BATCHES_APPROVE)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    match batches::approve(&state.pool, id, &caller.client_id, Some(caller.token_id)).await? {
        Approval::Approved(batch) => {
            let totals = batches::totals(&state.pool, batch.id).await?;
            Ok(json_response(StatusCode::OK, batches::summary_json(&batch, &totals)))
        }
        Approval::SameClient => Ok(json_response(
            StatusCode::FORBIDDEN,
            json!({
                "error": "approval_by_maker",
                "message": "a batch must be approved by another client than the one that uploaded it \
                            (another token of the same client is the same identity)",
            }),
        )),
        Approval::NotAwaiting(batch) => Ok(json_response(
            StatusCode::CONFLICT,
            json!({ "error": "not_awaiting_approval", "state": batch.state.as_str(), "batch_id": batch.id }),
        )),
        Approval::NotFound => Err(ApiError::NotFound),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CancelBody {
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", operation_id = "batches_cancel", summary = "Cancel a batch",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{reason?}"),
    responses((status = 200, description = "cancelled what had no intent; the rest continues", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)"), (status = 409, description = "every payout is final")),
    security(("bearer" = ["batches.create"])),
)]
pub async fn cancel(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = auth.require(SCOPE_BATCHES_CREATE)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let batch = batches::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    if batch.client_id != caller.client_id {
        return Err(ApiError::NotFound);
    }
    let reason: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?
    };
    let reason = reason.reason.unwrap_or_default().chars().take(500).collect::<String>();
    match batches::cancel(&state.pool, id, &caller.client_id, &reason).await? {
        Cancellation::Done { batch, cancelled, continuing } => {
            let totals = batches::totals(&state.pool, batch.id).await?;
            let mut body = batches::summary_json(&batch, &totals);
            body["cancelled_now"] = json!(cancelled);
            body["continuing"] = json!(continuing);
            Ok(json_response(StatusCode::OK, body))
        }
        Cancellation::AlreadyCompleted(batch) => Ok(json_response(
            StatusCode::CONFLICT,
            json!({ "error": "batch_completed", "message": "every payout of the batch is final", "batch_id": batch.id }),
        )),
        Cancellation::NotFound => Err(ApiError::NotFound),
    }
}

#[utoipa::path(get, path = "/v1/reconciliations", tag = "batches", operation_id = "batches_list_reconciliations", summary = "List reconciliation runs",
    params(("account" = Option<String>, Query), ("limit" = Option<String>, Query)),
    responses((status = 200, description = "stored reconciliation runs", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope")),
    security(("bearer" = ["reconciliations.read"])),
)]
pub async fn list_reconciliations(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    auth.require(SCOPE_RECONCILIATIONS_READ)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let list = reconciliation::list(&state.pool, q.account.as_deref(), limit).await?;
    Ok(json_response(StatusCode::OK, json!({ "reconciliations": list })))
}

#[utoipa::path(get, path = "/v1/reconciliations/{id}", tag = "batches", operation_id = "batches_show_reconciliation", summary = "One reconciliation run",
    params(("id" = String, Path), ("format" = Option<String>, Query)),
    responses((status = 200, description = "one run: summary and items (or CSV with format=csv)", body = serde_json::Value), (status = 401, description = "no, unknown, revoked or expired bearer token"), (status = 403, description = "the token lacks the scope"), (status = 404, description = "no such resource (or another client's)")),
    security(("bearer" = ["reconciliations.read"])),
)]
pub async fn show_reconciliation(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth.require(SCOPE_RECONCILIATIONS_READ)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let run = reconciliation::get(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    let items = reconciliation::items(&state.pool, id).await?;
    let wants_csv = q.format.as_deref() == Some("csv")
        || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let csv =
            batch_file::write_csv(reconciliation::CSV_HEADER, items.iter().map(reconciliation::csv_cells));
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response());
    }
    Ok(json_response(StatusCode::OK, json!({ "reconciliation": run, "items": items })))
}
