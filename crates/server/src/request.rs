//! The JSON body of `POST /v1/payouts`, read field by field so that every wrong type, missing
//! field and unknown field is named in one 422 answer.

use payoutd_core::new_payout::RawNewPayout;
use payoutd_core::{FieldError, NewPayout};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const TOP_FIELDS: &[&str] = &["external_id", "amount", "currency", "provider", "destination"];
const DESTINATION_FIELDS: &[&str] = &["phone", "client", "destination", "receiver_name", "receiver_bic"];

/// Parses and validates a body. Malformed JSON is a 400; anything else wrong is a 422.
pub fn parse(body: &[u8], providers: &[&str]) -> Result<NewPayout, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    };
    let mut errors = Vec::new();
    unknown_fields(&top, TOP_FIELDS, "", &mut errors);
    let mut raw = RawNewPayout {
        external_id: string(&top, "external_id", "external_id", &mut errors),
        amount: string(&top, "amount", "amount", &mut errors),
        currency: string(&top, "currency", "currency", &mut errors),
        provider: string(&top, "provider", "provider", &mut errors),
        ..RawNewPayout::default()
    };
    match top.get("destination") {
        Some(Value::Object(d)) => {
            unknown_fields(d, DESTINATION_FIELDS, "destination.", &mut errors);
            raw.phone = string(d, "phone", "destination.phone", &mut errors);
            raw.client = string(d, "client", "destination.client", &mut errors);
            raw.destination = string(d, "destination", "destination.destination", &mut errors);
            raw.receiver_name = string(d, "receiver_name", "destination.receiver_name", &mut errors);
            raw.receiver_bic = string(d, "receiver_bic", "destination.receiver_bic", &mut errors);
        }
        Some(_) => errors.push(FieldError::new("destination", "must be an object")),
        None => errors.push(FieldError::new("destination", "is required")),
    }
    let type_errors: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
    match NewPayout::parse(raw, providers) {
        Ok(p) if errors.is_empty() => Ok(p),
        Ok(_) => Err(ApiError::Invalid(errors)),
        Err(more) => {
            // A field with the wrong JSON type was passed on as missing: report it once.
            // A missing `destination` object is reported once, not once per inner field.
            errors.extend(more.into_iter().filter(|e| {
                !type_errors.iter().any(|t| e.field == *t || e.field.starts_with(&format!("{t}.")))
            }));
            Err(ApiError::Invalid(errors))
        }
    }
}

/// sha256 over a canonical form of the validated request: two bodies that mean the same
/// payout ("10.5" and "10.50") replay; any real difference is a conflict.
pub fn canonical_hash(p: &NewPayout) -> Vec<u8> {
    let canonical = serde_json::json!({
        "external_id": p.external_id,
        "amount": p.money.amount().to_string(),
        "currency": p.money.currency().code(),
        "provider": p.provider,
        "destination": p.destination,
    });
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

fn string(obj: &Map<String, Value>, key: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
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

fn unknown_fields(obj: &Map<String, Value>, known: &[&str], prefix: &str, errors: &mut Vec<FieldError>) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{prefix}{key}"), "unknown field"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[&str] = &["8b_partner"];

    fn fields(r: Result<NewPayout, ApiError>) -> Vec<String> {
        match r {
            Err(ApiError::Invalid(f)) => f.into_iter().map(|e| e.field).collect(),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_named_once() {
        let body = br#"{"external_id": 7, "amount": 10.5, "currency": "USD", "colour": "red",
                        "destination": {"phone": "1", "client": "2", "destination": "x", "receiver_name": "A", "iban": "?"}}"#;
        assert_eq!(fields(parse(body, P)), ["colour", "external_id", "amount", "destination.iban"]);
    }

    #[test]
    fn malformed_json_is_a_400() {
        assert!(matches!(parse(b"{", P), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse(b"[]", P), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn equivalent_amounts_hash_the_same() {
        let a = br#"{"external_id":"e1","amount":"10.5","currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}"#;
        let b = br#"{"external_id":"e1","amount":"10.50","currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}"#;
        let c = br#"{"external_id":"e1","amount":"10.51","currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}"#;
        let h = |b: &[u8]| canonical_hash(&parse(b, P).unwrap());
        assert_eq!(h(a), h(b));
        assert_ne!(h(a), h(c));
    }
}
