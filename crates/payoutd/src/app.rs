//! Wiring: connectors from configuration, and the long-running services (API, worker).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use payoutd_engine::{EngineConfig, Worker};
use payoutd_providers::Connectors;
use payoutd_providers::eightb_partner::EightBPartner;
use payoutd_server::AppState;
use payoutd_store::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The connectors the configuration enables.
pub fn connectors(config: &Config) -> anyhow::Result<Connectors> {
    let mut connectors = Connectors::new();
    if let Some(p) = &config.eightb_partner {
        let connector = EightBPartner::new(p.connector_config()).context("8B partner configuration")?;
        connectors = connectors.with(Arc::new(connector));
    }
    if connectors.names().is_empty() {
        anyhow::bail!(
            "no provider configured: set PAYOUTD_8B_PARTNER_BASE_URL, PAYOUTD_8B_PARTNER_SERVICE_ID and \
             PAYOUTD_8B_PARTNER_SECRET (or an [eightb_partner] section in the config file)"
        );
    }
    Ok(connectors)
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

/// Runs the API (if `listener`) and a worker (if `engine`) until `shutdown`.
pub async fn run(
    pool: PgPool,
    connectors: Connectors,
    listener: Option<tokio::net::TcpListener>,
    engine: Option<EngineConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listener {
        let addr: SocketAddr = listener.local_addr()?;
        tracing::info!(%addr, "API listening");
        let state = AppState { pool: pool.clone(), connectors: connectors.clone() };
        let stop = shutdown.clone();
        tasks.spawn(async move {
            payoutd_server::serve(listener, state, async move { stop.cancelled().await })
                .await
                .context("HTTP server")
        });
    }
    if let Some(engine) = engine {
        let worker = Worker::new(pool.clone(), connectors, engine);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            worker.run(stop).await;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("service task panicked")??;
    }
    pool.close().await;
    Ok(())
}
