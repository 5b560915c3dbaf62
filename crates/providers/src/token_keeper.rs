//! Access tokens shared by the fleet, refreshed by one worker at a time (DESIGN rule 8).
//!
//! A [`TokenKeeper`] holds one credential's tokens for a connector: an in-process copy in front
//! of the [`CredentialStore`] (Postgres, sealed), so the common case costs no query. A token is
//! used only while it has more than `margin` left; then one task of this process takes the
//! credential's fleet-wide lock, and only if the stored token still needs it (another process
//! may just have refreshed) does it call the provider. After a 401, the token that was refused
//! is named by its version, so a 401 seen by many workers at once leads to one refresh.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use payoutd_core::credentials::{BoxFuture, CredentialError, CredentialStore, ProviderTokens};
use std::sync::Arc;

/// How a provider issues tokens: the connector's own calls (password grant, refresh).
pub trait TokenSource: Send + Sync {
    /// New tokens, given the stored ones (whose refresh token may still be good).
    fn obtain<'a>(
        &'a self,
        current: Option<ProviderTokens>,
    ) -> BoxFuture<'a, Result<ProviderTokens, CredentialError>>;
}

pub struct TokenKeeper {
    credential: String,
    store: Arc<dyn CredentialStore>,
    margin: Duration,
    cached: Mutex<Option<ProviderTokens>>,
    /// One refresh per process at a time; the store's lock makes it one per fleet.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeeper").field("credential", &self.credential).finish_non_exhaustive()
    }
}

impl TokenKeeper {
    /// `margin`: a token with less than this left is not used (it could expire in flight).
    pub fn new(credential: impl Into<String>, store: Arc<dyn CredentialStore>, margin: Duration) -> Self {
        Self {
            credential: credential.into(),
            store,
            margin,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn usable(&self, tokens: &ProviderTokens) -> bool {
        usable(tokens, self.margin)
    }

    fn cache(&self, tokens: &ProviderTokens) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(tokens.clone());
    }

    fn cached(&self) -> Option<ProviderTokens> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A token with more than the margin left: from memory, else from the store, else fresh.
    pub async fn current(&self, source: &dyn TokenSource) -> Result<ProviderTokens, CredentialError> {
        if let Some(t) = self.cached().filter(|t| self.usable(t)) {
            return Ok(t);
        }
        if let Some(t) = self.store.load(&self.credential).await?.filter(|t| self.usable(t)) {
            self.cache(&t);
            return Ok(t);
        }
        self.refresh(source, None).await
    }

    /// Refreshes, once per fleet: if the token is near expiry, or (`rejected`) the provider
    /// answered 401 to the token of that version and no one has replaced it yet.
    pub async fn refresh(
        &self,
        source: &dyn TokenSource,
        rejected: Option<i64>,
    ) -> Result<ProviderTokens, CredentialError> {
        let _one_per_process = self.refreshing.lock().await;
        if let Some(t) = self.cached().filter(|t| self.usable(t) && Some(t.version) != rejected) {
            return Ok(t);
        }
        let margin = self.margin;
        let still_needed = Box::new(move |stored: Option<&ProviderTokens>| match stored {
            None => true,
            Some(t) => !usable(t, margin) || Some(t.version) == rejected,
        });
        let tokens = self
            .store
            .refresh(&self.credential, still_needed, Box::new(move |current| source.obtain(current)))
            .await?;
        self.cache(&tokens);
        Ok(tokens)
    }
}

/// Whether a token has more than the margin left. The margin is at most a quarter of the
/// token's lifetime, so a short-lived token is not refreshed on every use.
fn usable(tokens: &ProviderTokens, margin: Duration) -> bool {
    let lifetime = tokens.access_expires_at - tokens.obtained_at;
    let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX).min(lifetime / 4);
    tokens.access_expires_at - margin > Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use payoutd_core::Secret;

    fn tokens(lifetime_secs: i64, age_secs: i64) -> ProviderTokens {
        let obtained_at = Utc::now() - chrono::Duration::seconds(age_secs);
        ProviderTokens {
            access_token: Secret::new("t"),
            obtained_at,
            access_expires_at: obtained_at + chrono::Duration::seconds(lifetime_secs),
            refresh_token: None,
            refresh_expires_at: None,
            version: 1,
        }
    }

    #[test]
    fn the_margin_never_exceeds_a_quarter_of_the_lifetime() {
        let two_minutes = Duration::from_secs(120);
        // 30-minute tokens: refreshed 2 minutes before expiry.
        assert!(usable(&tokens(1800, 1670), two_minutes));
        assert!(!usable(&tokens(1800, 1690), two_minutes));
        // 4-second tokens: used for 3 seconds, not refreshed on every call.
        assert!(usable(&tokens(4, 2), two_minutes));
        assert!(!usable(&tokens(4, 3), two_minutes));
    }
}
