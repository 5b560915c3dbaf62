//! Property tests of what the 8B partner sends us: XML answers (`wire::parse_answer` and its
//! accessors) and signed callbacks (`verify_callback`), plus the amount format both sides sign.

use std::str::FromStr;

use payoutd_core::{Currency, Money, Secret};
use payoutd_providers::eightb_partner::format::format_amount;
use payoutd_providers::eightb_partner::signature::sign_callback;
use payoutd_providers::eightb_partner::verify_callback;
use payoutd_providers::eightb_partner::wire::{
    self, ResultCode, WireError, parse_answer, write_balance_answer, write_result_answer,
};
use payoutd_providers::{CallbackVerdict, ProviderStatus, VerifiedCallback};
use proptest::prelude::*;
use rust_decimal::Decimal;

const SECRET: &str = "s3cr3t-key";

const CODES: [ResultCode; 6] = [
    ResultCode::Ok,
    ResultCode::Error,
    ResultCode::Paid,
    ResultCode::NotPaid,
    ResultCode::Processing,
    ResultCode::NotFound,
];

fn result_code() -> impl Strategy<Value = ResultCode> {
    proptest::sample::select(CODES.as_slice())
}

/// XML-looking text: fragments of answers, tags and entities run together.
fn xmlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<response>".to_owned()),
        Just("</response>".to_owned()),
        Just("<r/>".to_owned()),
        "</?(id|result|error|description|message|balance|currency_rate|payout_amount|x)( a=\"1\")?/?>",
        "(OK|ERROR|PAID|NOT_PAID|PROCESSING|NOT_FOUND|-?[0-9]{1,30}([.][0-9]{0,30})?)",
        "&(amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6}|bogus);?",
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        Just("<!--".to_owned()),
        Just("-->".to_owned()),
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// Every accessor the connector calls on an answer, with the consistency they promise.
fn read_like_the_connector(body: &str) -> Result<(), TestCaseError> {
    let Ok(answer) = parse_answer(body) else { return Ok(()) };
    match answer.result_code() {
        Ok(code) => {
            prop_assert_eq!(Some(code.as_str()), answer.result.as_deref().map(str::trim));
            let _ = wire::meaning(code, &answer.detail());
        }
        Err(WireError::Missing(_)) => prop_assert!(answer.result.is_none()),
        Err(WireError::UnknownResult(raw)) => prop_assert_eq!(answer.result.as_deref(), Some(raw.as_str())),
        Err(other) => prop_assert!(false, "result_code returned {:?}", other),
    }
    match answer.balance() {
        Ok(balance) => {
            let raw = answer.balance.as_deref().unwrap_or_default();
            prop_assert_eq!(Decimal::from_str(raw.trim()), Ok(balance));
        }
        Err(WireError::Missing(_)) => prop_assert!(answer.balance.is_none()),
        Err(WireError::BadBalance(raw)) => prop_assert_eq!(answer.balance.as_deref(), Some(raw.as_str())),
        Err(other) => prop_assert!(false, "balance returned {:?}", other),
    }
    let detail = answer.detail();
    prop_assert_eq!(detail.trim(), detail.as_str());
    Ok(())
}

/// XML readers turn "\r\n" and a lone "\r" into "\n" (XML 1.0, 2.11); that is all a writer
/// that escapes markup may lose.
fn xml_line_ends(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

fn currency() -> impl Strategy<Value = Currency> {
    proptest::sample::select(["IDR", "USD", "KWD", "JPY", "EUR"].as_slice())
        .prop_map(|code| Currency::parse(code).expect("supported currency"))
}

fn money() -> impl Strategy<Value = Money> {
    currency().prop_flat_map(|currency| {
        let max = 1_000_000_000_000_i64 * 10_i64.pow(currency.minor_units());
        (1..=max).prop_map(move |minor| {
            Money::new(Decimal::new(minor, currency.minor_units()), currency).expect("valid amount")
        })
    })
}

/// A callback the provider could send, with our amount format.
#[derive(Debug, Clone)]
struct Callback {
    id: String,
    dt: String,
    amount: String,
    result: &'static str,
    destination: String,
    error: Option<String>,
}

impl Callback {
    fn hash(&self, secret: &Secret) -> String {
        sign_callback(&self.id, &self.dt, &self.amount, self.result, &self.destination, secret)
    }

    /// The form fields as signed, `hash` last.
    fn fields(&self, secret: &Secret) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("dt", self.dt.clone()),
            ("amount", self.amount.clone()),
            ("result", self.result.to_owned()),
            ("destination", self.destination.clone()),
        ];
        if let Some(error) = &self.error {
            fields.push(("error", error.clone()));
        }
        fields.push(("hash", self.hash(secret)));
        fields
    }
}

