//! Accounts of the token providers for tests: sandboxes of 8B REST (two accounts, each its own
//! sandbox and login) and 88Pay, and the real connectors for them, with the fleet-shared token
//! store on the test database.

use std::sync::Arc;
use std::time::Duration;

use payoutd_core::Secret;
use payoutd_core::credentials::CredentialStore;
use payoutd_core::sealing::SealingKey;
use payoutd_providers::Connector;
use payoutd_providers::eightb_rest::{EightBRest, EightBRestConfig};
use payoutd_providers::eightyeight_pay::{EightyEightPay, EightyEightPayConfig};
use payoutd_sandbox::Faults;
use payoutd_sandbox::eightb_rest::{RestSandbox, RestSandboxConfig, RestSandboxHandle};
use payoutd_sandbox::eightyeight_pay::{PaySandbox, PaySandboxConfig, PaySandboxHandle};
use payoutd_store::PgPool;
use payoutd_store::credentials::PgCredentialStore;
use serde_json::{Value, json};

/// The provider-token key of every test (base64 of 32 bytes). Tests assert it never leaks.
pub const TOKEN_KEY: &str = "cGF5b3V0ZC10ZXN0LXByb3ZpZGVyLXRva2VuLWtleSE=";
pub const REST_PASSWORD: &str = "rest-password-Hq3k8";
pub const REST_WEBHOOK_SECRET: &str = "rest-webhook-path-Yt7wP2xQ";
pub const PAY_API_KEY: &str = "sk_test_88pay-Nf6sK2";
pub const PAY_MERCHANT: &str = "MCH-COL-TEST1";

/// The account names the token sandboxes are configured under.
pub const REST_A: &str = "rest-a";
pub const REST_B: &str = "rest-b";
pub const PAY_A: &str = "pay-a";

/// Settings of the token sandboxes of one test.
#[derive(Clone)]
pub struct TokenOptions {
    pub faults: Faults,
    pub access_token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
    pub pay_token_lifetime: Duration,
    pub processing_delay: Duration,
    pub forced_401_rate: f64,
    pub request_timeout: Duration,
    pub status_interval: Duration,
    /// A token with less than this left is refreshed before use (8B REST).
    pub token_margin: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            faults: Faults::default(),
            access_token_lifetime: Duration::from_secs(1800),
            refresh_token_lifetime: Duration::from_secs(36_000),
            pay_token_lifetime: Duration::from_secs(60),
            processing_delay: Duration::from_millis(100),
            forced_401_rate: 0.0,
            request_timeout: Duration::from_millis(500),
            status_interval: Duration::from_secs(3),
            token_margin: Duration::from_millis(500),
        }
    }
}

/// Two 8B REST sandboxes (accounts `rest-a`, `rest-b`) and one 88Pay sandbox (`pay-a`).
pub struct TokenSandboxes {
    pub rest_a: RestSandboxHandle,
    pub rest_b: RestSandboxHandle,
    pub pay: PaySandboxHandle,
    pub options: TokenOptions,
}

fn login_of(account: &str) -> String {
    format!("{account}-login")
}

impl TokenSandboxes {
    pub async fn start(options: TokenOptions) -> Self {
        let rest = |account: &str, seed: u64| {
            let mut c = RestSandboxConfig::new(login_of(account), Secret::new(REST_PASSWORD));
            c.access_token_lifetime = options.access_token_lifetime;
            c.refresh_token_lifetime = options.refresh_token_lifetime;
            c.processing_delay = options.processing_delay;
            // The spec-like redelivery schedule a hundred times faster: about a minute in all, so a
            // loaded test run does not lose webhooks the provider would still be retrying.
            c.webhook_schedule_scale = 0.01;
            c.faults = options.faults.clone();
            c.forced_401_rate = options.forced_401_rate;
            c.seed = seed;
            c
        };
        let addr = "127.0.0.1:0".parse().expect("addr");
        let rest_a = RestSandbox::start(rest(REST_A, 1), addr).await.expect("rest sandbox a");
        let rest_b = RestSandbox::start(rest(REST_B, 2), addr).await.expect("rest sandbox b");
        let mut pc = PaySandboxConfig::new(PAY_MERCHANT, Secret::new(PAY_API_KEY));
        pc.token_lifetime = options.pay_token_lifetime;
        pc.processing_delay = options.processing_delay;
        pc.webhook_schedule_scale = 0.01;
        pc.faults = options.faults.clone();
        pc.forced_401_rate = options.forced_401_rate;
        pc.seed = 3;
        let pay = PaySandbox::start(pc, addr).await.expect("88pay sandbox");
        Self { rest_a, rest_b, pay, options }
    }

