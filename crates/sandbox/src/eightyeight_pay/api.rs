//! The HTTP face of the 88Pay sandbox: `POST /api/auth/token`, `/api/balance` and
//! `/api/transactions/cashout-bank-transfer` as the guides (and the assumptions written down in
//! the connector's `wire` module) describe them, every answer in the `{status, code, message,
//! data}` envelope; and `GET /_sandbox/ledger|stats` (JSON) for people and tests.
//!
//! Checks run in the order a real gateway would run them, and nothing is executed before the
//! last: the "front door" faults (latency, 429, 5xx, before anything is read), then the token
//! and session (401), then the body (400, naming the field), then the reject fault (422).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use payoutd_core::Currency;
use payoutd_providers::eightyeight_pay::wire::{
    API_KEY_HEADER, BALANCE_PATH, BalanceData, CASHOUT_PATH, CashoutData, CashoutRequest, ENVELOPE_ERROR,
    ENVELOPE_SUCCESS, Envelope, MERCHANT_ID_HEADER, SESSION_HEADER, STATUS_PENDING, TOKEN_PATH, TokenData,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::ledger::Execution;
use super::server::PaySandbox;
use super::tokens::{Purpose, Refused};
use super::webhooks::{self, Plan};
use crate::config::Faults;
use crate::runtime::{self, TurnedAway};

type Shared = State<Arc<PaySandbox>>;

pub(crate) fn router(sandbox: Arc<PaySandbox>) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route(BALANCE_PATH, post(balance))
        .route(CASHOUT_PATH, post(cashout))
        .route("/_sandbox/ledger", get(ledger))
        .route("/_sandbox/stats", get(stats))
        .with_state(sandbox)
}

