//! Webhooks in the binary: the `[webhooks]` settings (file and environment), what they build
//! (the API's sealing key and address policy, the delivery service's configuration), and the
//! `payoutd webhook ...` commands for operators.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use payoutd_core::Secret;
use payoutd_core::net_policy::{self, AddressPolicy};
use payoutd_core::sealing::SealingKey;
use payoutd_core::webhook::EventType;
use payoutd_engine::webhook_delivery::{DeliveryConfig, WebhookDelivery};
use payoutd_engine::webhook_http::ClientSettings;
use payoutd_server::webhooks_api::{DEFAULT_OVERLAP, MAX_OVERLAP, MAX_REDELIVER_EVENTS, WebhooksApi};
use payoutd_store::webhooks::{self, NewEndpoint};
use serde::Deserialize;

use crate::config::{Config, ConfigError};
use crate::database;

/// The `[webhooks]` section. Defaults suit production.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Base64 of 32 bytes (`payoutd webhook gen-key`): seals endpoint secrets at rest
    /// (AES-256-GCM). Without it, endpoints cannot be created and nothing is delivered.
    pub secret_key: Option<Secret>,
    /// Address ranges webhooks may reach although they are loopback, private, link-local, ...
    /// (e.g. `["10.20.0.0/16"]`). Empty: none.
    pub allow_networks: Vec<String>,
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// Deliveries in flight per endpoint while it answers well (one while it fails).
    pub per_endpoint: u32,
    pub lease_secs: f64,
    pub connect_timeout_ms: u64,
    /// Connect, send and read the answer.
    pub timeout_ms: u64,
    pub max_response_bytes: usize,
    pub retry_base_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How long a delivery is retried (at least 72).
    pub retry_window_hours: f64,
    pub pause_base_ms: u64,
    pub pause_max_secs: u64,
    /// An endpoint failing this long without a success is disabled, with an alert.
    pub disable_after_hours: f64,
    pub idle_poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let d = DeliveryConfig::default();
        Self {
            secret_key: None,
            allow_networks: Vec::new(),
            concurrency: d.concurrency,
            per_endpoint: d.per_endpoint,
            lease_secs: d.lease.as_secs_f64(),
            connect_timeout_ms: d.client.connect_timeout.as_millis() as u64,
            timeout_ms: d.client.timeout.as_millis() as u64,
            max_response_bytes: d.client.max_response_bytes,
            retry_base_ms: d.retry.base.as_millis() as u64,
            retry_max_delay_ms: d.retry.max_delay.as_millis() as u64,
            retry_window_hours: d.retry_window.as_secs_f64() / 3600.0,
            pause_base_ms: d.pause_base.as_millis() as u64,
            pause_max_secs: d.pause_max.as_secs(),
            disable_after_hours: d.disable_after.as_secs_f64() / 3600.0,
            idle_poll_ms: d.idle_poll.as_millis() as u64,
        }
    }
}

fn parse_env<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string() })
}

impl WebhookSettings {
    /// `PAYOUTD_WEBHOOK_*` over the file's values.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PAYOUTD_WEBHOOK_SECRET_KEY").filter(|v| !v.is_empty()) {
            self.secret_key = Some(Secret::new(v));
        }
        if let Some(v) = get("PAYOUTD_WEBHOOK_ALLOW_NETWORKS") {
            self.allow_networks =
                v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Some(v) = get("PAYOUTD_WEBHOOK_CONCURRENCY") {
            self.concurrency = parse_env("PAYOUTD_WEBHOOK_CONCURRENCY", &v)?;
        }
        if let Some(v) = get("PAYOUTD_WEBHOOK_TIMEOUT_MS") {
            self.timeout_ms = parse_env("PAYOUTD_WEBHOOK_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_WEBHOOK_DISABLE_AFTER_HOURS") {
            self.disable_after_hours = parse_env("PAYOUTD_WEBHOOK_DISABLE_AFTER_HOURS", &v)?;
        }
        Ok(())
    }

    pub fn sealing_key(&self) -> anyhow::Result<Option<SealingKey>> {
        self.secret_key
            .as_ref()
            .map(|k| SealingKey::from_base64(k).context("webhooks.secret_key / PAYOUTD_WEBHOOK_SECRET_KEY"))
            .transpose()
    }

    pub fn policy(&self) -> anyhow::Result<AddressPolicy> {
        AddressPolicy::parse_list(&self.allow_networks.join(","))
            .context("webhooks.allow_networks / PAYOUTD_WEBHOOK_ALLOW_NETWORKS")
    }

    /// What the HTTP API needs.
    pub fn api(&self) -> anyhow::Result<WebhooksApi> {
        Ok(WebhooksApi { sealing_key: self.sealing_key()?.map(Arc::new), policy: self.policy()? })
    }

    /// The delivery service's configuration (checked by `WebhookDelivery::new`).
    pub fn delivery_config(&self, worker_id: &str) -> anyhow::Result<DeliveryConfig> {
        let d = DeliveryConfig::default();
        let secs = |h: f64| Duration::from_secs_f64((h * 3600.0).clamp(0.0, 1e9));
        Ok(DeliveryConfig {
            worker_id: worker_id.to_owned(),
            concurrency: self.concurrency,
            per_endpoint: self.per_endpoint,
            lease: Duration::from_secs_f64(self.lease_secs.clamp(0.0, 1e6)),
            client: ClientSettings {
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
                timeout: Duration::from_millis(self.timeout_ms),
                max_response_bytes: self.max_response_bytes,
                policy: self.policy()?,
            },
            retry: payoutd_core::RetryPolicy {
                base: Duration::from_millis(self.retry_base_ms.max(1)),
                max_delay: Duration::from_millis(self.retry_max_delay_ms.max(1)),
                max_attempts: u32::MAX,
            },
            retry_window: secs(self.retry_window_hours),
            pause_base: Duration::from_millis(self.pause_base_ms),
            pause_max: Duration::from_secs(self.pause_max_secs),
            disable_after: secs(self.disable_after_hours),
            idle_poll: Duration::from_millis(self.idle_poll_ms.max(10)),
            shutdown_grace: d.shutdown_grace,
        })
    }
}

