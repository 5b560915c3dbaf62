//! The payouts list (the operator API's filters and cursor pages) and a payout's page: what the
//! operator API shows of it (the destination account masked the same way), its timeline with
//! every event's actor and reason, the trace link, and the actions its state allows.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime};
use payoutd_core::PayoutState;
use payoutd_store::operator_filter::{self, Cursor};
use payoutd_store::payouts as store_payouts;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::actions::{self, Action};
use super::html::{self, Nav, PageOptions, esc, jv, url_value};
use super::session::Signed;
use super::{ConsoleError, html_response};
use crate::AppState;
use crate::auth::SCOPE_OPERATOR_READ;
use crate::operator_api::{self, ListQuery};

/// Payouts on one page of the list.
pub const PAGE_SIZE: i64 = 50;

/// The list's query string, as the filter form sends it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ListParams {
    pub state: Option<String>,
    pub account: Option<String>,
    pub client: Option<String>,
    pub external_id: Option<String>,
    pub batch: Option<String>,
    pub created_from: Option<String>,
    pub created_to: Option<String>,
    pub cursor: Option<String>,
}

/// A time from the form: RFC 3339 as the API takes it, or a `datetime-local` value
/// (`2026-11-23T10:00`), read as UTC.
fn normalize_time(text: Option<&str>) -> Option<String> {
    let text = text.map(str::trim).filter(|t| !t.is_empty())?;
    if DateTime::parse_from_rfc3339(text).is_ok() {
        return Some(text.to_owned());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().to_rfc3339());
        }
    }
    Some(text.to_owned())
}

impl ListParams {
    fn to_api(&self) -> ListQuery {
        ListQuery {
            state: self.state.clone(),
            account: self.account.clone(),
            client: self.client.clone(),
            external_id: self.external_id.clone(),
            created_from: normalize_time(self.created_from.as_deref()),
            created_to: normalize_time(self.created_to.as_deref()),
            batch: self.batch.clone(),
            cursor: None,
            limit: None,
        }
    }

