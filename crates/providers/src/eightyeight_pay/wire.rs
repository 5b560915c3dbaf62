//! Everything the 88Pay API puts on the wire, and the one table that maps its statuses.
//!
//! The guides fix: `POST /api/auth/token` with headers `x-api-key` and `X-Merchant-Id`, answering
//! the envelope `{status, code, message, data:{access_token, expires_in, session_id}}` with a
//! token "valid for 60 seconds" that "must be used immediately"; transaction calls with
//! `Authorization: Bearer {access_token}`, `x-session-id: {session_id}` and
//! `Content-Type: application/json`; the paths `/api/transactions/cashout-bank-transfer` and
//! `/api/balance`; amounts as JSON numbers; statuses PENDING / COMPLETED / REJECTED; webhooks
//! to the `notification_url` sent with the transaction. The guides show the body of a PAYIN
//! charge only. Assumed here, written once (the sandbox uses these same types):
//!
//! | call | assumed request body | assumed `data` of the answer envelope |
//! |---|---|---|
//! | `POST /api/auth/token` | `{}` | as the guide: `access_token`, `expires_in`, `session_id` |
//! | `POST /api/balance` | `{}` | `{"balance": number, "currency"}` |
//! | `POST /api/transactions/cashout-bank-transfer` | the charge's fields with `flow:"PAYOUT"`, `method_code:"BANK_TRANSFER"`, `method_category:"BANK"`, plus `merchant_reference` (ours), `account_number`, `bank_code`, `holder_name`, `phone` | `{"reference", "merchant_reference", "status", "amount", "currency"}` |
//! | webhook to `notification_url` | `{"merchant_reference","reference","status","amount","currency","message"?}` | the receiver answers 200 |
//!
//! An error is the same envelope with `status:"Error"` and the HTTP status in `code`; a 401
//! means the token or session was refused (expired): nothing was done. Amounts are written
//! with exactly the currency's scale, never through a float. The webhook is unsigned: payoutd
//! accepts it only at the payout's capability URL (see the connector's callback module).

use payoutd_core::{Destination, Money, ProviderStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::json_amount;

pub const TOKEN_PATH: &str = "/api/auth/token";
pub const BALANCE_PATH: &str = "/api/balance";
pub const CASHOUT_PATH: &str = "/api/transactions/cashout-bank-transfer";

pub const API_KEY_HEADER: &str = "x-api-key";
pub const MERCHANT_ID_HEADER: &str = "X-Merchant-Id";
pub const SESSION_HEADER: &str = "x-session-id";

pub const ENVELOPE_SUCCESS: &str = "Success";
pub const ENVELOPE_ERROR: &str = "Error";

/// The answer envelope of every call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub status: String,
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

/// `data` of the token answer. No `Debug`: it holds the token.
#[derive(Serialize, Deserialize)]
pub struct TokenData {
    pub access_token: String,
    pub expires_in: u64,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceData {
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub balance: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// `POST /api/transactions/cashout-bank-transfer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CashoutRequest {
    pub flow: String,
    pub method_code: String,
    pub method_category: String,
    pub country: String,
    pub currency: String,
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub amount: Decimal,
    pub description: String,
    pub customer_id: String,
    pub merchant_reference: String,
    pub notification_url: String,
    pub account_number: String,
    pub bank_code: String,
    pub holder_name: String,
    pub phone: String,
}

/// The cashout as frozen at intent time. Holds no secret: the capability URL's token is derived
/// at send time (see the connector), so neither it nor its hash is ever stored. The amount is
/// kept as decimal text, because a stored JSON value would hold a number as a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenCashout {
    pub reference: String,
    pub country: String,
    pub currency: String,
    pub amount: String,
    pub account_number: String,
    pub bank_code: String,
    pub holder_name: String,
    pub phone: String,
}

impl FrozenCashout {
    pub fn of(money: &Money, destination: &Destination, reference: &str, country: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            country: country.to_owned(),
            currency: money.currency().code().to_owned(),
            amount: json_amount::scaled(money).to_string(),
            account_number: destination.client.clone(),
            bank_code: destination.destination.clone(),
            holder_name: destination.receiver_name.clone(),
            phone: destination.phone.clone(),
        }
    }

    /// The request sent on the wire, with the payout's capability URL.
    pub fn to_request(&self, notification_url: String) -> Result<CashoutRequest, String> {
        let amount =
            Decimal::from_str_exact(&self.amount).map_err(|_| "frozen amount is not a decimal".to_owned())?;
        Ok(CashoutRequest {
            flow: "PAYOUT".into(),
            method_code: "BANK_TRANSFER".into(),
            method_category: "BANK".into(),
            country: self.country.clone(),
            currency: self.currency.clone(),
            amount,
            description: format!("Payout {}", self.reference),
            customer_id: self.reference.clone(),
            merchant_reference: self.reference.clone(),
            notification_url,
            account_number: self.account_number.clone(),
            bank_code: self.bank_code.clone(),
            holder_name: self.holder_name.clone(),
            phone: self.phone.clone(),
        })
    }
}

