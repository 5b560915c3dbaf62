//! The HTTP face of the sandbox: `POST /partner/{service_id}/payout|check|balance` like the
//! provider (form in, XML out), and `GET /_sandbox/ledger|stats` (JSON) for people and tests.
//!
//! Every provider endpoint first applies the "front door" faults (latency, 429, 5xx), which act
//! before any field is read, like a proxy or rate limiter in front of the real API would.

use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use payoutd_providers::eightb_partner::signature::{sign_balance, sign_check, sign_payout, signatures_match};
use payoutd_providers::eightb_partner::wire::{ResultCode, write_balance_answer, write_result_answer};
use rust_decimal::Decimal;
use tokio::time::Instant;

use crate::callbacks::{self, Plan};
use crate::config::Faults;
use crate::ledger::{Execution, PayoutRequest};
use crate::runtime::{self, TurnedAway};
use crate::server::Sandbox;

type Shared = State<Arc<Sandbox>>;

pub(crate) fn router(sandbox: Arc<Sandbox>) -> Router {
    Router::new()
        .route("/partner/{service_id}/payout", post(payout))
        .route("/partner/{service_id}/check", post(check))
        .route("/partner/{service_id}/balance", post(balance))
        .route("/payout_reestr/", get(crate::registry::registry))
        .route("/partner/{service_id}/balance_statement", post(crate::registry::balance_statement))
        .route("/_sandbox/ledger", get(ledger))
        .route("/_sandbox/stats", get(stats))
        .with_state(sandbox)
}

fn xml(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/xml; charset=utf-8")], body).into_response()
}

fn answer(id: &str, code: ResultCode) -> Response {
    xml(write_result_answer(id, code, None))
}

fn error_answer(id: &str, error: &str) -> Response {
    xml(write_result_answer(id, ResultCode::Error, Some(error)))
}

/// The front-door faults ([`runtime::front_door`]), answered in plain text and HTML like a
/// proxy in front of the API would.
async fn front_door(sandbox: &Sandbox, faults: &Faults) -> Option<Response> {
    runtime::front_door(&sandbox.runtime, &sandbox.dice, faults, |turned| match turned {
        TurnedAway::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        TurnedAway::RateLimited => {
            sandbox.with_ledger(|l| l.stats.rate_limited += 1);
            (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response()
        }
        TurnedAway::ServerError => {
            sandbox.with_ledger(|l| l.stats.errors_5xx += 1);
            runtime::html_500()
        }
    })
    .await
}

/// The decoded fields of a request, in the order received.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Result<Self, String> {
        serde_urlencoded::from_bytes(body).map(Self).map_err(|e| format!("body is not form-urlencoded: {e}"))
    }

    /// A field that must be present exactly once.
    fn required(&self, name: &str) -> Result<&str, String> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        match (values.next(), values.next()) {
            (Some(value), None) => Ok(value),
            (None, _) => Err(format!("missing parameter {name}")),
            (Some(_), Some(_)) => Err(format!("parameter {name} given more than once")),
        }
    }

    fn optional(&self, name: &str) -> Option<&str> {
        self.required(name).ok()
    }
}

/// Why a request is answered ERROR before anything happens.
enum Refusal {
    BadRequest(String),
    BadSignature,
}

impl Refusal {
    fn answer(self, sandbox: &Sandbox, id: &str) -> Response {
        match self {
            Self::BadRequest(reason) => {
                sandbox.with_ledger(|l| l.stats.bad_requests += 1);
                error_answer(id, &reason)
            }
            Self::BadSignature => {
                sandbox.with_ledger(|l| l.stats.bad_signatures += 1);
                error_answer(id, "invalid hash")
            }
        }
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self::BadRequest(reason)
    }
}

fn known_service(sandbox: &Sandbox, service_id: &str) -> Result<(), Refusal> {
    if service_id == sandbox.config().service_id {
        Ok(())
    } else {
        Err(Refusal::BadRequest(format!("unknown service {service_id}")))
    }
}

