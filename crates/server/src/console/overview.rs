//! The overview: what is open or parked, by account and state (the figures the metrics gauges
//! are computed from, read through the partial indexes, so it stays cheap on a large table),
//! the in_doubt and needs_review counts, how old the oldest due payout is, paused accounts and
//! the latest operator actions. It reloads itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use payoutd_core::PayoutState;
use payoutd_store::{account_pauses, operator_events, stats};

use super::html::{self, Nav, PageOptions, esc};
use super::session::Signed;
use super::{ConsoleError, html_response};
use crate::AppState;
use crate::auth::SCOPE_OPERATOR_READ;

/// States that are not final: what the overview counts per account.
fn open_states() -> Vec<PayoutState> {
    PayoutState::ALL.iter().copied().filter(|s| !s.is_final()).collect()
}

pub async fn page(State(state): State<AppState>, signed: Signed) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_OPERATOR_READ)?;
    let figures = stats::queue_figures(&state.pool).await?;
    let pauses = account_pauses::list(&state.pool).await?;
    let events = operator_events::list(&state.pool, None, None, 10).await?;

    let states = open_states();
    let mut by_account: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for c in &figures.by_state {
        *by_account.entry(c.provider.as_str()).or_default().entry(c.state.as_str()).or_default() += c.payouts;
        *totals.entry(c.state.as_str()).or_default() += c.payouts;
    }
    let count = |s: PayoutState| totals.get(s.as_str()).copied().unwrap_or(0);

    let mut body = String::new();
    let _ = write!(
        body,
        r#"<section class="cards">
<a class="card{}" href="/console/review" id="needs-review-count"><span class="figure">{}</span> needs_review</a>
<a class="card{}" href="/console/payouts?state=in_doubt" id="in-doubt-count"><span class="figure">{}</span> in_doubt</a>
<div class="card" id="due-count"><span class="figure">{}</span> due now</div>
<div class="card" id="oldest-due"><span class="figure">{}</span> oldest due payout waiting</div>
</section>"#,
        if count(PayoutState::NeedsReview) > 0 { " alert" } else { "" },
        count(PayoutState::NeedsReview),
        if count(PayoutState::InDoubt) > 0 { " warn" } else { "" },
        count(PayoutState::InDoubt),
        figures.due,
        esc(&html::age(figures.oldest_due_age_secs)),
    );

    body.push_str("<h2>Open and parked payouts by account</h2>");
    if by_account.is_empty() {
        body.push_str(&html::notice("info", "No open or parked payouts."));
    } else {
        body.push_str(r#"<table id="by-account"><thead><tr><th>account</th>"#);
        for s in &states {
            let _ = write!(body, "<th>{}</th>", esc(s.as_str()));
        }
        body.push_str("</tr></thead><tbody>");
        for (account, counts) in &by_account {
            let _ = write!(body, "<tr><th scope=\"row\">{}</th>", esc(account));
            for s in &states {
                let n = counts.get(s.as_str()).copied().unwrap_or(0);
                if n == 0 {
                    body.push_str("<td class=\"num zero\">0</td>");
                } else {
                    let _ = write!(
                        body,
                        r#"<td class="num"><a href="/console/payouts?account={}&amp;state={}">{n}</a></td>"#,
                        esc(&html::url_value(account)),
                        esc(s.as_str())
                    );
                }
            }
            body.push_str("</tr>");
        }
        body.push_str("</tbody></table>");
    }

    body.push_str("<h2>Paused accounts</h2>");
    if pauses.is_empty() {
        body.push_str("<p>None: every account sends.</p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>account</th><th>since</th><th>by</th><th>reason</th></tr></thead><tbody>",
        );
        for p in &pauses {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.account),
                esc(&html::time(&p.paused_at)),
                esc(&p.actor),
                esc(&p.reason)
            );
        }
        body.push_str("</tbody></table>");
    }

    body.push_str("<h2>Latest operator actions</h2>");
    if events.is_empty() {
        body.push_str("<p>None yet.</p>");
    } else {
        body.push_str("<table><thead><tr><th>when</th><th>action</th><th>target</th><th>actor</th><th>reason</th></tr></thead><tbody>");
        for e in &events {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&html::time(&e.created_at)),
                esc(&e.action),
                esc(&e.target),
                esc(&e.actor),
                esc(&e.reason)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(
        body,
        r#"<p class="meta">Final payouts are not counted here; find them in <a href="/console/payouts">Payouts</a>. This page reloads every {} s.</p>"#,
        signed.config.refresh_secs
    );
    let options = PageOptions { refresh_secs: Some(signed.config.refresh_secs) };
    Ok(html_response(StatusCode::OK, html::page("Overview", Some(&signed), Nav::Overview, options, &body)))
}
