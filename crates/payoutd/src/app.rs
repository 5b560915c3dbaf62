//! Wiring: connectors from configuration, and the long-running services (API, worker), each
//! with its admin listener (metrics and probes) and the gauges' timer.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use payoutd_core::credentials::CredentialStore;
use payoutd_core::sealing::SealingKey;
use payoutd_engine::{EngineConfig, Worker};
use payoutd_providers::Connectors;
use payoutd_server::{AppState, HttpLimits};
use payoutd_store::PgPool;
use payoutd_store::credentials::PgCredentialStore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::AdminBind;
use crate::webhooks::WebhookSettings;

/// The connectors the configuration enables. `pool` is where token providers keep their
/// fleet-shared tokens (`None` only where nothing will call a provider, e.g. a config check).
pub fn connectors(config: &Config, pool: Option<&PgPool>) -> anyhow::Result<Connectors> {
    let accounts = config.all_accounts();
    let key = match (&config.tokens.secret_key, crate::accounts::need_token_key(&accounts)) {
        (Some(text), _) => Some((
            Arc::new(SealingKey::from_base64(text).context("[tokens] secret_key / PAYOUTD_TOKEN_KEY")?),
            text.clone(),
        )),
        (None, true) => anyhow::bail!(
            "an 8B REST or 88Pay account is configured but no provider token key: set PAYOUTD_TOKEN_KEY \
             (base64 of 32 bytes; `payoutd webhook gen-key` prints one) so that their tokens are sealed at rest"
        ),
        (None, false) => None,
    };
    let deps = crate::accounts::ConnectorDeps {
        credentials: match (&key, pool) {
            (Some((key, _)), Some(pool)) => {
                Some(Arc::new(PgCredentialStore::new(pool.clone(), key.clone())) as Arc<dyn CredentialStore>)
            }
            _ => None,
        },
        capability_secret: key.map(|(_, text)| text),
    };
    let connectors = crate::accounts::build(&accounts, &deps)?;
    if connectors.names().is_empty() {
        anyhow::bail!(
            "no provider configured: add [[accounts]] to the config file, or set PAYOUTD_8B_PARTNER_BASE_URL, \
             PAYOUTD_8B_PARTNER_SERVICE_ID and PAYOUTD_8B_PARTNER_SECRET (or an [eightb_partner] section)"
        );
    }
    Ok(connectors)
}

/// What every long-running process runs besides its work: the admin listener (`/metrics`,
/// `/health/live`, `/health/ready`) and the timer that refreshes the gauges.
pub struct Operations {
    pub admin: Option<tokio::net::TcpListener>,
    pub gauges: payoutd_engine::gauges::GaugeSettings,
    /// The operator API's settings (bulk cap, confirmation tokens, retention on demand).
    pub operator: payoutd_server::operator_api::OperatorApi,
    /// The retention timer workers run.
    pub retention: payoutd_engine::retention_timer::RetentionTimerConfig,
    /// The operator console's settings; `None` when `[console] enabled = false`.
    pub console: Option<payoutd_server::console::ConsoleConfig>,
}

/// Binds the admin listener as configured (see [`crate::telemetry::TelemetrySettings`]).
pub async fn operations(config: &Config) -> anyhow::Result<Operations> {
    let admin = match config.telemetry.admin_bind()? {
        AdminBind::Off => None,
        AdminBind::Required(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin listener {addr} (PAYOUTD_ADMIN_LISTEN)"))?,
        ),
        AdminBind::Default(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "admin listener (metrics, probes) not started; set PAYOUTD_ADMIN_LISTEN to choose its address");
                None
            }
        },
    };
    // Retention settings that would drop what reconciliation needs are refused here, at start-up.
    let retention = config.retention.timer()?;
    Ok(Operations {
        admin,
        gauges: config.telemetry.gauges(&config.engine.engine_config()),
        operator: config.operator.api(&config.retention),
        retention,
        console: config.console(),
    })
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        tracing::info!("shutdown requested: finishing in-flight work");
        token.cancel();
    });
}

