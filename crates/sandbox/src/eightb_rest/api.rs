//! The HTTP face of the simulator: the guide's endpoints with the bodies `wire.rs` assumes, and
//! `GET /_sandbox/ledger|stats` (JSON) for people and tests.
//!
//! Every provider endpoint first applies the "front door" faults (latency, 429, 5xx), which act
//! before anything is read, like a proxy or rate limiter in front of the real API would. Then
//! the bearer token is checked (except on authorize and refresh), then the body, strictly: a
//! client that sends something the provider might misread should find out here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use payoutd_core::{Currency, Money};
use payoutd_providers::eightb_rest::wire::{
    AUTHORIZE_PATH, AuthorizeRequest, CHECK_PATH, CheckAnswer, CheckRequest, DISBURSEMENT_PATH,
    DisbursementAnswer, ErrorAnswer, INTENTS_PATH, IntentAnswer, IntentRequest, PaymentAnswer, REFRESH_PATH,
    Recipient, RefreshRequest, STATUS_PROCESSING, TokenAnswer,
};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::Faults;
use crate::eightb_rest::ledger::{Lookup, Payment};
use crate::eightb_rest::server::RestSandbox;
use crate::eightb_rest::tokens::{Refused, random_id};
use crate::eightb_rest::webhooks::{self, Plan};
use crate::runtime::{self, TurnedAway};

/// The refresh path the guide's prose names, served besides [`REFRESH_PATH`] (its endpoint
/// table's), since the two disagree and a client may be configured with either.
pub const CLIENT_REFRESH_PATH: &str = "/client/api/v1/auth/refresh-token";

type Shared = State<Arc<RestSandbox>>;

pub(crate) fn router(sandbox: Arc<RestSandbox>) -> Router {
    Router::new()
        .route(AUTHORIZE_PATH, post(authorize))
        .route(REFRESH_PATH, post(refresh))
        .route(CLIENT_REFRESH_PATH, post(refresh))
        .route(CHECK_PATH, post(check))
        .route(INTENTS_PATH, post(intents))
        .route(&format!("{DISBURSEMENT_PATH}/{{id}}"), get(disbursement))
        .route("/_sandbox/ledger", get(ledger))
        .route("/_sandbox/stats", get(stats))
        .with_state(sandbox)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorAnswer { error_code: Some(code.to_owned()), error_message: Some(message.into()) };
    (status, Json(body)).into_response()
}

fn bad_request(sandbox: &RestSandbox, reason: String) -> Response {
    sandbox.with_books(|b| b.stats.bad_requests += 1);
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason)
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer error=\"invalid_token\""));
    response
}

/// The front-door faults ([`runtime::front_door`]): a JSON error for the 429, the bare HTML
/// page of a proxy for the 5xx.
async fn front_door(sandbox: &RestSandbox, faults: &Faults) -> Option<Response> {
    runtime::front_door(&sandbox.runtime, &sandbox.dice, faults, |turned| match turned {
        TurnedAway::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        TurnedAway::RateLimited => {
            sandbox.with_books(|b| b.stats.rate_limited += 1);
            error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "rate limit exceeded")
        }
        TurnedAway::ServerError => {
            sandbox.with_books(|b| b.stats.errors_5xx += 1);
            runtime::html_500()
        }
    })
    .await
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Why a bearer token is answered 401.
#[derive(Debug, Clone, Copy)]
enum Unauthorized {
    Missing,
    Unknown,
    Expired,
    Forced,
}

impl Unauthorized {
    fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing or malformed Authorization: Bearer header",
            Self::Unknown => "unknown access token",
            Self::Expired => "access token expired",
            // Worded like a provider that revoked its tokens early.
            Self::Forced => "access token revoked",
        }
    }
}

