//! The 8B partner transaction registry (`payout_reestr`): what the provider itself recorded of
//! a period, for reconciliation.
//!
//! The call: `GET {registry_url}?type=json&service_id=..&dt_start=..&dt_end=..&hash=..`, signed
//! `md5(service_id + dt_start + dt_end + secret)`. It lives at its own URL, not under
//! `/partner/{service_id}` (the spec: `https://int.8b.world/payout_reestr/`), so the URL is
//! configurable; by default it is `{base_url}/payout_reestr/`. Periods are whole minutes
//! (`dd.MM.yyyy HH:mm`, UTC like every other time we send), `dt_start` included, `dt_end`
//! excluded.
//!
//! The 20,000-row limit: a larger period is answered with "The amount of data requested is
//! too large. Please reduce the date range or DT_END parameter to 10/01/2020 14:29", the time
//! being the creation of the 20,000th row minus one minute. The spec says to continue from
//! that time plus one minute; since `dt_end` is exclusive, that would skip a minute. [`fetch_all`]
//! asks for `[start, cut-off)` and then continues from the cut-off itself, so consecutive pages
//! share no minute and leave none out. A single minute holding more than 20,000 rows cannot be
//! paged at all: it is returned in [`RegistryFetch::unpageable`] for the caller to check its
//! payouts one by one.
//!
//! Where the spec is silent (written down, and spoken by the sandbox the same way):
//! - the answer to `type=json` is a JSON array of objects with the spec's field names; an
//!   object holding an array (`{"data": [...]}`) is read too. Amounts may be strings or
//!   numbers and are read from their text, never through a float;
//! - `id` is our reference (the id we sent with `payout`, which every answer calls "Transaction
//!   ID in the Partner's system"); `pid` is read as the provider's own id of the transaction and
//!   only reported. A row whose `id` is none of ours but whose `pid` is one of our references
//!   is matched by `pid` (the two descriptions in the spec are nearly the same);
//! - `status` uses the vocabulary of `check`: PAID, NOT_PAID, PROCESSING (also read: SUCCESS,
//!   1 as paid; FAIL, FAILED, ERROR, 0 as not paid; PENDING, NEW as processing); anything else
//!   is kept as written and reported as a status mismatch;
//! - `created` / `changed` are `YYYY-MM-DD HH:MM:SS` in UTC (the `dt` format), `dd.MM.yyyy
//!   HH:mm[:ss]` or RFC 3339;
//! - the limit error's time is day first (`dd/MM/yyyy HH:mm` or `dd.MM.yyyy HH:mm`), like the
//!   request's own format; it may come as a JSON `{"error": ...}` body, as XML, or as text.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use payoutd_core::Secret;
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::client::{ConfigError, EightBPartner};
use super::format::format_period_dt;
use super::signature::sign_registry;
use crate::connector::BoxFuture;
use crate::http::BodyError;

/// The most rows one registry answer holds (the spec).
pub const REGISTRY_LIMIT: usize = 20_000;

/// The start of the limit error's text.
pub const TOO_LARGE_TEXT: &str = "The amount of data requested is too large";

/// Registry answers are large (20,000 rows of a few hundred bytes); bounded all the same.
const MAX_REGISTRY_BYTES: usize = 64 * 1024 * 1024;

/// How the provider reports a payout's outcome in the registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RegistryStatus {
    Paid,
    NotPaid,
    Processing,
    /// Written as the provider wrote it.
    Other(String),
}

