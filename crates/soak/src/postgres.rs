//! The database under test, and its one restart.
//!
//! By default the soak starts a private cluster of its own from the local server binaries
//! ([`LocalPostgres`]) in a data directory nobody else uses, so it can stop and start it in the
//! middle of the run without disturbing anyone. With a given server it can only restart by a
//! command the operator supplies.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use payoutd::local_postgres::LocalPostgres;
use payoutd_core::Secret;
use payoutd_store::PgPool;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions};

use crate::SoakError;

/// Which Postgres the soak uses.
#[derive(Debug, Clone)]
pub enum PostgresChoice {
    /// A private cluster under `data_dir` (created on first use, reused afterwards); the soak
    /// restarts it with `pg_ctl stop -m fast` + start.
    Embedded { data_dir: PathBuf, database: String },
    /// A given server (`admin_url` may name any database the user can connect to; the soak
    /// creates `database` there, dropping an old one of that name).
    External {
        admin_url: Secret,
        database: String,
        /// Run with `sh -c` for the mid-run restart; it must return once the server is back
        /// (or the soak simply waits for it).
        restart_command: Option<String>,
        /// Without a restart command: skip the restart and still pass.
        allow_no_restart: bool,
    },
}

impl PostgresChoice {
    pub fn allows_no_restart(&self) -> bool {
        matches!(self, Self::External { allow_no_restart: true, .. })
    }

    fn database(&self) -> &str {
        match self {
            Self::Embedded { database, .. } | Self::External { database, .. } => database,
        }
    }
}

enum Server {
    Embedded { cluster: LocalPostgres, requested: PathBuf },
    External { restart_command: Option<String> },
}

/// The soak's fresh database, its pool, and the URL the children connect with.
pub struct SoakDatabase {
    server: Server,
    database: String,
    admin: PgConnectOptions,
    pool: PgPool,
    child_url: Secret,
}

impl SoakDatabase {
    /// Starts (embedded) or reaches (external) the server, recreates the database, migrates.
    pub async fn prepare(choice: &PostgresChoice) -> Result<Self, SoakError> {
        let database = choice.database().to_owned();
        if database.is_empty()
            || database.len() > 63
            || !database.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(SoakError::Settings(format!(
                "database name {database:?}: use 1 to 63 lower-case letters, digits and underscores"
            )));
        }
        let (server, admin) = match choice {
            PostgresChoice::Embedded { data_dir, .. } => {
                let cluster = LocalPostgres::ensure_running(data_dir).await?;
                let admin = cluster.connect_options("postgres");
                (Server::Embedded { cluster, requested: data_dir.clone() }, admin)
            }
            PostgresChoice::External { admin_url, restart_command, .. } => {
                let admin = PgConnectOptions::from_str(admin_url.expose()).map_err(|_| {
                    SoakError::Settings("the database URL is not a valid postgres:// URL".to_owned())
                })?;
                (Server::External { restart_command: restart_command.clone() }, admin)
            }
        };
        recreate(&admin, &database).await?;
        let options = admin.clone().database(&database);
        let pool = payoutd_store::connect(options.clone(), 8).await?;
        payoutd_store::migrate(&pool).await?;
        let child_url = Secret::new(options.to_url_lossy().to_string());
        Ok(Self { server, database, admin, pool, child_url })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// DATABASE_URL for the children.
    pub fn child_url(&self) -> &Secret {
        &self.child_url
    }

    /// Where the database is, for people (no password).
    pub fn describe(&self) -> String {
        match &self.server {
            Server::Embedded { cluster, .. } => format!(
                "database {} in the soak's private cluster {} (socket {})",
                self.database,
                cluster.data_dir().display(),
                cluster.socket_dir().display()
            ),
            Server::External { .. } => format!("database {} on the given server", self.database),
        }
    }

    /// How to look at a payout afterwards.
    pub fn inspect_hint(&self) -> String {
        match &self.server {
            Server::Embedded { .. } => {
                format!("DATABASE_URL='{}' payoutd show <payout-id>", self.child_url.expose())
            }
            Server::External { .. } => format!(
                "DATABASE_URL=<the server's URL with database {}> payoutd show <payout-id>",
                self.database
            ),
        }
    }

    /// Restarts the server once. `Ok(Err(note))`: skipped, and why.
    pub async fn restart(&self, downtime: Duration) -> Result<Result<(), String>, SoakError> {
        match &self.server {
            Server::Embedded { cluster, requested } => {
                let stopping = cluster.clone();
                tokio::task::spawn_blocking(move || stopping.stop())
                    .await
                    .map_err(|e| SoakError::Child(format!("the Postgres stop task failed: {e}")))??;
                tokio::time::sleep(downtime).await;
                LocalPostgres::ensure_running(requested).await?;
                Ok(Ok(()))
            }
            Server::External { restart_command: Some(command) } => {
                let status =
                    tokio::process::Command::new("sh").arg("-c").arg(command).status().await.map_err(
                        |e| SoakError::RestartCommand { command: command.clone(), reason: e.to_string() },
                    )?;
                if !status.success() {
                    return Err(SoakError::RestartCommand {
                        command: command.clone(),
                        reason: format!("it exited with {status}"),
                    });
                }
                self.wait_until_up(Duration::from_secs(60)).await?;
                Ok(Ok(()))
            }
            Server::External { restart_command: None } => {
                Ok(Err("Postgres was NOT restarted: the soak uses a given server (--database-url) and no \
                 --restart-postgres-cmd was given"
                    .to_owned()))
            }
        }
    }

    async fn wait_until_up(&self, limit: Duration) -> Result<(), SoakError> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            match sqlx::query("SELECT 1").execute(&self.pool).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= until => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// After a passing run: drops the database and stops the private cluster. (After a failing
    /// one everything is left as it is, for `payoutd show`.)
    pub async fn finish(self) {
        self.pool.close().await;
        // Best effort: a leftover database is recreated by the next run anyway.
        let _ = drop_database(&self.admin, &self.database).await;
        if let Server::Embedded { cluster, .. } = self.server {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}

async fn recreate(admin: &PgConnectOptions, database: &str) -> Result<(), SoakError> {
    drop_database(admin, database).await?;
    let mut conn = admin.connect().await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&mut conn).await?;
    Ok(())
}

async fn drop_database(admin: &PgConnectOptions, database: &str) -> Result<(), SoakError> {
    let mut conn = admin.connect().await?;
    // The name was checked to be a plain identifier in `prepare`.
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    Ok(())
}
