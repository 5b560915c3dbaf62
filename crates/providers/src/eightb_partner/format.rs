//! How the 8B partner API writes amounts and timestamps. Signatures are computed over these
//! exact strings, so the same function must produce them for the form and for the hash.

use chrono::{DateTime, Utc};
use payoutd_core::Money;

/// An amount with a dot as decimal point and exactly the currency's scale: "10.50" for USD,
/// "150000" for IDR (the spec: "has to be an integer for payouts in IDR").
pub fn format_amount(money: &Money) -> String {
    let mut amount = money.amount();
    // `Money` already holds this scale; rescaling again keeps the wire format independent of
    // that invariant.
    amount.rescale(money.currency().minor_units());
    amount.to_string()
}

/// The `dt` of payout, check, balance and callback: `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_dt(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The `dt_start` / `dt_end` of registry and balance statement: `dd.MM.yyyy HH:mm` in UTC.
pub fn format_period_dt(at: DateTime<Utc>) -> String {
    at.format("%d.%m.%Y %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use payoutd_core::Currency;

    fn money(amount: &str, currency: &str) -> Money {
        Money::parse(amount, Currency::parse(currency).expect("currency")).expect("money")
    }

    #[test]
    fn idr_is_an_integer() {
        assert_eq!(format_amount(&money("150000", "IDR")), "150000");
        assert_eq!(format_amount(&money("150000.00", "IDR")), "150000");
    }

    #[test]
    fn usd_has_two_decimals_with_a_dot() {
        assert_eq!(format_amount(&money("10.5", "USD")), "10.50");
        assert_eq!(format_amount(&money("10", "USD")), "10.00");
        assert_eq!(format_amount(&money("0.01", "USD")), "0.01");
    }

    #[test]
    fn three_decimal_currencies_keep_three() {
        assert_eq!(format_amount(&money("1.2", "KWD")), "1.200");
    }

    #[test]
    fn timestamps() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().expect("valid");
        assert_eq!(format_dt(at), "2026-01-02 03:04:05");
        assert_eq!(format_period_dt(at), "02.01.2026 03:04");
    }
}
