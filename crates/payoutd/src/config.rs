//! Configuration: an optional TOML file, then environment variables on top. Secrets may come
//! from either; they are wrapped in [`Secret`] the moment they are read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use payoutd_core::Secret;
use payoutd_engine::EngineConfig;
use payoutd_providers::eightb_partner::EightBPartnerConfig;
use payoutd_server::HttpLimits;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name} is invalid: {reason}")]
    Env { name: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Postgres to use. Unset: a private cluster under `data_dir` (see local_postgres).
    pub database_url: Option<Secret>,
    /// Where payoutd keeps its private Postgres cluster.
    pub data_dir: PathBuf,
    /// Address of the HTTP API and callback endpoint.
    pub listen: SocketAddr,
    /// The older single-account section; becomes the account named `8b_partner`.
    pub eightb_partner: Option<EightBPartnerSettings>,
    /// Provider accounts (`[[accounts]]`), see [`crate::accounts`].
    pub accounts: Vec<crate::accounts::AccountSettings>,
    /// The key provider tokens are sealed with (and 88Pay capability URLs derived from).
    pub tokens: TokenSettings,
    pub engine: EngineSettings,
    /// Use (start if needed) the private cluster under `data_dir` when `database_url` is unset.
    /// Off by default for the production commands, so that a host that lost DATABASE_URL
    /// refuses to start instead of running on an empty database. The demo does not need it.
    pub embedded_postgres: bool,
    /// Bounds of the HTTP server.
    pub http: HttpSettings,
    /// The admin listener (metrics, probes) and the gauges' timers.
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// Webhooks to backends: the sealing key, the address allow-list, delivery settings.
    pub webhooks: crate::webhooks::WebhookSettings,
    /// Mass-payout batches (`[batches]`): row and byte limits, the approval step.
    pub batches: crate::batch_cli::BatchesSettings,
    /// Operator controls: the bulk cap, confirmation tokens, pause rechecks.
    pub operator: crate::operator_cli::OperatorSettings,
    /// How long destination details and callback bodies are kept.
    pub retention: crate::operator_cli::RetentionSettings,
    /// The operator console at `/console` (`[console]`).
    pub console: ConsoleSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from(".payoutd"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            eightb_partner: None,
            accounts: Vec::new(),
            tokens: TokenSettings::default(),
            engine: EngineSettings::default(),
            embedded_postgres: false,
            http: HttpSettings::default(),
            telemetry: Default::default(),
            webhooks: Default::default(),
            batches: Default::default(),
            operator: Default::default(),
            retention: Default::default(),
            console: Default::default(),
        }
    }
}

/// The `[console]` section: the operator console served at `/console` by `payoutd serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the console (default on). Signing in needs an operator or batch token either way.
    pub enabled: bool,
    /// The console's public base URL (e.g. `https://ops.example/`) when a proxy serves it:
    /// https makes every session cookie `Secure`, and POSTs from that origin are accepted.
    pub public_base_url: Option<String>,
    /// How long a sign-in lasts.
    pub session_ttl_secs: f64,
    /// A trace viewer URL with `{trace_id}` in it, linked from each payout's page.
    pub trace_url: Option<String>,
    /// Seconds between reloads of the overview and of a running batch's page.
    pub refresh_secs: u32,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        let c = payoutd_server::console::ConsoleConfig::default();
        Self {
            enabled: true,
            public_base_url: None,
            session_ttl_secs: c.session_ttl.as_secs_f64(),
            trace_url: None,
            refresh_secs: c.refresh_secs,
        }
    }
}

impl Config {
    /// The console's settings, or `None` when it is switched off.
    pub fn console(&self) -> Option<payoutd_server::console::ConsoleConfig> {
        let s = &self.console;
        if !s.enabled {
            return None;
        }
        let mut c = payoutd_server::console::ConsoleConfig {
            session_ttl: seconds_setting(s.session_ttl_secs, 60.0, 7.0 * 86_400.0),
            trace_url: s.trace_url.clone().filter(|u| !u.trim().is_empty()),
            refresh_secs: s.refresh_secs.clamp(2, 3600),
            batches: self.batches.api(),
            ..Default::default()
        };
        if let Some(base) = s.public_base_url.as_deref().filter(|b| !b.trim().is_empty()) {
            c = c.with_public_base(base);
        }
        Some(c)
    }
}

