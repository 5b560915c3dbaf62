//! 8B REST webhooks: `POST {webhook url}/{transactionId}` with an unsigned JSON body.
//!
//! The webhook URL configured in the provider's portal carries a secret path segment per
//! account, so a request that does not know it is refused without being stored. A request that
//! does is still never trusted for its content (anyone who learnt the URL could forge the
//! body): it names a provider id, and only brings that payout's status query forward.

use subtle::ConstantTimeEq;

use crate::connector::{CallbackVerdict, IncomingCallback};

/// Longest provider id accepted from a path.
const MAX_ID: usize = 128;

/// Checks the secret path segment (constant time) and reads the transaction id after it.
pub fn verify(secret: &str, callback: &IncomingCallback<'_>) -> CallbackVerdict {
    let Some((given, id)) = callback.path.split_once('/') else {
        return CallbackVerdict::NotOurs { reason: "no secret path segment and transaction id".into() };
    };
    if !bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        return CallbackVerdict::NotOurs { reason: "wrong secret path segment".into() };
    }
    if id.is_empty()
        || id.len() > MAX_ID
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return CallbackVerdict::NotOurs { reason: "transaction id is not a plain identifier".into() };
    }
    CallbackVerdict::Unverifiable {
        reason: "8B REST webhooks are unsigned: the status query decides".into(),
        reference: None,
        provider_id: Some(id.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(path: &str) -> CallbackVerdict {
        let headers = reqwest::header::HeaderMap::new();
        verify(
            "s3cret-path-segment",
            &IncomingCallback { path, headers: &headers, body: br#"{"status":"ACCEPTED"}"# },
        )
    }

    #[test]
    fn the_right_secret_names_the_provider_id_and_nothing_else() {
        assert_eq!(
            verdict("s3cret-path-segment/d-42"),
            CallbackVerdict::Unverifiable {
                reason: "8B REST webhooks are unsigned: the status query decides".into(),
                reference: None,
                provider_id: Some("d-42".into()),
            }
        );
    }

    #[test]
    fn a_wrong_or_missing_secret_or_odd_id_is_not_ours() {
        for path in [
            "",
            "d-42",
            "wrong-secret-segment/d-42",
            "s3cret-path-segment/",
            "s3cret-path-segment/a/b",
            "s3cret-path-segment/%2e%2e",
        ] {
            assert!(matches!(verdict(path), CallbackVerdict::NotOurs { .. }), "{path}");
        }
    }
}
