//! Starting, observing, steering and stopping an 8B REST simulator.
//!
//! Shutdown is explicit, as for the 8B partner sandbox: [`RestSandboxHandle::shutdown`] (or
//! dropping the handle) signals every handler sleep and webhook task to stop, waits for the
//! HTTP server to drain, then waits until every background task has ended.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rust_decimal::Decimal;
use tokio::time::Instant;

use crate::config::Faults;
use crate::dice::Dice;
use crate::eightb_rest::config::RestSandboxConfig;
use crate::eightb_rest::ledger::{Books, RestLedgerEntry, RestSandboxStats};
use crate::eightb_rest::tokens::Tokens;
use crate::eightb_rest::{api, webhooks};
use crate::runtime::{self, Runtime, Server};
use crate::server::SandboxError;

/// Timeout of one webhook POST.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The running simulator's state, shared by its handlers and background tasks.
pub struct RestSandbox {
    config: RestSandboxConfig,
    faults: RwLock<Faults>,
    forced_401_rate: RwLock<f64>,
    webhook_base_url: RwLock<Option<String>>,
    books: Mutex<Books>,
    tokens: Mutex<Tokens>,
    pub(crate) dice: Dice,
    /// The webhook client, background tasks, shutdown signal and remembered `traceparent`s: the
    /// plumbing every simulator shares.
    pub(crate) runtime: Runtime,
}

impl std::fmt::Debug for RestSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestSandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RestSandbox {
    /// Binds `bind` (port 0 picks a free port) and serves the 8B REST API there.
    pub async fn start(
        config: RestSandboxConfig,
        bind: SocketAddr,
    ) -> Result<RestSandboxHandle, SandboxError> {
        let (runtime, listener) = runtime::bind(bind, WEBHOOK_TIMEOUT).await?;
        let addr = listener.addr();
        let sandbox = Arc::new(RestSandbox {
            faults: RwLock::new(config.faults.clone()),
            forced_401_rate: RwLock::new(config.forced_401_rate),
            webhook_base_url: RwLock::new(config.webhook_base_url.clone()),
            books: Mutex::new(Books::new(config.initial_balance)),
            tokens: Mutex::default(),
            dice: Dice::new(config.seed),
            config,
            runtime,
        });
        let server = sandbox.runtime.serve(listener, api::router(sandbox.clone()));
        tracing::info!(%addr, login = %sandbox.config.login, "8B REST sandbox listening");
        Ok(RestSandboxHandle { addr, sandbox, server })
    }

    /// Every disbursement executed, in execution order.
    pub fn ledger(&self) -> Vec<RestLedgerEntry> {
        self.with_books(|b| b.entries())
    }

    /// One disbursement by the id the API answered.
    pub fn entry(&self, disbursement_id: &str) -> Option<RestLedgerEntry> {
        self.with_books(|b| b.entry(disbursement_id))
    }

    /// The disbursements executed under one payment `externalId`: more than one is a double
    /// payment.
    pub fn entries_for(&self, external_id: &str) -> Vec<RestLedgerEntry> {
        self.ledger().into_iter().filter(|e| e.external_id == external_id).collect()
    }

    pub fn stats(&self) -> RestSandboxStats {
        self.with_books(|b| b.stats())
    }

    pub fn balance(&self) -> Decimal {
        self.with_books(|b| b.balance())
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes the faults for requests that arrive from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    pub fn forced_401_rate(&self) -> f64 {
        *self.forced_401_rate.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the rate at which valid tokens are refused, for requests from now on.
    pub fn set_forced_401_rate(&self, rate: f64) {
        *self.forced_401_rate.write().unwrap_or_else(PoisonError::into_inner) = rate;
    }

    /// Every access token issued so far is expired from now on (tokens issued later are not).
    pub fn expire_all_access_tokens(&self) {
        self.with_tokens(|t| t.expire_access(Instant::now()));
    }

    /// Every refresh token issued so far is expired from now on: the client has to authorize
    /// again.
    pub fn expire_all_refresh_tokens(&self) {
        self.with_tokens(|t| t.expire_refresh(Instant::now()));
    }

    pub fn webhook_base_url(&self) -> Option<String> {
        self.webhook_base_url.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes where webhooks go, including redeliveries already scheduled.
    pub fn set_webhook_base_url(&self, url: Option<String>) {
        *self.webhook_base_url.write().unwrap_or_else(PoisonError::into_inner) = url;
    }

    /// (path, traceparent) of the requests that carried a `traceparent`, oldest first.
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.runtime.traceparents()
    }

    pub(crate) fn config(&self) -> &RestSandboxConfig {
        &self.config
    }

    pub(crate) fn webhook_schedule_scale(&self) -> f64 {
        self.config.webhook_schedule_scale
    }

    /// Runs `f` on the books. The lock is never held across an await.
    pub(crate) fn with_books<T>(&self, f: impl FnOnce(&mut Books) -> T) -> T {
        f(&mut self.books.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the tokens. The lock is never held across an await.
    pub(crate) fn with_tokens<T>(&self, f: impl FnOnce(&mut Tokens) -> T) -> T {
        f(&mut self.tokens.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Finalizes one disbursement after the processing delay and delivers its webhooks.
    pub(crate) fn finish_later(
        self: &Arc<Self>,
        disbursement_id: String,
        declined: bool,
        plan: webhooks::Plan,
    ) {
        let sandbox = self.clone();
        self.runtime.spawn_after(self.config.processing_delay, async move {
            let last = sandbox.with_books(|b| b.finalize(&disbursement_id, declined, chrono::Utc::now()));
            if let Some(last) = last {
                webhooks::deliver(sandbox, last, plan).await;
            }
        });
    }
}

/// A running simulator. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct RestSandboxHandle {
    pub addr: SocketAddr,
    sandbox: Arc<RestSandbox>,
    server: Server,
}

impl RestSandboxHandle {
    /// The base URL to configure a connector with, e.g. "http://127.0.0.1:41234".
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sandbox(&self) -> &Arc<RestSandbox> {
        &self.sandbox
    }

    pub fn ledger(&self) -> Vec<RestLedgerEntry> {
        self.sandbox.ledger()
    }

    pub fn entry(&self, disbursement_id: &str) -> Option<RestLedgerEntry> {
        self.sandbox.entry(disbursement_id)
    }

    pub fn entries_for(&self, external_id: &str) -> Vec<RestLedgerEntry> {
        self.sandbox.entries_for(external_id)
    }

    pub fn stats(&self) -> RestSandboxStats {
        self.sandbox.stats()
    }

    pub fn balance(&self) -> Decimal {
        self.sandbox.balance()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.sandbox.set_faults(faults);
    }

    pub fn set_forced_401_rate(&self, rate: f64) {
        self.sandbox.set_forced_401_rate(rate);
    }

    pub fn expire_all_access_tokens(&self) {
        self.sandbox.expire_all_access_tokens();
    }

    pub fn expire_all_refresh_tokens(&self) {
        self.sandbox.expire_all_refresh_tokens();
    }

    pub fn set_webhook_base_url(&self, url: Option<String>) {
        self.sandbox.set_webhook_base_url(url);
    }

    /// See [`RestSandbox::traceparents`].
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.sandbox.traceparents()
    }

    /// Stops accepting requests, ends pending sleeps and webhook schedules, and waits until
    /// the server and every background task are done.
    pub async fn shutdown(self) -> Result<(), SandboxError> {
        self.server.shutdown(&self.sandbox.runtime).await
    }
}
