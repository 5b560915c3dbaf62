//! Webhooks to backends: which events payoutd sends, and how each request is signed.
//!
//! The signature follows Standard Webhooks, so a receiver can verify it with that project's
//! libraries or with a few lines of its own:
//! - `webhook-id`: the event id. It is the same on every attempt of one event, so receivers
//!   deduplicate on it (delivery is at least once).
//! - `webhook-timestamp`: Unix seconds when this attempt was signed. Receivers reject requests
//!   whose timestamp is too far from their clock (replays); see [`verify`].
//! - `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))
//!   over the exact body bytes; the key is the base64 part of the secret after `whsec_`.
//!   During a secret rotation's overlap the header carries one signature per secret, separated
//!   by a space; a receiver accepts the request when any of them verifies.
//!
//! Pure functions only: nothing here does I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use ring::hmac;

use crate::PayoutState;
use crate::secret::Secret;

/// Header names, lower case (HTTP header names are case-insensitive).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Every secret starts with this (the Standard Webhooks convention), so scanners find leaks.
pub const SECRET_PREFIX: &str = "whsec_";

/// The events a backend can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PayoutPaid,
    PayoutFailed,
    /// Defined for receivers; nothing produces it until payoutd can cancel payouts.
    PayoutCancelled,
    PayoutNeedsReview,
    /// A parked payout was resolved: by the provider's verified answer or by a person.
    PayoutResolved,
    /// Every payout of a mass-payout batch is final (written once, in the transaction of the
    /// last one's final transition).
    BatchCompleted,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::PayoutPaid,
        Self::PayoutFailed,
        Self::PayoutCancelled,
        Self::PayoutNeedsReview,
        Self::PayoutResolved,
        Self::BatchCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PayoutPaid => "payout.paid",
            Self::PayoutFailed => "payout.failed",
            Self::PayoutCancelled => "payout.cancelled",
            Self::PayoutNeedsReview => "payout.needs_review",
            Self::PayoutResolved => "payout.resolved",
            Self::BatchCompleted => "batch.completed",
        }
    }

    /// The event a payout entering `state` produces: its final state, or needs_review.
    pub fn for_state(state: PayoutState) -> Option<EventType> {
        match state {
            PayoutState::Paid => Some(Self::PayoutPaid),
            PayoutState::Failed => Some(Self::PayoutFailed),
            PayoutState::Cancelled => Some(Self::PayoutCancelled),
            PayoutState::NeedsReview => Some(Self::PayoutNeedsReview),
            _ => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown webhook event type {0:?}; known: payout.paid, payout.failed, payout.cancelled, payout.needs_review, payout.resolved, batch.completed"
)]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// A webhook signing secret (`whsec_` + base64 of 32 random bytes). It never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    text: Secret,
    key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret is \"whsec_\" followed by base64 of 24 to 64 bytes")]
    Malformed,
}

impl WebhookSecret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let text = Secret::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(&key)));
        Self { text, key }
    }

    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::Malformed)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Malformed)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Malformed);
        }
        Ok(Self { text: Secret::new(text), key })
    }

    /// The `whsec_...` text: shown once to whoever created the endpoint, then only sealed.
    pub fn expose(&self) -> &str {
        self.text.expose()
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.key)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + 24 + body.len());
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// One signature, `v1,<base64>`.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac::sign(&secret.hmac_key(), &signed_content(id, timestamp, body));
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// The `webhook-signature` value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| sign(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance (a replay, or a clock far off)")]
    OutsideTolerance,
    #[error("no signature in webhook-signature matches")]
    NoMatch,
}

/// What a receiver does: checks the timestamp against `now` (Unix seconds) within
/// `tolerance`, then accepts when any `v1` signature of the header verifies (constant-time).
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(ts) > tolerance.unsigned_abs() {
        return Err(VerifyError::OutsideTolerance);
    }
    let content = signed_content(id, ts, body);
    let key = secret.hmac_key();
    let matched = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|tag| hmac::verify(&key, &content, &tag).is_ok());
    if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_accepts_any_matching_signature_and_rejects_replays_and_tampering() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let body = br#"{"id":"e1"}"#;
        let header = signature_header(&[new.clone(), old.clone()], "e1", 1_000, body);
        let tol = Duration::from_secs(300);
        assert_eq!(verify(&old, "e1", "1000", &header, body, 1_100, tol), Ok(()));
        assert_eq!(verify(&new, "e1", "1000", &header, body, 1_100, tol), Ok(()));
        let other = WebhookSecret::generate();
        assert_eq!(verify(&other, "e1", "1000", &header, body, 1_100, tol), Err(VerifyError::NoMatch));
        assert_eq!(verify(&new, "e1", "1000", &header, b"{}", 1_100, tol), Err(VerifyError::NoMatch));
        assert_eq!(verify(&new, "e2", "1000", &header, body, 1_100, tol), Err(VerifyError::NoMatch));
        assert_eq!(verify(&new, "e1", "1000", &header, body, 2_000, tol), Err(VerifyError::OutsideTolerance));
        assert_eq!(verify(&new, "e1", "x", &header, body, 1_000, tol), Err(VerifyError::BadTimestamp));
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with(SECRET_PREFIX));
        assert_eq!(WebhookSecret::parse(s.expose()).unwrap(), s);
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(WebhookSecret::parse("whsec_short").is_err());
        assert!(WebhookSecret::parse("nope").is_err());
    }

    #[test]
    fn event_types_parse_and_map_states() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert_eq!("batch.completed".parse::<EventType>(), Ok(EventType::BatchCompleted));
        assert!("batch.created".parse::<EventType>().is_err());
        assert_eq!(EventType::for_state(PayoutState::Paid), Some(EventType::PayoutPaid));
        assert_eq!(EventType::for_state(PayoutState::NeedsReview), Some(EventType::PayoutNeedsReview));
        assert_eq!(EventType::for_state(PayoutState::Submitted), None);
    }
}