    /// The filter as a query string (without the cursor), for the next page's link.
    fn query_string(&self) -> String {
        let pairs = [
            ("state", &self.state),
            ("account", &self.account),
            ("client", &self.client),
            ("external_id", &self.external_id),
            ("batch", &self.batch),
            ("created_from", &self.created_from),
            ("created_to", &self.created_to),
        ];
        pairs
            .iter()
            .filter_map(|(k, v)| {
                v.as_deref().filter(|v| !v.is_empty()).map(|v| format!("{k}={}", url_value(v)))
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn value_of(v: &Option<String>) -> String {
    esc(v.as_deref().unwrap_or_default())
}

fn filter_form(state: &AppState, p: &ListParams) -> String {
    let mut out =
        String::from(r#"<form method="get" action="/console/payouts" class="filters" id="filters">"#);
    out.push_str(r#"<label>state <select name="state" id="filter-state"><option value="">any</option>"#);
    for s in PayoutState::ALL {
        let selected = if p.state.as_deref() == Some(s.as_str()) { " selected" } else { "" };
        let _ = write!(out, r#"<option value="{0}"{selected}>{0}</option>"#, esc(s.as_str()));
    }
    out.push_str("</select></label>");
    out.push_str(
        r#"<label>account <select name="account" id="filter-account"><option value="">any</option>"#,
    );
    for name in state.connectors.names() {
        let selected = if p.account.as_deref() == Some(name) { " selected" } else { "" };
        let _ = write!(out, r#"<option value="{0}"{selected}>{0}</option>"#, esc(name));
    }
    out.push_str("</select></label>");
    let _ = write!(
        out,
        r#"<label>client <input name="client" id="filter-client" value="{}" maxlength="200"></label>
<label>external id <input name="external_id" id="filter-external-id" value="{}" maxlength="200"></label>
<label>batch <input name="batch" id="filter-batch" value="{}" maxlength="64" placeholder="batch id"></label>
<label>created from (UTC) <input type="datetime-local" name="created_from" id="filter-from" value="{}"></label>
<label>created before (UTC) <input type="datetime-local" name="created_to" id="filter-to" value="{}"></label>
<button type="submit" id="apply-filters">Filter</button> <a href="/console/payouts">Clear</a></form>"#,
        value_of(&p.client),
        value_of(&p.external_id),
        value_of(&p.batch),
        value_of(&p.created_from),
        value_of(&p.created_to),
    );
    out
}

/// One payout as a table row, from the operator API's JSON of it.
pub fn payout_row(v: &Value) -> String {
    let id = text(&v["id"]);
    format!(
        r#"<tr data-payout="{id}"><td>{}</td><td><a href="/console/payouts/{id}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class="num">{} {}</td><td>{}</td><td class="num">{}</td></tr>"#,
        html::json_time(&v["created_at"]),
        jv(&v["external_id"]),
        jv(&v["client_id"]),
        jv(&v["provider"]),
        html::state_badge(&text(&v["state"])),
        jv(&v["amount"]),
        jv(&v["currency"]),
        jv(&v["destination"]["client"]),
        jv(&v["attempts"]),
        id = esc(&id),
    )
}

pub const PAYOUT_TABLE_HEAD: &str = "<thead><tr><th>created</th><th>external id</th><th>client</th><th>account</th><th>state</th><th>amount</th><th>destination</th><th>attempts</th></tr></thead>";

fn text(v: &Value) -> String {
    html::text_of(v)
}

/// `GET /console/payouts`: the filter form and one page of payouts, newest first.
pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(params): Query<ListParams>,
) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_OPERATOR_READ)?;
    let mut errors = Vec::new();
    let filter = operator_api::filter_of(&params.to_api(), &mut errors);
    let cursor = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match Cursor::decode(c) {
            Some(c) => Some(c),
            None => {
                errors.push(payoutd_core::FieldError::new("cursor", "not a cursor this console issued"));
                None
            }
        },
    };
    let mut body = filter_form(&state, &params);
    if !errors.is_empty() {
        let text = errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; ");
        body.push_str(&html::notice("error", &text));
        let page = html::page("Payouts", Some(&signed), Nav::Payouts, PageOptions::default(), &body);
        return Ok(html_response(StatusCode::UNPROCESSABLE_ENTITY, page));
    }
    let (payouts, next) = operator_filter::list(&state.pool, &filter, cursor, PAGE_SIZE).await?;
    if payouts.is_empty() {
        body.push_str(&html::notice("info", "No payout matches."));
    } else {
        let _ = write!(body, r#"<table id="payouts">{PAYOUT_TABLE_HEAD}<tbody>"#);
        for p in &payouts {
            body.push_str(&payout_row(&operator_api::operator_json(p)));
        }
        body.push_str("</tbody></table>");
    }
    body.push_str(r#"<nav class="pages">"#);
    let qs = params.query_string();
    if cursor.is_some() {
        let _ = write!(body, r#"<a href="/console/payouts?{}">First page</a> "#, esc(&qs));
    }
    if let Some(next) = next {
        let sep = if qs.is_empty() { "" } else { "&amp;" };
        let _ = write!(
            body,
            r#"<a href="/console/payouts?{}{sep}cursor={}" id="next-page" rel="next">Next page</a>"#,
            esc(&qs),
            esc(&next.encode())
        );
    }
    body.push_str("</nav>");
    Ok(html_response(
        StatusCode::OK,
        html::page("Payouts", Some(&signed), Nav::Payouts, PageOptions::default(), &body),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowParams {
    /// What was just done (set by the redirect after an action).
    done: Option<String>,
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `GET /console/payouts/{id}`: the payout, its timeline and its actions.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(params): Query<ShowParams>,
) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_OPERATOR_READ)?;
    let id = Uuid::parse_str(&id).map_err(|_| ConsoleError::NotFound)?;
    let p = operator_filter::get(&state.pool, id).await?.ok_or(ConsoleError::NotFound)?;
    let events = store_payouts::timeline(&state.pool, id).await?;
    let v = operator_api::operator_json(&p);
    let mut body = String::new();
    if let Some(done) = params.done.as_deref().and_then(actions::done_message) {
        body.push_str(&html::notice("ok", done));
    }
    let link = |v: &Value| match v.as_str() {
        Some(id) => format!(r#"<a href="/console/payouts/{0}">{0}</a>"#, esc(id)),
        None => String::new(),
    };
    let trace = match (v["traceparent"].as_str().and_then(trace_id), signed.config.trace_url.as_deref()) {
        (Some(t), Some(url)) => {
            format!(
                r#"<a href="{}" rel="noreferrer">{}</a>"#,
                esc(&url.replace("{trace_id}", &url_value(t))),
                esc(t)
            )
        }
        (Some(t), None) => esc(t),
        (None, _) => String::new(),
    };
    let rows: [(&str, String); 20] = [
        ("id", jv(&v["id"])),
        ("external id", jv(&v["external_id"])),
        ("client", jv(&v["client_id"])),
        ("state", html::state_badge(&text(&v["state"]))),
        ("amount", format!("{} {}", jv(&v["amount"]), jv(&v["currency"]))),
        ("account", jv(&v["provider"])),
        ("provider account", jv(&v["account"])),
        ("provider reference", jv(&v["provider_reference"])),
        ("provider payout id", jv(&v["provider_payout_id"])),
        (
            "destination",
            format!(
                "{} · account {} · {}",
                jv(&v["destination"]["destination"]),
                jv(&v["destination"]["client"]),
                jv(&v["destination"]["receiver_name"])
            ),
        ),
        (
            "attempts",
            format!(
                "{} ({} submits, {} status queries)",
                jv(&v["attempts"]),
                jv(&v["submit_attempts"]),
                jv(&v["status_queries"])
            ),
        ),
        ("last error", jv(&v["last_error"])),
        ("next run", html::json_time(&v["next_run_at"])),
        ("created", html::json_time(&v["created_at"])),
        ("updated", html::json_time(&v["updated_at"])),
        ("final since", html::json_time(&v["finalized_at"])),
        ("retry of", link(&v["retry_of"])),
        ("retried by", link(&v["retried_by"])),
        ("trace", trace),
        ("destination redacted", html::json_time(&v["redacted_at"])),
    ];
    body.push_str(r#"<dl class="facts" id="payout-facts">"#);
    for (k, val) in rows {
        if !val.is_empty() {
            let _ = write!(body, "<dt>{k}</dt><dd>{val}</dd>");
        }
    }
    body.push_str("</dl>");

    body.push_str("<h2>Actions</h2>");
    let current: Option<PayoutState> = text(&v["state"]).parse().ok();
    let allowed: Vec<Action> = current.map(actions::allowed).unwrap_or_default();
    if !signed.can_act() {
        body.push_str(
            r#"<p class="meta" id="read-only">Read-only: your token has no operator.act scope.</p>"#,
        );
    } else if allowed.is_empty() {
        body.push_str("<p class=\"meta\">No action applies to a payout in this state.</p>");
    } else {
        body.push_str(r#"<p class="actions">"#);
        for a in allowed {
            let _ = write!(
                body,
                r#"<a class="button" id="action-{0}" href="/console/payouts/{1}/confirm?action={0}">{2}</a> "#,
                a.as_str(),
                esc(&id.to_string()),
                a.label()
            );
        }
        body.push_str("</p>");
    }

    body.push_str(r#"<h2>Timeline</h2><table id="timeline"><thead><tr><th>when</th><th>from</th><th>to</th><th>actor</th><th>reason</th><th>detail</th></tr></thead><tbody>"#);
    for e in &events {
        let detail = e.detail.as_ref().map(|d| d.to_string()).unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
            esc(&html::time(&e.created_at)),
            esc(e.from_state.as_deref().unwrap_or("")),
            esc(&e.to_state),
            esc(&e.actor),
            esc(&e.reason),
            esc(&detail)
        );
    }
    body.push_str("</tbody></table>");
    let title = format!("Payout {}", text(&v["external_id"]));
    Ok(html_response(
        StatusCode::OK,
        html::page(&title, Some(&signed), Nav::Payouts, PageOptions::default(), &body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_values_become_utc_rfc3339() {
        assert_eq!(normalize_time(Some("2026-11-23T10:00")).as_deref(), Some("2026-11-23T10:00:00+00:00"));
        assert_eq!(normalize_time(Some("2026-11-23T10:00:00Z")).as_deref(), Some("2026-11-23T10:00:00Z"));
        assert_eq!(normalize_time(Some("  ")), None);
        assert_eq!(
            normalize_time(Some("yesterday")).as_deref(),
            Some("yesterday"),
            "left for the API's check"
        );
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-<script>-x-01"), None);
    }

    #[test]
    fn the_next_page_link_keeps_the_filter() {
        let p = ListParams {
            state: Some("needs_review".into()),
            client: Some("a b".into()),
            ..Default::default()
        };
        assert_eq!(p.query_string(), "state=needs_review&client=a%20b");
    }
}
