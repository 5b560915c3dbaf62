//! Property tests of amount parsing and formatting (`Money::parse`, `Money::amount`).

use payoutd_core::{Currency, Money, MoneyError};
use proptest::prelude::*;
use rust_decimal::Decimal;

const CODES: &[&str] = &[
    "AED", "AUD", "BDT", "BHD", "BRL", "CAD", "CHF", "CNY", "EUR", "GBP", "HKD", "IDR", "INR", "JOD", "JPY",
    "KRW", "KWD", "KZT", "MYR", "OMR", "PHP", "PKR", "SGD", "THB", "TRY", "USD", "UZS", "VND",
];

const MAX_AMOUNT: i64 = 1_000_000_000_000;

fn currency() -> impl Strategy<Value = Currency> {
    proptest::sample::select(CODES).prop_map(|code| Currency::parse(code).expect("supported currency"))
}

/// A valid amount: positive, at most `MAX_AMOUNT`, at the currency's scale.
fn money() -> impl Strategy<Value = Money> {
    currency().prop_flat_map(|currency| {
        let minor_per_unit = 10_i64.pow(currency.minor_units());
        (1..=MAX_AMOUNT * minor_per_unit).prop_map(move |minor| {
            Money::new(Decimal::new(minor, currency.minor_units()), currency).expect("valid amount")
        })
    })
}

/// Strings made of what `Money::parse` lets through to the decimal parser, long runs of digits
/// included (where a 28-digit decimal type rounds).
fn decimal_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ ]?[+-]?[0-9]{0,40}([.][0-9]{0,40})?[ ]?",
        // Long runs of 0 or 9 after a few decimals: where rounding to 28 digits lands on a
        // value the currency allows.
        "[+]?0{0,20}[0-9]{0,13}[.][0-9]{0,3}(0{20,40}|9{20,40})[0-9]{0,5}",
    ]
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

proptest! {
    /// Any string, any currency: an answer, never a panic; an accepted amount is valid.
    #[test]
    fn parse_never_panics_on_any_string(text in any::<String>(), currency in currency()) {
        if let Ok(m) = Money::parse(&text, currency) {
            prop_assert!(m.amount() > Decimal::ZERO);
            prop_assert_eq!(m.amount().scale(), currency.minor_units());
        }
    }

    /// Decimal-looking strings: an accepted amount is exactly the amount written (never rounded
    /// to fit the currency or the decimal type), positive, at most the maximum, at the
    /// currency's scale.
    #[test]
    fn accepted_amount_is_exactly_the_written_amount(text in decimal_like(), currency in currency()) {
        match Money::parse(&text, currency) {
            Ok(m) => {
                prop_assert_eq!(exact(&text), exact(&m.amount().to_string()), "{:?} accepted as {}", text, m);
                prop_assert!(m.amount() > Decimal::ZERO);
                prop_assert!(m.amount() <= Decimal::from(MAX_AMOUNT));
                prop_assert_eq!(m.amount().scale(), currency.minor_units());
            }
            Err(MoneyError::UnknownCurrency(_)) => prop_assert!(false, "currency was valid"),
            Err(_) => {}
        }
    }

    /// parse(format(x)) == x: the formatted amount has exactly the currency's decimals and
    /// parses back to the same money.
    #[test]
    fn formatted_amount_parses_back(m in money()) {
        let text = m.amount().to_string();
        let decimals = text.split_once('.').map_or(0, |(_, frac)| frac.len());
        prop_assert_eq!(u32::try_from(decimals).ok(), Some(m.currency().minor_units()), "{}", text);
        prop_assert_eq!(Money::parse(&text, m.currency()), Ok(m));
    }

    /// Equivalent spellings of one amount (leading zeros, trailing zeros, '+', whitespace) parse
    /// to the same money.
    #[test]
    fn equivalent_spellings_parse_the_same(m in money(), zeros in 0usize..5, trailing in 0usize..5, plus: bool) {
        let text = m.amount().to_string();
        let mut spelled = format!("{}{}{}", if plus { "+" } else { "" }, "0".repeat(zeros), text);
        if trailing > 0 {
            if !spelled.contains('.') {
                spelled.push('.');
            }
            spelled.push_str(&"0".repeat(trailing));
        }
        prop_assert_eq!(Money::parse(&format!(" {spelled} "), m.currency()), Ok(m));
    }

    /// One more decimal than the currency allows is refused, whatever the digit.
    #[test]
    fn a_decimal_beyond_the_currency_is_refused(m in money(), digit in 1u8..=9) {
        let mut text = m.amount().to_string();
        if !text.contains('.') {
            text.push('.');
        }
        text.push(char::from(b'0' + digit));
        let refused = matches!(Money::parse(&text, m.currency()), Err(MoneyError::TooManyDecimals { .. }));
        prop_assert!(refused, "{:?} accepted", text);
    }

    /// Currency codes: every supported code round-trips; anything else is an error.
    #[test]
    fn currency_parse_round_trips(code in "[A-Za-z]{0,4}") {
        match Currency::parse(&code) {
            Ok(c) => {
                prop_assert!(CODES.contains(&code.as_str()));
                prop_assert_eq!(c.code(), code.as_str());
                prop_assert_eq!(c.to_string(), code);
            }
            Err(e) => {
                prop_assert!(!CODES.contains(&code.as_str()));
                prop_assert_eq!(e, MoneyError::UnknownCurrency(code));
            }
        }
    }
}