/// The delivery service for a process that runs a worker: `None` (and a log line saying
/// why) when no sealing key is configured; refused at start-up when a setting breaks a rule.
pub fn delivery_service(
    pool: &payoutd_store::PgPool,
    settings: &WebhookSettings,
    worker_id: &str,
) -> anyhow::Result<Option<WebhookDelivery>> {
    let Some(key) = settings.sealing_key()? else {
        tracing::info!(
            "webhooks off: no PAYOUTD_WEBHOOK_SECRET_KEY; events are still recorded in the outbox"
        );
        return Ok(None);
    };
    let config = settings.delivery_config(worker_id)?;
    let service = WebhookDelivery::new(pool.clone(), key, config).context("checking the webhook settings")?;
    Ok(Some(service))
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create an endpoint; its secret is printed once.
    Create {
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        url: String,
        /// payout.paid, payout.failed, payout.cancelled, payout.needs_review, payout.resolved
        /// (repeat or comma-separate).
        #[arg(long = "events", required = true, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List endpoints (of one client, or all).
    List {
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Replace an endpoint's secret; the old one keeps signing during the overlap.
    Rotate {
        id: uuid::Uuid,
        #[arg(long, default_value_t = DEFAULT_OVERLAP.as_secs_f64() / 3600.0)]
        overlap_hours: f64,
    },
    /// Delete an endpoint (pending deliveries are cancelled; the log stays).
    Delete { id: uuid::Uuid },
    /// Enable an endpoint again after it was disabled for constant failure.
    Enable { id: uuid::Uuid },
    /// Events, newest first.
    Events {
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long)]
        payout: Option<uuid::Uuid>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// An event's delivery log: every delivery and attempt.
    Log { event_id: uuid::Uuid },
    /// Send one event again (`--event`), or every event of a client in a time range.
    Redeliver {
        #[arg(long, conflicts_with_all = ["client_id", "from", "to"])]
        event: Option<uuid::Uuid>,
        #[arg(long, requires_all = ["from", "to"])]
        client_id: Option<String>,
        /// RFC 3339, e.g. 2026-11-22T10:00:00Z (inclusive).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// RFC 3339 (exclusive).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Only to this endpoint.
        #[arg(long)]
        endpoint: Option<uuid::Uuid>,
    },
    /// Print a fresh sealing key for `webhooks.secret_key` / PAYOUTD_WEBHOOK_SECRET_KEY.
    GenKey,
}

pub async fn run(config: &Config, command: WebhookCommand) -> anyhow::Result<()> {
    if let WebhookCommand::GenKey = command {
        println!("{}", SealingKey::generate_base64().expose());
        return Ok(());
    }
    let settings = &config.webhooks;
    let pool = database::open(config, 2).await?;
    let need_key = || -> anyhow::Result<SealingKey> {
        settings.sealing_key()?.context(
            "no webhook sealing key: set PAYOUTD_WEBHOOK_SECRET_KEY (or webhooks.secret_key); \
             `payoutd webhook gen-key` prints a fresh one",
        )
    };
    match command {
        WebhookCommand::GenKey => {}
        WebhookCommand::Create { client_id, url, events, description } => {
            let key = need_key()?;
            let url = net_policy::check_url(url.trim(), &settings.policy()?)
                .map_err(|e| anyhow::anyhow!("--url refused: {e}"))?;
            let mut types = Vec::new();
            for e in &events {
                let t: EventType = e.trim().parse()?;
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            let new = NewEndpoint {
                client_id: &client_id,
                url: url.as_str(),
                event_types: &types,
                description: &description,
            };
            let created = webhooks::create_endpoint(&pool, &key, &new).await?;
            eprintln!(
                "endpoint {} for client {} -> {}",
                created.endpoint.id, client_id, created.endpoint.url
            );
            eprintln!("events: {}", created.endpoint.event_types.join(","));
            eprintln!("the signing secret is shown once; give it to the receiver now:");
            println!("{}", created.secret.expose());
        }
        WebhookCommand::List { client_id } => {
            for e in webhooks::list_endpoints(&pool, client_id.as_deref()).await? {
                let status = match (&e.disabled_at, e.consecutive_failures) {
                    (Some(at), _) => format!("DISABLED since {}", at.format("%Y-%m-%d %H:%M:%S")),
                    (None, 0) => "ok".to_owned(),
                    (None, n) => format!("failing ({n} in a row)"),
                };
                println!(
                    "{}  {:<12} {:<40} {:<45} {}",
                    e.id,
                    e.client_id,
                    e.url,
                    e.event_types.join(","),
                    status
                );
            }
        }
        WebhookCommand::Rotate { id, overlap_hours } => {
            let key = need_key()?;
            let overlap = Duration::from_secs_f64((overlap_hours * 3600.0).max(0.0));
            anyhow::ensure!(overlap <= MAX_OVERLAP, "--overlap-hours must be at most 168 (7 days)");
            let rotated = webhooks::rotate_secret(&pool, &key, id, None, overlap)
                .await?
                .context(format!("no endpoint {id}"))?;
            match rotated.endpoint.previous_secret_expires_at {
                Some(at) => eprintln!("the old secret keeps signing until {at}"),
                None => eprintln!("the old secret stopped signing now"),
            }
            eprintln!("the new signing secret is shown once:");
            println!("{}", rotated.secret.expose());
        }
        WebhookCommand::Delete { id } => {
            anyhow::ensure!(webhooks::delete_endpoint(&pool, id, None).await?, "no endpoint {id}");
            println!("deleted {id}");
        }
        WebhookCommand::Enable { id } => {
            anyhow::ensure!(webhooks::enable_endpoint(&pool, id, None).await?, "no endpoint {id}");
            println!("enabled {id}");
        }
        WebhookCommand::Events { client_id, payout, limit } => {
            for e in webhooks::events(&pool, client_id.as_deref(), payout, limit.clamp(1, 10_000)).await? {
                println!(
                    "{}  {}  {:<20} {:<12} payout {}",
                    e.id,
                    e.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.event_type,
                    e.client_id,
                    e.payout_id.map(|p| p.to_string()).unwrap_or_default()
                );
            }
        }
        WebhookCommand::Log { event_id } => {
            let event =
                webhooks::event(&pool, event_id, None).await?.context(format!("no event {event_id}"))?;
            println!("event     {} {} (client {})", event.id, event.event_type, event.client_id);
            println!("created   {}", event.created_at);
            let deliveries = webhooks::deliveries_of_event(&pool, event_id).await?;
            if deliveries.is_empty() {
                println!(
                    "no deliveries (no endpoint of the client took this event type when it was written)"
                );
            }
            for d in deliveries {
                println!(
                    "delivery to {} ({}): {} after {} attempts",
                    d.endpoint_id, d.url, d.state, d.attempts
                );
                if let Some(at) = d.next_attempt_at {
                    println!("  next attempt {at}");
                }
                for a in d.log {
                    println!(
                        "  #{:<3} {}  {:>6} ms  {:<11} {:>4}  {}{}",
                        a.attempt,
                        a.started_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                        a.latency_ms,
                        a.outcome,
                        a.status_code.map(|s| s.to_string()).unwrap_or_default(),
                        a.error.or(a.response_excerpt).unwrap_or_default(),
                        if a.lease_lost { "  (lease lost)" } else { "" }
                    );
                }
            }
        }
        WebhookCommand::Redeliver { event, client_id, from, to, endpoint } => {
            let scheduled = match (event, client_id, from, to) {
                (Some(event), _, _, _) => webhooks::redeliver_event(&pool, event, None, endpoint)
                    .await?
                    .context(format!("no event {event}"))?,
                (None, Some(client), Some(from), Some(to)) => {
                    anyhow::ensure!(to > from, "--to must be after --from");
                    webhooks::redeliver_range(&pool, &client, from, to, endpoint, MAX_REDELIVER_EVENTS)
                        .await?
                }
                _ => anyhow::bail!("give --event ID, or --client-id with --from and --to"),
            };
            println!("{} events, {} deliveries scheduled", scheduled.events, scheduled.deliveries);
        }
    }
    Ok(())
}
