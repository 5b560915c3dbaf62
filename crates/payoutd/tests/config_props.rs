//! Property tests of config file parsing (`Config::from_toml_str`, what `Config::load` does
//! with the file's text) and of the conversions startup makes from an accepted config.

use payoutd::config::Config;
use payoutd_core::Secret;
use proptest::prelude::*;

/// Every conversion startup makes from a config, and the Debug output it may log.
fn use_like_startup(config: &Config) -> String {
    let _ = config.engine.engine_config();
    let _ = config.http.limits();
    if let Some(partner) = &config.eightb_partner {
        let _ = partner.connector_config();
    }
    format!("{config:?}")
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Floats, the awkward ones first: infinities, NaN, huge, tiny, negative.
fn float_value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "inf",
                "+inf",
                "-inf",
                "nan",
                "-nan",
                "1e308",
                "1.7976931348623157e308",
                "1e-320",
                "-1.0",
                "0.0"
            ][..]
        )
        .prop_map(str::to_owned),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:?}")),
        (0u32..100_000).prop_map(|v| v.to_string()),
    ]
}

/// Integers, the awkward ones first.
fn int_value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "0",
                "-1",
                "4294967295",
                "4294967296",
                "18446744073709551615",
                "9223372036854775807",
                "-9223372036854775808"
            ][..]
        )
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|v| v.to_string()),
    ]
}

/// Values of any TOML type.
fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &["true", "[]", "{}", "\"127.0.0.1:8080\"", "\"[::1]:0\"", "1979-05-27"][..]
        )
        .prop_map(str::to_owned),
        any::<String>().prop_map(|s| toml_string(&s)),
        "[-+0-9a-z_.:\"'\\[\\]{}= ]{0,12}",
        float_value(),
        int_value(),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Float,
    Int,
    Text,
    Flag,
}

const ENGINE: &[(&str, Kind)] = &[
    ("concurrency", Kind::Int),
    ("lease_secs", Kind::Float),
    ("idle_poll_ms", Kind::Int),
    ("shutdown_grace_secs", Kind::Float),
    ("provider_calls_per_second", Kind::Int),
    ("in_doubt_max_attempts", Kind::Int),
    ("max_await_secs", Kind::Int),
    ("retry_base_ms", Kind::Int),
    ("retry_max_delay_ms", Kind::Int),
    ("retry_max_attempts", Kind::Int),
    ("heartbeat_secs", Kind::Float),
    ("safety_margin_secs", Kind::Float),
    ("resubmit_after_not_found", Kind::Int),
    ("not_found_before_review", Kind::Int),
    ("max_failed_steps", Kind::Int),
    ("max_retry_after_secs", Kind::Int),
];
const PARTNER: &[(&str, Kind)] = &[
    ("base_url", Kind::Text),
    ("service_id", Kind::Text),
    ("secret", Kind::Text),
    ("request_timeout_ms", Kind::Int),
    ("status_interval_secs", Kind::Float),
];
const HTTP: &[(&str, Kind)] = &[
    ("request_timeout_secs", Kind::Float),
    ("max_concurrent_requests", Kind::Int),
    ("max_body_bytes", Kind::Int),
    ("max_callback_body_bytes", Kind::Int),
];
const TOP: &[(&str, Kind)] = &[
    ("database_url", Kind::Text),
    ("data_dir", Kind::Text),
    ("listen", Kind::Text),
    ("embedded_postgres", Kind::Flag),
];