/// The `[tokens]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Base64 of 32 bytes; better from `PAYOUTD_TOKEN_KEY`. Required when an 8B REST or 88Pay
    /// account is configured (start-up refuses otherwise).
    pub secret_key: Option<Secret>,
}

/// The `[http]` section: bounds of the API and callback server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// A request not answered within this is answered 503 with Retry-After.
    pub request_timeout_secs: f64,
    /// Requests handled at once (health checks not counted); more wait within the timeout.
    pub max_concurrent_requests: usize,
    /// Largest `POST /v1/payouts` body (413 beyond).
    pub max_body_bytes: usize,
    /// Largest provider callback body (413 beyond).
    pub max_callback_body_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let l = HttpLimits::default();
        Self {
            request_timeout_secs: l.request_timeout.as_secs_f64(),
            max_concurrent_requests: l.max_concurrent_requests,
            max_body_bytes: l.max_body_bytes,
            max_callback_body_bytes: l.max_callback_body_bytes,
        }
    }
}

impl HttpSettings {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            request_timeout: seconds_setting(self.request_timeout_secs, 0.1, 3600.0),
            max_concurrent_requests: self.max_concurrent_requests.max(1),
            max_body_bytes: self.max_body_bytes.max(1),
            max_callback_body_bytes: self.max_callback_body_bytes.max(1),
            // The `[batches]` section's, see `Config::http_limits`.
            batches: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EightBPartnerSettings {
    pub base_url: String,
    pub service_id: String,
    pub secret: Secret,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Minimum seconds between submit and status query, and between two status queries.
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: f64,
}

/// The most seconds a setting in seconds turns into: ten years, "never" for every one of them.
/// `Duration::from_secs_f64` panics on NaN, infinity and anything past `Duration::MAX`, and the
/// file and the environment can both spell those ("nan", "inf", "1e300"); found by the
/// `config_file` fuzz target. Bounding every such setting here also keeps sums of them (request
/// timeout + lease + margin) from overflowing.
pub(crate) const MAX_SETTING_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// A setting in seconds as a duration within `[min, max]`; NaN becomes `min`.
pub(crate) fn seconds_setting(secs: f64, min: f64, max: f64) -> Duration {
    let secs = if secs.is_nan() { min } else { secs.clamp(min, max) };
    Duration::from_secs_f64(secs)
}

/// 10 s: with the default lease (15 s) and safety margin (5 s) the 8B minimum status interval
/// of 60 s stays longer than request timeout + lease + margin (the engine refuses otherwise).
fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_status_interval_secs() -> f64 {
    60.0
}

impl EightBPartnerSettings {
    pub fn connector_config(&self) -> EightBPartnerConfig {
        let mut c = EightBPartnerConfig::new(&self.base_url, &self.service_id, self.secret.clone());
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.min_status_interval = seconds_setting(self.status_interval_secs, 0.0, MAX_SETTING_SECS);
        c
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    pub concurrency: usize,
    pub lease_secs: f64,
    pub idle_poll_ms: u64,
    pub shutdown_grace_secs: f64,
    pub provider_calls_per_second: u32,
    pub in_doubt_max_attempts: u32,
    pub max_await_secs: u64,
    pub retry_base_ms: u64,
    pub retry_max_delay_ms: u64,
    pub retry_max_attempts: u32,
    /// Lease heartbeat period; unset: a third of the lease.
    pub heartbeat_secs: Option<f64>,
    /// Added to request timeout + lease in the resubmit rule and the start-up check.
    pub safety_margin_secs: f64,
    /// NOT_FOUND answers, one status interval apart, before an in-doubt payout is resubmitted.
    pub resubmit_after_not_found: u32,
    /// NOT_FOUND answers for an accepted payout before it is parked.
    pub not_found_before_review: u32,
    /// Failed steps in a row (poison row) before a payout is parked.
    pub max_failed_steps: u32,
    /// Cap of a provider's Retry-After.
    pub max_retry_after_secs: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            concurrency: e.concurrency,
            lease_secs: e.lease.as_secs_f64(),
            idle_poll_ms: e.idle_poll.as_millis() as u64,
            shutdown_grace_secs: e.shutdown_grace.as_secs_f64(),
            provider_calls_per_second: e.provider_calls_per_second,
            in_doubt_max_attempts: e.in_doubt_max_attempts,
            max_await_secs: e.max_await.as_secs(),
            retry_base_ms: e.call_retry.base.as_millis() as u64,
            retry_max_delay_ms: e.call_retry.max_delay.as_millis() as u64,
            retry_max_attempts: e.call_retry.max_attempts,
            heartbeat_secs: None,
            safety_margin_secs: e.safety_margin.as_secs_f64(),
            resubmit_after_not_found: e.resubmit_after_not_found,
            not_found_before_review: e.not_found_before_review,
            max_failed_steps: e.max_failed_steps,
            max_retry_after_secs: e.max_retry_after.as_secs(),
        }
    }
}

