//! Parsing an enqueue request into a [`NewPayout`]: every field checked, every problem reported
//! with the field's name, so a client can fix all of them at once.

use crate::money::{Currency, Money};

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// The request as the client sent it, every field optional so that parsing can name each
/// missing one. The HTTP layer fills it from JSON (and reports wrong JSON types itself).
#[derive(Debug, Default, Clone)]
pub struct RawNewPayout {
    pub external_id: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub provider: Option<String>,
    pub phone: Option<String>,
    pub client: Option<String>,
    pub destination: Option<String>,
    pub receiver_name: Option<String>,
    pub receiver_bic: Option<String>,
}

/// Where the money goes. The 8B partner API needs all of these but the BIC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Destination {
    /// Recipient's phone (8B: "phone value is not validated").
    pub phone: String,
    /// The crediting account (bank account or card number).
    pub client: String,
    /// The provider's payout destination code (which rail / bank).
    pub destination: String,
    /// Recipient's first and last name.
    pub receiver_name: String,
    /// Receiver bank code, where the destination needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_bic: Option<String>,
}

/// A payout request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayout {
    pub external_id: String,
    pub money: Money,
    pub provider: String,
    pub destination: Destination,
}

/// The provider used when a request names none.
pub const DEFAULT_PROVIDER: &str = "8b_partner";

impl NewPayout {
    /// Checks every field; `known_providers` are the providers this deployment is configured for.
    pub fn parse(raw: RawNewPayout, known_providers: &[&str]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();

        let external_id = required_text(&mut errors, "external_id", raw.external_id, 64);
        if let Some(id) = &external_id
            && !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            errors.push(FieldError::new("external_id", "may contain only letters, digits and - _ . :"));
        }

        let currency = match raw.currency.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(FieldError::new("currency", "is required"));
                None
            }
            Some(code) => match Currency::parse(code) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(FieldError::new("currency", e.to_string()));
                    None
                }
            },
        };

        let money = match (raw.amount.as_deref(), currency) {
            (None, _) => {
                errors.push(FieldError::new("amount", "is required (a decimal string such as \"10.50\")"));
                None
            }
            (Some(amount), Some(currency)) => match Money::parse(amount, currency) {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.push(FieldError::new("amount", e.to_string()));
                    None
                }
            },
            // Without a valid currency the scale cannot be checked; the currency error says why.
            (Some(_), None) => None,
        };

        // Without a named account: the only one configured, else the default account.
        let provider = match raw.provider {
            Some(p) => p,
            None if known_providers.len() == 1 => known_providers[0].to_owned(),
            None => DEFAULT_PROVIDER.to_owned(),
        };
        if !known_providers.contains(&provider.as_str()) {
            errors.push(FieldError::new(
                "provider",
                format!("unknown provider account {provider:?}; configured: {}", known_providers.join(", ")),
            ));
        }

        let phone = required_text(&mut errors, "destination.phone", raw.phone, 32);
        let client = required_text(&mut errors, "destination.client", raw.client, 64);
        let destination = required_text(&mut errors, "destination.destination", raw.destination, 64);
        let receiver_name = required_text(&mut errors, "destination.receiver_name", raw.receiver_name, 128);
        let receiver_bic = match raw.receiver_bic {
            None => None,
            Some(bic) => required_text(&mut errors, "destination.receiver_bic", Some(bic), 32),
        };

        match (external_id, money, phone, client, destination, receiver_name) {
            (
                Some(external_id),
                Some(money),
                Some(phone),
                Some(client),
                Some(destination),
                Some(receiver_name),
            ) if errors.is_empty() => Ok(NewPayout {
                external_id,
                money,
                provider,
                destination: Destination { phone, client, destination, receiver_name, receiver_bic },
            }),
            _ => Err(errors),
        }
    }
}

/// The fields of a payout request as JSON (the body of `POST /v1/payouts`, one line of a
/// JSON-lines batch). `account` names the provider account; `provider` is its older name.
pub const JSON_FIELDS: &[&str] = &["external_id", "amount", "currency", "account", "provider", "destination"];
pub const JSON_DESTINATION_FIELDS: &[&str] =
    &["phone", "client", "destination", "receiver_name", "receiver_bic"];

