//! Mass-payout batch files: CSV with a header row, or JSON lines. Parsing is pure and checks
//! every row before anything is stored, so a rejected file is answered with EVERY bad row at
//! once (row number, column, reason) and never silently loses one.
//!
//! Each row becomes a [`NewPayout`] through [`NewPayout::parse`], the very function behind
//! `POST /v1/payouts`: a batch row and a single payout are validated identically. On top of
//! that a file is checked as a whole: its size and row count against [`BatchLimits`], and
//! external ids used twice inside it (the store then checks them against existing payouts).
//!
//! Row numbers count data rows from 1: in a CSV file the header is not a row (row 1 is the
//! line after it); in a JSON-lines file row N is line N, and blank lines are skipped but still
//! counted, so a row number always finds its line.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::new_payout::{FieldError, NewPayout, RawNewPayout};

/// The CSV columns, in the documented order. `account` and `receiver_bic` may be left out (the
/// column or the cell); every other column must be present.
pub const CSV_COLUMNS: &[&str] = &[
    "external_id",
    "account",
    "amount",
    "currency",
    "phone",
    "client",
    "destination",
    "receiver_name",
    "receiver_bic",
];

/// Columns a CSV file must have.
const REQUIRED_COLUMNS: &[&str] =
    &["external_id", "amount", "currency", "phone", "client", "destination", "receiver_name"];

/// The bound on what a single problem report lists, so that a million-row file of garbage does
/// not produce a million-line answer. The answer says when it was cut.
pub const MAX_REPORTED_ERRORS: usize = 10_000;

/// How a batch file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    Csv,
    JsonLines,
}

impl BatchFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }

    /// The format a content type names (`text/csv`, `application/x-ndjson`, `application/jsonl`,
    /// `application/json-lines`), else the one the first non-blank byte suggests (`{`: JSON
    /// lines).
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Self {
        let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("text/csv") | Some("application/csv") => Self::Csv,
            Some("application/x-ndjson")
            | Some("application/ndjson")
            | Some("application/jsonl")
            | Some("application/json-lines")
            | Some("application/jsonlines") => Self::JsonLines,
            _ => match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Self::JsonLines,
                _ => Self::Csv,
            },
        }
    }
}

/// How large a batch may be. Both limits are stated in the error that refuses a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { max_rows: 10_000, max_bytes: 16 * 1024 * 1024 }
    }
}

/// One problem with one row. `row` 0 is the file itself (its header, its size).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub row: u32,
    pub column: String,
    pub reason: String,
}

impl RowError {
    pub fn new(row: u32, column: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { row, column: column.into(), reason: reason.into() }
    }
}

/// A row that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The row number (see the module documentation).
    pub row: u32,
    pub payout: NewPayout,
}

/// Why a file was refused. Nothing of it may be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchRejection {
    #[error("the file is {bytes} bytes; the limit is {max_bytes} bytes ([batches] max_bytes)")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("the file has {rows} rows; the limit is {max_rows} rows ([batches] max_rows)")]
    TooManyRows { rows: usize, max_rows: usize },
    #[error("the file has no rows")]
    Empty,
    /// Every bad row, in row order (at most [`MAX_REPORTED_ERRORS`]; `truncated` says so).
    #[error("{} row problem(s)", errors.len())]
    Invalid { errors: Vec<RowError>, rows: usize, truncated: bool },
}

/// A further check of each valid row; returns its problems (none: the row passes).
pub type RowCheck<'a> = dyn Fn(&NewPayout) -> Vec<FieldError> + Sync + 'a;

/// What parsing needs to know about the deployment and the request.
pub struct ParseOptions<'a> {
    /// The configured provider accounts.
    pub accounts: &'a [&'a str],
    /// The account of rows that name none (`--account`); else the single-payout default.
    pub default_account: Option<&'a str>,
    pub limits: BatchLimits,
    /// A further check of each valid row (the client's limits); its errors are reported with
    /// the row's number like every other.
    pub row_check: Option<&'a RowCheck<'a>>,
}

