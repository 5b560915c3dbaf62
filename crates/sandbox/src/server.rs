//! Starting, observing and stopping a sandbox.
//!
//! Shutdown is explicit: [`SandboxHandle::shutdown`] (or dropping the handle) signals every
//! handler sleep and callback task to stop, waits for the HTTP server to drain, then waits until
//! every background task has ended.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use payoutd_core::Secret;
use rust_decimal::Decimal;

use crate::config::{Faults, SandboxConfig};
use crate::dice::Dice;
use crate::ledger::{Ledger, LedgerEntry, SandboxStats};
// Re-exported where it always was; the simulators share it through their `Runtime`.
pub use crate::runtime::MAX_TRACEPARENTS;
use crate::runtime::{self, Runtime, Server};
use crate::{api, callbacks};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("sandbox HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("sandbox HTTP server task failed: {0}")]
    Task(String),
    #[error("cannot build the callback HTTP client: {0}")]
    Client(String),
}

/// Timeout of one callback POST: the spec's receivers are expected to "answer fast".
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The running simulator's state, shared by its handlers and background tasks.
pub struct Sandbox {
    config: SandboxConfig,
    faults: RwLock<Faults>,
    callback_url: RwLock<Option<String>>,
    ledger: Mutex<Ledger>,
    pub(crate) dice: Dice,
    /// The callback client, background tasks, shutdown signal and remembered `traceparent`s: the
    /// plumbing every simulator shares.
    pub(crate) runtime: Runtime,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `bind` (port 0 picks a free port) and serves the 8B partner API there.
    pub async fn start(config: SandboxConfig, bind: SocketAddr) -> Result<SandboxHandle, SandboxError> {
        let (runtime, listener) = runtime::bind(bind, CALLBACK_TIMEOUT).await?;
        let addr = listener.addr();
        let sandbox = Arc::new(Sandbox {
            faults: RwLock::new(config.faults.clone()),
            callback_url: RwLock::new(config.callback_url.clone()),
            ledger: Mutex::new(Ledger::new(config.initial_balance)),
            dice: Dice::new(config.seed),
            config,
            runtime,
        });
        let server = sandbox.runtime.serve(listener, api::router(sandbox.clone()));
        tracing::info!(%addr, service_id = %sandbox.config.service_id, "8B partner sandbox listening");
        Ok(SandboxHandle { addr, sandbox, server })
    }

    /// Every payout id seen, ordered by id.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.with_ledger(|l| l.entries())
    }

    /// (path, traceparent) of the provider requests that carried a `traceparent`, oldest first.
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.runtime.traceparents()
    }

    pub fn entry(&self, id: &str) -> Option<LedgerEntry> {
        self.with_ledger(|l| l.entry(id))
    }

    pub fn stats(&self) -> SandboxStats {
        self.with_ledger(|l| l.stats())
    }

    pub fn balance(&self) -> Decimal {
        self.with_ledger(|l| l.balance())
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes the faults for requests that arrive from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    pub fn callback_url(&self) -> Option<String> {
        self.callback_url.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes where callbacks go, including redeliveries already scheduled.
    pub fn set_callback_url(&self, url: Option<String>) {
        *self.callback_url.write().unwrap_or_else(PoisonError::into_inner) = url;
    }

    pub(crate) fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub(crate) fn secret(&self) -> &Secret {
        &self.config.secret
    }

    pub(crate) fn callback_schedule_scale(&self) -> f64 {
        self.config.callback_schedule_scale
    }

    /// Runs `f` on the ledger. The lock is never held across an await.
    pub(crate) fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(&mut self.ledger.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Finalizes one execution after the processing delay and delivers its callbacks.
    pub(crate) fn finish_later(
        self: &Arc<Self>,
        id: String,
        generation: u64,
        amount: Decimal,
        declined: bool,
        plan: callbacks::Plan,
    ) {
        let sandbox = self.clone();
        self.runtime.spawn_after(self.config.processing_delay, async move {
            let finalized =
                sandbox.with_ledger(|l| l.finalize(&id, generation, amount, declined, chrono::Utc::now()));
            if let Some(finalized) = finalized {
                callbacks::deliver(sandbox, finalized, plan).await;
            }
        });
    }
}

/// A running sandbox. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct SandboxHandle {
    pub addr: SocketAddr,
    sandbox: Arc<Sandbox>,
    server: Server,
}

impl SandboxHandle {
    /// The base URL to configure a connector with, e.g. "http://127.0.0.1:41234".
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.sandbox.ledger()
    }

    /// See [`Sandbox::traceparents`].
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.sandbox.traceparents()
    }

    pub fn entry(&self, id: &str) -> Option<LedgerEntry> {
        self.sandbox.entry(id)
    }

    pub fn stats(&self) -> SandboxStats {
        self.sandbox.stats()
    }

    pub fn balance(&self) -> Decimal {
        self.sandbox.balance()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.sandbox.set_faults(faults);
    }

    pub fn set_callback_url(&self, url: Option<String>) {
        self.sandbox.set_callback_url(url);
    }

    /// Stops accepting requests, ends pending sleeps and callback schedules, and waits until
    /// the server and every background task are done.
    pub async fn shutdown(self) -> Result<(), SandboxError> {
        self.server.shutdown(&self.sandbox.runtime).await
    }
}

/// Runs a sandbox until `shutdown` completes: the entry point for the CLI's standalone mode.
pub async fn run_standalone(
    config: SandboxConfig,
    bind: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SandboxError> {
    let handle = Sandbox::start(config, bind).await?;
    tracing::info!(
        base_url = %handle.base_url(),
        "sandbox running; GET /_sandbox/ledger and /_sandbox/stats show its books"
    );
    shutdown.await;
    handle.shutdown().await
}
