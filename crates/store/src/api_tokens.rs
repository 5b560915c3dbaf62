//! payoutd's own API client tokens. The token is shown once at creation; only its SHA-256 is
//! stored (the token is 256 random bits, so a plain hash is enough: there is nothing to guess).

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;

/// Every token starts with this, so leaked tokens are easy to find by secret scanners.
pub const TOKEN_PREFIX: &str = "pyd_";

/// A freshly created token: the only time the plain value exists.
#[derive(Debug)]
pub struct CreatedToken {
    pub id: Uuid,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Shown once to the operator, never stored.
    pub token: payoutd_core::Secret,
}

/// Who made an authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: Uuid,
    pub client_id: String,
    pub scopes: Vec<String>,
}

impl Caller {
    /// `*` grants every scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub async fn create(
    pool: &PgPool,
    client_id: &str,
    label: &str,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedToken, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut token = String::from(TOKEN_PREFIX);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_tokens (id, client_id, label, token_hash, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(client_id)
    .bind(label)
    .bind(hash_token(&token))
    .bind(scopes)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(CreatedToken {
        id,
        client_id: client_id.to_owned(),
        scopes: scopes.to_vec(),
        token: payoutd_core::Secret::new(token),
    })
}

/// The caller behind `token`, if it is a live (not revoked, not expired) token.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Caller>, StoreError> {
    let row: Option<(Uuid, String, Vec<String>)> = sqlx::query_as(
        "SELECT id, client_id, scopes FROM api_tokens
          WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(hash_token(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(token_id, client_id, scopes)| Caller { token_id, client_id, scopes }))
}

pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