/// Parses and checks a whole file.
pub fn parse(
    body: &[u8],
    format: BatchFormat,
    options: &ParseOptions<'_>,
) -> Result<Vec<BatchRow>, BatchRejection> {
    if body.len() > options.limits.max_bytes {
        return Err(BatchRejection::TooLarge { bytes: body.len(), max_bytes: options.limits.max_bytes });
    }
    let mut report = Report::default();
    let raw_rows = match format {
        BatchFormat::Csv => csv_rows(body, &mut report),
        BatchFormat::JsonLines => json_rows(body, &mut report),
    };
    // Counted before anything else is judged: a file over the limit is refused as such, not
    // with the first 10,000 of its row errors.
    let rows = raw_rows.len();
    if rows > options.limits.max_rows {
        return Err(BatchRejection::TooManyRows { rows, max_rows: options.limits.max_rows });
    }
    if rows == 0 && report.errors.is_empty() {
        return Err(BatchRejection::Empty);
    }
    let mut accepted = Vec::with_capacity(rows);
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(rows);
    for RawRow { row, raw, names } in raw_rows {
        let raw = match raw {
            Some(raw) => {
                let mut raw = raw;
                if raw.provider.is_none() {
                    raw.provider = options.default_account.map(str::to_owned);
                }
                raw
            }
            None => continue,
        };
        match NewPayout::parse(raw, options.accounts) {
            Ok(payout) => {
                let extra = options.row_check.map(|check| check(&payout)).unwrap_or_default();
                let mut ok = extra.is_empty();
                for e in extra {
                    report.push(RowError::new(row, names.column(&e.field), e.reason));
                }
                match seen.get(&payout.external_id) {
                    Some(first) => {
                        ok = false;
                        report.push(RowError::new(
                            row,
                            "external_id",
                            format!("duplicate external_id {:?}: also on row {first}", payout.external_id),
                        ));
                    }
                    None => {
                        seen.insert(payout.external_id.clone(), row);
                    }
                }
                if ok {
                    accepted.push(BatchRow { row, payout });
                }
            }
            Err(errors) => {
                for e in errors {
                    report.push(RowError::new(row, names.column(&e.field), e.reason));
                }
            }
        }
    }
    if report.errors.is_empty() && report.dropped == 0 {
        Ok(accepted)
    } else {
        report.errors.sort_by_key(|e| e.row);
        Err(BatchRejection::Invalid { errors: report.errors, rows, truncated: report.dropped > 0 })
    }
}

/// Row problems, bounded.
#[derive(Default)]
struct Report {
    errors: Vec<RowError>,
    dropped: usize,
}

impl Report {
    fn push(&mut self, e: RowError) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(e);
        } else {
            self.dropped += 1;
        }
    }
}

/// How the fields of [`NewPayout::parse`] are called in a file of this kind.
#[derive(Clone, Copy)]
enum Names {
    Csv,
    Json,
}

impl Names {
    fn column(self, field: &str) -> String {
        match self {
            // The CSV header is flat: "destination.phone" is the column "phone", and the
            // account column is "account" (the parser's older name for it is "provider").
            Self::Csv => match field {
                "provider" => "account".to_owned(),
                f => f.strip_prefix("destination.").unwrap_or(f).to_owned(),
            },
            Self::Json => match field {
                "provider" => "account".to_owned(),
                f => f.to_owned(),
            },
        }
    }
}

/// One row as read: `raw` is `None` when the row could not be read at all (its error is
/// already reported).
struct RawRow {
    row: u32,
    raw: Option<RawNewPayout>,
    names: Names,
}

fn row_number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn csv_rows(body: &[u8], report: &mut Report) -> Vec<RawRow> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(body);
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim().to_ascii_lowercase()).collect(),
        Err(e) => {
            report.push(RowError::new(0, "header", format!("the header row cannot be read: {e}")));
            return Vec::new();
        }
    };
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut header_ok = true;
    for (i, name) in header.iter().enumerate() {
        if !CSV_COLUMNS.contains(&name.as_str()) {
            header_ok = false;
            report.push(RowError::new(
                0,
                name.clone(),
                format!("unknown column; the columns are {}", CSV_COLUMNS.join(",")),
            ));
        } else if index.insert(name.as_str(), i).is_some() {
            header_ok = false;
            report.push(RowError::new(0, name.clone(), "column given twice"));
        }
    }
    for required in REQUIRED_COLUMNS {
        if !index.contains_key(required) {
            header_ok = false;
            report.push(RowError::new(0, *required, "missing column"));
        }
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut n = 0usize;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                n += 1;
                let row = row_number(n);
                // A line holding nothing at all is not a row someone meant to pay.
                if record.len() == 1 && record.get(0).is_some_and(|c| c.trim().is_empty()) {
                    report.push(RowError::new(row, "row", "empty row"));
                    rows.push(RawRow { row, raw: None, names: Names::Csv });
                    continue;
                }
                if record.len() != header.len() {
                    report.push(RowError::new(
                        row,
                        "row",
                        format!("has {} cells; the header has {}", record.len(), header.len()),
                    ));
                    rows.push(RawRow { row, raw: None, names: Names::Csv });
                    continue;
                }
                if !header_ok {
                    rows.push(RawRow { row, raw: None, names: Names::Csv });
                    continue;
                }
                let cell = |name: &str| -> Option<String> {
                    index.get(name).and_then(|&i| record.get(i)).map(str::to_owned)
                };
                // An empty optional cell means "not given"; an empty required one is reported
                // by the parser ("must not be empty").
                let optional = |name: &str| cell(name).filter(|v| !v.trim().is_empty());
                let raw = RawNewPayout {
                    external_id: cell("external_id"),
                    amount: cell("amount"),
                    currency: cell("currency"),
                    provider: optional("account"),
                    phone: cell("phone"),
                    client: cell("client"),
                    destination: cell("destination"),
                    receiver_name: cell("receiver_name"),
                    receiver_bic: optional("receiver_bic"),
                };
                rows.push(RawRow { row, raw: Some(raw), names: Names::Csv });
            }
            Err(e) => {
                // A malformed record (bad quoting, invalid UTF-8): reported, and the reader goes
                // on with the next one, so one bad line does not hide the others.
                n += 1;
                let row = row_number(n);
                report.push(RowError::new(row, "row", format!("cannot be read as CSV: {e}")));
                rows.push(RawRow { row, raw: None, names: Names::Csv });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
            }
        }
    }
    rows
}

