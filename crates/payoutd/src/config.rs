//! Configuration: an optional TOML file, then environment variables on top. Secrets may come
//! from either; they are wrapped in [`Secret`] the moment they are read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use payoutd_core::Secret;
use payoutd_engine::EngineConfig;
use payoutd_providers::eightb_partner::EightBPartnerConfig;
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
    pub eightb_partner: Option<EightBPartnerSettings>,
    pub engine: EngineSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from(".payoutd"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            eightb_partner: None,
            engine: EngineSettings::default(),
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

fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_status_interval_secs() -> f64 {
    60.0
}

impl EightBPartnerSettings {
    pub fn connector_config(&self) -> EightBPartnerConfig {
        let mut c = EightBPartnerConfig::new(&self.base_url, &self.service_id, self.secret.clone());
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.min_status_interval = Duration::from_secs_f64(self.status_interval_secs.max(0.0));
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
        }
    }
}

impl EngineSettings {
    pub fn engine_config(&self) -> EngineConfig {
        let mut e = EngineConfig::default();
        e.concurrency = self.concurrency.max(1);
        e.lease = Duration::from_secs_f64(self.lease_secs.max(1.0));
        e.heartbeat_every = e.lease / 3;
        e.idle_poll = Duration::from_millis(self.idle_poll_ms.max(10));
        e.shutdown_grace = Duration::from_secs_f64(self.shutdown_grace_secs.max(0.0));
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
    /// Reads `file` (if given), then applies the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?
            }
        };
        config.apply_env(|name| std::env::var(name).ok())?;
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
        if let Some(v) = get("PAYOUTD_IDLE_POLL_MS") {
            self.engine.idle_poll_ms = parse_env("PAYOUTD_IDLE_POLL_MS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_RETRY_BASE_MS") {
            self.engine.retry_base_ms = parse_env("PAYOUTD_RETRY_BASE_MS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_PROVIDER_CALLS_PER_SECOND") {
            self.engine.provider_calls_per_second = parse_env("PAYOUTD_PROVIDER_CALLS_PER_SECOND", &v)?;
        }
        Ok(())
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
}
