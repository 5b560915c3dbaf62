//! The sandbox's reconciliation calls.
//! - The transaction registry (`GET /payout_reestr/`): every payout the ledger holds whose first
//!   submit ("created") falls in `[dt_start, dt_end)`, written with the connector's own writer,
//!   and the spec's limit error above 20,000 rows (naming the creation time of the 20,000th row
//!   minus one minute).
//! - The balance statement (`POST /partner/{service_id}/balance_statement`): every debit (each
//!   execution of a payout) and credit (the refund of a declined one) in `[dt_start, dt_end)`.
//!   The sandbox charges no commission.
//!
//! [`seed`] puts payouts straight into the ledger with chosen creation times, so that tests can
//! build registries of tens of thousands of rows without sending each one.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use payoutd_providers::eightb_partner::registry::{
    REGISTRY_LIMIT, RegistryRow, RegistryStatus, write_registry, write_too_large,
};
use payoutd_providers::eightb_partner::signature::{sign_balance_statement, sign_registry, signatures_match};
use payoutd_providers::eightb_partner::statement::{
    Movement, StatementRow, write_statement, write_statement_error,
};
use rust_decimal::Decimal;
use std::sync::Arc;
use tokio::time::Instant;

use crate::ledger::{Execution, LedgerEntry, LedgerStatus, PayoutRequest};
use crate::server::Sandbox;

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

fn refuse(reason: &str) -> Response {
    json(StatusCode::OK, serde_json::json!({ "error": reason }).to_string())
}

fn period_dt(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%d.%m.%Y %H:%M").ok().map(|t| Utc.from_utc_datetime(&t))
}

/// `GET /payout_reestr/?type=json&service_id=..&dt_start=..&dt_end=..&hash=..`
pub(crate) async fn registry(
    State(sandbox): State<Arc<Sandbox>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| q.get(name).map(String::as_str);
    let (Some(service_id), Some(dt_start), Some(dt_end), Some(hash)) =
        (field("service_id"), field("dt_start"), field("dt_end"), field("hash"))
    else {
        return refuse("missing parameter (service_id, dt_start, dt_end and hash are required)");
    };
    if field("type").is_some_and(|t| t != "json") {
        return refuse("the sandbox answers type=json only");
    }
    if !signatures_match(&sign_registry(service_id, dt_start, dt_end, sandbox.secret()), hash) {
        sandbox.with_ledger(|l| l.stats.bad_signatures += 1);
        return refuse("invalid hash");
    }
    if service_id != sandbox.config().service_id {
        return refuse("unknown service");
    }
    let (Some(start), Some(end)) = (period_dt(dt_start), period_dt(dt_end)) else {
        return refuse("dt_start and dt_end must be dd.MM.yyyy HH:mm");
    };
    let mut entries: Vec<LedgerEntry> =
        sandbox.ledger().into_iter().filter(|e| e.submitted_at >= start && e.submitted_at < end).collect();
    entries.sort_by(|a, b| a.submitted_at.cmp(&b.submitted_at).then_with(|| a.id.cmp(&b.id)));
    if entries.len() > REGISTRY_LIMIT {
        let cut_off = entries[REGISTRY_LIMIT - 1].submitted_at - chrono::Duration::minutes(1);
        return json(StatusCode::OK, write_too_large(cut_off));
    }
    let rows: Vec<RegistryRow> = entries.iter().map(row).collect();
    json(StatusCode::OK, write_registry(&rows))
}

fn row(e: &LedgerEntry) -> RegistryRow {
    RegistryRow {
        id: e.id.clone(),
        pid: Some(format!("8B{}", e.submitted_at.timestamp_micros())),
        destination: Some(e.destination.clone()),
        client: Some(e.client.clone()),
        status: match e.status {
            LedgerStatus::Paid => RegistryStatus::Paid,
            LedgerStatus::NotPaid => RegistryStatus::NotPaid,
            LedgerStatus::Processing => RegistryStatus::Processing,
        },
        partner_status: e.error.clone(),
        created: e.submitted_at,
        changed: e.finalized_at.or(Some(e.last_submitted_at)),
        amount: e.amount.parse().unwrap_or(Decimal::ZERO),
        commission: Some(Decimal::ZERO),
        currency: e.currency.clone(),
        partner_notified: Some(e.callback_acknowledged),
    }
}

/// A payout to put into the ledger directly (see [`seed`]).
#[derive(Debug, Clone)]
pub struct SeedPayout {
    pub id: String,
    /// As the payout request would write it ("150000").
    pub amount: String,
    pub currency: String,
    pub created: DateTime<Utc>,
    /// Final result: paid (`true`) or not paid.
    pub paid: bool,
}

/// Executes and finalizes `payouts` in the ledger as if they had been sent at `created`
/// (debiting the balance, sending no callback). Returns how many were executed.
pub fn seed(sandbox: &Sandbox, payouts: &[SeedPayout]) -> usize {
    sandbox.with_ledger(|l| {
        let mut executed = 0;
        for p in payouts {
            let amount: Decimal = p.amount.parse().unwrap_or(Decimal::ZERO);
            let request = PayoutRequest {
                id: p.id.clone(),
                amount_text: p.amount.clone(),
                amount,
                currency: p.currency.clone(),
                destination: "bank_transfer".to_owned(),
                client: "1234567890".to_owned(),
            };
            if let Execution::Executed { generation } = l.execute(&request, p.created, Instant::now()) {
                l.finalize(&p.id, generation, amount, !p.paid, p.created);
                executed += 1;
            }
        }
        executed
    })
}

/// `POST /partner/{service_id}/balance_statement` with the form `dt_start`, `dt_end`, `hash`.
pub(crate) async fn balance_statement(
    State(sandbox): State<Arc<Sandbox>>,
    Path(service_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let xml = |status: StatusCode, body: String| {
        (status, [(header::CONTENT_TYPE, "application/xml; charset=utf-8")], body).into_response()
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    let (Some(dt_start), Some(dt_end), Some(hash)) = (field("dt_start"), field("dt_end"), field("hash"))
    else {
        return xml(
            StatusCode::OK,
            write_statement_error("missing parameter (dt_start, dt_end and hash are required)"),
        );
    };
    if !signatures_match(&sign_balance_statement(dt_start, dt_end, sandbox.secret()), hash) {
        sandbox.with_ledger(|l| l.stats.bad_signatures += 1);
        return xml(StatusCode::OK, write_statement_error("invalid hash"));
    }
    if service_id != sandbox.config().service_id {
        return xml(StatusCode::NOT_FOUND, write_statement_error("unknown service"));
    }
    let (Some(start), Some(end)) = (period_dt(dt_start), period_dt(dt_end)) else {
        return xml(StatusCode::OK, write_statement_error("dt_start and dt_end must be dd.MM.yyyy HH:mm"));
    };
    let rows: Vec<StatementRow> = sandbox.with_ledger(|l| {
        l.movements
            .iter()
            .filter(|m| m.at >= start && m.at < end)
            .map(|m| StatementRow {
                id: m.id.to_string(),
                dt: m.at,
                movement: if m.debit { Movement::Debit } else { Movement::Credit },
                amount: m.amount,
                comment: Some(m.comment.clone()),
            })
            .collect()
    });
    xml(StatusCode::OK, write_statement(&rows))
}
