//! LISTEN/NOTIFY wake-ups. A notification only shortens the wait; the claim loop polls anyway.

use std::sync::Arc;
use std::time::Duration;

use payoutd_store::{PgPool, WAKE_CHANNEL};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Listens until `shutdown`, reconnecting after errors, and pokes `wake` on every notification.
pub async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    listen_on(pool, WAKE_CHANNEL, wake, shutdown).await
}

/// [`listen`] on another channel (the webhook delivery service has its own).
pub async fn listen_on(pool: PgPool, channel: &str, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(channel).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            msg = listener.recv() => match msg {
                                Ok(_) => wake.notify_one(),
                                Err(e) => { tracing::warn!(error = %e, "notification stream broke; reconnecting"); break; }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; relying on polling"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
