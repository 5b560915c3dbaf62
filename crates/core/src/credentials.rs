//! The shared token store connectors use for provider access tokens (DESIGN rules 8 and 10).
//!
//! Defined here, implemented by the store crate on Postgres, handed to connectors: a connector
//! never touches the database itself, yet every worker process of one database shares one token
//! per credential and at most one of them refreshes it at a time.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

use crate::Secret;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A provider's tokens for one credential, as the connector needs them. The store keeps them
/// sealed (encrypted) at rest; in memory they stay wrapped in [`Secret`].
#[derive(Clone, Debug)]
pub struct ProviderTokens {
    pub access_token: Secret,
    /// When the access token was obtained: with the expiry, its lifetime, which bounds the
    /// early-refresh margin (a margin longer than a short-lived token would refresh on every use).
    pub obtained_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_token: Option<Secret>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// Grows by one on every stored refresh: a connector that got a 401 with token version `n`
    /// refreshes only if the stored version is still `n`, so a 401 seen by many workers at once
    /// causes one refresh, not one each.
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The store could not be read or written (database down): a transient condition.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// The stored tokens cannot be opened with the configured key (key changed, or tampered).
    #[error("stored provider tokens cannot be opened: {0}")]
    Sealed(String),
    /// The refresh itself failed (the provider's answer); the message names no secret.
    #[error("token refresh failed: {0}")]
    Refresh(String),
}

/// What a refresh returns: the new tokens, or the reason it failed.
pub type RefreshResult = Result<ProviderTokens, CredentialError>;

/// A refresh to run while holding the credential's fleet-wide lock. It receives the tokens
/// stored now (if any), so it can use the refresh token or fall back to the password grant.
pub type Refresher<'a> = Box<dyn FnOnce(Option<ProviderTokens>) -> BoxFuture<'a, RefreshResult> + Send + 'a>;

/// Asked under the lock with the tokens stored now: does a refresh still have to happen?
pub type StillNeeded<'a> = Box<dyn Fn(Option<&ProviderTokens>) -> bool + Send + Sync + 'a>;

/// Fleet-wide storage of provider tokens, keyed by credential (e.g. "8b_rest:acct-a").
pub trait CredentialStore: Send + Sync + 'static {
    /// The stored tokens, if any (possibly expired: the caller judges with its margin).
    fn load<'a>(
        &'a self,
        credential: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderTokens>, CredentialError>>;

    /// Single-flight refresh: takes the credential's lock (one holder across all processes),
    /// then asks `still_needed` whether the stored tokens (which another worker may just have
    /// refreshed) still need a refresh. If so, runs `refresh` and stores its result; the lock is
    /// released when this returns. Answers the tokens now stored.
    fn refresh<'a>(
        &'a self,
        credential: &'a str,
        still_needed: StillNeeded<'a>,
        refresh: Refresher<'a>,
    ) -> BoxFuture<'a, RefreshResult>;
}
