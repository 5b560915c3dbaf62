//! Everything the 8B partner API puts on the wire: the payout form we freeze, the XML answers
//! (read by the connector, written by the sandbox), and the one table that says what each
//! result code means.
//!
//! The spec lists answer fields but never shows the XML envelope, so answers are read by
//! element name directly under whatever the root element is, and unknown elements are ignored.

use std::fmt;

use payoutd_core::Secret;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::signature::sign_payout;
use crate::connector::{ProviderError, ProviderStatus, SubmitOutcome};

/// Problems reading what the provider (or our own frozen request) holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unreadable XML answer: {0}")]
    Xml(String),
    #[error("answer has no <{0}> element")]
    Missing(&'static str),
    #[error("unknown result code {0:?}")]
    UnknownResult(String),
    #[error("<balance> is not a decimal: {0:?}")]
    BadBalance(String),
    #[error("frozen payout request is unreadable: {0}")]
    Frozen(String),
}

/// The payout form as frozen at intent time, without the signature. Field names are the
/// provider's; `hash` is added at send time from the secret (see [`SubmitForm::signed_fields`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitForm {
    pub id: String,
    pub dt: String,
    pub amount: String,
    pub currency: String,
    pub phone: String,
    pub client: String,
    pub destination: String,
    pub receiver_fio: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_bic: Option<String>,
}

impl SubmitForm {
    /// The JSON object stored as the frozen body: an object of strings.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, value) in self.unsigned_fields() {
            map.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
        }
        serde_json::Value::Object(map)
    }

    /// Reads a frozen body back.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, WireError> {
        Self::deserialize(value).map_err(|e| WireError::Frozen(e.to_string()))
    }

    /// The form fields in the spec's order, without `hash`.
    pub fn unsigned_fields(&self) -> Vec<(&'static str, &str)> {
        let mut fields = vec![
            ("id", self.id.as_str()),
            ("dt", self.dt.as_str()),
            ("amount", self.amount.as_str()),
            ("currency", self.currency.as_str()),
            ("phone", self.phone.as_str()),
            ("client", self.client.as_str()),
            ("destination", self.destination.as_str()),
            ("receiver_fio", self.receiver_fio.as_str()),
        ];
        if let Some(bic) = &self.receiver_bic {
            fields.push(("receiver_bic", bic.as_str()));
        }
        fields
    }

    /// The signature of this form under `secret`.
    pub fn hash(&self, secret: &Secret) -> String {
        sign_payout(&self.id, &self.dt, &self.amount, &self.phone, &self.client, &self.destination, secret)
    }
}

/// An XML answer of payout, check or balance. Every field is optional here; each call says
/// which ones it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Answer {
    pub id: Option<String>,
    pub result: Option<String>,
    /// Not in the spec's field lists, but error answers commonly carry one of these.
    pub error: Option<String>,
    pub description: Option<String>,
    pub message: Option<String>,
    pub balance: Option<String>,
    pub currency_rate: Option<String>,
    pub payout_amount: Option<String>,
}

/// Parses an XML answer; the root element's name does not matter.
pub fn parse_answer(xml: &str) -> Result<Answer, WireError> {
    quick_xml::de::from_str::<Answer>(xml).map_err(|e| WireError::Xml(e.to_string()))
}

impl Answer {
    /// The result code, required in payout and check answers.
    pub fn result_code(&self) -> Result<ResultCode, WireError> {
        let raw = self.result.as_deref().ok_or(WireError::Missing("result"))?;
        ResultCode::parse(raw.trim()).ok_or_else(|| WireError::UnknownResult(raw.to_owned()))
    }

    /// The balance, required in a balance answer.
    pub fn balance(&self) -> Result<Decimal, WireError> {
        let raw = self.balance.as_deref().ok_or(WireError::Missing("balance"))?;
        raw.trim().parse::<Decimal>().map_err(|_| WireError::BadBalance(raw.to_owned()))
    }