fn json_rows(body: &[u8], report: &mut Report) -> Vec<RawRow> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut rows = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let row = row_number(i + 1);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let raw = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(obj)) => json_row(row, &obj, report),
            Ok(_) => {
                report.push(RowError::new(row, "row", "must be a JSON object"));
                None
            }
            Err(e) => {
                report.push(RowError::new(row, "row", format!("is not valid JSON: {e}")));
                None
            }
        };
        rows.push(RawRow { row, raw, names: Names::Json });
    }
    rows
}

/// One JSON line, read field by field as `POST /v1/payouts` reads its body: wrong types and
/// unknown fields are reported here, everything else by [`NewPayout::parse`]. A row with a
/// type error goes no further (the parser would report the field again as missing).
fn json_row(row: u32, top: &Map<String, Value>, report: &mut Report) -> Option<RawNewPayout> {
    let (raw, errors) = crate::new_payout::raw_from_json(top);
    if errors.is_empty() {
        Some(raw)
    } else {
        errors.into_iter().for_each(|e| report.push(RowError::new(row, e.field, e.reason)));
        None
    }
}

/// Writes a CSV document: `header`, then one line per row (quoted where a cell needs it).
pub fn write_csv<I>(header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = Vec<String>>,
{
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing into a Vec cannot fail; a row that would not write is left out rather than
    // panicking, and the header row's count makes that visible.
    let _ = writer.write_record(header);
    for row in rows {
        let _ = writer.write_record(&row);
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNTS: &[&str] = &["8b_partner", "rest-main"];
    const HEADER: &str =
        "external_id,account,amount,currency,phone,client,destination,receiver_name,receiver_bic\n";

    fn options() -> ParseOptions<'static> {
        ParseOptions {
            accounts: ACCOUNTS,
            default_account: None,
            limits: BatchLimits::default(),
            row_check: None,
        }
    }

    fn csv(rows: &[&str]) -> Vec<u8> {
        let mut s = HEADER.to_owned();
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s.into_bytes()
    }

    fn errors(r: Result<Vec<BatchRow>, BatchRejection>) -> Vec<(u32, String)> {
        match r {
            Err(BatchRejection::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| (e.row, e.column)).collect()
            }
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_csv_parses_with_row_numbers_from_one() {
        let body = csv(&[
            "a-1,8b_partner,150000,IDR,622851280,1234567890,bank_bca,Budi Santoso,",
            "a-2,,10.50,USD,1,2,bank_x,\"Doe, Jane\",CENAIDJA",
        ]);
        let rows = parse(&body, BatchFormat::Csv, &options()).expect("valid");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].row, rows[1].row), (1, 2));
        assert_eq!(rows[1].payout.destination.receiver_name, "Doe, Jane");
        assert_eq!(rows[1].payout.destination.receiver_bic.as_deref(), Some("CENAIDJA"));
        // No account: the single-payout default (two accounts configured: 8b_partner).
        assert_eq!(rows[1].payout.provider, "8b_partner");
    }

    #[test]
    fn the_default_account_applies_to_rows_without_one() {
        let body = csv(&["a-1,,1,USD,1,2,x,A,"]);
        let opts = ParseOptions { default_account: Some("rest-main"), ..options() };
        let rows = parse(&body, BatchFormat::Csv, &opts).expect("valid");
        assert_eq!(rows[0].payout.provider, "rest-main");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_column() {
        let body = csv(&[
            "ok-1,,1,USD,1,2,x,A,",
            "bad id,,1,USD,1,2,x,A,",
            "ok-2,nope,1.234,USD,1,2,x,A,",
            "ok-3,,1,USD,,2,x,A,",
            "ok-1,,1,USD,1,2,x,A,",
            "too,few",
            "ok-4,,1,XXX,1,2,x,A,",
        ]);
        assert_eq!(
            errors(parse(&body, BatchFormat::Csv, &options())),
            [
                (2, "external_id".to_owned()),
                (3, "amount".to_owned()),
                (3, "account".to_owned()),
                (4, "phone".to_owned()),
                (5, "external_id".to_owned()),
                (6, "row".to_owned()),
                (7, "currency".to_owned()),
            ]
        );
    }

    #[test]
    fn header_problems_are_row_zero() {
        let body = b"external_id,amount,currency,phone,client,destination,colour\nx,1,USD,1,2,x,red\n";
        let errs = errors(parse(body, BatchFormat::Csv, &options()));
        assert!(errs.contains(&(0, "colour".to_owned())), "{errs:?}");
        assert!(errs.contains(&(0, "receiver_name".to_owned())), "{errs:?}");
    }

    #[test]
    fn limits_are_stated() {
        let body = csv(&["a,,1,USD,1,2,x,A,", "b,,1,USD,1,2,x,A,", "c,,1,USD,1,2,x,A,"]);
        let opts = ParseOptions { limits: BatchLimits { max_rows: 2, max_bytes: 1 << 20 }, ..options() };
        let err = parse(&body, BatchFormat::Csv, &opts).unwrap_err();
        assert_eq!(err, BatchRejection::TooManyRows { rows: 3, max_rows: 2 });
        assert!(err.to_string().contains("limit is 2 rows"), "{err}");
        let opts = ParseOptions { limits: BatchLimits { max_rows: 10, max_bytes: 10 }, ..options() };
        let err = parse(&body, BatchFormat::Csv, &opts).unwrap_err();
        assert!(err.to_string().contains("limit is 10 bytes"), "{err}");
        assert_eq!(parse(HEADER.as_bytes(), BatchFormat::Csv, &options()), Err(BatchRejection::Empty));
    }

    #[test]
    fn json_lines_are_read_like_the_single_payout_body() {
        let body = br#"{"external_id":"j-1","amount":"10.50","currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}

{"external_id":"j-2","amount":10.5,"currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A","iban":"?"}}
not json
{"external_id":"j-3","amount":"1","currency":"USD","account":"rest-main","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}
"#;
        let errs = errors(parse(body, BatchFormat::JsonLines, &options()));
        assert_eq!(
            errs,
            [(3, "amount".to_owned()), (3, "destination.iban".to_owned()), (4, "row".to_owned())]
        );
        let good = br#"{"external_id":"j-1","amount":"10.50","currency":"USD","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}

{"external_id":"j-3","amount":"1","currency":"USD","account":"rest-main","destination":{"phone":"1","client":"2","destination":"x","receiver_name":"A"}}
"#;
        let rows = parse(good, BatchFormat::JsonLines, &options()).expect("valid");
        assert_eq!((rows[0].row, rows[1].row), (1, 3), "row numbers are line numbers");
        assert_eq!(rows[1].payout.provider, "rest-main");
    }

    #[test]
    fn a_row_check_reports_with_the_row_number() {
        let check = |p: &NewPayout| {
            if p.money.amount() > rust_decimal::Decimal::from(100) {
                vec![FieldError::new("amount", "above the client's per-payout limit")]
            } else {
                Vec::new()
            }
        };
        let body = csv(&["a,,1,USD,1,2,x,A,", "b,,101,USD,1,2,x,A,"]);
        let opts = ParseOptions { row_check: Some(&check), ..options() };
        assert_eq!(errors(parse(&body, BatchFormat::Csv, &opts)), [(2, "amount".to_owned())]);
    }

    #[test]
    fn csv_is_written_with_quoting_where_needed() {
        let text = write_csv(&["a", "b"], vec![vec!["1".to_owned(), "x, \"y\"".to_owned()]]);
        assert_eq!(text, "a,b\n1,\"x, \"\"y\"\"\"\n");
    }

    #[test]
    fn formats_are_detected() {
        assert_eq!(BatchFormat::detect(Some("text/csv; charset=utf-8"), b"{"), BatchFormat::Csv);
        assert_eq!(BatchFormat::detect(Some("application/x-ndjson"), b"a"), BatchFormat::JsonLines);
        assert_eq!(BatchFormat::detect(None, b"  {\"a\":1}"), BatchFormat::JsonLines);
        assert_eq!(
            BatchFormat::detect(Some("application/octet-stream"), HEADER.as_bytes()),
            BatchFormat::Csv
        );
    }
}