impl EngineSettings {
    pub fn engine_config(&self) -> EngineConfig {
        let mut e = EngineConfig::default();
        e.concurrency = self.concurrency.max(1);
        e.lease = seconds_setting(self.lease_secs, 1.0, MAX_SETTING_SECS);
        e.heartbeat_every = match self.heartbeat_secs {
            Some(secs) => seconds_setting(secs, 0.01, MAX_SETTING_SECS),
            None => e.lease / 3,
        };
        e.safety_margin = seconds_setting(self.safety_margin_secs, 0.0, MAX_SETTING_SECS);
        // Values the engine's start-up check refuses (e.g. resubmit after fewer than two
        // NOT_FOUND answers) are passed through unchanged, so that the refusal names them.
        e.resubmit_after_not_found = self.resubmit_after_not_found;
        e.not_found_before_review = self.not_found_before_review;
        e.max_failed_steps = self.max_failed_steps;
        e.max_retry_after = Duration::from_secs(self.max_retry_after_secs);
        e.idle_poll = Duration::from_millis(self.idle_poll_ms.max(10));
        e.shutdown_grace = seconds_setting(self.shutdown_grace_secs, 0.0, MAX_SETTING_SECS);
        e.provider_calls_per_second = self.provider_calls_per_second.max(1);
        e.in_doubt_max_attempts = self.in_doubt_max_attempts.max(1);
        e.max_await = Duration::from_secs(self.max_await_secs);
        e.call_retry.base = Duration::from_millis(self.retry_base_ms);
        e.call_retry.max_delay = Duration::from_millis(self.retry_max_delay_ms);
        e.call_retry.max_attempts = self.retry_max_attempts.max(1);
        e
    }
}