fn keys(section: &[(&'static str, Kind)]) -> Vec<&'static str> {
    section.iter().map(|(key, _)| *key).collect()
}

/// `key = value` lines of one section: mostly values of the key's type, sometimes any value.
fn lines(section: &'static [(&'static str, Kind)], max: usize) -> impl Strategy<Value = String> {
    let line = (proptest::sample::select(section), any::<bool>(), any_value(), float_value(), int_value())
        .prop_map(|((key, kind), typed, any, float, int)| {
            let value = match (typed, kind) {
                (false, _) | (_, Kind::Text) => any,
                (true, Kind::Float) => float,
                (true, Kind::Int) => int,
                (true, Kind::Flag) => "false".to_owned(),
            };
            format!("{key} = {value}\n")
        });
    proptest::collection::vec(line, 0..max).prop_map(|lines| lines.concat())
}

/// A config file of known sections and keys with values of any type, mostly the right one.
fn tomlish() -> impl Strategy<Value = String> {
    (lines(TOP, 3), lines(ENGINE, 5), any::<bool>(), lines(PARTNER, 4), lines(HTTP, 3)).prop_map(
        |(top, engine, with_partner, partner, http)| {
            let mut text = top;
            text.push_str("[engine]\n");
            text.push_str(&engine);
            if with_partner {
                text.push_str("[eightb_partner]\n");
                // Later lines may repeat these keys: a duplicate key is an error, which is fine.
                text.push_str("base_url = \"http://127.0.0.1:9\"\nservice_id = \"1\"\nsecret = \"s\"\n");
                text.push_str(&partner);
            }
            text.push_str("[http]\n");
            text.push_str(&http);
            text
        },
    )
}

/// Settings as an operator would write them.
#[derive(Debug, Clone)]
struct Written {
    database_url: Option<String>,
    data_dir: String,
    listen: std::net::SocketAddr,
    embedded_postgres: bool,
    concurrency: u32,
    lease_secs: f64,
    max_await_secs: u32,
    base_url: String,
    service_id: String,
    secret: String,
    status_interval_secs: f64,
    max_body_bytes: u32,
}

impl Written {
    fn to_toml(&self) -> String {
        let mut text = String::new();
        if let Some(url) = &self.database_url {
            text.push_str(&format!("database_url = {}\n", toml_string(url)));
        }
        text.push_str(&format!("data_dir = {}\n", toml_string(&self.data_dir)));
        text.push_str(&format!("listen = {}\n", toml_string(&self.listen.to_string())));
        text.push_str(&format!("embedded_postgres = {}\n", self.embedded_postgres));
        text.push_str(&format!(
            "[engine]\nconcurrency = {}\nlease_secs = {:?}\nmax_await_secs = {}\n",
            self.concurrency, self.lease_secs, self.max_await_secs
        ));
        text.push_str(&format!(
            "[eightb_partner]\nbase_url = {}\nservice_id = {}\nsecret = {}\nstatus_interval_secs = {:?}\n",
            toml_string(&self.base_url),
            toml_string(&self.service_id),
            toml_string(&self.secret),
            self.status_interval_secs
        ));
        text.push_str(&format!("[http]\nmax_body_bytes = {}\n", self.max_body_bytes));
        text
    }
}

fn written() -> impl Strategy<Value = Written> {
    (
        (
            proptest::option::of(any::<String>()),
            any::<String>(),
            // What an address in text can say: no IPv6 flow info or scope id.
            (any::<std::net::IpAddr>(), any::<u16>())
                .prop_map(|(ip, port)| std::net::SocketAddr::new(ip, port)),
            any::<bool>(),
        ),
        (any::<u32>(), 0.0..1e6_f64, any::<u32>()),
        (any::<String>(), any::<String>(), any::<String>(), 0.0..1e6_f64, any::<u32>()),
    )
        .prop_map(
            |(
                (database_url, data_dir, listen, embedded_postgres),
                (concurrency, lease_secs, max_await_secs),
                (base_url, service_id, secret, status_interval_secs, max_body_bytes),
            )| Written {
                database_url,
                data_dir,
                listen,
                embedded_postgres,
                concurrency,
                lease_secs,
                max_await_secs,
                base_url,
                service_id,
                secret,
                status_interval_secs,
                max_body_bytes,
            },
        )
}

proptest! {
    /// Arbitrary text: an answer, never a panic.
    #[test]
    fn parse_never_panics_on_any_text(text in any::<String>()) {
        if let Ok(config) = Config::from_toml_str(&text) {
            use_like_startup(&config);
        }
    }

    /// Known sections and keys with values of any type, inf and nan included: parsing never
    /// panics, and whatever it accepts, startup can turn into durations and limits.
    #[test]
    fn accepted_configs_convert_without_panic(text in tomlish()) {
        if let Ok(config) = Config::from_toml_str(&text) {
            use_like_startup(&config);
        }
    }

    /// A misspelt key (a known key with one character inserted), at the top or in a section,
    /// is refused: a typo must not silently leave a setting at its default.
    #[test]
    fn misspelt_keys_are_refused(
        (section, keys) in proptest::sample::select(&[("", TOP), ("[engine]\n", ENGINE), ("[http]\n", HTTP)][..])
            .prop_map(|(section, fields)| (section, keys(fields))),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        extra in proptest::char::range('_', 'z'),
    ) {
        let mut key = which.get(&keys).to_string();
        key.insert(at.index(key.len() + 1), extra);
        prop_assume!(!keys.contains(&key.as_str()));
        prop_assert!(Config::from_toml_str(&format!("{section}{key} = 1\n")).is_err(), "{:?} accepted", key);
    }

    /// parse(format(x)) == x: settings written as TOML are read back exactly.
    #[test]
    fn written_settings_read_back(w in written()) {
        let text = w.to_toml();
        let c = Config::from_toml_str(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(c.database_url.as_ref().map(Secret::expose), w.database_url.as_deref());
        prop_assert_eq!(c.data_dir.to_str(), Some(w.data_dir.as_str()));
        prop_assert_eq!(c.listen, w.listen);
        prop_assert_eq!(c.embedded_postgres, w.embedded_postgres);
        prop_assert_eq!(c.engine.concurrency, usize::try_from(w.concurrency).unwrap_or(usize::MAX));
        prop_assert_eq!(c.engine.lease_secs.to_bits(), w.lease_secs.to_bits());
        prop_assert_eq!(c.engine.max_await_secs, u64::from(w.max_await_secs));
        let p = c.eightb_partner.as_ref().ok_or_else(|| TestCaseError::fail("no [eightb_partner]"))?;
        prop_assert_eq!(&p.base_url, &w.base_url);
        prop_assert_eq!(&p.service_id, &w.service_id);
        prop_assert_eq!(p.secret.expose(), w.secret.as_str());
        prop_assert_eq!(p.status_interval_secs.to_bits(), w.status_interval_secs.to_bits());
        prop_assert_eq!(c.http.max_body_bytes, usize::try_from(w.max_body_bytes).unwrap_or(usize::MAX));
        use_like_startup(&c);
    }

    /// Secrets never reach Debug output: replacing their values leaves it unchanged.
    #[test]
    fn debug_output_does_not_depend_on_secrets(w in written(), other_url in any::<String>(), other_secret in any::<String>()) {
        let c = Config::from_toml_str(&w.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut d = c.clone();
        if d.database_url.is_some() {
            d.database_url = Some(Secret::new(other_url));
        }
        if let Some(p) = d.eightb_partner.as_mut() {
            p.secret = Secret::new(other_secret);
        }
        prop_assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }
}
