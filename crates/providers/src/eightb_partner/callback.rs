//! Verification of the 8B partner callback: a form-urlencoded POST with
//! `id, dt, amount, result (0/1), error, destination, hash`, where
//! `hash = md5(id + dt + amount + result + destination + secret)`.
//!
//! The signature is recomputed over the field strings exactly as received (after form
//! decoding, before any parsing), so a reformatted amount cannot slip through. Anything that
//! does not verify changes nothing; the engine then asks the provider directly.

use std::str::FromStr;

use payoutd_core::Secret;
use rust_decimal::Decimal;

use super::signature::{sign_callback, signatures_match};
use crate::connector::{CallbackVerdict, ProviderStatus, VerifiedCallback};

/// The fields of one callback, as received.
struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    /// The single value of `name`. A field sent twice is ambiguous, so it counts as unreadable.
    fn get(&self, name: &'static str) -> Result<&str, String> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        match (values.next(), values.next()) {
            (Some(value), None) => Ok(value),
            (None, _) => Err(format!("callback has no {name:?} field")),
            (Some(_), Some(_)) => Err(format!("callback has the {name:?} field more than once")),
        }
    }
}

/// Checks a callback body against `secret` and reads it.
pub fn verify_callback(secret: &Secret, body: &[u8]) -> CallbackVerdict {
    let fields = match serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        Ok(pairs) => Fields { pairs },
        Err(e) => {
            return CallbackVerdict::Unverifiable {
                provider_id: None,
                reason: format!("callback body is not form-urlencoded: {e}"),
                reference: None,
            };
        }
    };
    let reference = fields.get("id").ok().map(str::to_owned);
    match verify_fields(secret, &fields) {
        Ok(callback) => CallbackVerdict::Verified(callback),
        Err(reason) => CallbackVerdict::Unverifiable { reason, reference, provider_id: None },
    }
}

fn verify_fields(secret: &Secret, fields: &Fields) -> Result<VerifiedCallback, String> {
    let id = fields.get("id")?;
    let dt = fields.get("dt")?;
    let amount = fields.get("amount")?;
    let result = fields.get("result")?;
    let destination = fields.get("destination")?;
    let hash = fields.get("hash")?;

    let expected = sign_callback(id, dt, amount, result, destination, secret);
    if !signatures_match(&expected, hash) {
        return Err("callback signature (hash) does not match".to_owned());
    }

    let amount_value = Decimal::from_str(amount.trim())
        .map_err(|_| format!("callback amount {amount:?} is not a decimal"))?;
    let status = match result.trim() {
        "1" => ProviderStatus::Paid,
        "0" => {
            // `error` is described as present "when RESULT <> 0"; tolerate its absence.
            let error = fields.get("error").map(str::trim).unwrap_or("");
            let reason = if error.is_empty() {
                "8B reported the payout failed (no error text)".to_owned()
            } else {
                format!("8B reported the payout failed: {error}")
            };
            ProviderStatus::Failed { reason }
        }
        other => return Err(format!("callback result {other:?} is neither 0 nor 1")),
    };
    // The signature covers id+dt+amount+result+destination run together, so a genuine
    // "...10.50" "1" "bank_bca" re-splits into an equally well signed "...10.5" "0" "1bank_bca".
    // The result must be exactly one of its two values (checked above, untrimmed below), the
    // amount is compared numerically and the destination exactly with what we sent.
    if result != "0" && result != "1" {
        return Err(format!("callback result {result:?} is neither 0 nor 1"));
    }

    Ok(VerifiedCallback {
        reference: id.to_owned(),
        amount: amount_value,
        currency: None,
        identifying: vec![("destination".to_owned(), destination.to_owned())],
        status,
        // The provider may restamp `dt` (and so `hash`) on a redelivery; a payout has one
        // outcome per result value, so id and result identify the notification.
        dedupe_key: format!("{id}:{}", result.trim()),
    })
}

