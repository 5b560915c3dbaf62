//! Starting, observing and stopping an 88Pay sandbox.
//!
//! Shutdown is explicit, as for the 8B sandbox: [`PaySandboxHandle::shutdown`] (or dropping
//! the handle) signals every handler sleep and webhook task to stop, waits for the HTTP server
//! to drain, then waits until every background task has ended.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rust_decimal::Decimal;

use super::api;
use super::config::PaySandboxConfig;
use super::ledger::{PayLedger, PayLedgerEntry, PayStats};
use super::tokens::Tokens;
use crate::config::Faults;
use crate::dice::Dice;
use crate::runtime::{self, Runtime, Server};
use crate::server::SandboxError;

/// Timeout of one webhook POST; shutdown cuts it short.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The running simulator's state, shared by its handlers and background tasks.
pub struct PaySandbox {
    config: PaySandboxConfig,
    faults: RwLock<Faults>,
    forced_401_rate: RwLock<f64>,
    drop_all_webhooks: AtomicBool,
    tokens: Mutex<Tokens>,
    ledger: Mutex<PayLedger>,
    pub(crate) dice: Dice,
    /// The webhook client, background tasks, shutdown signal and remembered `traceparent`s: the
    /// plumbing every simulator shares.
    pub(crate) runtime: Runtime,
}

impl std::fmt::Debug for PaySandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaySandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

impl PaySandbox {
    /// Binds `bind` (port 0 picks a free port) and serves the 88Pay API there.
    pub async fn start(config: PaySandboxConfig, bind: SocketAddr) -> Result<PaySandboxHandle, SandboxError> {
        let (runtime, listener) = runtime::bind(bind, WEBHOOK_TIMEOUT).await?;
        let addr = listener.addr();
        let sandbox = Arc::new(PaySandbox {
            faults: RwLock::new(config.faults.clone()),
            forced_401_rate: RwLock::new(config.forced_401_rate),
            drop_all_webhooks: AtomicBool::new(config.drop_all_webhooks),
            tokens: Mutex::new(Tokens::new(config.token_lifetime)),
            ledger: Mutex::new(PayLedger::new(config.initial_balance)),
            dice: Dice::new(config.seed),
            config,
            runtime,
        });
        let server = sandbox.runtime.serve(listener, api::router(sandbox.clone()));
        tracing::info!(%addr, merchant_id = %sandbox.config.merchant_id, "88Pay sandbox listening");
        Ok(PaySandboxHandle { addr, sandbox, server })
    }

    /// Every execution, in order.
    pub fn ledger(&self) -> Vec<PayLedgerEntry> {
        self.with_ledger(|l| l.entries())
    }

    /// The executions under one `merchant_reference`, in order (more than one: double payment).
    pub fn entries_for(&self, merchant_reference: &str) -> Vec<PayLedgerEntry> {
        let mut entries = self.ledger();
        entries.retain(|e| e.merchant_reference == merchant_reference);
        entries
    }

    pub fn stats(&self) -> PayStats {
        self.with_ledger(|l| l.stats())
    }

    pub fn balance(&self) -> Decimal {
        self.with_ledger(|l| l.balance())
    }

    /// (path, traceparent) of the requests that carried a `traceparent`, oldest first.
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.runtime.traceparents()
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

    /// Changes the forced-401 rate for calls that arrive from now on.
    pub fn set_forced_401_rate(&self, rate: f64) {
        *self.forced_401_rate.write().unwrap_or_else(PoisonError::into_inner) = rate;
    }

    pub fn drop_all_webhooks(&self) -> bool {
        self.drop_all_webhooks.load(Ordering::Relaxed)
    }

    /// While on, every webhook attempt is lost; scheduled redeliveries keep their schedule, so
    /// switching it off lets the later ones arrive.
    pub fn set_drop_all_webhooks(&self, on: bool) {
        self.drop_all_webhooks.store(on, Ordering::Relaxed);
    }

    /// Expires every token issued so far, as if their 60 s had passed; later tokens are fine.
    pub fn expire_all_tokens(&self) {
        self.with_tokens(Tokens::expire_all);
    }

    pub(crate) fn config(&self) -> &PaySandboxConfig {
        &self.config
    }

    /// Runs `f` on the ledger. The lock is never held across an await.
    pub(crate) fn with_ledger<T>(&self, f: impl FnOnce(&mut PayLedger) -> T) -> T {
        f(&mut self.ledger.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the tokens. The lock is never held across an await.
    pub(crate) fn with_tokens<T>(&self, f: impl FnOnce(&mut Tokens) -> T) -> T {
        f(&mut self.tokens.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A running 88Pay sandbox. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct PaySandboxHandle {
    pub addr: SocketAddr,
    sandbox: Arc<PaySandbox>,
    server: Server,
}

impl PaySandboxHandle {
    /// The base URL to configure a connector with, e.g. "http://127.0.0.1:41234".
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sandbox(&self) -> &Arc<PaySandbox> {
        &self.sandbox
    }

    pub fn ledger(&self) -> Vec<PayLedgerEntry> {
        self.sandbox.ledger()
    }

    pub fn entries_for(&self, merchant_reference: &str) -> Vec<PayLedgerEntry> {
        self.sandbox.entries_for(merchant_reference)
    }

    pub fn stats(&self) -> PayStats {
        self.sandbox.stats()
    }

    pub fn balance(&self) -> Decimal {
        self.sandbox.balance()
    }

    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.sandbox.traceparents()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.sandbox.set_faults(faults);
    }

    pub fn set_forced_401_rate(&self, rate: f64) {
        self.sandbox.set_forced_401_rate(rate);
    }

    pub fn set_drop_all_webhooks(&self, on: bool) {
        self.sandbox.set_drop_all_webhooks(on);
    }

    pub fn expire_all_tokens(&self) {
        self.sandbox.expire_all_tokens();
    }

    /// Stops accepting requests, ends pending sleeps and webhook schedules, and waits until
    /// the server and every background task are done.
    pub async fn shutdown(self) -> Result<(), SandboxError> {
        self.server.shutdown(&self.sandbox.runtime).await
    }
}
