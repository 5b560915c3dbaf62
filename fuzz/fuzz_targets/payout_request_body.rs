//! `POST /v1/payouts` bodies: `payoutd_server::request::parse` (JSON -> `NewPayout`, with
//! `Money::parse` for the amount).
//!
//! Each input is used twice:
//! 1. as a hostile body: no panic; a 400 exactly when the body is not a JSON object; a 422
//!    names at least one field; an accepted payout satisfies every invariant, has exactly the
//!    amount written (no rounding), and written back as JSON parses to the same payout with
//!    the same idempotency hash;
//! 2. as the seed of a structured body (amount digits, currency, texts chosen by the fuzzer),
//!    checked the same way.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use payoutd_core::{Currency, NewPayout};
use payoutd_server::error::ApiError;
use payoutd_server::request::{canonical_hash, parse};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const PROVIDERS: &[&str] = &["8b_partner", "other"];
const CURRENCIES: [&str; 6] = ["USD", "IDR", "KWD", "JPY", "EUR", "usd"];

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(body) = Body::arbitrary(&mut Unstructured::new(data)) {
        check(&body.to_json());
    }
});

fn check(body: &[u8]) {
    let outcome = parse(body, PROVIDERS);
    let value = serde_json::from_slice::<Value>(body).ok();
    let is_object = matches!(value, Some(Value::Object(_)));
    match &outcome {
        Err(ApiError::BadRequest(_)) => assert!(!is_object, "a JSON object answered 400"),
        _ => assert!(is_object, "a body that is not a JSON object was not answered 400"),
    }
    match outcome {
        Ok(payout) => {
            let value = value.expect("accepted body is JSON");
            let written = value["amount"].as_str().expect("accepted amount is a string");
            accepted(&payout, written);
        }
        Err(ApiError::Invalid(errors)) => assert!(!errors.is_empty(), "a 422 names no field"),
        Err(ApiError::BadRequest(_)) => {}
        Err(other) => panic!("parse answered {other:?}"),
    }
}

fn accepted(p: &NewPayout, written_amount: &str) {
    let amount = p.money.amount();
    let currency = p.money.currency();
    assert!(amount > Decimal::ZERO, "{amount}");
    assert!(amount <= Decimal::from(1_000_000_000_000_i64), "{amount}");
    assert_eq!(amount.scale(), currency.minor_units(), "{amount} {currency}");
    assert_eq!(Currency::parse(currency.code()), Ok(currency));
    // The amount accepted is exactly the amount written: never rounded.
    assert_eq!(
        exact(written_amount),
        exact(&amount.to_string()),
        "{written_amount:?} was accepted as {amount} {currency}"
    );

    let id = &p.external_id;
    assert!(!id.is_empty() && id.chars().count() <= 64, "{id:?}");
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)), "{id:?}");
    assert!(PROVIDERS.contains(&p.provider.as_str()));
    let d = &p.destination;
    for (text, max) in [(&d.phone, 32), (&d.client, 64), (&d.destination, 64), (&d.receiver_name, 128)]
        .into_iter()
        .chain(d.receiver_bic.as_ref().map(|b| (b, 32)))
    {
        assert!(!text.is_empty() && text.chars().count() <= max, "{text:?}");
        assert_eq!(text.trim(), text, "{text:?} is not trimmed");
        assert!(!text.chars().any(char::is_control), "{text:?} has a control character");
    }

    // Written back in the canonical form, the payout parses to itself and hashes the same.
    let mut destination = json!({
        "phone": d.phone,
        "client": d.client,
        "destination": d.destination,
        "receiver_name": d.receiver_name,
    });
    if let Some(bic) = &d.receiver_bic {
        destination["receiver_bic"] = json!(bic);
    }
    let again = json!({
        "external_id": p.external_id,
        "amount": amount.to_string(),
        "currency": currency.code(),
        "provider": p.provider,
        "destination": destination,
    });
    let again = serde_json::to_vec(&again).expect("JSON value encodes");
    match parse(&again, PROVIDERS) {
        Ok(q) => {
            assert_eq!(&q, p);
            assert_eq!(canonical_hash(&q), canonical_hash(p));
        }
        Err(e) => panic!("the accepted payout written back was refused: {e:?}"),
    }
}

/// A decimal string reduced to a canonical text: sign, no leading zeros, no trailing
/// fractional zeros. Two strings are the same number exactly when these are equal.
fn exact(text: &str) -> String {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let magnitude = match (int.is_empty(), frac.is_empty()) {
        (true, true) => return "0".to_owned(),
        (_, true) => int.to_owned(),
        (true, false) => format!("0.{frac}"),
        (false, false) => format!("{int}.{frac}"),
    };
    if negative { format!("-{magnitude}") } else { magnitude }
}

/// A body close to valid, so that the fuzzer spends its time on field contents.
#[derive(Debug, Arbitrary)]
struct Body<'a> {
    external_id: Option<&'a str>,
    amount: Amount<'a>,
    currency: u8,
    provider: Option<&'a str>,
    phone: &'a str,
    client: &'a str,
    destination: &'a str,
    receiver_name: &'a str,
    receiver_bic: Option<&'a str>,
}

#[derive(Debug, Arbitrary)]
enum Amount<'a> {
    /// Digits with an optional dot: long runs of digits are where decimal parsers round.
    Digits {
        digits: Vec<u8>,
        dot: Option<u8>,
        plus: bool,
    },
    Text(&'a str),
}

impl Body<'_> {
    fn amount(&self) -> String {
        match &self.amount {
            Amount::Digits { digits, dot, plus } => {
                let mut text: String = digits.iter().map(|d| char::from(b'0' + d % 10)).collect();
                if let Some(at) = dot {
                    let at = usize::from(*at) % (text.len() + 1);
                    text.insert(at, '.');
                }
                if *plus {
                    text.insert(0, '+');
                }
                text
            }
            Amount::Text(text) => (*text).to_owned(),
        }
    }

    fn to_json(&self) -> Vec<u8> {
        let mut destination = json!({
            "phone": self.phone,
            "client": self.client,
            "destination": self.destination,
            "receiver_name": self.receiver_name,
        });
        if let Some(bic) = self.receiver_bic {
            destination["receiver_bic"] = json!(bic);
        }
        let mut body = json!({
            "external_id": self.external_id.unwrap_or("ord-1"),
            "amount": self.amount(),
            "currency": CURRENCIES[usize::from(self.currency) % CURRENCIES.len()],
            "destination": destination,
        });
        if let Some(provider) = self.provider {
            body["provider"] = json!(provider);
        }
        serde_json::to_vec(&body).expect("JSON value encodes")
    }
}