/// The answer body the provider expects: "OK" stops its redeliveries, "ERROR" ends the
/// interaction.
pub fn callback_answer(accepted: bool) -> &'static str {
    if accepted { "OK" } else { "ERROR" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("s3cr3t-key")
    }

    /// A paid callback whose hash (7da2ec66...) was computed with md5sum.
    const PAID: &str = "id=ord-42&dt=2026-11-21+10%3A15%3A00&amount=150000&result=1&error=\
                        &destination=bank_bca&hash=7da2ec664fc87f37f3f1dcf05191040a";

    fn verified(body: &str) -> VerifiedCallback {
        match verify_callback(&secret(), body.as_bytes()) {
            CallbackVerdict::Verified(v) => v,
            other => panic!("expected verified, got {other:?}"),
        }
    }

    fn unverifiable(body: &str) -> (String, Option<String>) {
        match verify_callback(&secret(), body.as_bytes()) {
            CallbackVerdict::Unverifiable { reason, reference, .. } => (reason, reference),
            other => panic!("expected unverifiable, got {other:?}"),
        }
    }

    #[test]
    fn a_paid_callback_verifies() {
        let v = verified(PAID);
        assert_eq!(v.reference, "ord-42");
        assert_eq!(v.amount, Decimal::from(150_000));
        assert_eq!(v.status, ProviderStatus::Paid);
        assert_eq!(v.currency, None);
        assert_eq!(v.identifying, vec![("destination".to_owned(), "bank_bca".to_owned())]);
        assert_eq!(v.dedupe_key, "ord-42:1");
    }

    #[test]
    fn a_failed_callback_carries_the_error_text() {
        // Hash 156192d0... from md5sum over the result=0 concatenation.
        let body = "id=ord-42&dt=2026-11-21%2010:15:00&amount=150000&result=0\
                    &error=account+closed&destination=bank_bca&hash=156192d0f6a6b33b66ea35c5dc111cfe";
        let v = verified(body);
        assert!(
            matches!(v.status, ProviderStatus::Failed { ref reason } if reason.contains("account closed"))
        );
        assert_eq!(v.dedupe_key, "ord-42:0");
    }

    #[test]
    fn field_order_does_not_matter() {
        let body = "hash=7da2ec664fc87f37f3f1dcf05191040a&destination=bank_bca&result=1\
                    &amount=150000&dt=2026-11-21+10:15:00&id=ord-42";
        assert_eq!(verified(body).status, ProviderStatus::Paid);
    }

    #[test]
    fn a_wrong_secret_or_tampered_field_is_unverifiable() {
        match verify_callback(&Secret::new("wrong"), PAID.as_bytes()) {
            CallbackVerdict::Unverifiable { reason, reference, .. } => {
                assert!(reason.contains("signature"), "{reason}");
                assert_eq!(reference.as_deref(), Some("ord-42"));
            }
            other => panic!("{other:?}"),
        }
        // The same amount written differently is a different string, so it must not verify.
        let (reason, _) = unverifiable(&PAID.replace("amount=150000", "amount=150000.00"));
        assert!(reason.contains("signature"), "{reason}");
        let (reason, _) = unverifiable(&PAID.replace("result=1", "result=0"));
        assert!(reason.contains("signature"), "{reason}");
    }

    #[test]
    fn missing_or_repeated_fields_are_named() {
        let (reason, reference) = unverifiable(&PAID.replace("&destination=bank_bca", ""));
        assert!(reason.contains("\"destination\""), "{reason}");
        assert_eq!(reference.as_deref(), Some("ord-42"));

        let (reason, reference) = unverifiable(&PAID.replace("id=ord-42&", ""));
        assert!(reason.contains("\"id\""), "{reason}");
        assert_eq!(reference, None);

        let (reason, _) = unverifiable(&format!("{PAID}&amount=1"));
        assert!(reason.contains("more than once"), "{reason}");
    }

    #[test]
    fn a_result_other_than_0_or_1_is_unverifiable_even_if_signed() {
        // Hash over "ord-42" "2026-11-21 10:15:00" "150000" "2" "bank_bca" "s3cr3t-key",
        // computed with the crate's own signer: the point here is the result check.
        let hash = sign_callback("ord-42", "2026-11-21 10:15:00", "150000", "2", "bank_bca", &secret());
        let body = format!(
            "id=ord-42&dt=2026-11-21+10:15:00&amount=150000&result=2&destination=bank_bca&hash={hash}"
        );
        let (reason, _) = unverifiable(&body);
        assert!(reason.contains("neither 0 nor 1"), "{reason}");
    }

    #[test]
    fn garbage_is_unverifiable() {
        let (_, reference) = unverifiable("");
        assert_eq!(reference, None);
        let (reason, _) = unverifiable("%%%");
        assert!(!reason.is_empty());
    }

    #[test]
    fn answers() {
        assert_eq!(callback_answer(true), "OK");
        assert_eq!(callback_answer(false), "ERROR");
    }
}
