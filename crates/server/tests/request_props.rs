//! Property tests of `POST /v1/payouts` body parsing (`request::parse`, `request::canonical_hash`).

use payoutd_core::{Currency, NewPayout};
use payoutd_server::error::ApiError;
use payoutd_server::request::{canonical_hash, parse};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

const PROVIDERS: &[&str] = &["8b_partner"];

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

/// The invariants of an accepted payout, and that it is exactly the amount written.
fn check_accepted(p: &NewPayout, written_amount: &str) -> Result<(), TestCaseError> {
    let amount = p.money.amount();
    prop_assert!(amount > Decimal::ZERO);
    prop_assert!(amount <= Decimal::from(1_000_000_000_000_i64));
    prop_assert_eq!(amount.scale(), p.money.currency().minor_units());
    prop_assert_eq!(
        exact(written_amount),
        exact(&amount.to_string()),
        "{:?} accepted as {}",
        written_amount,
        amount
    );
    prop_assert!(p.external_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)));
    prop_assert!(!p.external_id.is_empty() && p.external_id.chars().count() <= 64);
    let d = &p.destination;
    for text in
        [&d.phone, &d.client, &d.destination, &d.receiver_name].into_iter().chain(d.receiver_bic.as_ref())
    {
        prop_assert!(!text.is_empty());
        prop_assert_eq!(text.trim(), text.as_str());
        prop_assert!(!text.chars().any(char::is_control));
    }
    Ok(())
}

/// The canonical JSON body of a payout (what a well-behaved client sends).
fn body_of(p: &NewPayout) -> Vec<u8> {
    let mut destination = json!({
        "phone": p.destination.phone,
        "client": p.destination.client,
        "destination": p.destination.destination,
        "receiver_name": p.destination.receiver_name,
    });
    if let Some(bic) = &p.destination.receiver_bic {
        destination["receiver_bic"] = json!(bic);
    }
    json!({
        "external_id": p.external_id,
        "amount": p.money.amount().to_string(),
        "currency": p.money.currency().code(),
        "provider": p.provider,
        "destination": destination,
    })
    .to_string()
    .into_bytes()
}

/// Fields of a valid request, as a client may write them (untrimmed texts, any amount
/// spelling of the right scale).
#[derive(Debug, Clone)]
struct Valid {
    external_id: String,
    minor: i64,
    currency: Currency,
    phone: String,
    client: String,
    destination: String,
    receiver_name: String,
    receiver_bic: Option<String>,
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Printable, not only whitespace, padded with spaces the parser trims.
    (
        " {0,2}",
        proptest::string::string_regex(&format!("[^\\p{{Cc}}\\s][^\\p{{Cc}}]{{0,{}}}", max - 2))
            .expect("regex"),
        " {0,2}",
    )
        .prop_map(|(a, t, b)| format!("{a}{}{b}", t.trim_end()))
}

fn valid() -> impl Strategy<Value = Valid> {
    let currency = proptest::sample::select(["IDR", "USD", "KWD", "JPY", "EUR"].as_slice())
        .prop_map(|c| Currency::parse(c).expect("supported currency"));
    (
        currency,
        "[A-Za-z0-9._:-]{1,64}",
        text(32),
        text(64),
        text(64),
        text(128),
        proptest::option::of(text(32)),
    )
        .prop_flat_map(
            |(currency, external_id, phone, client, destination, receiver_name, receiver_bic)| {
                let max = 1_000_000_000_000_i64 * 10_i64.pow(currency.minor_units());
                (1..=max).prop_map(move |minor| Valid {
                    external_id: external_id.clone(),
                    minor,
                    currency,
                    phone: phone.clone(),
                    client: client.clone(),
                    destination: destination.clone(),
                    receiver_name: receiver_name.clone(),
                    receiver_bic: receiver_bic.clone(),
                })
            },
        )
}

impl Valid {
    fn amount(&self) -> String {
        Decimal::new(self.minor, self.currency.minor_units()).to_string()
    }

    fn body(&self, amount: &str) -> Vec<u8> {
        let mut destination = json!({
            "phone": self.phone,
            "client": self.client,
            "destination": self.destination,
            "receiver_name": self.receiver_name,
        });
        if let Some(bic) = &self.receiver_bic {
            destination["receiver_bic"] = json!(bic);
        }
        json!({
            "external_id": self.external_id,
            "amount": amount,
            "currency": self.currency.code(),
            "destination": destination,
        })
        .to_string()
        .into_bytes()
    }
}

