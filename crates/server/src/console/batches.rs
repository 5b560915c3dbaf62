//! Batches in the console: upload a file (drag and drop, or paste), see every rejected row with
//! what is wrong with it, watch a batch's progress per state, approve (a second person, another
//! client), cancel what has not been sent, download the report. Uploads go through
//! [`crate::batches_api::upload_file`], the function behind `POST /v1/batches`; approval, cancel
//! and the report through the same store functions as the API, with the same scopes.
//!
//! An uploaded file is never shown back: a rejected row is named by its number, its external
//! id, the column and the problem, so no account number reaches the page.

use std::fmt::Write as _;

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use payoutd_store::batches::{self as store, Approval, Batch, BatchState, Cancellation};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::actions::ActForm;
use super::html::{self, Nav, PageOptions, esc, jv};
use super::session::Signed;
use super::{ConsoleError, html_response};
use crate::AppState;
use crate::batches_api::{
    self, SCOPE_BATCHES_APPROVE, SCOPE_BATCHES_CREATE, SCOPE_BATCHES_READ, UploadQuery,
};

/// Batches listed on the page.
const LIST_LIMIT: i64 = 50;

fn batch_rows(batches: &[Batch]) -> String {
    let mut out = String::from(
        "<thead><tr><th>created</th><th>reference</th><th>client</th><th>state</th><th class=\"num\">rows</th></tr></thead><tbody>",
    );
    for b in batches {
        let _ = write!(
            out,
            r#"<tr data-batch="{id}"><td>{}</td><td><a href="/console/batches/{id}">{}</a></td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
            esc(&html::time(&b.created_at)),
            esc(&b.reference),
            esc(&b.client_id),
            esc(b.state.as_str()),
            b.rows,
            id = esc(&b.id.to_string()),
        );
    }
    out.push_str("</tbody>");
    out
}