impl Config {
    /// Parses the text of a config file, without applying the environment.
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads `file` (if given), then applies the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given by `get` (tests need not touch the process
    /// environment).
    pub fn load_with_env(
        file: Option<&Path>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?
            }
        };
        config.apply_env(get)?;
        Ok(config)
    }

    /// Environment overrides; `get` is injectable so tests need not touch the process env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = get("DATABASE_URL").filter(|v| !v.is_empty()) {
            self.database_url = Some(Secret::new(url));
        }
        if let Some(dir) = get("PAYOUTD_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(listen) = get("PAYOUTD_LISTEN") {
            self.listen = listen
                .parse()
                .map_err(|e| ConfigError::Env { name: "PAYOUTD_LISTEN", reason: format!("{e}") })?;
        }
        let base = get("PAYOUTD_8B_PARTNER_BASE_URL");
        let service = get("PAYOUTD_8B_PARTNER_SERVICE_ID");
        let secret = get("PAYOUTD_8B_PARTNER_SECRET");
        if base.is_some() || service.is_some() || secret.is_some() {
            let current = self.eightb_partner.take();
            let pick = |v: Option<String>, old: Option<String>, name: &'static str| {
                v.or(old).ok_or(ConfigError::Env {
                    name,
                    reason: "required when any PAYOUTD_8B_PARTNER_* is set".into(),
                })
            };
            self.eightb_partner = Some(EightBPartnerSettings {
                base_url: pick(
                    base,
                    current.as_ref().map(|c| c.base_url.clone()),
                    "PAYOUTD_8B_PARTNER_BASE_URL",
                )?,
                service_id: pick(
                    service,
                    current.as_ref().map(|c| c.service_id.clone()),
                    "PAYOUTD_8B_PARTNER_SERVICE_ID",
                )?,
                secret: Secret::new(pick(
                    secret,
                    current.as_ref().map(|c| c.secret.expose().to_owned()),
                    "PAYOUTD_8B_PARTNER_SECRET",
                )?),
                request_timeout_ms: current
                    .as_ref()
                    .map_or(default_request_timeout_ms(), |c| c.request_timeout_ms),
                status_interval_secs: current
                    .as_ref()
                    .map_or(default_status_interval_secs(), |c| c.status_interval_secs),
            });
        }
        if let Some(p) = self.eightb_partner.as_mut() {
            if let Some(v) = get("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS") {
                p.status_interval_secs = parse_env("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS", &v)?;
            }
            if let Some(v) = get("PAYOUTD_8B_PARTNER_REQUEST_TIMEOUT_MS") {
                p.request_timeout_ms = parse_env("PAYOUTD_8B_PARTNER_REQUEST_TIMEOUT_MS", &v)?;
            }
        }
        if let Some(v) = get("PAYOUTD_CONCURRENCY") {
            self.engine.concurrency = parse_env("PAYOUTD_CONCURRENCY", &v)?;
        }
        if let Some(v) = get("PAYOUTD_LEASE_SECS") {
            self.engine.lease_secs = parse_env("PAYOUTD_LEASE_SECS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_HEARTBEAT_SECS") {
            self.engine.heartbeat_secs = Some(parse_env("PAYOUTD_HEARTBEAT_SECS", &v)?);
        }
        if let Some(v) = get("PAYOUTD_SAFETY_MARGIN_SECS") {
            self.engine.safety_margin_secs = parse_env("PAYOUTD_SAFETY_MARGIN_SECS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_MAX_RETRY_AFTER_SECS") {
            self.engine.max_retry_after_secs = parse_env("PAYOUTD_MAX_RETRY_AFTER_SECS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_IDLE_POLL_MS") {
            self.engine.idle_poll_ms = parse_env("PAYOUTD_IDLE_POLL_MS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_RETRY_BASE_MS") {
            self.engine.retry_base_ms = parse_env("PAYOUTD_RETRY_BASE_MS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_PROVIDER_CALLS_PER_SECOND") {
            self.engine.provider_calls_per_second = parse_env("PAYOUTD_PROVIDER_CALLS_PER_SECOND", &v)?;
        }
        if let Some(v) = get("PAYOUTD_EMBEDDED_POSTGRES") {
            self.embedded_postgres = parse_flag("PAYOUTD_EMBEDDED_POSTGRES", &v)?;
        }
        if let Some(v) = get("PAYOUTD_CONSOLE") {
            self.console.enabled = parse_flag("PAYOUTD_CONSOLE", &v)?;
        }
        if let Some(v) = get("PAYOUTD_CONSOLE_PUBLIC_BASE_URL") {
            self.console.public_base_url = Some(v);
        }
        if let Some(v) = get("PAYOUTD_CONSOLE_TRACE_URL") {
            self.console.trace_url = Some(v);
        }
        if let Some(v) = get("PAYOUTD_HTTP_REQUEST_TIMEOUT_SECS") {
            self.http.request_timeout_secs = parse_env("PAYOUTD_HTTP_REQUEST_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_HTTP_MAX_CONCURRENT_REQUESTS") {
            self.http.max_concurrent_requests = parse_env("PAYOUTD_HTTP_MAX_CONCURRENT_REQUESTS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_HTTP_MAX_BODY_BYTES") {
            self.http.max_body_bytes = parse_env("PAYOUTD_HTTP_MAX_BODY_BYTES", &v)?;
        }
        if let Some(v) = get("PAYOUTD_HTTP_MAX_CALLBACK_BODY_BYTES") {
            self.http.max_callback_body_bytes = parse_env("PAYOUTD_HTTP_MAX_CALLBACK_BODY_BYTES", &v)?;
        }
        if let Some(v) = get("PAYOUTD_TOKEN_KEY").filter(|v| !v.is_empty()) {
            self.tokens.secret_key = Some(Secret::new(v));
        }
        let missing: Vec<String> =
            self.accounts.iter_mut().filter_map(|a| a.resolve_secrets(&|name| get(name)).err()).collect();
        if !missing.is_empty() {
            return Err(ConfigError::Env { name: "[[accounts]] *_env", reason: missing.join("; ") });
        }
        self.webhooks.apply_env(&get)?;
        self.batches.apply_env(&get)?;
        self.operator.apply_env(&get)?;
        self.retention.apply_env(&get)?;
        self.telemetry.apply_env(&get)?;
        Ok(())
    }

    /// The API's bounds: `[http]`, with the batch uploads' limits from `[batches]`.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits { batches: self.batches.api(), ..self.http.limits() }
    }

    /// The engine's settings, with each account's own call budget.
    pub fn engine_config(&self) -> EngineConfig {
        let mut e = self.engine.engine_config();
        (e.pause_recheck_min, e.pause_recheck_max) = self.operator.pause_recheck();
        for a in &self.accounts {
            if let Some(n) = a.calls_per_second {
                e.account_calls_per_second.insert(a.name.clone(), n.max(1));
            }
        }
        e
    }

    /// Every configured account: the `[[accounts]]`, and the older `[eightb_partner]` section
    /// as the account named `8b_partner`.
    pub fn all_accounts(&self) -> Vec<crate::accounts::AccountSettings> {
        let mut all = Vec::new();
        if let Some(p) = &self.eightb_partner {
            all.push(crate::accounts::AccountSettings {
                name: payoutd_providers::eightb_partner::client::PROVIDER.to_owned(),
                kind: crate::accounts::AccountKind::EightBPartner,
                base_url: p.base_url.clone(),
                request_timeout_ms: p.request_timeout_ms,
                status_interval_secs: p.status_interval_secs,
                calls_per_second: None,
                service_id: Some(p.service_id.clone()),
                secret_env: None,
                login: None,
                password_env: None,
                webhook_secret_env: None,
                refresh_path: None,
                merchant_id: None,
                api_key_env: None,
                country: None,
                notification_base_url: None,
                secrets: vec![("secret", p.secret.clone())],
            });
        }
        all.extend(self.accounts.iter().cloned());
        all
    }
}

/// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case); empty is off.
fn parse_flag(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Env { name, reason: format!("{v:?} is not 1/true/yes/on or 0/false/no/off") }),
    }
}

fn parse_env<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    /// DESIGN rule 12: the shipped example and the defaults pass the engine's start-up check,
    /// and the settings the engine shipped with before are refused, naming them.
    #[test]
    fn rule12_the_example_config_passes_the_start_up_check_and_the_old_defaults_do_not() {
        let text = include_str!("../../../deploy/payoutd.example.toml");
        let config = Config::from_toml_str(text).expect("the example parses");
        let connectors = crate::app::connectors(&config, None).expect("connectors");
        config.engine.engine_config().validate(&connectors).expect("the example passes");

        let old = "[eightb_partner]\nbase_url = \"http://x\"\nservice_id = \"s\"\nsecret = \"k\"\n\
                   request_timeout_ms = 30000\n[engine]\nlease_secs = 30\n";
        let config = Config::from_toml_str(old).expect("parses");
        let connectors = crate::app::connectors(&config, None).expect("connectors");
        let err = config.engine.engine_config().validate(&connectors).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("status interval (60 s)") && text.contains("request timeout (30 s)"), "{text}");
        assert!(text.contains("lease (30 s)"), "{text}");

        let resubmit_on_one = "[engine]\nresubmit_after_not_found = 1\n";
        let config = Config::from_toml_str(resubmit_on_one).expect("parses");
        let err = config.engine.engine_config().validate(&Default::default()).expect_err("refused");
        assert!(err.to_string().contains("resubmit_after_not_found (1)"), "{err}");
    }

    #[test]
    fn environment_configures_the_8b_partner_connector() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("PAYOUTD_8B_PARTNER_BASE_URL", "http://127.0.0.1:9"),
            ("PAYOUTD_8B_PARTNER_SERVICE_ID", "777"),
            ("PAYOUTD_8B_PARTNER_SECRET", "s3cr3t-value"),
            ("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS", "2.5"),
        ]))
        .unwrap();
        let p = c.eightb_partner.as_ref().unwrap();
        assert_eq!(p.service_id, "777");
        assert_eq!(p.connector_config().min_status_interval, Duration::from_millis(2500));
        assert!(!format!("{c:?}").contains("s3cr3t-value"), "secrets must not reach Debug output");
    }

    #[test]
    fn a_partial_provider_config_names_the_missing_variable() {
        let mut c = Config::default();
        let err = c.apply_env(env(&[("PAYOUTD_8B_PARTNER_BASE_URL", "http://x")])).unwrap_err();
        assert!(err.to_string().contains("PAYOUTD_8B_PARTNER_SERVICE_ID"), "{err}");
    }

    #[test]
    fn toml_file_is_parsed_and_unknown_keys_rejected() {
        let ok: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[eightb_partner]\nbase_url = \"http://a\"\nservice_id = \"1\"\nsecret = \"x\"\n",
        )
        .unwrap();
        assert_eq!(ok.listen.port(), 9000);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn http_limits_and_the_embedded_postgres_flag_come_from_file_and_environment() {
        let defaults = Config::default();
        assert!(!defaults.embedded_postgres, "the private cluster is opt-in");
        assert_eq!(defaults.http.limits(), HttpLimits::default());

        let mut c: Config = toml::from_str(
            "embedded_postgres = true\n[http]\nrequest_timeout_secs = 2.5\nmax_callback_body_bytes = 4096\n",
        )
        .unwrap();
        assert!(c.embedded_postgres);
        c.apply_env(env(&[
            ("PAYOUTD_HTTP_MAX_CONCURRENT_REQUESTS", "8"),
            ("PAYOUTD_EMBEDDED_POSTGRES", "off"),
        ]))
        .unwrap();
        let limits = c.http.limits();
        assert_eq!(limits.request_timeout, Duration::from_millis(2500));
        assert_eq!(limits.max_callback_body_bytes, 4096);
        assert_eq!(limits.max_concurrent_requests, 8);
        assert_eq!(limits.max_body_bytes, HttpLimits::default().max_body_bytes);
        assert!(!c.embedded_postgres);
        let err = c.apply_env(env(&[("PAYOUTD_EMBEDDED_POSTGRES", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("PAYOUTD_EMBEDDED_POSTGRES"), "{err}");
        assert!(toml::from_str::<Config>("[http]\nmax_body = 1\n").is_err(), "unknown keys are refused");
    }

    /// Found by the `config_file` fuzz target (the exact bytes) and the `config_props` proptest:
    /// settings in seconds the parser accepts but `Duration::from_secs_f64` panicked on at
    /// start-up (2^64 seconds, infinity, NaN).
    #[test]
    fn seconds_settings_beyond_duration_do_not_crash_start_up() {
        let fuzzed: &[u8] = b"#out_ms\n\
              [engine]\n\
              concurrency = 31                   # payou[http]tsn i flight per process\n\
              lease_secs = 18446744073709551615  # a  == \x22set-PD_8B_PARTNER_SECREmax_body_bytesuest_timeout_ms = 60          # the spe or more; = 10\n";
        let text = std::str::from_utf8(fuzzed).expect("utf-8");
        let c = Config::from_toml_str(text).expect("the fuzzer's config parses");
        assert_eq!(c.engine.engine_config().lease, Duration::from_secs_f64(MAX_SETTING_SECS));

        let c = Config::from_toml_str("[engine]\nheartbeat_secs = inf\n[http]\n").expect("parses");
        assert_eq!(c.engine.engine_config().heartbeat_every, Duration::from_secs_f64(MAX_SETTING_SECS));
        let c = Config::from_toml_str("[http]\nrequest_timeout_secs = nan\n").expect("parses");
        assert_eq!(c.http.limits().request_timeout, Duration::from_millis(100));
        let c = Config::from_toml_str(
            "[engine]\nlease_secs = nan\nshutdown_grace_secs = -inf\nsafety_margin_secs = 1e300\n\
             [eightb_partner]\nbase_url = \"http://a\"\nservice_id = \"1\"\nsecret = \"x\"\n\
             status_interval_secs = inf\n",
        )
        .expect("parses");
        let e = c.engine.engine_config();
        assert_eq!(e.lease, Duration::from_secs(1));
        assert_eq!(e.shutdown_grace, Duration::ZERO);
        assert_eq!(e.safety_margin, Duration::from_secs_f64(MAX_SETTING_SECS));
        let partner = c.eightb_partner.as_ref().expect("partner");
        assert_eq!(partner.connector_config().min_status_interval, Duration::from_secs_f64(MAX_SETTING_SECS));
    }

    #[test]
    fn the_console_is_on_by_default_and_an_https_public_base_makes_its_cookies_secure() {
        let c = Config::default();
        let console = c.console().expect("on by default");
        assert!(!console.secure_cookies && console.public_origin.is_none());
        let mut c: Config = toml::from_str(
            "[console]\npublic_base_url = \"https://ops.example/payoutd/\"\nrefresh_secs = 1\n",
        )
        .unwrap();
        let console = c.console().expect("on");
        assert!(console.secure_cookies);
        assert_eq!(console.public_origin.as_deref(), Some("https://ops.example"));
        assert_eq!(console.refresh_secs, 2, "clamped");
        c.apply_env(env(&[("PAYOUTD_CONSOLE", "off")])).unwrap();
        assert!(c.console().is_none());
    }
}