impl RegistryStatus {
    pub fn parse(raw: &str) -> Self {
        match raw.trim().to_ascii_uppercase().as_str() {
            "PAID" | "SUCCESS" | "1" => Self::Paid,
            "NOT_PAID" | "FAIL" | "FAILED" | "ERROR" | "0" => Self::NotPaid,
            "PROCESSING" | "PENDING" | "NEW" => Self::Processing,
            _ => Self::Other(raw.trim().to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Paid => "PAID",
            Self::NotPaid => "NOT_PAID",
            Self::Processing => "PROCESSING",
            Self::Other(s) => s,
        }
    }
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRow {
    /// Our reference.
    pub id: String,
    /// The provider's own id (reported only).
    pub pid: Option<String>,
    pub destination: Option<String>,
    pub client: Option<String>,
    pub status: RegistryStatus,
    pub partner_status: Option<String>,
    pub created: DateTime<Utc>,
    pub changed: Option<DateTime<Utc>>,
    pub amount: Decimal,
    pub commission: Option<Decimal>,
    pub currency: String,
    pub partner_notified: Option<bool>,
}

/// One answer of the registry call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryPage {
    Rows(Vec<RegistryRow>),
    /// More than [`REGISTRY_LIMIT`] rows: ask again with `dt_end` at `cut_off`.
    TooLarge {
        cut_off: DateTime<Utc>,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("8B partner registry: {0}")]
    Http(String),
    #[error("8B partner registry refused the request: {0}")]
    Refused(String),
    #[error("8B partner registry answer is unreadable: {0}")]
    Unreadable(String),
    #[error("the period must be whole minutes with start before end (got {start} .. {end})")]
    Period { start: DateTime<Utc>, end: DateTime<Utc> },
}

/// A source of registry pages: the provider, or a fake in tests.
pub trait RegistryPages: Send + Sync {
    /// The registry of `[start, end)`, both whole minutes.
    fn page(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<RegistryPage, RegistryError>>;
}

/// Everything the registry holds for a period, read page by page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryFetch {
    pub rows: Vec<RegistryRow>,
    /// Calls that answered rows.
    pub pages: u32,
    /// Calls answered with the limit error.
    pub limit_errors: u32,
    /// Minutes holding more than the limit: not read; their payouts must be checked one by one.
    pub unpageable: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Rows that came twice (the same `id`), kept once. Zero unless the provider's pages
    /// overlap.
    pub duplicates: u32,
}

/// The start of the minute `at` falls in.
pub fn floor_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(at)
}

/// The first whole minute at or after `at`.
pub fn ceil_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_minute(at);
    if floor == at { at } else { floor + chrono::Duration::minutes(1) }
}

/// Reads the registry of `[from, to)` (whole minutes) page by page, as the module docs say.
pub async fn fetch_all(
    source: &dyn RegistryPages,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<RegistryFetch, RegistryError> {
    if from >= to || floor_minute(from) != from || floor_minute(to) != to {
        return Err(RegistryError::Period { start: from, end: to });
    }
    let minute = chrono::Duration::minutes(1);
    let mut fetch = RegistryFetch::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut start = from;
    while start < to {
        let mut end = to;
        loop {
            match source.page(start, end).await? {
                RegistryPage::Rows(rows) => {
                    fetch.pages += 1;
                    for row in rows {
                        if seen.insert(row.id.clone()) {
                            fetch.rows.push(row);
                        } else {
                            fetch.duplicates += 1;
                        }
                    }
                    start = end;
                    break;
                }
                RegistryPage::TooLarge { cut_off, .. } => {
                    fetch.limit_errors += 1;
                    let cut_off = floor_minute(cut_off);
                    // Each retry asks for strictly less, down to a single minute, so this ends.
                    if cut_off > start && cut_off < end {
                        end = cut_off;
                    } else if end > start + minute {
                        end = start + minute;
                    } else {
                        fetch.unpageable.push((start, end));
                        start = end;
                        break;
                    }
                }
            }
        }
    }
    Ok(fetch)
}

/// Parses one registry answer (`type=json`).
pub fn parse_registry(body: &str) -> Result<RegistryPage, RegistryError> {
    if let Some(pos) = body.find(TOO_LARGE_TEXT) {
        let message = body[pos..].chars().take(300).collect::<String>();
        let cut_off = find_cut_off(&message).ok_or_else(|| {
            RegistryError::Unreadable(format!("the limit error names no cut-off time: {message:?}"))
        })?;
        return Ok(RegistryPage::TooLarge { cut_off, message });
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| RegistryError::Unreadable(format!("not JSON: {e}")))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(RegistryError::Refused(error.chars().take(300).collect()));
    }
    // Rows are read again from the raw text, so amounts never pass through a float.
    let rows: Vec<BTreeMap<String, Box<RawValue>>> = match &value {
        serde_json::Value::Array(_) => serde_json::from_str(body),
        serde_json::Value::Object(obj) => {
            let key = obj
                .iter()
                .find(|(_, v)| v.is_array())
                .map(|(k, _)| k.clone())
                .ok_or_else(|| RegistryError::Unreadable("an object without a list of rows".into()))?;
            serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(body).and_then(|mut top| {
                let list = top.remove(&key).map(|raw| raw.get().to_owned()).unwrap_or_else(|| "[]".into());
                serde_json::from_str(&list)
            })
        }
        _ => return Err(RegistryError::Unreadable("neither a list nor an object".into())),
    }
    .map_err(|e| RegistryError::Unreadable(e.to_string()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        out.push(read_row(row).map_err(|e| RegistryError::Unreadable(format!("row {}: {e}", i + 1)))?);
    }
    Ok(RegistryPage::Rows(out))
}

fn text(row: &BTreeMap<String, Box<RawValue>>, key: &str) -> Option<String> {
    let raw = row.get(key)?.get();
    if raw == "null" {
        return None;
    }
    Some(serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned()))
}

