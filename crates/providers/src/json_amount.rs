//! Amounts as exact JSON numbers, for the JSON providers (8B REST, 88Pay).
//!
//! `serde_json` reads and writes numbers through `f64` unless told otherwise, which changes any
//! amount with more than 15-17 significant digits. These functions write a `Decimal`'s own
//! digits as the number's text and read a number's text straight into a `Decimal`, so no float
//! is on the path in either direction.

use payoutd_core::Money;
use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The amount with exactly its currency's scale ("100.00" for COP, "150000" for IDR).
pub fn scaled(money: &Money) -> Decimal {
    let mut amount = money.amount();
    amount.rescale(money.currency().minor_units());
    amount
}

/// `#[serde(serialize_with)]`: the decimal as a JSON number with its exact digits.
pub fn write<S: Serializer>(amount: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let raw = RawValue::from_string(amount.to_string()).map_err(S::Error::custom)?;
    raw.serialize(serializer)
}

/// `#[serde(deserialize_with)]`: a JSON number (or a decimal string) read without a float.
/// Works when deserializing from JSON text (`serde_json::from_slice`), not from a `Value`.
pub fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    parse(raw.get()).ok_or_else(|| D::Error::custom(format!("amount is not a decimal number: {}", raw.get())))
}

/// Like [`read`] for an optional field.
pub fn read_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
    let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => parse(raw.get())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("amount is not a decimal number: {}", raw.get()))),
    }
}

fn parse(text: &str) -> Option<Decimal> {
    let text = text.trim();
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Body {
        #[serde(serialize_with = "write", deserialize_with = "read")]
        amount: Decimal,
    }

    #[test]
    fn seventeen_significant_digits_survive_both_ways() {
        // f64 holds ~15.9 significant digits: this value would come back as 123456789012345.68.
        let amount = Decimal::from_str_exact("123456789012345.67").expect("decimal");
        let text = serde_json::to_string(&Body { amount }).expect("json");
        assert_eq!(text, r#"{"amount":123456789012345.67}"#);
        let back: Body = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.amount.to_string(), "123456789012345.67");
    }

    #[test]
    fn scale_is_kept_as_written() {
        let text = serde_json::to_string(&Body { amount: Decimal::new(10000, 2) }).expect("json");
        assert_eq!(text, r#"{"amount":100.00}"#);
        let back: Body = serde_json::from_str(r#"{"amount": 1.5e2}"#).expect("parse");
        assert_eq!(back.amount, Decimal::from(150));
        assert!(serde_json::from_str::<Body>(r#"{"amount": "abc"}"#).is_err());
        assert!(serde_json::from_str::<Body>(r#"{"amount": true}"#).is_err());
    }
}