    /// Whatever explanation the answer carries, for rejection reasons.
    pub fn detail(&self) -> String {
        [&self.error, &self.description, &self.message]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The `result` codes of payout and check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultCode {
    Ok,
    Error,
    Paid,
    NotPaid,
    Processing,
    NotFound,
}

impl ResultCode {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "OK" => Self::Ok,
            "ERROR" => Self::Error,
            "PAID" => Self::Paid,
            "NOT_PAID" => Self::NotPaid,
            "PROCESSING" => Self::Processing,
            "NOT_FOUND" => Self::NotFound,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Error => "ERROR",
            Self::Paid => "PAID",
            Self::NotPaid => "NOT_PAID",
            Self::Processing => "PROCESSING",
            Self::NotFound => "NOT_FOUND",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one result code means, in the answer to a payout call and to a check call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meaning {
    pub submit: SubmitOutcome,
    pub status: Result<ProviderStatus, ProviderError>,
}

/// The result-code table: the only place that decides what the provider's codes mean.
/// `detail` is the answer's own explanation, if any.
pub fn meaning(code: ResultCode, detail: &str) -> Meaning {
    let because = |fallback: &str| {
        if detail.is_empty() {
            format!("8B answered {code}: {fallback}")
        } else {
            format!("8B answered {code}: {detail}")
        }
    };
    match code {
        // Payout: "request received successfully"; not final either way.
        ResultCode::Ok | ResultCode::Processing => Meaning {
            submit: SubmitOutcome::Accepted { provider_id: None },
            status: Ok(ProviderStatus::Processing),
        },
        ResultCode::Paid => {
            Meaning { submit: SubmitOutcome::Paid { provider_id: None }, status: Ok(ProviderStatus::Paid) }
        }
        ResultCode::NotPaid => Meaning {
            submit: SubmitOutcome::Rejected { reason: because("transaction failed") },
            status: Ok(ProviderStatus::Failed { reason: because("transaction failed") }),
        },
        // "An error occurred and interaction should stop": the request itself was refused.
        ResultCode::Error => Meaning {
            submit: SubmitOutcome::Rejected { reason: because("request refused") },
            status: Err(ProviderError::Refused { reason: because("request refused") }),
        },
        // Not a documented payout answer, so whether it executed is unknown.
        ResultCode::NotFound => Meaning {
            submit: SubmitOutcome::InDoubt { reason: because("unexpected answer to a payout") },
            status: Ok(ProviderStatus::NotFound),
        },
    }
}

/// The XML declaration the writers put first.
const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Writes a payout or check answer: `<response><id/><result/>[<error/>]</response>`.
pub fn write_result_answer(id: &str, code: ResultCode, error: Option<&str>) -> String {
    let mut xml = format!(
        "{XML_DECLARATION}<response><id>{}</id><result>{}</result>",
        quick_xml::escape::escape(id),
        code.as_str()
    );
    if let Some(error) = error {
        xml.push_str(&format!("<error>{}</error>", quick_xml::escape::escape(error)));
    }
    xml.push_str("</response>");
    xml
}

/// Writes a balance answer: `<response><balance>0.00</balance></response>`.
pub fn write_balance_answer(balance: Decimal) -> String {
    format!("{XML_DECLARATION}<response><balance>{balance}</balance></response>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> SubmitForm {
        SubmitForm {
            id: "ord-42".into(),
            dt: "2026-11-21 10:15:00".into(),
            amount: "150000".into(),
            currency: "IDR".into(),
            phone: "622851280".into(),
            client: "123456789".into(),
            destination: "bank_bca".into(),
            receiver_fio: "Budi Santoso".into(),
            receiver_bic: None,
        }
    }

    #[test]
    fn frozen_form_round_trips_as_an_object_of_strings() {
        let json = form().to_json();
        assert_eq!(json["amount"], "150000");
        assert!(json.get("hash").is_none());
        assert!(json.get("receiver_bic").is_none());
        assert!(json.as_object().expect("object").values().all(|v| v.is_string()));
        assert_eq!(SubmitForm::from_json(&json), Ok(form()));

        let with_bic = SubmitForm { receiver_bic: Some("CENAIDJA".into()), ..form() };
        assert_eq!(with_bic.to_json()["receiver_bic"], "CENAIDJA");
        assert_eq!(SubmitForm::from_json(&with_bic.to_json()), Ok(with_bic));
    }

    #[test]
    fn a_broken_frozen_body_is_an_error_not_a_panic() {
        let err = SubmitForm::from_json(&serde_json::json!({"id": "x"})).unwrap_err();
        assert!(matches!(err, WireError::Frozen(_)));
    }

    #[test]
    fn form_hash_uses_the_payout_signature() {
        // Same vector as signature::tests::payout_vector (from md5sum).
        assert_eq!(form().hash(&Secret::new("s3cr3t-key")), "88f70b74635c683c29ffce076abd7e09");
    }

    #[test]
    fn answers_are_read_under_any_root_and_unknown_elements_are_skipped() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
            <response>
              <id>ord-42</id>
              <extra><nested a="1">x</nested></extra>
              <result>PAID</result>
              <currency_rate>0.01638</currency_rate>
            </response>"#;
        let answer = parse_answer(xml).expect("parses");
        assert_eq!(answer.id.as_deref(), Some("ord-42"));
        assert_eq!(answer.result_code(), Ok(ResultCode::Paid));
        assert_eq!(answer.currency_rate.as_deref(), Some("0.01638"));

        let other_root = parse_answer("<payout><result>OK</result></payout>").expect("parses");
        assert_eq!(other_root.result_code(), Ok(ResultCode::Ok));
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(parse_answer("<html><body>502 Bad Gateway").is_err());
        assert_eq!(
            parse_answer("<response><id>1</id></response>").expect("xml").result_code(),
            Err(WireError::Missing("result"))
        );
        assert_eq!(
            parse_answer("<r><result>MAYBE</result></r>").expect("xml").result_code(),
            Err(WireError::UnknownResult("MAYBE".into()))
        );
        assert!(matches!(
            parse_answer("<r><balance>lots</balance></r>").expect("xml").balance(),
            Err(WireError::BadBalance(_))
        ));
    }

    #[test]
    fn every_result_code_parses_and_prints() {
        for code in [
            ResultCode::Ok,
            ResultCode::Error,
            ResultCode::Paid,
            ResultCode::NotPaid,
            ResultCode::Processing,
            ResultCode::NotFound,
        ] {
            assert_eq!(ResultCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ResultCode::parse("ok"), None);
    }

    #[test]
    fn the_result_table() {
        let m = meaning(ResultCode::Ok, "");
        assert_eq!(
            (m.submit, m.status),
            (SubmitOutcome::Accepted { provider_id: None }, Ok(ProviderStatus::Processing))
        );
        let m = meaning(ResultCode::Processing, "");
        assert_eq!(
            (m.submit, m.status),
            (SubmitOutcome::Accepted { provider_id: None }, Ok(ProviderStatus::Processing))
        );
        let m = meaning(ResultCode::Paid, "");
        assert_eq!(
            (m.submit, m.status),
            (SubmitOutcome::Paid { provider_id: None }, Ok(ProviderStatus::Paid))
        );
        let m = meaning(ResultCode::NotPaid, "insufficient funds");
        assert!(
            matches!(m.submit, SubmitOutcome::Rejected { ref reason } if reason.contains("insufficient funds"))
        );
        assert!(matches!(m.status, Ok(ProviderStatus::Failed { .. })));
        let m = meaning(ResultCode::Error, "bad hash");
        assert!(matches!(m.submit, SubmitOutcome::Rejected { ref reason } if reason.contains("bad hash")));
        assert!(
            matches!(m.status, Err(ProviderError::Refused { ref reason }) if reason.contains("bad hash"))
        );
        let m = meaning(ResultCode::NotFound, "");
        assert!(matches!(m.submit, SubmitOutcome::InDoubt { .. }));
        assert_eq!(m.status, Ok(ProviderStatus::NotFound));
    }

    #[test]
    fn detail_joins_the_explanations() {
        let answer = parse_answer(
            "<response><result>ERROR</result><error>bad hash</error><description> check the key </description></response>",
        )
        .expect("xml");
        assert_eq!(answer.detail(), "bad hash; check the key");
        assert_eq!(Answer::default().detail(), "");
    }

    #[test]
    fn writers_escape_text_and_read_back() {
        let xml = write_result_answer("a<b&c", ResultCode::Error, Some("\"bad\" <hash> & 'more'"));
        assert!(xml.starts_with("<?xml"));
        assert!(!xml.contains("a<b"));
        let answer = parse_answer(&xml).expect("parses");
        assert_eq!(answer.id.as_deref(), Some("a<b&c"));
        assert_eq!(answer.error.as_deref(), Some("\"bad\" <hash> & 'more'"));
        assert_eq!(answer.result_code(), Ok(ResultCode::Error));

        let balance = write_balance_answer(Decimal::new(12345, 2));
        assert_eq!(parse_answer(&balance).expect("parses").balance(), Ok(Decimal::new(12345, 2)));
        assert!(balance.ends_with("<response><balance>123.45</balance></response>"));
    }
}