fn read_row(row: &BTreeMap<String, Box<RawValue>>) -> Result<RegistryRow, String> {
    let required = |key: &str| text(row, key).filter(|v| !v.is_empty()).ok_or_else(|| format!("no {key}"));
    let decimal = |key: &str, v: String| {
        v.trim().parse::<Decimal>().map_err(|_| format!("{key} {v:?} is not a decimal"))
    };
    let amount = decimal("amount", required("amount")?)?;
    let commission =
        text(row, "comiss").filter(|v| !v.is_empty()).map(|v| decimal("comiss", v)).transpose()?;
    let created_text = required("created")?;
    let created =
        parse_time(&created_text).ok_or_else(|| format!("created {created_text:?} is not a time"))?;
    Ok(RegistryRow {
        id: required("id")?,
        pid: text(row, "pid").filter(|v| !v.is_empty()),
        destination: text(row, "destination"),
        client: text(row, "client"),
        status: RegistryStatus::parse(&required("status")?),
        partner_status: text(row, "partner_status"),
        created,
        changed: text(row, "changed").and_then(|t| parse_time(&t)),
        amount,
        commission,
        currency: required("currency")?.trim().to_ascii_uppercase(),
        partner_notified: text(row, "partner_notified")
            .map(|v| matches!(v.trim(), "true" | "1" | "TRUE" | "True")),
    })
}

/// A registry time: `YYYY-MM-DD HH:MM:SS`, `dd.MM.yyyy HH:mm[:ss]`, `dd/MM/yyyy HH:mm` (UTC),
/// or RFC 3339.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d/%m/%Y %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|naive| Utc.from_utc_datetime(&naive))
}

/// The first `dd/MM/yyyy HH:mm` (or `dd.MM.yyyy HH:mm`) in `message`.
fn find_cut_off(message: &str) -> Option<DateTime<Utc>> {
    let chars: Vec<char> = message.chars().collect();
    // "dd/MM/yyyy HH:mm" is 16 characters.
    (0..chars.len().saturating_sub(15)).find_map(|i| {
        let candidate: String = chars[i..i + 16].iter().collect();
        let shaped = candidate.chars().enumerate().all(|(j, c)| match j {
            2 | 5 => c == '/' || c == '.',
            10 => c == ' ',
            13 => c == ':',
            _ => c.is_ascii_digit(),
        });
        if shaped { parse_time(&candidate.replace('/', ".")) } else { None }
    })
}