    /// Points the 8B REST sandboxes' webhooks at payoutd's API (`api`), as an operator would in
    /// the provider's portal.
    pub fn point_webhooks_at(&self, api: &str) {
        for (sandbox, account) in [(&self.rest_a, REST_A), (&self.rest_b, REST_B)] {
            sandbox.set_webhook_base_url(Some(format!("{api}/v1/callbacks/{account}/{REST_WEBHOOK_SECRET}")));
        }
    }

    /// The connectors of the three accounts, on `pool`'s token store; 88Pay's capability URLs
    /// point at `api`.
    pub fn connectors(&self, api: &str, pool: &PgPool) -> Vec<Arc<dyn Connector>> {
        let key = Arc::new(SealingKey::from_base64(&Secret::new(TOKEN_KEY)).expect("token key"));
        let store: Arc<dyn CredentialStore> = Arc::new(PgCredentialStore::new(pool.clone(), key));
        let o = &self.options;
        let rest = |account: &str, sandbox: &RestSandboxHandle| -> Arc<dyn Connector> {
            let mut c = EightBRestConfig::new(
                account,
                sandbox.base_url(),
                login_of(account),
                Secret::new(REST_PASSWORD),
                Secret::new(REST_WEBHOOK_SECRET),
            );
            c.request_timeout = o.request_timeout;
            c.min_status_interval = o.status_interval;
            c.token_margin = o.token_margin;
            Arc::new(EightBRest::new(c, store.clone()).expect("8B REST connector"))
        };
        let pay = EightyEightPayConfig {
            account_name: PAY_A.to_owned(),
            base_url: self.pay.base_url(),
            merchant_id: PAY_MERCHANT.to_owned(),
            api_key: Secret::new(PAY_API_KEY),
            country: "COL".to_owned(),
            notification_base_url: api.to_owned(),
            capability_key: payoutd::accounts::capability_key(&Secret::new(TOKEN_KEY), PAY_A),
            request_timeout: o.request_timeout,
            min_status_interval: o.status_interval,
        };
        vec![
            rest(REST_A, &self.rest_a),
            rest(REST_B, &self.rest_b),
            Arc::new(EightyEightPay::new(pay).expect("88Pay connector")),
        ]
    }

    /// The `[[accounts]]` of a `payoutd` process using these sandboxes (secrets by variable).
    pub fn accounts_toml(&self, api: &str) -> String {
        let o = &self.options;
        let timeout = o.request_timeout.as_millis();
        let interval = o.status_interval.as_secs_f64();
        let mut text = String::new();
        for (account, sandbox) in [(REST_A, &self.rest_a), (REST_B, &self.rest_b)] {
            text.push_str(&format!(
                "[[accounts]]\nname = \"{account}\"\nkind = \"8b_rest\"\nbase_url = \"{}\"\nlogin = \"{}\"\n\
                 password_env = \"TEST_REST_PASSWORD\"\nwebhook_secret_env = \"TEST_REST_WEBHOOK_SECRET\"\n\
                 request_timeout_ms = {timeout}\nstatus_interval_secs = {interval}\n\n",
                sandbox.base_url(),
                login_of(account)
            ));
        }
        text.push_str(&format!(
            "[[accounts]]\nname = \"{PAY_A}\"\nkind = \"88pay\"\nbase_url = \"{}\"\nmerchant_id = \"{PAY_MERCHANT}\"\n\
             api_key_env = \"TEST_PAY_API_KEY\"\ncountry = \"COL\"\nnotification_base_url = \"{api}\"\n\
             request_timeout_ms = {timeout}\nstatus_interval_secs = {interval}\n\n",
            self.pay.base_url()
        ));
        text
    }

    /// The environment the accounts of [`TokenSandboxes::accounts_toml`] read their secrets from.
    pub fn accounts_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TEST_REST_PASSWORD", REST_PASSWORD),
            ("TEST_REST_WEBHOOK_SECRET", REST_WEBHOOK_SECRET),
            ("TEST_PAY_API_KEY", PAY_API_KEY),
            ("PAYOUTD_TOKEN_KEY", TOKEN_KEY),
        ]
    }

    pub async fn shutdown(self) {
        let _ = self.rest_a.shutdown().await;
        let _ = self.rest_b.shutdown().await;
        let _ = self.pay.shutdown().await;
    }
}

/// A valid enqueue body for `account`.
pub fn account_payout_body(account: &str, external_id: &str, amount: &str, currency: &str) -> Value {
    json!({
        "external_id": external_id,
        "account": account,
        "amount": amount,
        "currency": currency,
        "destination": {
            "phone": "573001234567",
            "client": "0012345678",
            "destination": "bancolombia",
            "receiver_name": "Ana Gomez",
        }
    })
}
