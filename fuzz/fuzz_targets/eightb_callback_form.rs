//! The 8B partner callback: a form-urlencoded body signed with
//! `md5(id + dt + amount + result + destination + secret)`, checked by `verify_callback`.
//!
//! Each input is used twice:
//! 1. as a hostile body: no panic; decoding the body and encoding it again changes nothing;
//!    an unverifiable body names the `id` it claimed only when that id was there once;
//! 2. as the seed of a callback signed by the real signer (fields, field order, percent-encoding,
//!    unknown extra fields chosen by the fuzzer): it verifies and gives back the signed
//!    reference, amount and status, also after decoding and encoding again; and it stops
//!    verifying after any single-byte change of a signed field, a duplicated field or another
//!    secret.

#![no_main]

use std::str::FromStr;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use payoutd_core::Secret;
use payoutd_providers::eightb_partner::signature::sign_callback;
use payoutd_providers::eightb_partner::verify_callback;
use payoutd_providers::{CallbackVerdict, ProviderStatus};
use rust_decimal::Decimal;

const SECRET: &str = "fuzz-s3cr3t";
const KNOWN: [&str; 7] = ["id", "dt", "amount", "result", "error", "destination", "hash"];

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new(SECRET);
    hostile(&secret, data);
    if let Ok(callback) = Callback::arbitrary(&mut Unstructured::new(data)) {
        signed(&secret, &callback);
    }
});

/// The verdict on the body decoded and encoded again (by the form codec, not by us).
fn reencoded(secret: &Secret, body: &[u8]) -> Option<CallbackVerdict> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let again = serde_urlencoded::to_string(&pairs).expect("pairs of strings encode");
    Some(verify_callback(secret, again.as_bytes()))
}

fn hostile(secret: &Secret, body: &[u8]) {
    let verdict = verify_callback(secret, body);
    assert_eq!(verify_callback(secret, body), verdict, "verification is a function of the bytes");
    match serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        Ok(pairs) => {
            assert_eq!(reencoded(secret, body).as_ref(), Some(&verdict), "re-parsing changed the verdict");
            let ids: Vec<&str> = pairs.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.as_str()).collect();
            match &verdict {
                CallbackVerdict::Verified(v) => assert_eq!(ids, [v.reference.as_str()]),
                CallbackVerdict::Unverifiable { reference, .. } => {
                    let claimed = if ids.len() == 1 { Some(ids[0]) } else { None };
                    assert_eq!(reference.as_deref(), claimed);
                }
                CallbackVerdict::NotOurs { reason } => panic!("the body alone is never 'not ours': {reason}"),
            }
        }
        Err(_) => assert!(matches!(verdict, CallbackVerdict::Unverifiable { reference: None, .. })),
    }
}

/// A callback the provider could send.
#[derive(Debug, Arbitrary)]
struct Callback<'a> {
    id: &'a str,
    dt: &'a str,
    amount: Amount<'a>,
    result: Outcome<'a>,
    destination: &'a str,
    error: Option<&'a str>,
    /// Unknown fields the provider may add (names of known fields are skipped).
    extra: Vec<(&'a str, &'a str)>,
    /// Field order (a rotation of the list) and encoding choices.
    rotate: u8,
    encoding: &'a [u8],
    uppercase_hash: bool,
    /// The single-byte change: which signed field, where, and the xor mask.
    change_field: u8,
    change_at: u16,
    change_mask: u8,
}

#[derive(Debug, Arbitrary)]
enum Amount<'a> {
    /// An amount as we format them: integer minor units at the currency's scale.
    Minor {
        units: u64,
        scale: u8,
    },
    Text(&'a str),
}

#[derive(Debug, Arbitrary)]
enum Outcome<'a> {
    Paid,
    Failed,
    Text(&'a str),
}

impl Callback<'_> {
    fn amount(&self) -> String {
        match self.amount {
            Amount::Minor { units, scale } => {
                let units = i64::try_from(units % 1_000_000_000_000_000).expect("below i64::MAX");
                Decimal::new(units, u32::from(scale % 4)).to_string()
            }
            Amount::Text(text) => text.to_owned(),
        }
    }

    fn result(&self) -> &str {
        match self.result {
            Outcome::Paid => "1",
            Outcome::Failed => "0",
            Outcome::Text(text) => text,
        }
    }

    /// The signed fields plus `error`, `hash` and the extras, as raw bytes, in the chosen order.
    fn fields(&self, secret: &Secret) -> Vec<(Vec<u8>, Vec<u8>)> {
        let amount = self.amount();
        let mut hash = sign_callback(self.id, self.dt, &amount, self.result(), self.destination, secret);
        if self.uppercase_hash {
            hash = hash.to_ascii_uppercase();
        }
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"id".to_vec(), self.id.as_bytes().to_vec()),
            (b"dt".to_vec(), self.dt.as_bytes().to_vec()),
            (b"amount".to_vec(), amount.into_bytes()),
            (b"result".to_vec(), self.result().as_bytes().to_vec()),
            (b"destination".to_vec(), self.destination.as_bytes().to_vec()),
            (b"hash".to_vec(), hash.into_bytes()),
        ];
        if let Some(error) = self.error {
            fields.push((b"error".to_vec(), error.as_bytes().to_vec()));
        }
        for (name, value) in &self.extra {
            if !KNOWN.contains(name) {
                fields.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
            }
        }
        let by = usize::from(self.rotate) % fields.len();
        fields.rotate_left(by);
        fields
    }

    /// A body in the chosen percent-encoding (raw or %XX for safe bytes, '+' or %20 for space).
    fn body(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut choices = self.encoding.iter().copied().cycle();
        let mut choice = move || choices.next().unwrap_or(0);
        let mut body = Vec::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                body.push(b'&');
            }
            encode(&mut body, name, &mut choice);
            body.push(b'=');
            encode(&mut body, value, &mut choice);
        }
        body
    }
}

