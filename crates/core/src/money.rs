//! Money: an amount in a currency whose scale the currency allows.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("unknown or unsupported currency code {0:?} (expected an ISO 4217 code such as USD or IDR)")]
    UnknownCurrency(String),
    #[error("not a decimal number: {0:?}")]
    NotADecimal(String),
    #[error("must be greater than zero")]
    NotPositive,
    #[error("{currency} allows at most {allowed} decimal places, got {got}")]
    TooManyDecimals { currency: Currency, allowed: u32, got: u32 },
    #[error("amount is too large")]
    TooLarge,
}

/// ISO 4217 currencies payoutd accepts, each with its minor-unit scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

/// The supported currencies. IDR, JPY, KRW and VND have no minor unit in payout APIs
/// (8B partner: "has to be an integer for payouts in IDR"); KWD, BHD, JOD, OMR have three.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("IDR", 0),
    ("INR", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("KZT", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("USD", 2),
    ("UZS", 2),
    ("VND", 0),
];

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, minor_units)| Currency { code, minor_units })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Decimal places the currency allows.
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// A positive amount whose scale fits its currency. A value that exists is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

/// Largest amount accepted: far above any single payout, far below Decimal's range.
fn max_amount() -> Decimal {
    Decimal::from(1_000_000_000_000_i64)
}

impl Money {
    /// Parses an amount written as a decimal string ("10.50", "150000").
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let trimmed = amount.trim();
        if trimmed.is_empty()
            || !trimmed.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
        {
            return Err(MoneyError::NotADecimal(amount.to_owned()));
        }
        let value = Decimal::from_str(trimmed).map_err(|_| MoneyError::NotADecimal(amount.to_owned()))?;
        let money = Self::new(value, currency)?;
        // `Decimal::from_str` rounds beyond 28 significant digits ("999999.999…9" with 32 nines
        // becomes 1000000), so the decimals are counted as written, not as parsed.
        let written = trimmed.split_once('.').map_or(0, |(_, frac)| frac.trim_end_matches('0').len());
        let written = u32::try_from(written).unwrap_or(u32::MAX);
        if written > currency.minor_units() {
            return Err(MoneyError::TooManyDecimals {
                currency,
                allowed: currency.minor_units(),
                got: written,
            });
        }
        Ok(money)
    }

    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        if amount <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        if amount > max_amount() {
            return Err(MoneyError::TooLarge);
        }
        let normalized = amount.normalize();
        if normalized.scale() > currency.minor_units() {
            return Err(MoneyError::TooManyDecimals {
                currency,
                allowed: currency.minor_units(),
                got: normalized.scale(),
            });
        }
        let mut amount = normalized;
        amount.rescale(currency.minor_units());
        Ok(Self { amount, currency })
    }

    /// The amount, rescaled to exactly the currency's minor units.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).expect("known currency")
    }

    #[test]
    fn amounts_are_rescaled_to_the_currency() {
        assert_eq!(Money::parse("10.5", cur("USD")).unwrap().amount().to_string(), "10.50");
        assert_eq!(Money::parse("150000", cur("IDR")).unwrap().amount().to_string(), "150000");
        assert_eq!(Money::parse("150000.00", cur("IDR")).unwrap().amount().to_string(), "150000");
        assert_eq!(Money::parse("1.234", cur("KWD")).unwrap().amount().to_string(), "1.234");
    }

    #[test]
    fn scale_beyond_the_currency_is_rejected() {
        assert_eq!(
            Money::parse("150000.5", cur("IDR")),
            Err(MoneyError::TooManyDecimals { currency: cur("IDR"), allowed: 0, got: 1 })
        );
        assert!(matches!(Money::parse("1.001", cur("USD")), Err(MoneyError::TooManyDecimals { .. })));
    }

    #[test]
    fn non_positive_and_garbage_are_rejected() {
        assert_eq!(Money::parse("0", cur("USD")), Err(MoneyError::NotPositive));
        assert_eq!(Money::parse("-1", cur("USD")), Err(MoneyError::NotPositive));
        assert!(matches!(Money::parse("1e3", cur("USD")), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(Money::parse("", cur("USD")), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(Money::parse("ten", cur("USD")), Err(MoneyError::NotADecimal(_))));
        assert_eq!(Money::parse("99999999999999999", cur("USD")), Err(MoneyError::TooLarge));
    }

    /// Found by the `payout_request_body` fuzz target (and the `money_props` proptest): the
    /// decimal type rounded these to an amount the currency allows, and they were accepted as
    /// 1000000.00 USD and 0.10 AED.
    #[test]
    fn amounts_rounded_by_the_decimal_type_are_rejected() {
        assert_eq!(
            Money::parse("999999.99999999999999999999999999999999", cur("USD")),
            Err(MoneyError::TooManyDecimals { currency: cur("USD"), allowed: 2, got: 32 })
        );
        assert_eq!(
            Money::parse(".10000000000000000000000000001", cur("AED")),
            Err(MoneyError::TooManyDecimals { currency: cur("AED"), allowed: 2, got: 29 })
        );
        assert!(matches!(
            Money::parse("999999999999.9999999999999999999999", cur("USD")),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        // Trailing zeros are not decimals: these stay valid however long.
        assert_eq!(
            Money::parse("10.500000000000000000000000000000000", cur("USD")).map(|m| m.amount().to_string()),
            Ok("10.50".to_owned())
        );
    }

    #[test]
    fn unknown_currency_is_rejected() {
        assert!(matches!(Currency::parse("usd"), Err(MoneyError::UnknownCurrency(_))));
        assert!(matches!(Currency::parse("XXX"), Err(MoneyError::UnknownCurrency(_))));
    }
}