fn callback() -> impl Strategy<Value = Callback> {
    (
        "[A-Za-z0-9._:-]{1,64}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9]",
        money(),
        prop_oneof![Just("0"), Just("1")],
        "[a-z_]{1,16}",
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(id, dt, money, result, destination, error)| Callback {
            id,
            dt,
            amount: format_amount(&money),
            result,
            destination,
            error,
        })
}

/// Percent-encodes every byte but ASCII letters and digits.
fn encode_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn body_of(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(name, value)| format!("{name}={}", encode_bytes(value)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn verified(verdict: CallbackVerdict) -> Result<VerifiedCallback, TestCaseError> {
    match verdict {
        CallbackVerdict::Verified(v) => Ok(v),
        CallbackVerdict::Unverifiable { reason, .. } | CallbackVerdict::NotOurs { reason } => {
            Err(TestCaseError::fail(format!("unverifiable: {reason}")))
        }
    }
}

proptest! {
    /// Arbitrary text as an answer body: no panic, and consistent accessors.
    #[test]
    fn answer_parsing_never_panics_on_any_text(body in any::<String>()) {
        read_like_the_connector(&body)?;
    }

    /// Arbitrary bytes, decoded as the HTTP layer does (lossy UTF-8).
    #[test]
    fn answer_parsing_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        read_like_the_connector(&String::from_utf8_lossy(&bytes))?;
    }

    /// XML-looking text, to get past the first tag.
    #[test]
    fn answer_parsing_never_panics_on_xmlish_text(body in xmlish()) {
        read_like_the_connector(&body)?;
    }

    /// parse(write(answer)) == answer for payout and check answers, whatever the texts.
    #[test]
    fn result_answer_round_trips(id in any::<String>(), code in result_code(), error in proptest::option::of(any::<String>())) {
        let xml = write_result_answer(&id, code, error.as_deref());
        let answer = parse_answer(&xml).map_err(|e| TestCaseError::fail(format!("{xml:?}: {e}")))?;
        prop_assert_eq!(answer.id.clone(), Some(xml_line_ends(&id)));
        prop_assert_eq!(answer.result_code(), Ok(code));
        prop_assert_eq!(answer.error, error.as_deref().map(xml_line_ends));
    }

    /// parse(write(balance)) == balance, scale included.
    #[test]
    fn balance_answer_round_trips(lo: u32, mid: u32, hi: u32, negative: bool, scale in 0u32..=28) {
        let balance = Decimal::from_parts(lo, mid, hi, negative, scale);
        let xml = write_balance_answer(balance);
        let read = parse_answer(&xml).map_err(|e| TestCaseError::fail(e.to_string()))?.balance();
        prop_assert_eq!(read.clone(), Ok(balance));
        prop_assert_eq!(read.map(|b| b.scale()), Ok(balance.scale()));
    }

    /// The amount both sides sign: format_amount(m) parses back to m.
    #[test]
    fn wire_amount_parses_back(m in money()) {
        prop_assert_eq!(Money::parse(&format_amount(&m), m.currency()), Ok(m));
    }

    /// Arbitrary bytes as a callback body: no panic, never verified, and the reference is the
    /// `id` it claimed once.
    #[test]
    fn callback_verification_never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let verdict = verify_callback(&Secret::new(SECRET), &body);
        let unverifiable = matches!(verdict, CallbackVerdict::Unverifiable { .. });
        prop_assert!(unverifiable, "random bytes verified: {:?}", verdict);
    }

    /// A form with arbitrary field names and values: no panic, never verified.
    #[test]
    fn callback_verification_never_panics_on_any_form(pairs in proptest::collection::vec((any::<String>(), any::<String>()), 0..10)) {
        let body = serde_urlencoded::to_string(&pairs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verdict = verify_callback(&Secret::new(SECRET), body.as_bytes());
        match verdict {
            CallbackVerdict::Unverifiable { reference, .. } => {
                let ids: Vec<&str> = pairs.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.as_str()).collect();
                prop_assert_eq!(reference.as_deref(), if ids.len() == 1 { Some(ids[0]) } else { None });
            }
            CallbackVerdict::Verified(v) => prop_assert!(false, "unsigned form verified: {:?}", v),
            CallbackVerdict::NotOurs { reason } => prop_assert!(false, "a form at the right URL is ours: {}", reason),
        }
    }

    /// A callback signed by the real signer verifies and gives back what was signed:
    /// reference, amount and status, in any field order.
    #[test]
    fn signed_callback_verifies_and_reads_back(cb in callback(), rotate in 0usize..8) {
        let secret = Secret::new(SECRET);
        let mut fields = cb.fields(&secret);
        let by = rotate % fields.len();
        fields.rotate_left(by);
        let body = serde_urlencoded::to_string(&fields).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v = verified(verify_callback(&secret, body.as_bytes()))?;
        prop_assert_eq!(&v.reference, &cb.id);
        prop_assert_eq!(v.amount, Decimal::from_str(&cb.amount).map_err(|e| TestCaseError::fail(e.to_string()))?);
        prop_assert_eq!(v.amount.to_string(), cb.amount.clone());
        match (&v.status, cb.result) {
            (ProviderStatus::Paid, "1") => {}
            (ProviderStatus::Failed { reason }, "0") => {
                let error = cb.error.as_deref().unwrap_or("").trim();
                prop_assert!(reason.contains(error), "{:?} lacks {:?}", reason, error);
            }
            (status, result) => prop_assert!(false, "result {} read as {:?}", result, status),
        }
        // Decoded and encoded again, it still verifies to the same callback.
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = serde_urlencoded::to_string(&pairs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(verify_callback(&secret, again.as_bytes()), CallbackVerdict::Verified(v));
        // Another secret does not verify it.
        let other = verify_callback(&Secret::new(format!("{SECRET}-other")), body.as_bytes());
        let refused = matches!(other, CallbackVerdict::Unverifiable { .. });
        prop_assert!(refused, "another secret verified it");
    }

    /// Any single-byte change of any signed field (id, dt, amount, result, destination) makes a
    /// signed callback unverifiable; so does a changed hash (other than a hex letter's case).
    #[test]
    fn a_single_byte_change_of_a_signed_field_does_not_verify(
        cb in callback(),
        field in 0usize..6,
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let secret = Secret::new(SECRET);
        let mut fields: Vec<(&str, Vec<u8>)> =
            cb.fields(&secret).into_iter().map(|(name, value)| (name, value.into_bytes())).collect();
        prop_assert!(matches!(verify_callback(&secret, &body_of(&fields)), CallbackVerdict::Verified(_)));

        let name = ["id", "dt", "amount", "result", "destination", "hash"][field];
        let value = &mut fields.iter_mut().find(|(n, _)| *n == name).expect("signed field present").1;
        let original = value.clone();
        let i = at.index(value.len());
        value[i] ^= mask;
        let changed = value.clone();
        let verdict = verify_callback(&secret, &body_of(&fields));
        if name == "hash" && changed.eq_ignore_ascii_case(&original) {
            prop_assert!(matches!(verdict, CallbackVerdict::Verified(_)));
        } else {
            let refused = matches!(&verdict, CallbackVerdict::Unverifiable { reason, .. } if reason.contains("signature"));
            prop_assert!(refused, "{} changed {:?} -> {:?}: {:?}", name, original, changed, verdict);
        }
    }

    /// A signed field sent twice (even with the same value) is ambiguous: unverifiable.
    #[test]
    fn a_repeated_signed_field_does_not_verify(cb in callback(), field in 0usize..6) {
        let secret = Secret::new(SECRET);
        let mut fields = cb.fields(&secret);
        let name = ["id", "dt", "amount", "result", "destination", "hash"][field];
        let repeated = fields.iter().find(|(n, _)| *n == name).expect("signed field present").clone();
        fields.push(repeated);
        let body = serde_urlencoded::to_string(&fields).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verdict = verify_callback(&secret, body.as_bytes());
        let refused = matches!(&verdict, CallbackVerdict::Unverifiable { reason, .. } if reason.contains("more than once"));
        prop_assert!(refused, "{:?}", verdict);
    }
}