/// A positive decimal written with digits and at most one dot, as the spec requires.
fn parse_amount(text: &str, currency: &str) -> Result<Decimal, String> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    let amount = Decimal::from_str(text)
        .ok()
        .filter(|a| plain && *a > Decimal::ZERO)
        .ok_or_else(|| format!("invalid amount {text}"))?;
    if currency == "IDR" && text.contains('.') {
        return Err("amount has to be an integer for payouts in IDR".to_owned());
    }
    Ok(amount)
}

fn read_payout(sandbox: &Sandbox, service_id: &str, form: &Form) -> Result<PayoutRequest, Refusal> {
    known_service(sandbox, service_id)?;
    let id = form.required("id")?;
    let dt = form.required("dt")?;
    let amount = form.required("amount")?;
    let currency = form.required("currency")?;
    let phone = form.required("phone")?;
    let client = form.required("client")?;
    let destination = form.required("destination")?;
    form.required("receiver_fio")?;
    let hash = form.required("hash")?;
    let expected = sign_payout(id, dt, amount, phone, client, destination, sandbox.secret());
    if !signatures_match(&expected, hash) {
        return Err(Refusal::BadSignature);
    }
    if id.is_empty() || id.chars().count() > 20 {
        return Err(Refusal::BadRequest("id must be 1 to 20 characters".to_owned()));
    }
    Ok(PayoutRequest {
        id: id.to_owned(),
        amount: parse_amount(amount, currency)?,
        amount_text: amount.to_owned(),
        currency: currency.to_owned(),
        destination: destination.to_owned(),
        client: client.to_owned(),
    })
}

/// What payout and check share: the front-door faults, then the form and its `id`.
async fn admit(sandbox: &Sandbox, faults: &Faults, body: &[u8]) -> Result<(Form, String), Response> {
    if let Some(response) = front_door(sandbox, faults).await {
        return Err(response);
    }
    let form = Form::parse(body).map_err(|reason| Refusal::BadRequest(reason).answer(sandbox, ""))?;
    let id = form.optional("id").unwrap_or_default().to_owned();
    Ok((form, id))
}

async fn payout(State(sandbox): Shared, Path(service_id): Path<String>, body: Bytes) -> Response {
    sandbox.with_ledger(|l| l.stats.payouts_received += 1);
    let faults = sandbox.faults();
    let (form, id) = match admit(&sandbox, &faults, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let request = match read_payout(&sandbox, &service_id, &form) {
        Ok(request) => request,
        Err(refusal) => return refusal.answer(&sandbox, &id),
    };
    if sandbox.dice.roll(faults.reject_rate) {
        sandbox.with_ledger(|l| l.stats.rejected += 1);
        return error_answer(&id, "rejected by the sandbox (reject fault)");
    }

    let execution = sandbox.with_ledger(|l| l.execute(&request, Utc::now(), Instant::now()));
    let generation = match execution {
        Execution::Executed { generation } => generation,
        Execution::Insufficient { balance } => {
            let error = format!("insufficient balance {balance}");
            return xml(write_result_answer(&id, ResultCode::NotPaid, Some(&error)));
        }
    };
    let declined = sandbox.dice.roll(faults.decline_rate);
    let early = sandbox.dice.roll(faults.early_callback_rate);
    let hold_answer = sandbox.dice.roll(faults.timeout_after_execute_rate);
    let plan = Plan {
        drop: sandbox.dice.roll(faults.drop_callback_rate),
        duplicate: sandbox.dice.roll(faults.duplicate_callback_rate),
    };
    tracing::debug!(%id, generation, declined, early, hold_answer, ?plan, "sandbox executed a payout");

    if early {
        // Final at once, and the client hears it by callback before the payout answer.
        let finalized =
            sandbox.with_ledger(|l| l.finalize(&id, generation, request.amount, declined, Utc::now()));
        if let Some(finalized) = finalized {
            sandbox.with_ledger(|l| l.stats.early_callbacks += 1);
            let task = sandbox.clone();
            sandbox.runtime.spawn_and_wait(callbacks::deliver(task, finalized, plan)).await;
        }
    } else {
        sandbox.finish_later(id.clone(), generation, request.amount, declined, plan);
    }

    if hold_answer {
        sandbox.with_ledger(|l| l.stats.timeouts_after_execute += 1);
        sandbox.runtime.sleep(faults.timeout_delay).await;
    }
    answer(&id, ResultCode::Ok)
}

async fn check(State(sandbox): Shared, Path(service_id): Path<String>, body: Bytes) -> Response {
    // Spacing is judged by arrival, before the latency fault: that delay is the sandbox's own
    // and must not make two well-spaced checks look too close.
    let arrived = Instant::now();
    let faults = sandbox.faults();
    let (form, id) = match admit(&sandbox, &faults, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let amount = match read_check(&sandbox, &service_id, &form) {
        Ok(amount) => amount,
        Err(refusal) => return refusal.answer(&sandbox, &id),
    };
    let min_delay = sandbox.config().min_check_delay;
    let Some(entry) = sandbox.with_ledger(|l| l.check(&id, arrived, min_delay, faults.ingestion_delay))
    else {
        return answer(&id, ResultCode::NotFound);
    };
    if Decimal::from_str(&entry.amount).ok() != Decimal::from_str(amount).ok() {
        return error_answer(&id, "amount does not match the transaction");
    }
    answer(&id, entry.status.result_code())
}

/// Checks a check request's fields and signature; gives back its amount.
fn read_check<'f>(sandbox: &Sandbox, service_id: &str, form: &'f Form) -> Result<&'f str, Refusal> {
    known_service(sandbox, service_id)?;
    let id = form.required("id")?;
    let dt = form.required("dt")?;
    let amount = form.required("amount")?;
    let destination = form.required("destination")?;
    let claimed_service = form.required("service_id")?;
    let hash = form.required("hash")?;
    if !signatures_match(&sign_check(id, dt, amount, destination, sandbox.secret()), hash) {
        return Err(Refusal::BadSignature);
    }
    known_service(sandbox, claimed_service)?;
    Ok(amount)
}