/// Lets a request with a valid access token through; anything else is counted by reason (and
/// answered 401 by the caller).
fn authenticate(sandbox: &RestSandbox, headers: &HeaderMap) -> Result<(), Unauthorized> {
    let checked = match bearer(headers) {
        None => Err(Unauthorized::Missing),
        Some(token) => match sandbox.with_tokens(|t| t.check_access(token, Instant::now())) {
            Ok(()) if sandbox.dice.roll(sandbox.forced_401_rate()) => Err(Unauthorized::Forced),
            Ok(()) => Ok(()),
            Err(Refused::Expired) => Err(Unauthorized::Expired),
            Err(Refused::Unknown) => Err(Unauthorized::Unknown),
        },
    };
    let Err(why) = checked else {
        return Ok(());
    };
    sandbox.with_books(|b| {
        let stats = &mut b.stats;
        stats.unauthorized += 1;
        *match why {
            Unauthorized::Missing => &mut stats.unauthorized_missing,
            Unauthorized::Unknown => &mut stats.unauthorized_unknown,
            Unauthorized::Expired => &mut stats.unauthorized_expired,
            Unauthorized::Forced => &mut stats.unauthorized_forced,
        } += 1;
    });
    Err(why)
}

/// A JSON body of type `T`, sent as JSON. Numbers are read by the wire types' own
/// deserializers (amounts without a float).
fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(format!("Content-Type must be application/json, not {content_type:?}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

/// The amount at the currency's scale, if the currency is known and the amount is positive
/// with no more decimals than the currency has (IDR none, most two).
fn checked_money(amount: Decimal, currency: &str) -> Result<Decimal, String> {
    let currency = Currency::parse(currency).map_err(|e| format!("currency: {e}"))?;
    Money::new(amount, currency).map(|money| money.amount()).map_err(|e| format!("amount {amount}: {e}"))
}

fn required(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() { Err(format!("{field} is required")) } else { Ok(()) }
}

fn checked_recipient(recipient: &Recipient) -> Result<(), String> {
    required("recipient.accountNumber", &recipient.account_number)?;
    required("recipient.bankCode", &recipient.bank_code)?;
    required("recipient.name", &recipient.name)?;
    required("recipient.phone", &recipient.phone)
}

/// The ceiling in whole seconds, so a sub-second test lifetime is not announced as 0.
fn whole_seconds(lifetime: Duration) -> u64 {
    lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)
}

fn issue_tokens(sandbox: &RestSandbox) -> Response {
    let config = sandbox.config();
    let (access, refresh) = (config.access_token_lifetime, config.refresh_token_lifetime);
    let issued = sandbox.with_tokens(|t| t.issue(Instant::now(), access, refresh));
    Json(TokenAnswer {
        access_token: issued.access,
        refresh_token: Some(issued.refresh),
        expires_in: Some(whole_seconds(access)),
        refresh_expires_in: Some(whole_seconds(refresh)),
    })
    .into_response()
}

async fn authorize(State(sandbox): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = front_door(&sandbox, &sandbox.faults()).await {
        return response;
    }
    sandbox.with_books(|b| b.stats.authorize_calls += 1);
    let request = match read_json::<AuthorizeRequest>(&headers, &body) {
        Ok(request) => request,
        Err(reason) => {
            sandbox.with_books(|b| b.stats.authorize_failed += 1);
            return bad_request(&sandbox, reason);
        }
    };
    let config = sandbox.config();
    if request.login != config.login || request.password != config.password.expose() {
        sandbox.with_books(|b| b.stats.authorize_failed += 1);
        return unauthorized("invalid login or password");
    }
    issue_tokens(&sandbox)
}

async fn refresh(State(sandbox): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = front_door(&sandbox, &sandbox.faults()).await {
        return response;
    }
    sandbox.with_books(|b| b.stats.refresh_calls += 1);
    let request = match read_json::<RefreshRequest>(&headers, &body) {
        Ok(request) => request,
        Err(reason) => {
            sandbox.with_books(|b| b.stats.refresh_failed += 1);
            return bad_request(&sandbox, reason);
        }
    };
    let rotate = sandbox.config().rotate_refresh_tokens;
    match sandbox.with_tokens(|t| t.use_refresh(&request.refresh_token, Instant::now(), rotate)) {
        Ok(()) => issue_tokens(&sandbox),
        Err(refused) => {
            sandbox.with_books(|b| b.stats.refresh_failed += 1);
            unauthorized(match refused {
                Refused::Expired => "refresh token expired",
                Refused::Unknown => "unknown refresh token",
            })
        }
    }
}

/// What every authenticated endpoint does first: the front-door faults, then the token.
async fn admit(sandbox: &RestSandbox, faults: &Faults, headers: &HeaderMap) -> Result<(), Response> {
    if let Some(response) = front_door(sandbox, faults).await {
        return Err(response);
    }
    authenticate(sandbox, headers).map_err(|why| unauthorized(why.message()))
}

async fn check(State(sandbox): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = admit(&sandbox, &sandbox.faults(), &headers).await {
        return response;
    }
    let amount = read_json::<CheckRequest>(&headers, &body).and_then(|request| {
        checked_recipient(&request.recipient)?;
        checked_money(request.amount, &request.currency)
    });
    let amount = match amount {
        Ok(amount) => amount,
        Err(reason) => return bad_request(&sandbox, reason),
    };
    let available = sandbox.with_books(|b| {
        b.stats.checks += 1;
        b.available(amount)
    });
    Json(CheckAnswer { available, reason: (!available).then(|| "insufficient balance".to_owned()) })
        .into_response()
}

/// Checks every field of an intent; gives back each payment's amount at its currency's scale.
fn checked_intent(request: &IntentRequest) -> Result<Vec<Decimal>, String> {
    required("externalId", &request.external_id)?;
    if request.payments.is_empty() {
        return Err("payments must hold at least one payment".to_owned());
    }
    request
        .payments
        .iter()
        .enumerate()
        .map(|(i, payment)| {
            let checked = required("externalId", &payment.external_id)
                .and_then(|()| checked_recipient(&payment.recipient))
                .and_then(|()| checked_money(payment.amount, &payment.currency));
            checked.map_err(|reason| format!("payments[{i}]: {reason}"))
        })
        .collect()
}

async fn intents(State(sandbox): Shared, headers: HeaderMap, body: Bytes) -> Response {
    sandbox.with_books(|b| b.stats.intents_received += 1);
    let faults = sandbox.faults();
    if let Err(response) = admit(&sandbox, &faults, &headers).await {
        return response;
    }
    let checked = read_json::<IntentRequest>(&headers, &body)
        .and_then(|request| checked_intent(&request).map(|amounts| (request, amounts)));
    let (request, amounts) = match checked {
        Ok(checked) => checked,
        Err(reason) => return bad_request(&sandbox, reason),
    };
    if sandbox.dice.roll(faults.reject_rate) {
        sandbox.with_books(|b| b.stats.rejected += 1);
        return error(StatusCode::UNPROCESSABLE_ENTITY, "REJECTED", "rejected by the sandbox (reject fault)");
    }

    let intent_id = random_id("i-");
    let payments: Vec<Payment<'_>> = request
        .payments
        .iter()
        .zip(amounts)
        .map(|(request, amount)| Payment { disbursement_id: random_id("d-"), request, amount })
        .collect();
    let executed = sandbox
        .with_books(|b| b.execute(&intent_id, &request.external_id, &payments, Utc::now(), Instant::now()));
    if let Err(balance) = executed {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INSUFFICIENT_FUNDS",
            format!("insufficient balance {balance}"),
        );
    }
    let early = sandbox.dice.roll(faults.early_callback_rate);
    let hold_answer = sandbox.dice.roll(faults.timeout_after_execute_rate);
    let mut early_webhooks = Vec::new();
    for payment in &payments {
        let id = payment.disbursement_id.clone();
        let declined = sandbox.dice.roll(faults.decline_rate);
        let plan = Plan {
            drop: sandbox.dice.roll(faults.drop_callback_rate),
            duplicate: sandbox.dice.roll(faults.duplicate_callback_rate),
        };
        tracing::debug!(%id, declined, early, hold_answer, ?plan, "8B REST sandbox executed a disbursement");
        if !early {
            sandbox.finish_later(id, declined, plan);
            continue;
        }
        // Final at once, and the client hears it by webhook before the intent answer.
        if let Some(last) = sandbox.with_books(|b| b.finalize(&id, declined, Utc::now())) {
            sandbox.with_books(|b| b.stats.early_webhooks += 1);
            early_webhooks.push((last, plan));
        }
    }
    if !early_webhooks.is_empty() {
        // Delivered by a task of their own, so a client hanging up does not lose them.
        let task = sandbox.clone();
        sandbox
            .runtime
            .spawn_and_wait(async move {
                for (last, plan) in early_webhooks {
                    if !webhooks::first_attempt(&task, &last, plan).await {
                        task.runtime.spawn(webhooks::redeliver(task.clone(), last));
                    }
                }
            })
            .await;
    }

    if hold_answer {
        sandbox.with_books(|b| b.stats.timeouts_after_execute += 1);
        sandbox.runtime.sleep(faults.timeout_delay).await;
    }
    Json(IntentAnswer {
        id: intent_id,
        payments: payments
            .into_iter()
            .map(|p| PaymentAnswer {
                id: p.disbursement_id,
                external_id: p.request.external_id.clone(),
                // Always PROCESSING, also when the early fault already finalized it: the client
                // must not let this answer undo what a webhook told it.
                status: Some(STATUS_PROCESSING.to_owned()),
            })
            .collect(),
    })
    .into_response()
}

