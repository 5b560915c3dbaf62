//! The 8B partner balance statement (`balance_statement`): every movement of the account's
//! balance in a period, for reconciliation in aggregate (it carries no payout reference).
//!
//! The call: `POST {statement_url}` with the form `dt_start`, `dt_end` (`dd.MM.yyyy HH:mm`,
//! start included, end excluded, UTC like every time we send), signed
//! `md5(dt_start + dt_end + secret)`. The spec puts it at
//! `https://api.8b.world/partner/{service_id}/balance_statement`, another host than the payout
//! calls, so the URL is configurable; by default `{base_url}/partner/{service_id}/balance_statement`.
//!
//! Where the spec is silent (written down, and spoken by the sandbox the same way):
//! - the answer is XML like every other partner answer: a root element holding one element per
//!   movement (`transaction`; `item`, `row` and `operation` are read too), each with the spec's
//!   fields `id`, `dt`, `type` (`IN` credit, `OUT` debit), `amount`, `comment`; an `error`
//!   element instead means the call was refused;
//! - `dt` is `YYYY-MM-DD HH:MM:SS` UTC (the `dt` format of the other calls); amounts are read
//!   from their text, never through a float, and must not be negative;
//! - the statement has no currency: it is in the account's currency, so it can only be compared
//!   with payouts of one currency.

use std::time::Duration;

use chrono::{DateTime, Utc};
use payoutd_core::Secret;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::client::{ConfigError, EightBPartner};
use super::format::format_period_dt;
use super::registry::parse_time;
use super::signature::sign_balance_statement;
use crate::connector::BoxFuture;
use crate::http::BodyError;

/// Statement answers can be long; bounded all the same.
const MAX_STATEMENT_BYTES: usize = 64 * 1024 * 1024;

/// Which way the money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Movement {
    /// `IN`: credited to the account (a top-up, a refund of a failed payout).
    Credit,
    /// `OUT`: debited (a payout, a commission).
    Debit,
}

/// One balance movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// The provider's own id of the balance transaction.
    pub id: String,
    pub dt: DateTime<Utc>,
    pub movement: Movement,
    pub amount: Decimal,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("8B partner balance statement: {0}")]
    Http(String),
    #[error("8B partner balance statement refused the request: {0}")]
    Refused(String),
    #[error("8B partner balance statement answer is unreadable: {0}")]
    Unreadable(String),
}

/// A source of balance statements: the provider, or a fake in tests.
pub trait StatementSource: Send + Sync {
    /// The movements of `[start, end)`, both whole minutes.
    fn statement(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Vec<StatementRow>, StatementError>>;
}

#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(rename = "transaction", alias = "item", alias = "row", alias = "operation", default)]
    rows: Vec<WireRow>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireRow {
    id: Option<String>,
    dt: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    amount: Option<String>,
    comment: Option<String>,
}

/// Reads a statement answer (see the module docs).
pub fn parse_statement(xml: &str) -> Result<Vec<StatementRow>, StatementError> {
    let answer: Answer =
        quick_xml::de::from_str(xml).map_err(|e| StatementError::Unreadable(e.to_string()))?;
    if let Some(error) = answer.error.filter(|e| !e.trim().is_empty()) {
        return Err(StatementError::Refused(error.trim().to_owned()));
    }
    answer
        .rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            read_row(row).map_err(|e| StatementError::Unreadable(format!("movement {}: {e}", i + 1)))
        })
        .collect()
}

fn read_row(row: WireRow) -> Result<StatementRow, String> {
    let required = |v: Option<String>, key: &str| {
        v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).ok_or_else(|| format!("no {key}"))
    };
    let amount_text = required(row.amount, "amount")?;
    let amount: Decimal =
        amount_text.parse().map_err(|_| format!("amount {amount_text:?} is not a decimal"))?;
    if amount.is_sign_negative() {
        return Err(format!("amount {amount_text:?} is negative"));
    }
    let dt_text = required(row.dt, "dt")?;
    let kind = required(row.kind, "type")?;
    Ok(StatementRow {
        id: required(row.id, "id")?,
        dt: parse_time(&dt_text).ok_or_else(|| format!("dt {dt_text:?} is not a time"))?,
        movement: match kind.to_ascii_uppercase().as_str() {
            "IN" => Movement::Credit,
            "OUT" => Movement::Debit,
            _ => return Err(format!("type {kind:?} is neither IN nor OUT")),
        },
        amount,
        comment: row.comment.filter(|c| !c.is_empty()),
    })
}

/// Writes a statement answer the way [`parse_statement`] reads it (the sandbox answers with it).
pub fn write_statement(rows: &[StatementRow]) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><response>"#);
    for r in rows {
        xml.push_str(&format!(
            "<transaction><id>{}</id><dt>{}</dt><type>{}</type><amount>{}</amount><comment>{}</comment></transaction>",
            quick_xml::escape::escape(&r.id),
            r.dt.format("%Y-%m-%d %H:%M:%S"),
            match r.movement {
                Movement::Credit => "IN",
                Movement::Debit => "OUT",
            },
            r.amount,
            quick_xml::escape::escape(r.comment.as_deref().unwrap_or_default()),
        ));
    }
    xml.push_str("</response>");
    xml
}

