//! The 8B partner control signatures: lowercase hex MD5 over plain concatenations of field
//! values with the partner's secret key last. Pure functions, so the sandbox signs with the
//! very same code the connector verifies with.
//!
//! MD5 is the provider's choice, not ours; it authenticates messages only as well as the secret
//! stays secret.

use md5::{Digest, Md5};
use payoutd_core::Secret;
use subtle::ConstantTimeEq;

/// Lowercase hex MD5 of the concatenation of `parts`.
fn md5_hex(parts: &[&str]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Payout: `md5(id + dt + amount + phone + client + destination + secret)`.
pub fn sign_payout(
    id: &str,
    dt: &str,
    amount: &str,
    phone: &str,
    client: &str,
    destination: &str,
    secret: &Secret,
) -> String {
    md5_hex(&[id, dt, amount, phone, client, destination, secret.expose()])
}

/// Check (status): `md5(id + dt + amount + destination + secret)`.
pub fn sign_check(id: &str, dt: &str, amount: &str, destination: &str, secret: &Secret) -> String {
    md5_hex(&[id, dt, amount, destination, secret.expose()])
}

/// Balance: `md5(dt + secret)`.
pub fn sign_balance(dt: &str, secret: &Secret) -> String {
    md5_hex(&[dt, secret.expose()])
}

/// Callback: `md5(id + dt + amount + result + destination + secret)`.
pub fn sign_callback(
    id: &str,
    dt: &str,
    amount: &str,
    result: &str,
    destination: &str,
    secret: &Secret,
) -> String {
    md5_hex(&[id, dt, amount, result, destination, secret.expose()])
}

/// Registry (`payout_reestr`): `md5(service_id + dt_start + dt_end + secret)`.
pub fn sign_registry(service_id: &str, dt_start: &str, dt_end: &str, secret: &Secret) -> String {
    md5_hex(&[service_id, dt_start, dt_end, secret.expose()])
}

/// Balance statement: `md5(dt_start + dt_end + secret)`.
pub fn sign_balance_statement(dt_start: &str, dt_end: &str, secret: &Secret) -> String {
    md5_hex(&[dt_start, dt_end, secret.expose()])
}

/// Compares a received signature with the expected one in constant time, so response timing
/// does not reveal how many leading characters of a forged hash were right. Hex case is
/// ignored because the spec does not fix it for the sender.
pub fn signatures_match(expected: &str, received: &str) -> bool {
    let received = received.trim().to_ascii_lowercase();
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    //! Expected values were computed outside this code with
    //! `printf '%s' '<concatenation>' | md5sum`.
    use super::*;

    fn secret() -> Secret {
        Secret::new("s3cr3t-key")
    }

    #[test]
    fn md5_of_nothing() {
        assert_eq!(md5_hex(&[]), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn payout_vector() {
        // ord-42 2026-11-21 10:15:00 150000 622851280 123456789 bank_bca s3cr3t-key
        let hash = sign_payout(
            "ord-42",
            "2026-11-21 10:15:00",
            "150000",
            "622851280",
            "123456789",
            "bank_bca",
            &secret(),
        );
        assert_eq!(hash, "88f70b74635c683c29ffce076abd7e09");
    }

    #[test]
    fn payout_vector_with_decimals() {
        // inv-7 2026-01-02 03:04:05 10.50 +1555000111 4111111111111111 card_visa other
        let hash = sign_payout(
            "inv-7",
            "2026-01-02 03:04:05",
            "10.50",
            "+1555000111",
            "4111111111111111",
            "card_visa",
            &Secret::new("other"),
        );
        assert_eq!(hash, "6626b825674fddabc3996811055a2500");
    }

    #[test]
    fn check_vectors() {
        let hash = sign_check("ord-42", "2026-11-21 10:15:00", "150000", "bank_bca", &secret());
        assert_eq!(hash, "8849dfd377b7a9760b5b724f22fbfd0d");
        let hash = sign_check("inv-7", "2026-01-02 03:04:05", "10.50", "card_visa", &Secret::new("other"));
        assert_eq!(hash, "c94bdb3df2a6bec65818e0f53a0197d6");
    }

    #[test]
    fn balance_vector() {
        assert_eq!(sign_balance("2026-11-21 10:15:00", &secret()), "a97104d9e26a83699c4f160933c6ffc2");
    }

    #[test]
    fn callback_vectors() {
        let paid = sign_callback("ord-42", "2026-11-21 10:15:00", "150000", "1", "bank_bca", &secret());
        assert_eq!(paid, "7da2ec664fc87f37f3f1dcf05191040a");
        let failed = sign_callback("ord-42", "2026-11-21 10:15:00", "150000", "0", "bank_bca", &secret());
        assert_eq!(failed, "156192d0f6a6b33b66ea35c5dc111cfe");
    }

    #[test]
    fn registry_vector() {
        let hash = sign_registry("1234", "21.11.2026 00:00", "22.11.2026 00:00", &secret());
        assert_eq!(hash, "74bc4fd01b770863df160ad9b7ba3eb8");
    }

    #[test]
    fn balance_statement_vector() {
        let hash = sign_balance_statement("21.11.2026 00:00", "22.11.2026 00:00", &secret());
        assert_eq!(hash, "a0192d891f592fe485c86eeccc0151f2");
    }

    #[test]
    fn matching_is_exact_but_case_insensitive() {
        let good = "7da2ec664fc87f37f3f1dcf05191040a";
        assert!(signatures_match(good, good));
        assert!(signatures_match(good, "7DA2EC664FC87F37F3F1DCF05191040A"));
        assert!(!signatures_match(good, "7da2ec664fc87f37f3f1dcf05191040b"));
        assert!(!signatures_match(good, "7da2ec664fc87f37f3f1dcf05191040"));
        assert!(!signatures_match(good, ""));
    }
}