fn upload_form(state: &AppState, signed: &Signed) -> String {
    let mut accounts = String::from(r#"<option value="">as each row says</option>"#);
    for name in state.connectors.names() {
        let _ = write!(accounts, r#"<option value="{0}">{0}</option>"#, esc(name));
    }
    format!(
        r#"<h2>Upload a batch</h2>
<form method="post" action="/console/batches" id="upload-form" class="upload">
{csrf}
<div class="dropzone" id="dropzone" data-target="csv">Drop a CSV or JSON-lines file here, or <label>choose one <input type="file" id="file" accept=".csv,.jsonl,.ndjson,text/csv"></label>.
<span id="file-status" class="meta"></span></div>
<label>File content (or paste it here)<textarea name="csv" id="csv" rows="8" spellcheck="false" required placeholder="external_id,account,amount,currency,phone,client,destination,receiver_name"></textarea></label>
<label>Reference (optional; the same reference and content again is the same batch) <input name="reference" id="reference" maxlength="128"></label>
<label>Default account <select name="account" id="account">{accounts}</select></label>
<label class="inline"><input type="checkbox" name="force" value="true"> store even if a provider balance does not cover it</label>
<button type="submit" id="upload">Upload</button>
</form>"#,
        csrf = html::csrf_field(signed),
    )
}

async fn list_page(
    state: &AppState,
    signed: &Signed,
    status: StatusCode,
    problem: Option<String>,
) -> Result<Response, ConsoleError> {
    let mut body = problem.unwrap_or_default();
    if signed.has(SCOPE_BATCHES_CREATE) {
        body.push_str(&upload_form(state, signed));
    }
    if signed.has(SCOPE_BATCHES_APPROVE) {
        let waiting = store::awaiting_approval(&state.pool, LIST_LIMIT).await?;
        body.push_str("<h2>Waiting for approval</h2>");
        if waiting.is_empty() {
            body.push_str("<p>None.</p>");
        } else {
            let _ = write!(body, r#"<table id="awaiting">{}</table>"#, batch_rows(&waiting));
        }
    }
    if signed.has(SCOPE_BATCHES_READ) {
        let own = store::list(&state.pool, &signed.session.caller.client_id, LIST_LIMIT).await?;
        let _ = write!(body, "<h2>Batches of {}</h2>", esc(&signed.session.caller.client_id));
        if own.is_empty() {
            body.push_str("<p>None yet.</p>");
        } else {
            let _ = write!(body, r#"<table id="batches">{}</table>"#, batch_rows(&own));
        }
    }
    Ok(html_response(
        status,
        html::page("Batches", Some(signed), Nav::Batches, PageOptions::default(), &body),
    ))
}

/// `GET /console/batches`.
pub async fn list(State(state): State<AppState>, signed: Signed) -> Result<Response, ConsoleError> {
    if !signed.can_use_batches() {
        return Err(ConsoleError::Forbidden(SCOPE_BATCHES_READ));
    }
    list_page(&state, &signed, StatusCode::OK, None).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UploadForm {
    csrf: Option<String>,
    csv: String,
    reference: Option<String>,
    account: Option<String>,
    force: Option<String>,
}

/// The external id of data row `row` (1-based; the header is not a row) of a CSV file, read
/// naively (no quoted commas): only to name the row next to its problem.
fn external_id_of(text: &str, row: u64) -> Option<String> {
    if text.trim_start().starts_with('{') {
        return None;
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    let at = header.iter().position(|h| *h == "external_id")?;
    let line = lines.nth(usize::try_from(row.checked_sub(1)?).ok()?)?;
    let cells: Vec<&str> = line.split(',').collect();
    (cells.len() == header.len()).then(|| cells[at].trim().trim_matches('"').to_owned())
}

fn rejection(body: &Value, text: &str) -> String {
    let mut out = html::notice("error", &html::text_of(&body["message"]));
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        out.push_str(r#"<table id="row-errors"><thead><tr><th class="num">row</th><th>external id</th><th>column</th><th>problem</th></tr></thead><tbody>"#);
        for e in &errors {
            let row = e["row"].as_u64().unwrap_or(0);
            let row_text = if row == 0 { "file".to_owned() } else { row.to_string() };
            let ext = if row == 0 { None } else { external_id_of(text, row) };
            let _ = write!(
                out,
                r#"<tr data-row="{row}"><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&row_text),
                esc(ext.as_deref().unwrap_or("")),
                jv(&e["column"]),
                jv(&e["reason"]),
            );
        }
        out.push_str("</tbody></table>");
        if body["truncated"] == Value::Bool(true) {
            out.push_str(&html::notice("info", "Only the first problems are listed."));
        }
    }
    if let Some(pre) = body["preflight"].as_array() {
        for p in pre {
            let _ = write!(
                out,
                "<p class=\"meta\">account {}: balance {}, covered: {}</p>",
                jv(&p["account"]),
                jv(&p["balance"]),
                jv(&p["covered"])
            );
        }
    }
    out
}

/// `POST /console/batches`: validates and stores the file as `POST /v1/batches` does.
pub async fn upload(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<UploadForm>,
) -> Result<Response, ConsoleError> {
    signed.check_post(&headers, form.csrf.as_deref())?;
    signed.require(SCOPE_BATCHES_CREATE)?;
    let nonempty =
        |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let query = UploadQuery {
        reference: nonempty(&form.reference),
        account: nonempty(&form.account),
        force: Some(form.force.as_deref() == Some("true")),
    };
    let outcome = batches_api::upload_file(
        &state,
        &signed.config.batches,
        &signed.session.caller,
        &query,
        None,
        Bytes::from(form.csv.clone()),
    )
    .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(crate::error::ApiError::Invalid(fields)) => {
            let text =
                fields.iter().map(|f| format!("{}: {}", f.field, f.reason)).collect::<Vec<_>>().join("; ");
            return list_page(
                &state,
                &signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(html::notice("error", &text)),
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    };
    if outcome.status.is_success() {
        let id = html::text_of(&outcome.body["id"]);
        let id = Uuid::parse_str(&id)
            .map_err(|_| ConsoleError::Internal("an upload answer without a batch id".into()))?;
        let done = if outcome.replayed { "replayed" } else { "uploaded" };
        return Ok(Redirect::to(&format!("/console/batches/{id}?done={done}")).into_response());
    }
    let problem = rejection(&outcome.body, &form.csv);
    list_page(&state, &signed, outcome.status, Some(problem)).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowParams {
    done: Option<String>,
}

fn done_message(done: &str) -> Option<&'static str> {
    match done {
        "uploaded" => Some("Uploaded: every row was valid and the batch is stored."),
        "replayed" => Some("This file was uploaded before under the same reference: this is that batch."),
        "approved" => Some("Approved: its payouts are scheduled."),
        "cancelled" => Some("Cancelled what had not been sent; the rest continues."),
        _ => None,
    }
}

/// `GET /console/batches/{id}`: the batch's summary and progress; reloads while it runs.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(params): Query<ShowParams>,
) -> Result<Response, ConsoleError> {
    let batch = batches_api::readable_by(&state, &signed.session.caller, &id).await?;
    let totals = store::totals(&state.pool, batch.id).await?;
    let s = store::summary_json(&batch, &totals);
    let own = batch.client_id == signed.session.caller.client_id;
    let mut body = String::new();
    if let Some(m) = params.done.as_deref().and_then(done_message) {
        body.push_str(&html::notice("ok", m));
    }
    let rows = s["rows"].as_i64().unwrap_or(0);
    let done = s["final_payouts"].as_i64().unwrap_or(0);
    let _ = write!(
        body,
        r#"<dl class="facts" id="batch-facts"><dt>reference</dt><dd>{}</dd><dt>client</dt><dd>{}</dd><dt>state</dt><dd id="batch-state">{}</dd><dt>rows</dt><dd>{rows}</dd><dt>final</dt><dd id="batch-final">{done} of {rows}</dd><dt>uploaded</dt><dd>{}</dd>"#,
        jv(&s["reference"]),
        esc(&batch.client_id),
        jv(&s["state"]),
        html::json_time(&s["created_at"]),
    );
    for (label, key) in [
        ("approved by", "approved_by_client"),
        ("approved", "approved_at"),
        ("cancelled", "cancelled_at"),
        ("cancel reason", "cancel_reason"),
        ("completed", "completed_at"),
    ] {
        if !s[key].is_null() {
            let value = if key.ends_with("_at") { html::json_time(&s[key]) } else { jv(&s[key]) };
            let _ = write!(body, "<dt>{label}</dt><dd>{value}</dd>");
        }
    }
    body.push_str("</dl>");
    let _ =
        write!(body, r#"<p><progress id="progress" value="{done}" max="{}"></progress></p>"#, rows.max(1));
    body.push_str(r#"<table id="batch-counts"><thead><tr><th>state</th><th class="num">payouts</th></tr></thead><tbody>"#);
    if let Some(counts) = s["counts"].as_object() {
        for (state_name, n) in counts {
            if n.as_i64().unwrap_or(0) > 0 {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                    html::state_badge(state_name),
                    jv(n)
                );
            }
        }
    }
    body.push_str("</tbody></table>");
    if let Some(currencies) = s["currencies"].as_array() {
        for c in currencies {
            let _ = write!(
                body,
                "<p class=\"meta\">{} payouts, {} {} in all</p>",
                jv(&c["count"]),
                jv(&c["amount"]),
                jv(&c["currency"])
            );
        }
    }
    body.push_str(r#"<p class="actions">"#);
    let bid = esc(&batch.id.to_string());
    if signed.can_read_payouts() {
        let _ = write!(body, r#"<a href="/console/payouts?batch={bid}">Its payouts</a> "#);
    }
    if own && signed.has(SCOPE_BATCHES_READ) {
        let _ = write!(
            body,
            r#"<a class="button" id="report" href="/console/batches/{bid}/report.csv" download>Download the report (CSV)</a> "#
        );
    }
    if batch.state == BatchState::AwaitingApproval && !own && signed.has(SCOPE_BATCHES_APPROVE) {
        let _ = write!(
            body,
            r#"<a class="button" id="approve" href="/console/batches/{bid}/confirm?action=approve">Approve</a> "#
        );
    }
    if batch.state != BatchState::Completed && own && signed.has(SCOPE_BATCHES_CREATE) {
        let _ = write!(
            body,
            r#"<a class="button danger" id="cancel" href="/console/batches/{bid}/confirm?action=cancel">Cancel</a>"#
        );
    }
    body.push_str("</p>");
    let options = PageOptions {
        refresh_secs: (batch.state != BatchState::Completed).then_some(signed.config.refresh_secs.min(3)),
    };
    let title = format!("Batch {}", batch.reference);
    Ok(html_response(StatusCode::OK, html::page(&title, Some(&signed), Nav::Batches, options, &body)))
}

/// `GET /console/batches/{id}/report.csv`: the same report as `GET /v1/batches/{id}/report`.
pub async fn report(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_BATCHES_READ)?;
    let batch = batches_api::readable_by(&state, &signed.session.caller, &id).await?;
    if batch.client_id != signed.session.caller.client_id {
        return Err(ConsoleError::NotFound);
    }
    let csv = batches_api::report_csv(&state, batch.id).await?;
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"batch-{}-report.csv\"", batch.id)) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfirmParams {
    action: String,
}

fn confirm_page(
    signed: &Signed,
    batch: &Batch,
    action: &str,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let mut body = problem.map(|p| html::notice("error", p)).unwrap_or_default();
    let (explain, label, reason) = if action == "approve" {
        (
            "Its payouts are scheduled now and start moving money. The approval is recorded with your client.",
            "Approve the batch",
            "",
        )
    } else {
        (
            "Every payout of the batch that has no intent yet (pending or checked) is cancelled; the others \
             continue and finish normally.",
            "Cancel the batch",
            r#"<label>Reason (required)<textarea name="reason" id="reason" required maxlength="500" rows="3"></textarea></label>"#,
        )
    };
    let _ = write!(
        body,
        r#"<dl class="facts"><dt>batch</dt><dd><a href="/console/batches/{id}">{reference}</a></dd><dt>client</dt><dd>{client}</dd><dt>rows</dt><dd>{rows}</dd><dt>state</dt><dd>{state}</dd></dl>
<p class="explain" id="explain">{explain}</p>
<form method="post" action="/console/batches/{id}/act" class="confirm">{csrf}<input type="hidden" name="action" value="{action}">{reason}
<button type="submit" id="confirm" class="danger">{label}</button> <a href="/console/batches/{id}">Back</a></form>"#,
        id = esc(&batch.id.to_string()),
        reference = esc(&batch.reference),
        client = esc(&batch.client_id),
        rows = batch.rows,
        state = esc(batch.state.as_str()),
        csrf = html::csrf_field(signed),
        action = if action == "approve" { "approve" } else { "cancel" },
    );
    html_response(
        status,
        html::page(&format!("{label}?"), Some(signed), Nav::Batches, PageOptions::default(), &body),
    )
}

/// `GET /console/batches/{id}/confirm?action=approve|cancel`.
pub async fn confirm(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(params): Query<ConfirmParams>,
) -> Result<Response, ConsoleError> {
    match params.action.as_str() {
        "approve" => signed.require(SCOPE_BATCHES_APPROVE)?,
        "cancel" => signed.require(SCOPE_BATCHES_CREATE)?,
        _ => return Err(ConsoleError::BadRequest("unknown action".into())),
    }
    let batch = batches_api::readable_by(&state, &signed.session.caller, &id).await?;
    Ok(confirm_page(&signed, &batch, &params.action, StatusCode::OK, None))
}

/// `POST /console/batches/{id}/act`: approve or cancel.
pub async fn act(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActForm>,
) -> Result<Response, ConsoleError> {
    signed.check_post(&headers, form.csrf.as_deref())?;
    let caller = &signed.session.caller;
    match form.action.as_str() {
        "approve" => {
            signed.require(SCOPE_BATCHES_APPROVE)?;
            let id = Uuid::parse_str(&id).map_err(|_| ConsoleError::NotFound)?;
            match store::approve(&state.pool, id, &caller.client_id, Some(caller.token_id)).await? {
                Approval::Approved(b) => {
                    Ok(Redirect::to(&format!("/console/batches/{}?done=approved", b.id)).into_response())
                }
                Approval::SameClient => {
                    let batch = store::get(&state.pool, id).await?.ok_or(ConsoleError::NotFound)?;
                    Ok(confirm_page(
                        &signed,
                        &batch,
                        "approve",
                        StatusCode::FORBIDDEN,
                        Some(
                            "Refused: a batch must be approved by another client than the one that uploaded it.",
                        ),
                    ))
                }
                Approval::NotAwaiting(b) => Ok(confirm_page(
                    &signed,
                    &b,
                    "approve",
                    StatusCode::CONFLICT,
                    Some(&format!("Refused: the batch is {}, not waiting for approval.", b.state.as_str())),
                )),
                Approval::NotFound => Err(ConsoleError::NotFound),
            }
        }
        "cancel" => {
            signed.require(SCOPE_BATCHES_CREATE)?;
            let batch = batches_api::readable_by(&state, caller, &id).await?;
            if batch.client_id != caller.client_id {
                return Err(ConsoleError::NotFound);
            }
            let reason = form.reason.trim();
            if reason.is_empty() || reason.chars().count() > 500 {
                return Ok(confirm_page(
                    &signed,
                    &batch,
                    "cancel",
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some("reason: 1 to 500 characters are required"),
                ));
            }
            match store::cancel(&state.pool, batch.id, &caller.client_id, reason).await? {
                Cancellation::Done { batch, .. } => {
                    Ok(Redirect::to(&format!("/console/batches/{}?done=cancelled", batch.id)).into_response())
                }
                Cancellation::AlreadyCompleted(b) => Ok(confirm_page(
                    &signed,
                    &b,
                    "cancel",
                    StatusCode::CONFLICT,
                    Some("Refused: every payout of the batch is final; there is nothing to cancel."),
                )),
                Cancellation::NotFound => Err(ConsoleError::NotFound),
            }
        }
        _ => Err(ConsoleError::BadRequest("unknown action".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_rows_are_named_by_their_external_id() {
        let csv = "external_id,amount,currency\nok-1,100,IDR\n\nbad-2,x,IDR\n";
        assert_eq!(external_id_of(csv, 1).as_deref(), Some("ok-1"));
        assert_eq!(external_id_of(csv, 2).as_deref(), Some("bad-2"), "blank lines are not rows");
        assert_eq!(external_id_of(csv, 3), None);
        assert_eq!(external_id_of("{\"external_id\":\"a\"}", 1), None);
    }
}
