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
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::{Faults, SandboxConfig};
use crate::dice::Dice;
use crate::ledger::{Ledger, LedgerEntry, SandboxStats};
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
    http: reqwest::Client,
    tasks: TaskTracker,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `bind` (port 0 picks a free port) and serves the 8B partner API there.
    pub async fn start(config: SandboxConfig, bind: SocketAddr) -> Result<SandboxHandle, SandboxError> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| SandboxError::Bind { addr: bind, source })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind { addr: bind, source })?;
        let http = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            // Callbacks go to a local receiver; an environment proxy must not reroute them.
            .no_proxy()
            .build()
            .map_err(|e| SandboxError::Client(e.without_url().to_string()))?;
        let (stop, shutdown) = watch::channel(false);
        let sandbox = Arc::new(Sandbox {
            faults: RwLock::new(config.faults.clone()),
            callback_url: RwLock::new(config.callback_url.clone()),
            ledger: Mutex::new(Ledger::new(config.initial_balance)),
            dice: Dice::new(config.seed),
            config,
            http,
            tasks: TaskTracker::new(),
            shutdown,
        });
        let app = api::router(sandbox.clone());
        let mut signal = sandbox.shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // Ends on the signal, or when the handle is dropped.
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(%addr, service_id = %sandbox.config.service_id, "8B partner sandbox listening");
        Ok(SandboxHandle { addr, sandbox, stop, server })
    }

    /// Every payout id seen, ordered by id.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.with_ledger(|l| l.entries())
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

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Runs `f` on the ledger. The lock is never held across an await.
    pub(crate) fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(&mut self.ledger.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sleeps for `duration`; false if the sandbox is shutting down first.
    pub(crate) async fn sleep(&self, duration: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// Runs a background task that shutdown waits for.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
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
        self.spawn(async move {
            if !sandbox.sleep(sandbox.config.processing_delay).await {
                return;
            }
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
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
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
        let _ = self.stop.send(true);
        let served = self.server.await;
        self.sandbox.tasks.close();
        self.sandbox.tasks.wait().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SandboxError::Serve(e)),
            Err(e) => Err(SandboxError::Task(e.to_string())),
        }
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