/// The envelope every answer comes in: `status` follows the HTTP status, `code` repeats it.
fn envelope<T: Serialize>(code: StatusCode, message: &str, data: Option<T>) -> Response {
    let status = if code.is_success() { ENVELOPE_SUCCESS } else { ENVELOPE_ERROR };
    let body = Envelope { status: status.to_owned(), code: code.as_u16(), message: message.to_owned(), data };
    match serde_json::to_vec(&body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "sandbox cannot write an answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    envelope::<()>(code, message, None)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The front-door faults ([`runtime::front_door`]), answered in the envelope like every other
/// 88Pay answer.
async fn front_door(sandbox: &PaySandbox, faults: &Faults) -> Option<Response> {
    runtime::front_door(&sandbox.runtime, &sandbox.dice, faults, |turned| match turned {
        TurnedAway::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        TurnedAway::RateLimited => {
            sandbox.with_ledger(|l| l.stats.rate_limited += 1);
            error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
        }
        TurnedAway::ServerError => {
            sandbox.with_ledger(|l| l.stats.errors_5xx += 1);
            error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    })
    .await
}

/// Checks the bearer token and session for `purpose`; `Some` is the 401 answer to give.
fn refuse_unauthorized(sandbox: &PaySandbox, headers: &HeaderMap, purpose: Purpose) -> Option<Response> {
    let token = header(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let session = header(headers, SESSION_HEADER);
    let forced_rate = sandbox.forced_401_rate();
    let outcome = sandbox.with_tokens(|t| {
        t.authorize(token, session, purpose, Instant::now(), || sandbox.dice.roll(forced_rate))
    });
    let Err(refused) = outcome else {
        return None;
    };
    sandbox.with_ledger(|l| {
        let stats = &mut l.stats;
        stats.unauthorized += 1;
        *match refused {
            Refused::UnknownToken => &mut stats.unauthorized_unknown_token,
            Refused::BadSession => &mut stats.unauthorized_bad_session,
            Refused::Expired => &mut stats.unauthorized_expired,
            Refused::Reused => &mut stats.unauthorized_reused,
            Refused::Forced => &mut stats.unauthorized_forced,
        } += 1;
    });
    let mut response = error(StatusCode::UNAUTHORIZED, refused.message());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Some(response)
}

async fn token(State(sandbox): Shared, headers: HeaderMap) -> Response {
    sandbox.with_ledger(|l| l.stats.token_calls += 1);
    let faults = sandbox.faults();
    if let Some(response) = front_door(&sandbox, &faults).await {
        return response;
    }
    let config = sandbox.config();
    let key_ok = header(&headers, API_KEY_HEADER) == Some(config.api_key.expose());
    let merchant_ok = header(&headers, MERCHANT_ID_HEADER) == Some(config.merchant_id.as_str());
    if !(key_ok && merchant_ok) {
        sandbox.with_ledger(|l| l.stats.token_calls_refused += 1);
        return error(StatusCode::UNAUTHORIZED, "Invalid API key or merchant id");
    }
    let issued = sandbox.with_tokens(|t| t.issue(Instant::now()));
    sandbox.with_ledger(|l| l.stats.tokens_issued += 1);
    let data = TokenData {
        access_token: issued.token,
        expires_in: config.expires_in_secs(),
        session_id: issued.session_id,
    };
    envelope(StatusCode::OK, "Token generated successfully", Some(data))
}

async fn balance(State(sandbox): Shared, headers: HeaderMap) -> Response {
    sandbox.with_ledger(|l| l.stats.balance_calls += 1);
    let faults = sandbox.faults();
    if let Some(response) = front_door(&sandbox, &faults).await {
        return response;
    }
    if let Some(response) = refuse_unauthorized(&sandbox, &headers, Purpose::Balance) {
        return response;
    }
    let currency = sandbox.config().currency;
    let mut balance = sandbox.balance();
    balance.rescale(currency.minor_units());
    let data = BalanceData { balance, currency: Some(currency.code().to_owned()) };
    envelope(StatusCode::OK, "Balance retrieved successfully", Some(data))
}

async fn cashout(State(sandbox): Shared, headers: HeaderMap, body: Bytes) -> Response {
    sandbox.with_ledger(|l| l.stats.cashouts_received += 1);
    let faults = sandbox.faults();
    if let Some(response) = front_door(&sandbox, &faults).await {
        return response;
    }
    if let Some(response) = refuse_unauthorized(&sandbox, &headers, Purpose::Cashout) {
        return response;
    }
    let request = match read_cashout(&headers, &body, sandbox.config().currency) {
        Ok(request) => request,
        Err(reason) => {
            sandbox.with_ledger(|l| l.stats.bad_requests += 1);
            return error(StatusCode::BAD_REQUEST, &reason);
        }
    };
    if sandbox.dice.roll(faults.reject_rate) {
        sandbox.with_ledger(|l| l.stats.rejected += 1);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Cashout rejected by the sandbox (reject fault)");
    }

    let traceparent = header(&headers, "traceparent").map(str::to_owned);
    let reference = match sandbox.with_ledger(|l| l.execute(&request, Utc::now(), traceparent)) {
        Execution::Executed { reference } => reference,
        Execution::Insufficient { balance } => {
            let message = format!("Insufficient balance: {balance} {}", request.currency);
            return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
        }
    };
    let declined = sandbox.dice.roll(faults.decline_rate);
    let early = sandbox.dice.roll(faults.early_callback_rate);
    let hold_answer = sandbox.dice.roll(faults.timeout_after_execute_rate);
    let plan = Plan {
        drop_first: sandbox.dice.roll(faults.drop_callback_rate),
        duplicate: sandbox.dice.roll(faults.duplicate_callback_rate),
    };
    tracing::debug!(%reference, merchant_reference = %request.merchant_reference, declined, early,
        hold_answer, ?plan, "sandbox executed a cashout");

    if early {
        // Final at once, and the client hears it by webhook before the cashout answer.
        if let Some(delivery) = webhooks::finalize(&sandbox, &reference, declined) {
            sandbox.with_ledger(|l| l.stats.early_webhooks += 1);
            let task = sandbox.clone();
            sandbox.runtime.spawn_and_wait(webhooks::deliver(task, delivery, plan)).await;
        }
    } else {
        webhooks::finish_later(&sandbox, reference.clone(), declined, plan);
    }

    if hold_answer {
        sandbox.with_ledger(|l| l.stats.timeouts_after_execute += 1);
        sandbox.runtime.sleep(faults.timeout_delay).await;
    }
    // PENDING even when the early fault already made it final: the answer reports creation,
    // and a client must not let it overwrite a final status it heard by webhook.
    let data = CashoutData {
        reference,
        merchant_reference: Some(request.merchant_reference),
        status: STATUS_PENDING.to_owned(),
        amount: Some(request.amount),
        currency: Some(request.currency),
    };
    envelope(StatusCode::OK, "Cashout created", Some(data))
}

/// The string fields of a cashout request; all required and non-empty.
const STRING_FIELDS: [&str; 13] = [
    "flow",
    "method_code",
    "method_category",
    "country",
    "currency",
    "description",
    "customer_id",
    "merchant_reference",
    "notification_url",
    "account_number",
    "bank_code",
    "holder_name",
    "phone",
];

/// Reads and checks a cashout body; the reason, naming the field, if it is refused.
///
/// Strict where the guides are: JSON with `Content-Type: application/json`, amount a JSON
/// number (not a string, no exponent) that is positive and has no more decimals *as written*
/// than the account currency allows, `notification_url` http(s), and the payout's fixed
/// `flow` / `method_code` / `method_category`.
fn read_cashout(
    headers: &HeaderMap,
    body: &[u8],
    account_currency: Currency,
) -> Result<CashoutRequest, String> {
    let content_type = header(headers, header::CONTENT_TYPE.as_str()).unwrap_or_default();
    if !content_type.trim().to_ascii_lowercase().starts_with("application/json") {
        return Err("Content-Type must be application/json".to_owned());
    }
    // Field by field first, so that a missing or mistyped field is named.
    let fields: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
    for name in STRING_FIELDS {
        let raw = fields.get(name).ok_or_else(|| format!("missing field {name}"))?;
        let value: String =
            serde_json::from_str(raw.get()).map_err(|_| format!("field {name} must be a string"))?;
        if value.trim().is_empty() {
            return Err(format!("field {name} must not be empty"));
        }
    }
    let amount_text = fields.get("amount").ok_or("missing field amount")?.get();
    let plain = !amount_text.is_empty()
        && amount_text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && amount_text.bytes().filter(|&b| b == b'.').count() <= 1;
    if !plain {
        return Err(format!("field amount must be a plain JSON number, got {amount_text}"));
    }
    let request: CashoutRequest = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;

    let fixed = [
        ("flow", &request.flow, "PAYOUT"),
        ("method_code", &request.method_code, "BANK_TRANSFER"),
        ("method_category", &request.method_category, "BANK"),
    ];
    for (name, value, expected) in fixed {
        if value != expected {
            return Err(format!("field {name} must be {expected} for a bank transfer cashout, got {value}"));
        }
    }
    if request.country.len() != 3 || !request.country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("field country must be an ISO 3166-1 alpha-3 code, got {}", request.country));
    }
    let currency = Currency::parse(&request.currency)
        .map_err(|_| format!("field currency: unsupported currency {}", request.currency))?;
    if currency != account_currency {
        return Err(format!("field currency: the account holds {account_currency}, not {currency}"));
    }
    if request.amount <= rust_decimal::Decimal::ZERO {
        return Err(format!("field amount must be positive, got {}", request.amount));
    }
    if request.amount.scale() > currency.minor_units() {
        return Err(format!(
            "field amount: {currency} allows at most {} decimal places, got {}",
            currency.minor_units(),
            request.amount
        ));
    }
    let url_ok = reqwest::Url::parse(&request.notification_url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !url_ok {
        return Err(format!(
            "field notification_url must be an http(s) URL, got {}",
            request.notification_url
        ));
    }
    Ok(request)
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

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        headers
    }

    type Fields = serde_json::Map<String, serde_json::Value>;
    /// One refusal case: the amount's text, an edit of the other fields, what the reason says.
    type Case = (&'static str, fn(&mut Fields), &'static str);

    fn body(edit: impl FnOnce(&mut Fields)) -> Vec<u8> {
        let mut fields = serde_json::json!({
            "flow": "PAYOUT", "method_code": "BANK_TRANSFER", "method_category": "BANK",
            "country": "COL", "currency": "COP", "amount": 0, "description": "Payout PO1",
            "customer_id": "PO1", "merchant_reference": "PO1",
            "notification_url": "https://merchant.example/n", "account_number": "123",
            "bank_code": "1007", "holder_name": "Ana", "phone": "573001234567"
        });
        let map = fields.as_object_mut().expect("object");
        edit(map);
        // The amount as raw text, so the test controls its digits.
        let text = serde_json::to_string(map).expect("json");
        text.replace(r#""amount":0"#, r#""amount":AMOUNT"#).into_bytes()
    }

    fn read(amount: &str, edit: impl FnOnce(&mut Fields)) -> Result<CashoutRequest, String> {
        let text = String::from_utf8(body(edit)).expect("utf8").replace("AMOUNT", amount);
        read_cashout(&json_headers(), text.as_bytes(), Currency::parse("COP").expect("COP"))
    }

    #[test]
    fn a_good_body_is_read_with_its_exact_amount() {
        let request = read("123456789012345.67", |_| {}).expect("valid");
        assert_eq!(request.amount.to_string(), "123456789012345.67");
        assert_eq!(read("100", |_| {}).expect("valid").amount.to_string(), "100");
    }

    #[test]
    fn each_refusal_names_its_field() {
        let cases: [Case; 10] = [
            ("10.001", |_| {}, "field amount"),
            ("0", |_| {}, "field amount must be positive"),
            ("-5", |_| {}, "field amount must be positive"),
            ("1e3", |_| {}, "field amount must be a plain JSON number"),
            ("1", |m| drop(m.remove("phone")), "missing field phone"),
            ("1", |m| drop(m.insert("flow".into(), "PAYIN".into())), "field flow"),
            ("1", |m| drop(m.insert("method_code".into(), "CARDS".into())), "field method_code"),
            ("1", |m| drop(m.insert("method_category".into(), 5.into())), "field method_category"),
            (
                "1",
                |m| drop(m.insert("notification_url".into(), "ftp://x/n".into())),
                "field notification_url",
            ),
            ("1", |m| drop(m.insert("currency".into(), "USD".into())), "field currency"),
        ];
        for (amount, edit, expected) in cases {
            let reason = read(amount, edit).expect_err(expected);
            assert!(reason.contains(expected), "{reason:?} should contain {expected:?}");
        }
        let quoted = read(r#""10.00""#, |_| {}).expect_err("string amount");
        assert!(quoted.contains("field amount"), "{quoted}");
    }

    #[test]
    fn the_content_type_must_be_json() {
        let text = String::from_utf8(body(|_| {})).expect("utf8").replace("AMOUNT", "1");
        let refused = read_cashout(&HeaderMap::new(), text.as_bytes(), Currency::parse("COP").expect("COP"));
        assert!(refused.expect_err("no content type").contains("Content-Type"));
    }
}