fn encode(out: &mut Vec<u8>, bytes: &[u8], choice: &mut impl FnMut() -> u8) {
    const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        let c = choice();
        if b.is_ascii_alphanumeric() || b"-._*".contains(&b) {
            if c & 1 == 0 {
                out.push(b);
                continue;
            }
        } else if b == b' ' && c & 1 == 0 {
            out.push(b'+');
            continue;
        }
        let hex = if c & 2 == 0 { HEX_UPPER } else { HEX_LOWER };
        out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 0x0f)]]);
    }
}

fn signed(secret: &Secret, callback: &Callback<'_>) {
    let fields = callback.fields(secret);
    let body = callback.body(&fields);
    let verdict = verify_callback(secret, &body);
    let amount = callback.amount();
    let result = callback.result();

    match &verdict {
        CallbackVerdict::Verified(v) => {
            assert_eq!(v.reference, callback.id);
            assert_eq!(Decimal::from_str(amount.trim()).ok(), Some(v.amount), "amount {amount:?}");
            match &v.status {
                ProviderStatus::Paid => assert_eq!(result.trim(), "1"),
                ProviderStatus::Failed { reason } => {
                    assert_eq!(result.trim(), "0");
                    let error = callback.error.unwrap_or("").trim();
                    assert!(reason.contains(error), "{reason:?} lacks {error:?}");
                }
                other => panic!("a callback reported {other:?}"),
            }
        }
        CallbackVerdict::NotOurs { reason } => panic!("the body alone is never 'not ours': {reason}"),
        CallbackVerdict::Unverifiable { reason, reference, .. } => {
            assert_eq!(reference.as_deref(), Some(callback.id));
            // A genuine callback in our amount format with a 0/1 result must verify.
            if matches!(callback.amount, Amount::Minor { .. }) && !matches!(callback.result, Outcome::Text(_))
            {
                panic!(
                    "a genuine callback did not verify: {reason} (body {:?})",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    // Decoding and encoding again changes nothing.
    assert_eq!(
        reencoded(secret, &body).as_ref(),
        Some(&verdict),
        "body {:?}",
        String::from_utf8_lossy(&body)
    );

    let CallbackVerdict::Verified(_) = verdict else { return };

    // Another secret does not verify.
    let other = Secret::new(format!("{SECRET}x"));
    assert!(matches!(verify_callback(&other, &body), CallbackVerdict::Unverifiable { .. }));

    // Any single-byte change of a signed field (or of the hash) does not verify.
    const SIGNED: [&[u8]; 6] = [b"id", b"dt", b"amount", b"result", b"destination", b"hash"];
    let name = SIGNED[usize::from(callback.change_field) % SIGNED.len()];
    let mask = callback.change_mask.max(1);
    let mut changed = fields.clone();
    let field = changed.iter_mut().find(|(n, _)| n.as_slice() == name).expect("field is present");
    let original = field.1.clone();
    if field.1.is_empty() {
        field.1.push(mask);
    } else {
        let at = usize::from(callback.change_at) % field.1.len();
        field.1[at] ^= mask;
    }
    // The hash is compared ignoring case, so a case change of a hex letter is no change.
    let same_hash = name == b"hash" && field.1.eq_ignore_ascii_case(&original);
    let changed_body = callback.body(&changed);
    match verify_callback(secret, &changed_body) {
        CallbackVerdict::Unverifiable { .. } | CallbackVerdict::NotOurs { .. } => {}
        CallbackVerdict::Verified(v) if same_hash => assert_eq!(CallbackVerdict::Verified(v), verdict),
        CallbackVerdict::Verified(v) => panic!(
            "changed {:?} from {original:?} to {:?} and it still verified: {v:?}",
            String::from_utf8_lossy(name),
            field_value(&changed, name),
        ),
    }

    // A signed field sent twice (even with the same value) does not verify.
    let mut twice = fields.clone();
    let repeated = fields.iter().find(|(n, _)| n.as_slice() == name).expect("field is present").clone();
    twice.push(repeated);
    assert!(matches!(
        verify_callback(secret, &callback.body(&twice)),
        CallbackVerdict::Unverifiable { ref reason, .. } if reason.contains("more than once")
    ));
}

fn field_value<'f>(fields: &'f [(Vec<u8>, Vec<u8>)], name: &[u8]) -> &'f [u8] {
    fields.iter().find(|(n, _)| n.as_slice() == name).map_or(&[], |(_, v)| v.as_slice())
}
