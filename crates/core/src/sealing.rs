//! Sealing secrets that payoutd must be able to read back (webhook signing secrets: signing
//! needs the secret itself, so it cannot be hashed). AES-256-GCM under a 32-byte key from
//! configuration; a fresh random 96-bit nonce per seal (secrets are sealed only when created
//! or rotated, far below the bound for random nonces). The caller passes associated data that
//! names the row the secret belongs to, so a sealed value copied onto another row does not open.
//!
//! Layout of a sealed value: nonce (12 bytes) || ciphertext || tag (16 bytes).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealingError {
    #[error("the sealing key must be base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed value does not open with this key (another key, or the value was altered)")]
    Open,
}

/// The key that seals and opens secrets at rest. Never prints.
pub struct SealingKey {
    key: LessSafeKey,
    id: String,
}

impl SealingKey {
    /// From the configured base64 text of 32 bytes.
    pub fn from_base64(text: &Secret) -> Result<Self, SealingError> {
        let bytes = STANDARD.decode(text.expose().trim()).map_err(|_| SealingError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealingError::BadKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealingError::BadKey)?;
        // A short public fingerprint, stored next to each sealed value, so that a wrong key is
        // reported as such instead of as corrupt data.
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { key: LessSafeKey::new(key), id })
    }

    /// A fresh key as configuration text (base64 of 32 random bytes).
    pub fn generate_base64() -> Secret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret::new(STANDARD.encode(bytes))
    }

    /// A fingerprint of the key (not secret).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut in_out = plaintext.to_vec();
        // Sealing fails only for inputs longer than GCM allows (about 64 GiB).
        if self
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut in_out)
            .is_err()
        {
            return Vec::new();
        }
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        sealed
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealingError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealingError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealingError::Open)?;
        let mut in_out = body.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(aad), &mut in_out).map_err(|_| SealingError::Open)?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey(id {}, ***)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_its_row() {
        let key = SealingKey::from_base64(&SealingKey::generate_base64()).unwrap();
        let sealed = key.seal(b"whsec_abc", b"row-1");
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"), "the plaintext must not show");
        assert_eq!(key.open(&sealed, b"row-1").unwrap(), b"whsec_abc");
        assert_eq!(key.open(&sealed, b"row-2"), Err(SealingError::Open), "bound to its row");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(key.open(&altered, b"row-1"), Err(SealingError::Open));
        let other = SealingKey::from_base64(&SealingKey::generate_base64()).unwrap();
        assert_eq!(other.open(&sealed, b"row-1"), Err(SealingError::Open));
        assert_ne!(key.key_id(), other.key_id());
        assert_ne!(key.seal(b"x", b"r"), key.seal(b"x", b"r"), "fresh nonce per seal");
    }

    #[test]
    fn bad_keys_are_refused_and_keys_never_print() {
        assert_eq!(SealingKey::from_base64(&Secret::new("c2hvcnQ=")).unwrap_err(), SealingError::BadKey);
        assert_eq!(SealingKey::from_base64(&Secret::new("not base64!")).unwrap_err(), SealingError::BadKey);
        let text = SealingKey::generate_base64();
        let key = SealingKey::from_base64(&text).unwrap();
        assert!(!format!("{key:?}").contains(text.expose()));
    }
}
