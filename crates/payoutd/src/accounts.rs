//! Provider accounts: the `[[accounts]]` of the configuration, and the connectors built from them.
//!
//! Each account has a name (stored on its payouts, its callback route
//! `/v1/callbacks/{name}`, its rate limit and its token credential), a kind (`8b_partner`,
//! `8b_rest`, `88pay`), a base URL and credentials read from environment variables named in the
//! file (`*_env`), so the file itself holds no secret. Several accounts of one kind work side by
//! side. The older `[eightb_partner]` section (and its `PAYOUTD_8B_PARTNER_*` variables) still
//! works: it becomes the account named `8b_partner`, the name every payout of such a deployment
//! already carries.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use payoutd_core::Secret;
use payoutd_core::credentials::CredentialStore;
use payoutd_providers::Connectors;
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_providers::eightb_rest::{EightBRest, EightBRestConfig};
use payoutd_providers::eightyeight_pay::{EightyEightPay, EightyEightPayConfig};
use serde::Deserialize;

/// One `[[accounts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub name: String,
    pub kind: AccountKind,
    pub base_url: String,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Minimum seconds between submit and a status query, and between two queries.
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: f64,
    /// This account's share of provider calls per second (all workers together); unset: the
    /// engine's `provider_calls_per_second`.
    #[serde(default)]
    pub calls_per_second: Option<u32>,
    /// 8B partner: the service id; its secret comes from `secret_env`.
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    /// 8B REST: the login; password and webhook path secret come from `password_env` and
    /// `webhook_secret_env`.
    #[serde(default)]
    pub login: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// 8B REST: the refresh-token path (the guide names two).
    #[serde(default)]
    pub refresh_path: Option<String>,
    /// 88Pay: the merchant id; the API key comes from `api_key_env`.
    #[serde(default)]
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// 88Pay: ISO 3166-1 alpha-3 country of the payouts.
    #[serde(default)]
    pub country: Option<String>,
    /// 88Pay: payoutd's public base URL as the provider reaches it (capability URLs).
    #[serde(default)]
    pub notification_base_url: Option<String>,
    /// Secrets read from the variables named above (never from the file).
    #[serde(skip)]
    pub secrets: Vec<(&'static str, Secret)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AccountKind {
    #[serde(rename = "8b_partner")]
    EightBPartner,
    #[serde(rename = "8b_rest")]
    EightBRest,
    #[serde(rename = "88pay")]
    EightyEightPay,
}

impl AccountKind {
    fn uses_tokens(self) -> bool {
        !matches!(self, Self::EightBPartner)
    }
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_status_interval_secs() -> f64 {
    60.0
}

impl AccountSettings {
    /// Reads the secrets named by the `*_env` fields; names every missing variable.
    pub fn resolve_secrets(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        let wanted: &[(&'static str, &Option<String>)] = match self.kind {
            AccountKind::EightBPartner => &[("secret", &self.secret_env)],
            AccountKind::EightBRest => {
                &[("password", &self.password_env), ("webhook_secret", &self.webhook_secret_env)]
            }
            AccountKind::EightyEightPay => &[("api_key", &self.api_key_env)],
        };
        let mut secrets = Vec::new();
        let mut missing = Vec::new();
        for (what, env) in wanted {
            match env {
                None => missing.push(format!(
                    "account {:?}: {what}_env is required for kind {:?}",
                    self.name, self.kind
                )),
                Some(var) => match get(var).filter(|v| !v.is_empty()) {
                    Some(v) => secrets.push((*what, Secret::new(v))),
                    None => missing.push(format!(
                        "account {:?}: environment variable {var} ({what}) is not set",
                        self.name
                    )),
                },
            }
        }
        if !missing.is_empty() {
            return Err(missing.join("; "));
        }
        self.secrets = secrets;
        Ok(())
    }

    fn secret(&self, what: &str) -> anyhow::Result<Secret> {
        self.secrets
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, s)| s.clone())
            .with_context(|| format!("account {:?}: {what} not resolved from the environment", self.name))
    }

