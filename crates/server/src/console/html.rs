//! Building the console's HTML: one escaping function that every piece of data goes through,
//! the page layout (navigation, sign-out form, security-relevant head), and small helpers for
//! tables, times and forms. No template engine: pages are short and `format!` with [`esc`] keeps
//! what is escaped visible at the call site.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::session::Signed;

/// HTML-escapes `text` for element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `text` for a URL query value (then it still goes through [`esc`] in an
/// attribute, which leaves it unchanged).
pub fn url_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A JSON value as display text: strings without quotes, null as an empty cell.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// [`text_of`], escaped.
pub fn jv(v: &Value) -> String {
    esc(&text_of(v))
}

/// A time as operators read it: UTC, to the second.
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A JSON time (RFC 3339) shown like [`time`]; anything else as it is.
pub fn json_time(v: &Value) -> String {
    match v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
        Some(t) => esc(&time(&t.with_timezone(&Utc))),
        None => jv(v),
    }
}

/// A duration in seconds, shortly: `42 s`, `7 min`, `3.5 h`, `2.0 d`.
pub fn age(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86_400.0)
    }
}

/// The CSRF field every form of a signed-in page carries.
pub fn csrf_field(signed: &Signed) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(&signed.session.csrf_token))
}

/// A message box: `kind` is `ok`, `error` or `info` (fixed strings, not data).
pub fn notice(kind: &'static str, text: &str) -> String {
    format!(r#"<p class="notice {kind}" role="status">{}</p>"#, esc(text))
}

/// A payout state as a labelled badge.
pub fn state_badge(state: &str) -> String {
    let s = esc(state);
    format!(r#"<span class="state state-{s}">{s}</span>"#)
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Payouts,
    Review,
    Batches,
    None,
}

/// Layout options of one page.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageOptions {
    /// Reload the page every this many seconds (`<meta http-equiv="refresh">`, no script).
    pub refresh_secs: Option<u32>,
}

/// A whole page: head (stylesheet and script from our own origin only), navigation for what
/// the session's scopes allow, the sign-out form, then `body`.
pub fn page(title: &str, signed: Option<&Signed>, nav: Nav, options: PageOptions, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#);
    if let Some(secs) = options.refresh_secs {
        let _ = write!(out, r#"<meta http-equiv="refresh" content="{secs}">"#);
    }
    let _ = write!(out, "<title>{} · payoutd console</title>", esc(title));
    out.push_str(r#"<link rel="stylesheet" href="/console/assets/console.css">"#);
    out.push_str(r#"<script src="/console/assets/console.js" defer></script>"#);
    out.push_str("</head><body>");
    out.push_str(r#"<header><span class="brand">payoutd console</span>"#);
    if let Some(s) = signed {
        out.push_str("<nav>");
        let entries: [(Nav, &str, &str, bool); 4] = [
            (Nav::Overview, "/console", "Overview", s.can_read_payouts()),
            (Nav::Payouts, "/console/payouts", "Payouts", s.can_read_payouts()),
            (Nav::Review, "/console/review", "Review queue", s.can_read_payouts()),
            (Nav::Batches, "/console/batches", "Batches", s.can_use_batches()),
        ];
        for (entry, href, label, allowed) in entries {
            if allowed {
                let current = if entry == nav { r#" aria-current="page""# } else { "" };
                let _ = write!(out, r#"<a href="{href}"{current}>{label}</a>"#);
            }
        }
        out.push_str("</nav>");
        let _ = write!(
            out,
            r#"<form method="post" action="/console/sign-out" class="signout"><span class="who">{}</span>{}<button type="submit">Sign out</button></form>"#,
            esc(&s.actor),
            csrf_field(s)
        );
    }
    out.push_str("</header><main>");
    let _ = write!(out, "<h1>{}</h1>", esc(title));
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            esc(r#"<script>alert('x')</script> & "y""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("plain text 123"), "plain text 123");
    }

    #[test]
    fn url_values_are_percent_encoded() {
        assert_eq!(url_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(url_value("needs_review"), "needs_review");
    }

    #[test]
    fn ages_read_shortly() {
        assert_eq!(age(42.0), "42 s");
        assert_eq!(age(600.0), "10 min");
        assert_eq!(age(3.0 * 3600.0), "3.0 h");
    }
}
