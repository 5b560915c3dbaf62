//! Which Postgres payoutd uses: DATABASE_URL when set, else its private cluster.

use std::str::FromStr;

use anyhow::Context;
use payoutd_store::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::config::Config;
use crate::local_postgres::LocalPostgres;

/// The database name payoutd uses inside its private cluster.
pub const LOCAL_DATABASE: &str = "payoutd";

/// Connect options for `database` (None: the one DATABASE_URL names, or "payoutd").
pub async fn connect_options(config: &Config, database: Option<&str>) -> anyhow::Result<PgConnectOptions> {
    match &config.database_url {
        Some(url) => {
            let options = PgConnectOptions::from_str(url.expose())
                .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?;
            Ok(match database {
                Some(db) => options.database(db),
                None => options,
            })
        }
        None => {
            let cluster = LocalPostgres::ensure_running(&config.data_dir.join("postgres"))
                .await
                .context("starting payoutd's private Postgres (set DATABASE_URL to use another)")?;
            let db = database.unwrap_or(LOCAL_DATABASE);
            cluster.ensure_database(db).await.with_context(|| format!("creating database {db}"))?;
            Ok(cluster.connect_options(db))
        }
    }
}

/// Opens the pool and applies migrations (every command that touches the database does).
pub async fn open(config: &Config, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(config, None).await?;
    let pool = payoutd_store::connect(options, max_connections).await.context("connecting to Postgres")?;
    payoutd_store::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}