/// Writes a refusal.
pub fn write_statement_error(reason: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><response><error>{}</error></response>"#,
        quick_xml::escape::escape(reason)
    )
}

/// The balance statement client of one 8B partner account.
#[derive(Debug, Clone)]
pub struct EightBStatement {
    secret: Secret,
    url: String,
    http: reqwest::Client,
}

impl EightBPartner {
    /// The balance statement client: `url`, else `{base_url}/partner/{service_id}/balance_statement`.
    pub fn statement(&self, url: Option<&str>, timeout: Duration) -> Result<EightBStatement, ConfigError> {
        let config = self.config();
        let url = match url {
            Some(u) => u.to_owned(),
            None => format!(
                "{}/partner/{}/balance_statement",
                config.base_url.trim_end_matches('/'),
                config.service_id
            ),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::BaseUrl);
        }
        Ok(EightBStatement { secret: config.secret.clone(), url, http: crate::http::build_client(timeout)? })
    }
}

impl EightBStatement {
    /// The signed form of `[start, end)`.
    pub fn form(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let (dt_start, dt_end) = (format_period_dt(start), format_period_dt(end));
        let hash = sign_balance_statement(&dt_start, &dt_end, &self.secret);
        vec![("dt_start", dt_start), ("dt_end", dt_end), ("hash", hash)]
    }

    async fn fetch(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<StatementRow>, StatementError> {
        // Never the URL or the form in an error: the form carries the signature.
        let response = self
            .http
            .post(&self.url)
            .form(&self.form(start, end))
            .send()
            .await
            .map_err(|e| StatementError::Http(crate::http::describe(&e)))?;
        let status = response.status();
        let body = crate::http::bounded_body(response, MAX_STATEMENT_BYTES).await.map_err(|e| match e {
            BodyError::Transport(why) => StatementError::Http(why),
            BodyError::TooLong(max) => StatementError::Unreadable(format!("answer longer than {max} bytes")),
        })?;
        if !status.is_success() {
            return Err(StatementError::Http(format!("answered HTTP {status}")));
        }
        let rows = parse_statement(&String::from_utf8_lossy(&body))?;
        tracing::info!(rows = rows.len(), %start, %end, "8B partner balance statement");
        Ok(rows)
    }
}

impl StatementSource for EightBStatement {
    fn statement(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Vec<StatementRow>, StatementError>> {
        Box::pin(self.fetch(start, end))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn movement(id: &str, movement: Movement, amount: &str) -> StatementRow {
        StatementRow {
            id: id.into(),
            dt: Utc.with_ymd_and_hms(2026, 11, 23, 10, 15, 0).single().expect("time"),
            movement,
            amount: amount.parse().expect("decimal"),
            comment: Some(format!("payout <{id}> & co")),
        }
    }

    #[test]
    fn statements_round_trip_exactly() {
        let rows = vec![
            movement("1", Movement::Debit, "150000"),
            movement("2", Movement::Debit, "1500.50"),
            movement("3", Movement::Credit, "12345678901234567.89"),
        ];
        assert_eq!(parse_statement(&write_statement(&rows)), Ok(rows));
        assert_eq!(parse_statement(&write_statement(&[])), Ok(vec![]));
    }

    #[test]
    fn other_element_names_and_refusals_are_read() {
        let xml = "<response><item><id>9</id><dt>2026-11-23 10:00:00</dt><type>out</type>\
                   <amount>10</amount></item></response>";
        let rows = parse_statement(xml).expect("rows");
        assert_eq!((rows[0].movement, rows[0].amount), (Movement::Debit, Decimal::from(10)));
        assert_eq!(
            parse_statement(&write_statement_error("invalid hash")),
            Err(StatementError::Refused("invalid hash".into()))
        );
    }

    #[test]
    fn bad_movements_name_the_field() {
        for (xml, needle) in [
            (
                "<r><transaction><dt>2026-11-23 10:00:00</dt><type>OUT</type><amount>1</amount></transaction></r>",
                "no id",
            ),
            (
                "<r><transaction><id>1</id><dt>2026-11-23 10:00:00</dt><type>SIDEWAYS</type><amount>1</amount></transaction></r>",
                "type",
            ),
            (
                "<r><transaction><id>1</id><dt>2026-11-23 10:00:00</dt><type>IN</type><amount>-1</amount></transaction></r>",
                "negative",
            ),
            (
                "<r><transaction><id>1</id><dt>yesterday</dt><type>IN</type><amount>1</amount></transaction></r>",
                "dt",
            ),
        ] {
            let err = parse_statement(xml).expect_err(xml).to_string();
            assert!(err.contains(needle) && err.contains("movement 1"), "{err}");
        }
    }
}