    fn field<'a>(&self, value: &'a Option<String>, what: &str) -> anyhow::Result<&'a str> {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("account {:?}: {what} is required for kind {:?}", self.name, self.kind))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    fn interval(&self) -> Duration {
        crate::config::seconds_setting(self.status_interval_secs, 0.0, crate::config::MAX_SETTING_SECS)
    }
}

/// What building connectors needs besides the accounts.
pub struct ConnectorDeps {
    /// Where token providers keep their fleet-shared tokens; required when one is configured.
    pub credentials: Option<Arc<dyn CredentialStore>>,
    /// Key material for 88Pay capability URLs (the provider-token key's text).
    pub capability_secret: Option<Secret>,
}

/// The connectors of `accounts`, in order, checked: unique names, plain names (they are URL
/// path segments), every field their kind needs.
pub fn build(accounts: &[AccountSettings], deps: &ConnectorDeps) -> anyhow::Result<Connectors> {
    let mut names = BTreeSet::new();
    let mut connectors = Connectors::new();
    for a in accounts {
        if a.name.is_empty()
            || a.name.len() > 64
            || !a.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "account name {:?} must be 1-64 letters, digits, '-' or '_' (it is a URL path segment)",
                a.name
            );
        }
        if !names.insert(a.name.clone()) {
            bail!("account name {:?} is configured twice", a.name);
        }
        let store = || match (&deps.credentials, &deps.capability_secret) {
            (Some(store), _) => Ok(store.clone()),
            (None, Some(_)) => bail!("account {:?}: its token store needs the database", a.name),
            (None, None) => bail!(
                "account {:?} ({:?}) needs the provider token key: set PAYOUTD_TOKEN_KEY (base64 of 32 bytes, \
                 `payoutd webhook gen-key` makes one) or [tokens] secret_key",
                a.name,
                a.kind
            ),
        };
        let connector: Arc<dyn payoutd_providers::Connector> = match a.kind {
            AccountKind::EightBPartner => {
                let mut c = EightBPartnerConfig::new(
                    &a.base_url,
                    a.field(&a.service_id, "service_id")?,
                    a.secret("secret")?,
                );
                c.account_name = a.name.clone();
                c.request_timeout = a.timeout();
                c.min_status_interval = a.interval();
                Arc::new(EightBPartner::new(c).with_context(|| format!("account {:?}", a.name))?)
            }
            AccountKind::EightBRest => {
                let mut c = EightBRestConfig::new(
                    &a.name,
                    &a.base_url,
                    a.field(&a.login, "login")?,
                    a.secret("password")?,
                    a.secret("webhook_secret")?,
                );
                if let Some(p) = &a.refresh_path {
                    c.refresh_path = p.clone();
                }
                c.request_timeout = a.timeout();
                c.min_status_interval = a.interval();
                Arc::new(EightBRest::new(c, store()?).with_context(|| format!("account {:?}", a.name))?)
            }
            AccountKind::EightyEightPay => {
                store()?;
                let key = deps.capability_secret.as_ref().context("88Pay needs the provider token key")?;
                let c = EightyEightPayConfig {
                    account_name: a.name.clone(),
                    base_url: a.base_url.clone(),
                    merchant_id: a.field(&a.merchant_id, "merchant_id")?.to_owned(),
                    api_key: a.secret("api_key")?,
                    country: a.field(&a.country, "country")?.to_owned(),
                    notification_base_url: a
                        .field(&a.notification_base_url, "notification_base_url")?
                        .to_owned(),
                    capability_key: capability_key(key, &a.name),
                    request_timeout: a.timeout(),
                    min_status_interval: a.interval(),
                };
                Arc::new(EightyEightPay::new(c).with_context(|| format!("account {:?}", a.name))?)
            }
        };
        connectors = connectors.with(connector);
    }
    Ok(connectors)
}

/// Whether any account needs the provider token key.
pub fn need_token_key(accounts: &[AccountSettings]) -> bool {
    accounts.iter().any(|a| a.kind.uses_tokens())
}