/// Runs the API (if `listener`, bounded by `http`) and a worker (if `engine`) until `shutdown`;
/// next to the worker, the webhook delivery service when a sealing key is configured.
#[allow(clippy::too_many_arguments)] // each is one service's wiring; a struct would only rename them
pub async fn run(
    pool: PgPool,
    connectors: Connectors,
    listener: Option<tokio::net::TcpListener>,
    http: HttpLimits,
    engine: Option<EngineConfig>,
    webhooks: &WebhookSettings,
    ops: Operations,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The readiness probe's patience with the claim loop: it turns at least every idle poll,
    // but a slow database can hold one turn for the pool's acquire timeout.
    let silence = engine.as_ref().map(|e| e.idle_poll * 3 + std::time::Duration::from_secs(30));
    let delivery = match &engine {
        Some(engine) => crate::webhooks::delivery_service(&pool, webhooks, &engine.worker_id)?,
        None => None,
    };
    let webhooks_api = webhooks.api()?;
    let retention_worker = engine.as_ref().map(|e| e.worker_id.clone());
    // Settings that would break a rule are refused before anything starts (DESIGN rule 12).
    let worker = engine
        .map(|engine| Worker::new(pool.clone(), connectors.clone(), engine))
        .transpose()
        .context("checking the engine settings")?;
    let mut tasks = tokio::task::JoinSet::new();
    // The admin listener outlives the other services, so a draining process can still be
    // scraped (and reports itself not ready); it stops once they are done.
    let admin_stop = CancellationToken::new();
    let admin = match ops.admin {
        Some(listener) => {
            let addr: SocketAddr = listener.local_addr()?;
            tracing::info!(%addr, "admin listening (/metrics, /health/live, /health/ready)");
            let pulse = worker.as_ref().map(|w| w.pulse()).zip(silence);
            let state = payoutd_server::admin::AdminState {
                pool: pool.clone(),
                metrics: Arc::new(crate::telemetry::render_metrics),
                worker: pulse.map(|(pulse, silence)| {
                    Arc::new(move || pulse.alive_within(silence)) as payoutd_server::admin::WorkerAlive
                }),
            };
            let stop = admin_stop.clone();
            Some(tokio::spawn(async move {
                payoutd_server::admin::serve(listener, state, async move { stop.cancelled().await }).await
            }))
        }
        None => None,
    };
    {
        let (pool, connectors, stop) = (pool.clone(), connectors.clone(), shutdown.clone());
        tasks.spawn(async move {
            payoutd_engine::gauges::run(pool, connectors, ops.gauges, stop).await;
            Ok(())
        });
    }
    if let Some(listener) = listener {
        let addr: SocketAddr = listener.local_addr()?;
        tracing::info!(%addr, ?http, "API listening");
        let state = AppState::new(pool.clone(), connectors.clone());
        let stop = shutdown.clone();
        let mut extra = payoutd_server::webhooks_api::routes(webhooks_api, &http)
            .merge(payoutd_server::operator_api::routes(ops.operator.clone(), &http));
        if let Some(console) = ops.console.clone() {
            tracing::info!(%addr, "operator console at /console");
            extra = extra.merge(payoutd_server::console::routes(console, &http));
        }
        let router = payoutd_server::router_with_extra(state, &http, extra);
        tasks.spawn(async move {
            payoutd_server::serve_router(listener, router, async move { stop.cancelled().await })
                .await
                .context("HTTP server")
        });
    }
    // Workers run the retention timer (one pass per period across the fleet).
    if let (Some(worker_id), true) = (retention_worker, ops.retention.enabled) {
        let (pool, config, stop) = (pool.clone(), ops.retention.clone(), shutdown.clone());
        tasks.spawn(async move {
            payoutd_engine::retention_timer::run(pool, config, worker_id, stop).await;
            Ok(())
        });
    }
    if let Some(worker) = worker {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            worker.run(stop).await;
            Ok(())
        });
    }
    if let Some(delivery) = delivery {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            delivery.run(stop).await;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("service task panicked")??;
    }
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    pool.close().await;
    Ok(())
}
