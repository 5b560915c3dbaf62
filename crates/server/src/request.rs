//! The JSON body of `POST /v1/payouts`, read field by field so that every wrong type, missing
//! field and unknown field is named in one 422 answer.

use payoutd_core::NewPayout;
use payoutd_core::new_payout;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Parses and validates a body. Malformed JSON is a 400; anything else wrong is a 422.
pub fn parse(body: &[u8], providers: &[&str]) -> Result<NewPayout, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    };
    let (raw, mut errors) = new_payout::raw_from_json(&top);
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

    /// The body the `payout_request_body` fuzz target decoded from its crash input
    /// (fuzz/regressions/payout_request_body/): the decimal type rounded the amount and it was
    /// accepted as 1000000.00 USD. The fix is in `Money::parse`.
    #[test]
    fn an_amount_the_decimal_type_would_round_is_a_422() {
        let body = br#"{"amount":"999999.99999999999999999999999999999999","currency":"USD","destination":{"client":"_","destination":"ie","phone":"(l","receiver_name":"rna"},"external_id":"ord-1"}"#;
        assert_eq!(fields(parse(body, P)), ["amount"]);
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