/// A per-account key for capability URLs, derived from the token key (so rotating that key
/// also retires old capability URLs, and accounts never share one).
pub fn capability_key(token_key: &Secret, account: &str) -> Secret {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_key.expose().as_bytes());
    let tag = ring::hmac::sign(&key, format!("payoutd 88pay capability urls\n{account}").as_bytes());
    Secret::new(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::Config;

    const ACCOUNTS: &str = r#"
[eightb_partner]
base_url = "http://127.0.0.1:9"
service_id = "777"
secret = "partner-secret"

[[accounts]]
name = "rest-a"
kind = "8b_rest"
base_url = "http://127.0.0.1:10"
login = "acme"
password_env = "REST_A_PASSWORD"
webhook_secret_env = "REST_A_HOOK"
calls_per_second = 7

[[accounts]]
name = "pay-a"
kind = "88pay"
base_url = "http://127.0.0.1:11"
merchant_id = "MCH-1"
api_key_env = "PAY_A_KEY"
country = "COL"
notification_base_url = "https://payoutd.example"
"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const FULL_ENV: &[(&str, &str)] = &[
        ("REST_A_PASSWORD", "rest-password-value"),
        ("REST_A_HOOK", "webhook-path-secret-1234"),
        ("PAY_A_KEY", "sk_pay_value"),
        ("PAYOUTD_TOKEN_KEY", "cGF5b3V0ZC10ZXN0LXByb3ZpZGVyLXRva2VuLWtleSE="),
    ];

    #[test]
    fn accounts_of_every_kind_are_built_with_the_older_section_as_8b_partner() {
        let mut config = Config::from_toml_str(ACCOUNTS).expect("parses");
        config.apply_env(env(FULL_ENV)).expect("env");
        let err = crate::app::connectors(&config, None).err().expect("8B REST needs the token store");
        assert!(format!("{err:#}").contains("needs the database"), "{err:#}");
        let names: Vec<String> = config.all_accounts().iter().map(|a| a.name.clone()).collect();
        assert_eq!(names, ["8b_partner", "rest-a", "pay-a"]);
        assert_eq!(config.engine_config().account_calls_per_second.get("rest-a"), Some(&7));
        assert!(!format!("{config:?}").contains("rest-password-value"), "secrets stay out of Debug");
    }

    #[test]
    fn a_missing_secret_variable_is_named() {
        let mut config = Config::from_toml_str(ACCOUNTS).expect("parses");
        let err = config.apply_env(env(&[("REST_A_PASSWORD", "x")])).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("REST_A_HOOK") && text.contains("PAY_A_KEY"), "{text}");
    }

    #[test]
    fn a_token_provider_without_the_token_key_is_refused_at_start_up() {
        let mut config = Config::from_toml_str(ACCOUNTS).expect("parses");
        config.apply_env(env(&FULL_ENV[..3])).expect("env");
        let err = crate::app::connectors(&config, None).err().expect("refused");
        assert!(err.to_string().contains("PAYOUTD_TOKEN_KEY"), "{err}");
    }

    #[test]
    fn duplicate_and_unsafe_account_names_are_refused() {
        let one = "[[accounts]]\nname = \"p\"\nkind = \"8b_partner\"\nbase_url = \"http://x\"\nservice_id = \"1\"\nsecret_env = \"S\"\n";
        let mut config = Config::from_toml_str(&format!("{one}{one}")).expect("parses");
        config.apply_env(env(&[("S", "s")])).expect("env");
        let deps = super::ConnectorDeps { credentials: None, capability_secret: None };
        let err = super::build(&config.all_accounts(), &deps).err().expect("refused");
        assert!(err.to_string().contains("configured twice"), "{err}");

        let bad = "[[accounts]]\nname = \"a/b\"\nkind = \"8b_partner\"\nbase_url = \"http://x\"\nservice_id = \"1\"\nsecret_env = \"S\"\n";
        let mut config = Config::from_toml_str(bad).expect("parses");
        config.apply_env(env(&[("S", "s")])).expect("env");
        let err = super::build(&config.all_accounts(), &deps).err().expect("refused");
        assert!(err.to_string().contains("URL path segment"), "{err}");
        assert!(
            Config::from_toml_str("[[accounts]]\nname = \"x\"\nkind = \"paypal\"\nbase_url = \"http://x\"\n")
                .is_err()
        );
    }
}
