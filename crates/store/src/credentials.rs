//! Provider tokens shared by every worker of one database ([`CredentialStore`] on Postgres).
//!
//! Tokens are sealed with AES-256-GCM under the configured key, with the credential name as
//! associated data, so a sealed value copied onto another credential's row does not open; the
//! expiry times stay readable columns. One refresh per credential at a time across the fleet: a
//! refresher holds a transaction-scoped advisory lock on the credential's name while it calls
//! the provider, and re-reads the row under the lock first, so workers that queued behind a
//! refresh use its result instead of refreshing again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use payoutd_core::Secret;
use payoutd_core::credentials::{
    BoxFuture, CredentialError, CredentialStore, ProviderTokens, Refresher, StillNeeded,
};
use payoutd_core::sealing::SealingKey;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The sealed part: the tokens themselves.
#[derive(Serialize, Deserialize)]
struct Plain {
    access_token: String,
    refresh_token: Option<String>,
}

pub struct PgCredentialStore {
    pool: PgPool,
    key: Arc<SealingKey>,
}

impl PgCredentialStore {
    pub fn new(pool: PgPool, key: Arc<SealingKey>) -> Self {
        Self { pool, key }
    }
}

type Row = (Vec<u8>, String, i64, DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>);

impl PgCredentialStore {
    fn open(&self, credential: &str, row: Row) -> Result<ProviderTokens, CredentialError> {
        let (sealed, key_id, version, access_expires_at, refresh_expires_at, obtained_at) = row;
        if key_id != self.key.key_id() {
            return Err(CredentialError::Sealed(format!(
                "sealed under key {key_id}, the configured key is {}",
                self.key.key_id()
            )));
        }
        let bytes = self
            .key
            .open(&sealed, credential.as_bytes())
            .map_err(|e| CredentialError::Sealed(e.to_string()))?;
        let plain: Plain =
            serde_json::from_slice(&bytes).map_err(|_| CredentialError::Sealed("unreadable".into()))?;
        Ok(ProviderTokens {
            access_token: Secret::new(plain.access_token),
            obtained_at,
            access_expires_at,
            refresh_token: plain.refresh_token.map(Secret::new),
            refresh_expires_at,
            version,
        })
    }
}

const SELECT: &str = "SELECT sealed, key_id, version, access_expires_at, refresh_expires_at, refreshed_at
                        FROM provider_tokens WHERE credential = $1";

fn unavailable(e: sqlx::Error) -> CredentialError {
    CredentialError::Unavailable(e.to_string())
}

impl CredentialStore for PgCredentialStore {
    fn load<'a>(
        &'a self,
        credential: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderTokens>, CredentialError>> {
        Box::pin(async move {
            let row: Option<Row> = sqlx::query_as(SELECT)
                .bind(credential)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|r| self.open(credential, r)).transpose()
        })
    }

    fn refresh<'a>(
        &'a self,
        credential: &'a str,
        still_needed: StillNeeded<'a>,
        refresh: Refresher<'a>,
    ) -> BoxFuture<'a, Result<ProviderTokens, CredentialError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            // The longest wait for another worker's refresh of the same credential.
            sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *tx).await.map_err(unavailable)?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('payoutd provider token ' || $1, 0))")
                .bind(credential)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let row: Option<Row> = sqlx::query_as(SELECT)
                .bind(credential)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            // A row that no longer opens (key changed) is replaced by a fresh grant.
            let current = row.and_then(|r| self.open(credential, r).ok());
            if let Some(current) = &current
                && !still_needed(Some(current))
            {
                tx.commit().await.map_err(unavailable)?;
                return Ok(current.clone());
            }
            let version = current.as_ref().map_or(0, |c| c.version) + 1;
            let mut fresh = refresh(current).await?;
            fresh.version = version;
            let plain = Plain {
                access_token: fresh.access_token.expose().to_owned(),
                refresh_token: fresh.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            };
            let bytes = serde_json::to_vec(&plain).map_err(|e| CredentialError::Sealed(e.to_string()))?;
            let sealed = self.key.seal(&bytes, credential.as_bytes());
            sqlx::query(
                "INSERT INTO provider_tokens
                     (credential, sealed, key_id, version, access_expires_at, refresh_expires_at, refreshed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (credential) DO UPDATE SET sealed = $2, key_id = $3, version = $4,
                     access_expires_at = $5, refresh_expires_at = $6, refreshed_at = $7",
            )
            .bind(credential)
            .bind(sealed)
            .bind(self.key.key_id())
            .bind(version)
            .bind(fresh.access_expires_at)
            .bind(fresh.refresh_expires_at)
            .bind(fresh.obtained_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(fresh)
        })
    }
}
