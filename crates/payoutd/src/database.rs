//! Which Postgres payoutd uses: DATABASE_URL when set; payoutd's private cluster only when it is
//! asked for (`--embedded-postgres`, `embedded_postgres = true`, `PAYOUTD_EMBEDDED_POSTGRES=1`)
//! or for the demo. A production host that lost its DATABASE_URL must not quietly run on an
//! empty database of its own.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use payoutd_store::PgPool;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::config::Config;
use crate::local_postgres::LocalPostgres;

/// The database name payoutd uses inside its private cluster.
pub const LOCAL_DATABASE: &str = "payoutd";

/// How long the first connection at start-up may take before payoutd gives up and says why.
pub const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a command's database comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// DATABASE_URL / `database_url`.
    Url,
    /// The private cluster under `<data_dir>/postgres`.
    Embedded,
}

/// What a command may fall back to when no database URL is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Production commands (serve, worker, migrate, token, show): only an explicit
    /// `--embedded-postgres` / `embedded_postgres = true` / `PAYOUTD_EMBEDDED_POSTGRES=1`.
    ExplicitOnly,
    /// The demo: the private cluster, zero setup.
    Embedded,
}

/// The decision: a URL wins; without one, the private cluster only if asked for (or allowed by
/// `fallback`); otherwise an error naming DATABASE_URL and `--embedded-postgres`.
pub fn source(config: &Config, fallback: Fallback) -> anyhow::Result<Source> {
    if config.database_url.is_some() {
        if config.embedded_postgres {
            tracing::warn!("both a database URL and embedded_postgres are set; using the database URL");
        }
        return Ok(Source::Url);
    }
    if config.embedded_postgres || fallback == Fallback::Embedded {
        return Ok(Source::Embedded);
    }
    anyhow::bail!(
        "no database configured: set DATABASE_URL (or database_url in the config file) to the Postgres \
         payoutd should use, or pass --embedded-postgres (PAYOUTD_EMBEDDED_POSTGRES=1, or \
         embedded_postgres = true in the config file) to run on a private cluster under {}",
        cluster_dir(config).display()
    )
}

/// Where the private cluster of `config` lives (as requested; as root it may be moved to /tmp,
/// see [`LocalPostgres::data_dir`]).
pub fn cluster_dir(config: &Config) -> PathBuf {
    config.data_dir.join("postgres")
}

/// Connect options plus, for the private cluster, the cluster itself.
#[derive(Debug, Clone)]
pub struct Target {
    pub options: PgConnectOptions,
    pub cluster: Option<PrivateCluster>,
}

#[derive(Debug, Clone)]
pub struct PrivateCluster {
    pub cluster: LocalPostgres,
    /// This process started the server (it was not running before).
    pub started_now: bool,
}

/// Connect options for `database` (None: the one DATABASE_URL names, or "payoutd"); starts
/// the private cluster when that is the source.
pub async fn resolve(config: &Config, source: Source, database: Option<&str>) -> anyhow::Result<Target> {
    match source {
        Source::Url => {
            let url = config.database_url.as_ref().context("no database URL configured")?;
            let options = PgConnectOptions::from_str(url.expose())
                .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?;
            let options = match database {
                Some(db) => options.database(db),
                None => options,
            };
            Ok(Target { options, cluster: None })
        }
        Source::Embedded => {
            let (cluster, started_now) = LocalPostgres::ensure_running_reporting(&cluster_dir(config))
                .await
                .context("starting payoutd's private Postgres (set DATABASE_URL to use another)")?;
            let db = database.unwrap_or(LOCAL_DATABASE);
            cluster.ensure_database(db).await.with_context(|| format!("creating database {db}"))?;
            Ok(Target {
                options: cluster.connect_options(db),
                cluster: Some(PrivateCluster { cluster, started_now }),
            })
        }
    }
}

/// Connect options for a production command (see [`Fallback::ExplicitOnly`]).
pub async fn connect_options(config: &Config, database: Option<&str>) -> anyhow::Result<PgConnectOptions> {
    let source = source(config, Fallback::ExplicitOnly)?;
    let target = resolve(config, source, database).await?;
    if let Some(private) = &target.cluster {
        announce(config, private, false);
    }
    Ok(target.options)
}

/// Opens the pool for a production command and applies migrations (every command that touches
/// the database does). Refuses to start without a database URL unless the private cluster was
/// asked for; an unreachable server fails within [`STARTUP_CONNECT_TIMEOUT`] with its cause.
pub async fn open(config: &Config, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(config, None).await?;
    connect_checked(options, max_connections).await
}

/// One direct connection first (the pool alone would retry a refused connection for its whole
/// acquire timeout and then say only "pool timed out"), then the pool, then migrations.
pub async fn connect_checked(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    check_reachable(&options, STARTUP_CONNECT_TIMEOUT).await?;
    let pool = payoutd_store::connect(options.clone(), max_connections)
        .await
        .with_context(|| format!("connecting to Postgres at {}", describe(&options)))?;
    payoutd_store::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// Connects once within `timeout`; the error names the server (never the password) and the
/// cause: connection refused, authentication failed, unknown host, no answer.
pub async fn check_reachable(options: &PgConnectOptions, timeout: Duration) -> anyhow::Result<()> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            // Only a probe: the pool opens its own connections.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot connect to Postgres at {}: {e}", describe(options))),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to Postgres at {}: no answer within {} s",
            describe(options),
            timeout.as_secs_f64()
        )),
    }
}

/// `host:port/database as user`, or the socket path; no password.
pub fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(dir) => format!("socket {}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let db = options.get_database().unwrap_or(options.get_username());
    format!("{place} (database {db}, user {})", options.get_username())
}

/// Tells the operator about the private cluster: where it is, that it outlives this command,
/// how to stop it. `stopped_at_exit`: the demo stops a cluster it started.
pub fn announce(config: &Config, private: &PrivateCluster, stopped_at_exit: bool) {
    let pg = &private.cluster;
    let stop = stop_command(&config.data_dir);
    if !private.started_now {
        tracing::info!(data_dir = %pg.data_dir().display(), "using payoutd's private Postgres (already running)");
        if !stopped_at_exit {
            return;
        }
        eprintln!(
            "payoutd: using the private Postgres already running in {} (left running; `{stop}` stops it)",
            pg.data_dir().display()
        );
        return;
    }
    eprintln!("payoutd: started a private Postgres");
    eprintln!("  data dir  {}", pg.data_dir().display());
    eprintln!("  socket    {}", pg.socket_dir().display());
    eprintln!("  log       {}", pg.log_file().display());
    if stopped_at_exit {
        eprintln!("  it is stopped when the demo ends (--keep-postgres keeps it running)");
    } else {
        eprintln!("  it keeps running after payoutd exits; stop it with: {stop}");
    }
}

/// The command that stops the private cluster of payoutd's data dir `data_dir`.
pub fn stop_command(data_dir: &Path) -> String {
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("payoutd postgres stop --data-dir {}", dir.display())
}
