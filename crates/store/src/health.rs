//! What the readiness probe asks the database: does it answer, and are all of this release's
//! migrations applied. Migrations a newer release applied are fine (expand first, contract
//! later: an older release keeps running against a newer schema during an upgrade).

use sqlx::PgPool;

use crate::{MIGRATOR, StoreError};

/// The database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Versions of this release's migrations that the database has not applied (successfully).
/// A database never migrated has all of them pending.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| m.version)
        .collect())
}
