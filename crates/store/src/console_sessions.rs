//! Operator console sessions. Signing in exchanges an API token for a session: the browser keeps
//! a random session id (256 bits, in an HttpOnly cookie), this table keeps its SHA-256, the API
//! token it stands for and the CSRF token of its forms. Every lookup joins the API token, so a
//! revoked or expired token ends its sessions at once, and scopes are always the token's current
//! ones. The API token itself is never stored here.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;
use crate::api_tokens::Caller;

/// A session just opened: the only time its id exists in clear (it goes into the cookie).
#[derive(Debug)]
pub struct OpenedSession {
    pub id: payoutd_core::Secret,
    pub expires_at: DateTime<Utc>,
}

/// A live session: who it acts for and the CSRF token its forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// `operator:<client>/<label>`, as the API writes it.
    pub token_label: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// 256 random bits as hex: session ids, CSRF tokens.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_id(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// Opens a session for the API token `token_id`, valid for `ttl`. Expired sessions of every
/// token are removed on the way (sign-ins are rare, so this keeps the table small).
pub async fn open(
    pool: &PgPool,
    token_id: Uuid,
    ttl: std::time::Duration,
) -> Result<OpenedSession, StoreError> {
    let id = random_hex();
    let ttl_secs = ttl.as_secs_f64();
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()").execute(pool).await?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO console_sessions (id_hash, token_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         RETURNING expires_at",
    )
    .bind(hash_id(&id))
    .bind(token_id)
    .bind(random_hex())
    .bind(ttl_secs)
    .fetch_one(pool)
    .await?;
    Ok(OpenedSession { id: payoutd_core::Secret::new(id), expires_at })
}

/// The live session behind the cookie value `id`: not expired, its API token neither revoked
/// nor expired.
pub async fn lookup(pool: &PgPool, id: &str) -> Result<Option<Session>, StoreError> {
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT t.id AS token_id, t.client_id, t.label, t.scopes, s.csrf_token, s.expires_at
           FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id
          WHERE s.id_hash = $1 AND s.expires_at > now()
            AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())",
    )
    .bind(hash_id(id))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Session {
        token_label: r.label,
        caller: Caller { token_id: r.token_id, client_id: r.client_id, scopes: r.scopes },
        csrf_token: r.csrf_token,
        expires_at: r.expires_at,
    }))
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    token_id: Uuid,
    client_id: String,
    label: String,
    scopes: Vec<String>,
    csrf_token: String,
    expires_at: DateTime<Utc>,
}

/// Ends the session behind `id` (signing out). Whether there was one.
pub async fn close(pool: &PgPool, id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(hash_id(id))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
