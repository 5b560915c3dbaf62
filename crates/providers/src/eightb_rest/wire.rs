//! Everything the 8B REST API puts on the wire, and the one table that maps its statuses.
//!
//! The quick-start guide fixes the paths, the `Authorization: Bearer` header, the token
//! lifetimes (access 30 min, refresh 10 h), the webhook shape (`POST {url}/{transactionId}`
//! with `{"status":"ACCEPTED"}` or `{"status":"DECLINED","errorCode","errorMessage"}`) and the
//! statuses ACCEPTED / DECLINED. It shows no request or answer bodies. Every body below is an
//! assumption, written once here (the sandbox uses these same types):
//!
//! | call | assumed request body | assumed answer body |
//! |---|---|---|
//! | `POST /api/v1/admin-accounts/oauth/authorize` | `{"login","password"}` | `{"accessToken","refreshToken","expiresIn"?,"refreshExpiresIn"?}` (seconds; 1800 / 36000 when absent) |
//! | `POST /api/v1/admin-accounts/oauth/refresh-token` (path configurable: the guide also names `/client/api/v1/auth/refresh-token`) | `{"refreshToken"}` | as authorize; `refreshToken` may be absent (the old one stays valid) |
//! | `POST /api/v1/disbursements/check` | `{"amount","currency","recipient"}` | `{"available": bool, "reason"?}` |
//! | `POST /api/v1/intents` | `{"externalId","payments":[{"externalId","amount","currency","recipient"}]}` | `{"id","payments":[{"id","externalId","status"?}]}`: `payments[].id` is the disbursement id |
//! | `GET /api/v1/disbursements/{id}` | none | `{"id","externalId","amount","currency","status","errorCode"?,"errorMessage"?}`; 404 when unknown |
//! | errors (4xx) | | `{"errorCode","errorMessage"}` |
//!
//! `recipient` is `{"accountNumber","bankCode","name","phone","bic"?}`. Amounts are JSON numbers
//! written with exactly the currency's scale (`150000` for IDR, `10.50` for USD), never through a
//! float. `externalId` is our reference. Statuses other than ACCEPTED and DECLINED (the guide's
//! status model is an image we do not have) mean "still processing" and are logged.
//! The provider is assumed NOT to deduplicate intents by `externalId`: payoutd never sends an
//! intent twice.

