//! The 8B partner's XML answers (payout, check, balance), as the connector reads them.
//!
//! Each input is used twice:
//! 1. as a hostile answer body (lossy UTF-8, like `http::HttpAnswer::body`): parsing and every
//!    accessor the connector calls must not panic, and what they return must be consistent;
//! 2. as the seed of a typed answer, written by the sandbox's writers and read back: the
//!    reader must give back what was written.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use payoutd_providers::eightb_partner::wire::{
    self, ResultCode, WireError, parse_answer, write_balance_answer, write_result_answer,
};
use rust_decimal::Decimal;

const CODES: [ResultCode; 6] = [
    ResultCode::Ok,
    ResultCode::Error,
    ResultCode::Paid,
    ResultCode::NotPaid,
    ResultCode::Processing,
    ResultCode::NotFound,
];

/// A typed answer: what the sandbox writes.
#[derive(Debug, Arbitrary)]
enum Written<'a> {
    Result { id: &'a str, code: u8, error: Option<&'a str> },
    Balance { lo: u32, mid: u32, hi: u32, negative: bool, scale: u8 },
}

fuzz_target!(|data: &[u8]| {
    hostile(&String::from_utf8_lossy(data));
    if let Ok(written) = Written::arbitrary(&mut Unstructured::new(data)) {
        round_trip(written);
    }
});

fn hostile(body: &str) {
    let Ok(answer) = parse_answer(body) else { return };
    // Parsing is a function of the text.
    assert_eq!(parse_answer(body).as_ref(), Ok(&answer));

    match answer.result_code() {
        Ok(code) => {
            let raw = answer.result.as_deref().expect("a result code comes from <result>");
            assert_eq!(code.as_str(), raw.trim(), "result code differs from the <result> text");
            assert_eq!(ResultCode::parse(code.as_str()), Some(code));
            // The table answers for every code and every detail.
            let _ = wire::meaning(code, &answer.detail());
        }
        Err(WireError::Missing(field)) => {
            assert_eq!(field, "result");
            assert!(answer.result.is_none());
        }
        Err(WireError::UnknownResult(raw)) => {
            assert_eq!(answer.result.as_deref(), Some(raw.as_str()));
            assert!(ResultCode::parse(raw.trim()).is_none());
        }
        Err(other) => panic!("result_code returned {other:?}"),
    }

    match answer.balance() {
        Ok(balance) => {
            // What we compare with the payout amount is what the provider wrote.
            let raw = answer.balance.as_deref().expect("a balance comes from <balance>");
            assert_eq!(raw.trim().parse::<Decimal>(), Ok(balance));
            assert_eq!(balance.to_string().parse::<Decimal>(), Ok(balance));
        }
        Err(WireError::Missing(field)) => {
            assert_eq!(field, "balance");
            assert!(answer.balance.is_none());
        }
        Err(WireError::BadBalance(raw)) => assert_eq!(answer.balance.as_deref(), Some(raw.as_str())),
        Err(other) => panic!("balance returned {other:?}"),
    }

    let detail = answer.detail();
    assert_eq!(detail.trim(), detail, "detail is trimmed");
}

/// XML readers turn "\r\n" and a lone "\r" into "\n" (XML 1.0, 2.11); that is all the writer
/// may lose.
fn xml_line_ends(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

fn round_trip(written: Written<'_>) {
    match written {
        Written::Result { id, code, error } => {
            let code = CODES[usize::from(code) % CODES.len()];
            let xml = write_result_answer(id, code, error);
            let answer = parse_answer(&xml).unwrap_or_else(|e| panic!("own answer {xml:?} unreadable: {e}"));
            assert_eq!(answer.id.as_deref(), Some(xml_line_ends(id).as_str()), "{xml:?}");
            assert_eq!(answer.result_code(), Ok(code), "{xml:?}");
            assert_eq!(answer.error, error.map(xml_line_ends), "{xml:?}");
            assert_eq!(answer.balance, None);
        }
        Written::Balance { lo, mid, hi, negative, scale } => {
            let balance = Decimal::from_parts(lo, mid, hi, negative, u32::from(scale) % 29);
            let xml = write_balance_answer(balance);
            let answer = parse_answer(&xml).unwrap_or_else(|e| panic!("own answer {xml:?} unreadable: {e}"));
            let read = answer.balance().unwrap_or_else(|e| panic!("own balance {xml:?} unreadable: {e}"));
            assert_eq!(read, balance, "{xml:?}");
            assert_eq!(read.scale(), balance.scale(), "{xml:?}");
            assert_eq!(answer.result, None);
        }
    }
}