async fn balance(State(sandbox): Shared, Path(service_id): Path<String>, body: Bytes) -> Response {
    let faults = sandbox.faults();
    if let Some(response) = front_door(&sandbox, &faults).await {
        return response;
    }
    let verified = Form::parse(&body).map_err(Refusal::from).and_then(|form| {
        known_service(&sandbox, &service_id)?;
        let dt = form.required("dt")?;
        let hash = form.required("hash")?;
        if signatures_match(&sign_balance(dt, sandbox.secret()), hash) {
            Ok(())
        } else {
            Err(Refusal::BadSignature)
        }
    });
    if let Err(refusal) = verified {
        return refusal.answer(&sandbox, "");
    }
    let balance = sandbox.with_ledger(|l| {
        l.stats.balance_requests += 1;
        l.balance()
    });
    xml(write_balance_answer(balance))
}

async fn ledger(State(sandbox): Shared) -> Response {
    axum::Json(sandbox.ledger()).into_response()
}

async fn stats(State(sandbox): Shared) -> Response {
    axum::Json(sandbox.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_spec_format() {
        assert_eq!(parse_amount("150000", "IDR"), Ok(Decimal::from(150_000)));
        assert_eq!(parse_amount("10.50", "USD"), Ok(Decimal::new(1050, 2)));
        assert!(parse_amount("150000.00", "IDR").is_err());
        assert!(parse_amount("10,50", "USD").is_err());
        assert!(parse_amount("-1", "USD").is_err());
        assert!(parse_amount("0", "USD").is_err());
        assert!(parse_amount("1e3", "USD").is_err());
        assert!(parse_amount("", "USD").is_err());
        assert!(parse_amount("1.2.3", "USD").is_err());
    }

    #[test]
    fn form_fields_must_appear_once() {
        let form = Form::parse(b"a=1&b=2&b=3&c=").expect("form");
        assert_eq!(form.required("a"), Ok("1"));
        assert_eq!(form.required("c"), Ok(""));
        assert!(form.required("b").is_err());
        assert!(form.required("d").is_err());
    }
}