use payoutd_core::{Destination, Money, ProviderStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::json_amount;

pub const AUTHORIZE_PATH: &str = "/api/v1/admin-accounts/oauth/authorize";
pub const REFRESH_PATH: &str = "/api/v1/admin-accounts/oauth/refresh-token";
pub const CHECK_PATH: &str = "/api/v1/disbursements/check";
pub const INTENTS_PATH: &str = "/api/v1/intents";
/// `GET {DISBURSEMENT_PATH}/{id}`.
pub const DISBURSEMENT_PATH: &str = "/api/v1/disbursements";

/// Token lifetimes the guide states, used when an answer omits them.
pub const ACCESS_TOKEN_SECS: u64 = 30 * 60;
pub const REFRESH_TOKEN_SECS: u64 = 10 * 60 * 60;

#[derive(Serialize, Deserialize)]
pub struct AuthorizeRequest {
    pub login: String,
    pub password: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// The answer of authorize and refresh. No `Debug`: it holds tokens.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnswer {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub account_number: String,
    pub bank_code: String,
    pub name: String,
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
}

impl Recipient {
    pub fn of(destination: &Destination) -> Self {
        Self {
            account_number: destination.client.clone(),
            bank_code: destination.destination.clone(),
            name: destination.receiver_name.clone(),
            phone: destination.phone.clone(),
            bic: destination.receiver_bic.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub amount: Decimal,
    pub currency: String,
    pub recipient: Recipient,
}

impl CheckRequest {
    pub fn of(money: &Money, destination: &Destination) -> Self {
        Self {
            amount: json_amount::scaled(money),
            currency: money.currency().code().to_owned(),
            recipient: Recipient::of(destination),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One payment of an intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequest {
    pub external_id: String,
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub amount: Decimal,
    pub currency: String,
    pub recipient: Recipient,
}

/// `POST /api/v1/intents`: one intent holding exactly one payment, both under our reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentRequest {
    pub external_id: String,
    pub payments: Vec<PaymentRequest>,
}

/// The intent as frozen at intent time (stored as the payout's submit request). The amount is
/// kept as its decimal text, because a stored JSON value would hold a number as a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenIntent {
    pub reference: String,
    pub amount: String,
    pub currency: String,
    pub recipient: Recipient,
}

impl FrozenIntent {
    pub fn of(money: &Money, destination: &Destination, reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            amount: json_amount::scaled(money).to_string(),
            currency: money.currency().code().to_owned(),
            recipient: Recipient::of(destination),
        }
    }

    /// The request sent on the wire.
    pub fn to_request(&self) -> Result<IntentRequest, String> {
        let amount =
            Decimal::from_str_exact(&self.amount).map_err(|_| "frozen amount is not a decimal".to_owned())?;
        Ok(IntentRequest {
            external_id: self.reference.clone(),
            payments: vec![PaymentRequest {
                external_id: self.reference.clone(),
                amount,
                currency: self.currency.clone(),
                recipient: self.recipient.clone(),
            }],
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAnswer {
    /// The disbursement id: the handle of `GET /api/v1/disbursements/{id}` and of webhooks.
    pub id: String,
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentAnswer {
    pub id: String,
    pub payments: Vec<PaymentAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisbursementAnswer {
    pub id: String,
    pub external_id: String,
    #[serde(serialize_with = "json_amount::write", deserialize_with = "json_amount::read")]
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// The webhook body (given by the guide). Unsigned: payoutd never trusts it for its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorAnswer {
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

impl ErrorAnswer {
    pub fn describe(&self) -> String {
        match (&self.error_code, &self.error_message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "no error code".to_owned(),
        }
    }
}

/// The statuses the sandbox uses for a disbursement still in progress.
pub const STATUS_PROCESSING: &str = "PROCESSING";
pub const STATUS_ACCEPTED: &str = "ACCEPTED";
pub const STATUS_DECLINED: &str = "DECLINED";

/// What a disbursement status means, in one place. `known` is false for a status the guide
/// does not name: it is read as "still processing" and the caller logs it.
pub fn status_of(
    status: &str,
    error_code: Option<&str>,
    error_message: Option<&str>,
) -> (ProviderStatus, bool) {
    match status {
        STATUS_ACCEPTED => (ProviderStatus::Paid, true),
        STATUS_DECLINED => {
            let reason = match (error_code, error_message) {
                (Some(c), Some(m)) => format!("DECLINED {c}: {m}"),
                (Some(c), None) => format!("DECLINED {c}"),
                _ => "DECLINED".to_owned(),
            };
            (ProviderStatus::Failed { reason }, true)
        }
        "NEW" | "CREATED" | "PENDING" | STATUS_PROCESSING => (ProviderStatus::Processing, true),
        _ => (ProviderStatus::Processing, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_body_has_exact_amounts_and_our_reference() {
        let frozen = FrozenIntent {
            reference: "PO1".into(),
            amount: "150000".into(),
            currency: "IDR".into(),
            recipient: Recipient {
                account_number: "123".into(),
                bank_code: "bca".into(),
                name: "Budi".into(),
                phone: "62".into(),
                bic: None,
            },
        };
        let text = serde_json::to_string(&frozen.to_request().expect("request")).expect("json");
        assert_eq!(
            text,
            r#"{"externalId":"PO1","payments":[{"externalId":"PO1","amount":150000,"currency":"IDR","recipient":{"accountNumber":"123","bankCode":"bca","name":"Budi","phone":"62"}}]}"#
        );
    }

    #[test]
    fn the_guides_webhook_bodies_parse() {
        let ok: Webhook = serde_json::from_str(r#"{"status":"ACCEPTED"}"#).expect("accepted");
        assert_eq!(status_of(&ok.status, None, None), (ProviderStatus::Paid, true));
        let no: Webhook = serde_json::from_str(
            r#"{"status":"DECLINED","errorCode":"CODE_PT0002","errorMessage":"Invalid payment details"}"#,
        )
        .expect("declined");
        let (status, known) = status_of(&no.status, no.error_code.as_deref(), no.error_message.as_deref());
        assert!(known);
        assert_eq!(
            status,
            ProviderStatus::Failed { reason: "DECLINED CODE_PT0002: Invalid payment details".into() }
        );
        assert_eq!(status_of("SOMETHING_NEW", None, None), (ProviderStatus::Processing, false));
    }
}