/// JSON values of any shape, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[+-]?[0-9]{0,35}([.][0-9]{0,35})?".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    proptest::sample::select(
                        [
                            "external_id",
                            "amount",
                            "currency",
                            "provider",
                            "destination",
                            "phone",
                            "client",
                            "receiver_name",
                            "receiver_bic"
                        ]
                        .as_slice()
                    )
                    .prop_map(str::to_owned),
                    any::<String>(),
                ],
                inner,
                0..7,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The answer to any body: no panic; 400 exactly for bodies that are not JSON objects; a 422
/// names a field; an accepted payout is valid and exactly the amount written.
fn check_any(body: &[u8]) -> Result<(), TestCaseError> {
    let value = serde_json::from_slice::<Value>(body).ok();
    let is_object = matches!(value, Some(Value::Object(_)));
    match parse(body, PROVIDERS) {
        Ok(p) => {
            let written = value.as_ref().and_then(|v| v["amount"].as_str()).unwrap_or_default();
            check_accepted(&p, written)?;
        }
        Err(ApiError::BadRequest(_)) => prop_assert!(!is_object),
        Err(ApiError::Invalid(errors)) => {
            prop_assert!(is_object);
            prop_assert!(!errors.is_empty());
        }
        Err(other) => prop_assert!(false, "parse answered {:?}", other),
    }
    Ok(())
}

proptest! {
    /// Arbitrary bytes: an answer, never a panic.
    #[test]
    fn parse_never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_any(&body)?;
    }

    /// Arbitrary JSON values with the right field names at any depth: never a panic.
    #[test]
    fn parse_never_panics_on_any_json(value in json_value()) {
        check_any(value.to_string().as_bytes())?;
    }

    /// A valid request with a decimal-looking amount of any length: accepted only for exactly
    /// the amount written.
    #[test]
    fn an_accepted_amount_is_exactly_the_written_amount(
        v in valid(),
        amount in prop_oneof![
            "[+]?[0-9]{0,36}([.][0-9]{0,36})?",
            // Long runs of 0 or 9 after a few decimals: where rounding to 28 digits lands on a
            // value the currency allows.
            "[+]?0{0,20}[0-9]{0,13}[.][0-9]{0,3}(0{20,40}|9{20,40})[0-9]{0,5}",
        ],
    ) {
        check_any(&v.body(&amount))?;
    }

    /// A valid request is accepted, trimmed; written back canonically it parses to the same
    /// payout with the same idempotency hash (parse(format(x)) == x).
    #[test]
    fn a_valid_request_round_trips(v in valid()) {
        let amount = v.amount();
        let p = parse(&v.body(&amount), PROVIDERS).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        check_accepted(&p, &amount)?;
        prop_assert_eq!(&p.external_id, &v.external_id);
        prop_assert_eq!(p.money.currency(), v.currency);
        prop_assert_eq!(&p.destination.phone, v.phone.trim());
        prop_assert_eq!(&p.destination.receiver_name, v.receiver_name.trim());
        prop_assert_eq!(p.destination.receiver_bic.as_deref(), v.receiver_bic.as_deref().map(str::trim));
        let q = parse(&body_of(&p), PROVIDERS).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(canonical_hash(&q), canonical_hash(&p));
        prop_assert_eq!(q, p);
    }

    /// Spellings of one amount ("10.5", "010.50", "+10.500") are one payout: same idempotency
    /// hash. A different amount is a different hash.
    #[test]
    fn equivalent_amounts_hash_the_same(v in valid(), zeros in 0usize..4, trailing in 0usize..4, plus: bool) {
        let amount = v.amount();
        let mut spelled = format!("{}{}{amount}", if plus { "+" } else { "" }, "0".repeat(zeros));
        if trailing > 0 {
            if !spelled.contains('.') {
                spelled.push('.');
            }
            spelled.push_str(&"0".repeat(trailing));
        }
        let a = parse(&v.body(&amount), PROVIDERS).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let b = parse(&v.body(&spelled), PROVIDERS).map_err(|e| TestCaseError::fail(format!("{spelled:?}: {e:?}")))?;
        prop_assert_eq!(canonical_hash(&a), canonical_hash(&b));
        let other = Valid { minor: if v.minor == 1 { 2 } else { v.minor - 1 }, ..v.clone() };
        let c = parse(&other.body(&other.amount()), PROVIDERS).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }
}
