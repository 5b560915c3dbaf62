//! The review queue: payouts parked in needs_review (newest first, cursor pages, the operator
//! API's list), with why each one is there (the reason of the event that parked it, and the
//! last error) and, for a token with `operator.act`, the ways out: resolve as paid or failed,
//! retry. Each goes through the confirmation page of [`super::actions`].

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use payoutd_core::PayoutState;
use payoutd_store::operator_filter::{self, Cursor, PayoutFilter};
use payoutd_store::review;
use serde::Deserialize;

use super::actions::{self, Action};
use super::html::{self, Nav, PageOptions, esc, jv};
use super::session::Signed;
use super::{ConsoleError, html_response};
use crate::AppState;
use crate::auth::SCOPE_OPERATOR_READ;
use crate::operator_api::operator_json;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReviewParams {
    cursor: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    signed: Signed,
    Query(params): Query<ReviewParams>,
) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_OPERATOR_READ)?;
    let cursor = params.cursor.as_deref().filter(|c| !c.is_empty()).and_then(Cursor::decode);
    let filter = PayoutFilter { states: vec![PayoutState::NeedsReview], ..Default::default() };
    let (payouts, next) =
        operator_filter::list(&state.pool, &filter, cursor, super::payouts::PAGE_SIZE).await?;
    let ids: Vec<_> = payouts.iter().map(|p| p.row.id).collect();
    let reasons = review::park_reasons(&state.pool, &ids).await?;
    let mut body = String::new();
    if payouts.is_empty() {
        body.push_str(&html::notice("ok", "Nothing waits for review."));
    } else {
        body.push_str(r#"<table id="review"><thead><tr><th>parked</th><th>payout</th><th>client</th><th>account</th><th>amount</th><th>why it is here</th><th>last error</th>"#);
        if signed.can_act() {
            body.push_str("<th>actions</th>");
        }
        body.push_str("</tr></thead><tbody>");
        for p in &payouts {
            let v = operator_json(p);
            let id = esc(&p.row.id.to_string());
            let _ = write!(
                body,
                r#"<tr data-payout="{id}"><td>{}</td><td><a href="/console/payouts/{id}">{}</a></td><td>{}</td><td>{}</td><td class="num">{} {}</td><td>{}</td><td>{}</td>"#,
                html::json_time(&v["parked_at"]),
                jv(&v["external_id"]),
                jv(&v["client_id"]),
                jv(&v["provider"]),
                jv(&v["amount"]),
                jv(&v["currency"]),
                esc(reasons.get(&p.row.id).map(String::as_str).unwrap_or("")),
                jv(&v["last_error"]),
            );
            if signed.can_act() {
                body.push_str("<td class=\"actions\">");
                for a in actions::allowed(p.row.state) {
                    let short = match a {
                        Action::ResolvePaid => "paid",
                        Action::ResolveFailed => "failed",
                        Action::Retry => "retry",
                        Action::Cancel => "cancel",
                        Action::StatusQuery => "status query",
                    };
                    let _ = write!(
                        body,
                        r#"<a class="button small" href="/console/payouts/{id}/confirm?action={}">{short}</a> "#,
                        a.as_str()
                    );
                }
                body.push_str("</td>");
            }
            body.push_str("</tr>");
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            r#"<nav class="pages"><a href="/console/review?cursor={}" rel="next">Next page</a></nav>"#,
            esc(&next.encode())
        );
    }
    Ok(html_response(
        StatusCode::OK,
        html::page("Review queue", Some(&signed), Nav::Review, PageOptions::default(), &body),
    ))
}