/// `data` of the cashout answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CashoutData {
    /// The provider's reference (may be empty at first, as for charges).
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub merchant_reference: Option<String>,
    pub status: String,
    #[serde(default, deserialize_with = "json_amount::read_opt", serialize_with = "write_opt")]
    pub amount: Option<Decimal>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// The webhook body sent to a payout's `notification_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub merchant_reference: String,
    #[serde(default)]
    pub reference: String,
    pub status: String,
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn write_opt<S: serde::Serializer>(amount: &Option<Decimal>, serializer: S) -> Result<S::Ok, S::Error> {
    match amount {
        Some(a) => json_amount::write(a, serializer),
        None => serializer.serialize_none(),
    }
}

pub const STATUS_PENDING: &str = "PENDING";
pub const STATUS_COMPLETED: &str = "COMPLETED";
pub const STATUS_REJECTED: &str = "REJECTED";

/// What a transaction status means, in one place. `known` is false for a status the guides do
/// not name: read as "still processing", and the caller logs it.
pub fn status_of(status: &str, message: Option<&str>) -> (ProviderStatus, bool) {
    match status {
        STATUS_COMPLETED => (ProviderStatus::Paid, true),
        STATUS_REJECTED => {
            let reason = message.map_or_else(|| "REJECTED".to_owned(), |m| format!("REJECTED: {m}"));
            (ProviderStatus::Failed { reason }, true)
        }
        STATUS_PENDING => (ProviderStatus::Processing, true),
        _ => (ProviderStatus::Processing, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guides_token_answer_parses() {
        let text = r#"{"status":"Success","code":200,"message":"Token generated successfully",
            "data":{"access_token":"eyJhbGciOiJFQ0RILU","expires_in":60,"session_id":"sess_c6eda115"}}"#;
        let env: Envelope<TokenData> = serde_json::from_str(text).expect("parse");
        let data = env.data.expect("data");
        assert_eq!((data.expires_in, data.session_id.as_str()), (60, "sess_c6eda115"));
    }

    #[test]
    fn an_amount_of_17_significant_digits_is_sent_exactly() {
        let frozen = FrozenCashout {
            reference: "PO1".into(),
            country: "COL".into(),
            currency: "COP".into(),
            amount: "123456789012345.67".into(),
            account_number: "1".into(),
            bank_code: "b".into(),
            holder_name: "h".into(),
            phone: "p".into(),
        };
        let text =
            serde_json::to_string(&frozen.to_request("https://x/n".into()).expect("req")).expect("json");
        assert!(text.contains(r#""amount":123456789012345.67,"#), "{text}");
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of("COMPLETED", None), (ProviderStatus::Paid, true));
        assert_eq!(
            status_of("REJECTED", Some("expired")),
            (ProviderStatus::Failed { reason: "REJECTED: expired".into() }, true)
        );
        assert_eq!(status_of("PENDING", None), (ProviderStatus::Processing, true));
        assert_eq!(status_of("ON_HOLD", None), (ProviderStatus::Processing, false));
    }
}