async fn disbursement(State(sandbox): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    // Ingestion is judged by arrival, before the latency fault.
    let arrived = Instant::now();
    let faults = sandbox.faults();
    if let Err(response) = admit(&sandbox, &faults, &headers).await {
        return response;
    }
    match sandbox.with_books(|b| b.lookup(&id, arrived, faults.ingestion_delay)) {
        Lookup::Found(entry) => Json(DisbursementAnswer {
            id: entry.disbursement_id,
            external_id: entry.external_id,
            amount: entry.amount,
            currency: entry.currency,
            status: entry.status.wire().to_owned(),
            error_code: entry.error_code,
            error_message: entry.error_message,
        })
        .into_response(),
        Lookup::NotIngested | Lookup::Unknown => {
            error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("disbursement {id} not found"))
        }
    }
}

async fn ledger(State(sandbox): Shared) -> Response {
    Json(sandbox.ledger()).into_response()
}

async fn stats(State(sandbox): Shared) -> Response {
    Json(sandbox.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_fit_their_currency() {
        assert_eq!(checked_money(Decimal::from(150_000), "IDR"), Ok(Decimal::from(150_000)));
        assert_eq!(checked_money(Decimal::new(105, 1), "USD"), Ok(Decimal::new(1050, 2)));
        assert_eq!(checked_money(Decimal::new(1_500_000, 1), "IDR"), Ok(Decimal::from(150_000)));
        assert!(checked_money(Decimal::new(1_500_005, 1), "IDR").is_err());
        assert!(checked_money(Decimal::new(10_505, 3), "USD").is_err());
        assert!(checked_money(Decimal::ZERO, "USD").is_err());
        assert!(checked_money(Decimal::from(-1), "USD").is_err());
        assert!(checked_money(Decimal::from(1), "XXX").is_err());
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            bearer(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer at-1").as_deref(), Some("at-1"));
        assert_eq!(with("bearer  at-1 ").as_deref(), Some("at-1"));
        assert_eq!(with("Basic at-1"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("at-1"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn lifetimes_are_announced_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_secs(1800)), 1800);
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
