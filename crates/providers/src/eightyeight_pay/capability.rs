//! Capability URLs: the `notification_url` each 88Pay payout is sent with.
//!
//! 88Pay's webhooks carry no signature and 88Pay has no status call, so the webhook is the only
//! way a payout finishes. Each payout gets its own unguessable URL,
//! `{public base}/v1/callbacks/{account}/n/{reference}/{token}`, where the token is
//! HMAC-SHA256(key, account, reference). Nothing about the token is stored: it is recomputed
//! at send time (so every repeat of the request carries the same URL) and on receipt, and
//! compared in constant time. The database holds neither the token nor anything from which it
//! could be rebuilt without the key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use payoutd_core::Secret;
use ring::hmac;
use subtle::ConstantTimeEq;

/// The path segment before the reference, so capability URLs stand apart from other paths.
pub const SEGMENT: &str = "n";

pub struct CapabilityKey(hmac::Key);

impl CapabilityKey {
    pub fn new(secret: &Secret) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()))
    }

    /// The token of one payout's URL.
    pub fn token(&self, account: &str, reference: &str) -> String {
        let message = format!("88pay notification\n{account}\n{reference}");
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, message.as_bytes()).as_ref())
    }

    /// The path below `/v1/callbacks/{account}/`.
    pub fn path(&self, account: &str, reference: &str) -> String {
        format!("{SEGMENT}/{reference}/{}", self.token(account, reference))
    }

    /// The reference a received path is the capability URL of, if the token is valid.
    pub fn check<'p>(&self, account: &str, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(SEGMENT)?.strip_prefix('/')?;
        let (reference, token) = rest.split_once('/')?;
        if reference.is_empty() || token.contains('/') {
            return None;
        }
        let expected = self.token(account, reference);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes())).then_some(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_opens_only_for_its_own_reference_and_account() {
        let key = CapabilityKey::new(&Secret::new("k".repeat(32)));
        let path = key.path("pay-a", "PO1");
        assert_eq!(key.check("pay-a", &path), Some("PO1"));
        assert_eq!(key.check("pay-b", &path), None, "another account");
        let moved = path.replacen("PO1", "PO2", 1);
        assert_eq!(key.check("pay-a", &moved), None, "the token of PO1 does not open PO2");
        let other_key = CapabilityKey::new(&Secret::new("x".repeat(32)));
        assert_eq!(other_key.check("pay-a", &path), None);
        assert_eq!(key.check("pay-a", "n/PO1/"), None);
        assert_eq!(key.check("pay-a", "n/PO1"), None);
        assert_eq!(key.check("pay-a", &format!("{path}/x")), None);
        assert!(key.token("pay-a", "PO1").len() >= 43, "256 bits");
    }
}