/// Reads a JSON request object field by field: unknown fields and wrong JSON types are
/// reported here (a field of the wrong type is then passed on as missing); everything else is
/// [`NewPayout::parse`]'s. One reader for the API and for batches, so both name the same
/// problems in the same words.
pub fn raw_from_json(top: &serde_json::Map<String, serde_json::Value>) -> (RawNewPayout, Vec<FieldError>) {
    use serde_json::Value;
    let mut errors = Vec::new();
    unknown_json_fields(top, JSON_FIELDS, "", &mut errors);
    let mut raw = RawNewPayout {
        external_id: json_string(top, "external_id", "external_id", &mut errors),
        amount: json_string(top, "amount", "amount", &mut errors),
        currency: json_string(top, "currency", "currency", &mut errors),
        ..RawNewPayout::default()
    };
    let account = json_string(top, "account", "account", &mut errors);
    let provider = json_string(top, "provider", "provider", &mut errors);
    raw.provider = match (account, provider) {
        (Some(a), Some(p)) if a != p => {
            errors.push(FieldError::new(
                "account",
                "differs from \"provider\" (its older name); send one of them",
            ));
            Some(a)
        }
        (a, p) => a.or(p),
    };
    match top.get("destination") {
        Some(Value::Object(d)) => {
            unknown_json_fields(d, JSON_DESTINATION_FIELDS, "destination.", &mut errors);
            raw.phone = json_string(d, "phone", "destination.phone", &mut errors);
            raw.client = json_string(d, "client", "destination.client", &mut errors);
            raw.destination = json_string(d, "destination", "destination.destination", &mut errors);
            raw.receiver_name = json_string(d, "receiver_name", "destination.receiver_name", &mut errors);
            raw.receiver_bic = json_string(d, "receiver_bic", "destination.receiver_bic", &mut errors);
        }
        Some(_) => errors.push(FieldError::new("destination", "must be an object")),
        None => errors.push(FieldError::new("destination", "is required")),
    }
    (raw, errors)
}

fn json_string(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    use serde_json::Value;
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(_)) if key == "amount" => {
            errors.push(FieldError::new(
                field,
                "must be a decimal string such as \"10.50\" (numbers lose precision)",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn unknown_json_fields(
    obj: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{prefix}{key}"), "unknown field"));
    }
}

/// A required, trimmed, printable text of at most `max` characters.
fn required_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    let Some(value) = value else {
        errors.push(FieldError::new(field, "is required"));
        return None;
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
        return None;
    }
    if value.chars().count() > max {
        errors.push(FieldError::new(field, format!("must be at most {max} characters")));
        return None;
    }
    if value.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must not contain control characters"));
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> RawNewPayout {
        RawNewPayout {
            external_id: Some("ord-1".into()),
            amount: Some("150000".into()),
            currency: Some("IDR".into()),
            provider: None,
            phone: Some("622851280".into()),
            client: Some("1234567890".into()),
            destination: Some("bank_bca".into()),
            receiver_name: Some("Budi Santoso".into()),
            receiver_bic: None,
        }
    }

    const PROVIDERS: &[&str] = &["8b_partner"];

    #[test]
    fn a_valid_request_parses() {
        let p = NewPayout::parse(valid(), PROVIDERS).unwrap();
        assert_eq!(p.money.amount().to_string(), "150000");
        assert_eq!(p.provider, "8b_partner");
    }

    #[test]
    fn every_bad_field_is_named() {
        let raw = RawNewPayout {
            external_id: Some("has space".into()),
            amount: Some("100.5".into()),
            phone: None,
            client: Some("  ".into()),
            provider: Some("nope".into()),
            ..valid()
        };
        let errs = NewPayout::parse(raw, PROVIDERS).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["external_id", "amount", "provider", "destination.phone", "destination.client"]);
        assert!(errs[1].reason.contains("IDR allows at most 0 decimal places"), "{}", errs[1].reason);
    }

    #[test]
    fn missing_currency_is_reported_once() {
        let errs = NewPayout::parse(RawNewPayout { currency: None, ..valid() }, PROVIDERS).unwrap_err();
        assert_eq!(errs, vec![FieldError::new("currency", "is required")]);
    }
}