/// Writes a registry answer the way [`parse_registry`] reads it (the sandbox answers with it).
pub fn write_registry(rows: &[RegistryRow]) -> String {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "pid": r.pid,
                "destination": r.destination,
                "client": r.client,
                "status": r.status.as_str(),
                "partner_status": r.partner_status,
                "created": fmt(r.created),
                "changed": r.changed.map(fmt),
                "amount": r.amount.to_string(),
                "comiss": r.commission.map(|c| c.to_string()),
                "currency": r.currency,
                "partner_notified": r.partner_notified,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The limit error the way the provider words it, naming `cut_off` (day first).
pub fn write_too_large(cut_off: DateTime<Utc>) -> String {
    serde_json::json!({
        "error": format!(
            "{TOO_LARGE_TEXT}. Please reduce the date range or DT_END parameter to {}.",
            cut_off.format("%d/%m/%Y %H:%M")
        )
    })
    .to_string()
}

/// The registry client of one 8B partner account.
#[derive(Debug, Clone)]
pub struct EightBRegistry {
    service_id: String,
    secret: Secret,
    url: String,
    http: reqwest::Client,
}

impl EightBPartner {
    /// The registry client of this account: `url`, else `{base_url}/payout_reestr/`. A
    /// registry answer is large, so its calls get `timeout` rather than the payout calls' one.
    pub fn registry(&self, url: Option<&str>, timeout: Duration) -> Result<EightBRegistry, ConfigError> {
        let config = self.config();
        let url = match url {
            Some(u) => u.to_owned(),
            None => format!("{}/payout_reestr/", config.base_url.trim_end_matches('/')),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::BaseUrl);
        }
        Ok(EightBRegistry {
            service_id: config.service_id.clone(),
            secret: config.secret.clone(),
            url,
            http: crate::http::build_client(timeout)?,
        })
    }
}

impl EightBRegistry {
    /// The signed query of `[start, end)`.
    pub fn query(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let (dt_start, dt_end) = (format_period_dt(start), format_period_dt(end));
        let hash = sign_registry(&self.service_id, &dt_start, &dt_end, &self.secret);
        vec![
            ("type", "json".to_owned()),
            ("service_id", self.service_id.clone()),
            ("dt_start", dt_start),
            ("dt_end", dt_end),
            ("hash", hash),
        ]
    }

    async fn fetch(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Result<RegistryPage, RegistryError> {
        // Never the URL or the query in an error: the query carries the signature.
        let response = self
            .http
            .get(&self.url)
            .query(&self.query(start, end))
            .send()
            .await
            .map_err(|e| RegistryError::Http(crate::http::describe(&e)))?;
        let status = response.status();
        let body = crate::http::bounded_body(response, MAX_REGISTRY_BYTES).await.map_err(|e| match e {
            BodyError::Transport(why) => RegistryError::Http(why),
            BodyError::TooLong(max) => RegistryError::Unreadable(format!("answer longer than {max} bytes")),
        })?;
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() && !body.contains(TOO_LARGE_TEXT) {
            return Err(RegistryError::Http(format!("answered HTTP {status}")));
        }
        let page = parse_registry(&body)?;
        if let RegistryPage::Rows(rows) = &page {
            tracing::info!(rows = rows.len(), %start, %end, "8B partner registry page");
        }
        Ok(page)
    }
}

impl RegistryPages for EightBRegistry {
    fn page(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<RegistryPage, RegistryError>> {
        Box::pin(self.fetch(start, end))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).single().expect("time")
    }

    fn row(id: &str, created: DateTime<Utc>) -> RegistryRow {
        RegistryRow {
            id: id.into(),
            pid: Some(format!("8b-{id}")),
            destination: Some("bank_bca".into()),
            client: Some("123".into()),
            status: RegistryStatus::Paid,
            partner_status: None,
            created,
            changed: Some(created),
            amount: Decimal::new(15_000_050, 2),
            commission: Some(Decimal::new(150, 2)),
            currency: "IDR".into(),
            partner_notified: Some(true),
        }
    }

    /// A provider with `limit` rows per answer over `rows`, logging the periods asked for.
    struct Fake {
        rows: Vec<RegistryRow>,
        limit: usize,
        asked: Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
    }

    impl RegistryPages for Fake {
        fn page(
            &self,
            start: DateTime<Utc>,
            end: DateTime<Utc>,
        ) -> BoxFuture<'_, Result<RegistryPage, RegistryError>> {
            self.asked.lock().expect("lock").push((start, end));
            let mut inside: Vec<RegistryRow> =
                self.rows.iter().filter(|r| r.created >= start && r.created < end).cloned().collect();
            inside.sort_by_key(|r| r.created);
            let page = if inside.len() > self.limit {
                let cut_off = inside[self.limit - 1].created - chrono::Duration::minutes(1);
                parse_registry(&write_too_large(cut_off)).expect("parses")
            } else {
                parse_registry(&write_registry(&inside)).expect("parses")
            };
            Box::pin(async move { Ok(page) })
        }
    }

    #[tokio::test]
    async fn pages_continue_from_the_cut_off_so_no_minute_is_skipped_or_read_twice() {
        // 10 rows a minute from 10:00 to 10:09, limit 25: every page ends at a cut-off.
        let rows: Vec<RegistryRow> =
            (0..100).map(|i| row(&format!("PO{i:03}"), at(10, i / 10, (i % 10) * 5))).collect();
        let fake = Fake { rows: rows.clone(), limit: 25, asked: Mutex::new(Vec::new()) };
        let fetch = fetch_all(&fake, at(10, 0, 0), at(11, 0, 0)).await.expect("fetch");
        assert_eq!(fetch.rows.len(), 100, "every row read");
        assert_eq!(fetch.duplicates, 0);
        assert!(fetch.unpageable.is_empty());
        let asked = fake.asked.lock().expect("lock").clone();
        // The spec's advice (cut-off + 1 minute as the next start) would have skipped the
        // minute [cut-off, cut-off + 1): every page must start where the previous one ended.
        let answered: Vec<_> = asked
            .iter()
            .filter(|(s, e)| fake.rows.iter().filter(|r| r.created >= *s && r.created < *e).count() <= 25)
            .collect();
        for pair in answered.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "pages are contiguous: {answered:?}");
        }
        assert!(fetch.limit_errors > 0);
    }

    #[tokio::test]
    async fn a_minute_over_the_limit_is_reported_not_read() {
        let mut rows: Vec<RegistryRow> = (0..30).map(|i| row(&format!("A{i}"), at(10, 5, i % 60))).collect();
        rows.extend((0..5).map(|i| row(&format!("B{i}"), at(10, 7, i))));
        let fake = Fake { rows, limit: 20, asked: Mutex::new(Vec::new()) };
        let fetch = fetch_all(&fake, at(10, 0, 0), at(10, 10, 0)).await.expect("fetch");
        assert_eq!(fetch.unpageable, vec![(at(10, 5, 0), at(10, 6, 0))]);
        assert_eq!(fetch.rows.len(), 5, "the other minutes are read");
    }

    #[test]
    fn rows_round_trip_and_amounts_never_pass_through_a_float() {
        let r = row("PO000000000000000001", at(9, 1, 2));
        let page = parse_registry(&write_registry(std::slice::from_ref(&r))).expect("parses");
        assert_eq!(page, RegistryPage::Rows(vec![r]));
        let body = r#"{"data":[{"id":"PO1","status":"NOT_PAID","created":"23.11.2026 09:01","amount":0.30000000000000004,"currency":"usd"}]}"#;
        let RegistryPage::Rows(rows) = parse_registry(body).expect("parses") else { panic!("rows") };
        assert_eq!(rows[0].amount.to_string(), "0.30000000000000004");
        assert_eq!(rows[0].status, RegistryStatus::NotPaid);
        assert_eq!(rows[0].currency, "USD");
    }

    #[test]
    fn the_limit_error_names_its_cut_off_day_first() {
        let spec = "The amount of data requested is too large. Please reduce the date range or DT_END parameter to 10/01/2020 14:29.";
        match parse_registry(spec).expect("parses") {
            RegistryPage::TooLarge { cut_off, .. } => {
                assert_eq!(cut_off, Utc.with_ymd_and_hms(2020, 1, 10, 14, 29, 0).single().expect("t"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_registry(r#"{"error":"invalid hash"}"#), Err(RegistryError::Refused(_))));
    }

    #[test]
    fn the_query_is_signed_over_service_id_and_period() {
        let config = super::super::EightBPartnerConfig::new("http://x", "777", Secret::new("k"));
        let registry =
            EightBPartner::new(config).expect("client").registry(None, Duration::from_secs(5)).expect("r");
        assert_eq!(registry.url, "http://x/payout_reestr/");
        let q = registry.query(at(10, 0, 0), at(11, 0, 0));
        assert_eq!(q[2].1, "23.11.2026 10:00");
        assert_eq!(q[4].1, sign_registry("777", "23.11.2026 10:00", "23.11.2026 11:00", &Secret::new("k")));
    }
}
