//! A private PostgreSQL cluster for development and tests, started from the
//! locally installed server binaries.
//!
//! Why: tests and local runs need a real PostgreSQL without asking the
//! developer to provision one. When `DATABASE_URL` is not set, callers use
//! [`LocalPostgres::ensure_running`] to get a cluster that lives under their
//! data directory and survives between runs, so only the first run pays for
//! `initdb`. It listens only on a Unix socket in a private directory (no TCP),
//! so it never conflicts with a system server on port 5432.
//!
//! Layout for a data directory `<parent>/<name>`:
//! - `<parent>/<name>.lock`: lock file serializing concurrent starters;
//! - `<parent>/<name>/`: the cluster, with its server log in `server.log`;
//! - `<parent>/run/`: the socket directory, or
//!   `/tmp/payoutd-<uid>-<hash>/run` when that path would be too long for a
//!   Unix socket address.
//!
//! Running as root: PostgreSQL refuses to run as root, so the cluster is owned
//! by and runs as the `postgres` system user (through `runuser`, or `su` as a
//! fallback). If that user cannot traverse `<parent>` (for example a project
//! under a mode-0700 `/root`), the cluster is placed in
//! `/tmp/payoutd-0-<hash of the requested path>/<name>` instead, rather than
//! failing; the lock file stays in `<parent>`. [`LocalPostgres::data_dir`]
//! reports where the cluster actually lives.
//!
//! Linux only: liveness of a recorded postmaster is checked through `/proc`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{AssertSqlSafe, Connection};

/// Database superuser created by `initdb`; trust auth, so no password.
const SUPERUSER: &str = "payoutd";
/// Only the suffix of the socket file name, since there is no TCP listener.
const PORT: u16 = 5432;
/// OS user that runs the server when we are root.
const SERVICE_USER: &str = "postgres";
const REQUIRED_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const START_TIMEOUT_SECS: u32 = 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a cluster that is running but not yet accepting
/// connections (startup, crash recovery) before giving up.
const READY_WAIT: Duration = Duration::from_secs(10);
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4000;
/// PostgreSQL truncates identifiers longer than this.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Errors from starting, stopping or using the embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "PostgreSQL server binaries not found (looked in: {}); install PostgreSQL server binaries \
         (Debian: apt install postgresql) so that initdb and pg_ctl are found, or point \
         PAYOUTD_PG_BIN at their directory, or set DATABASE_URL to use an existing server",
        display_paths(.searched)
    )]
    BinariesNotFound { searched: Vec<PathBuf> },

    #[error("invalid PostgreSQL data directory {}: {reason}", .path.display())]
    InvalidDataDir { path: PathBuf, reason: String },

    #[error("unsafe directory {}: {reason}", .path.display())]
    UnsafeDir { path: PathBuf, reason: String },

    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "`{command}` failed ({status}): {stderr_tail}{}",
        log_excerpt(.log_file.as_deref(), .log_tail)
    )]
    CommandFailed {
        command: String,
        status: String,
        stderr_tail: String,
        log_file: Option<PathBuf>,
        log_tail: String,
    },

    #[error(
        "running as root, PostgreSQL must run as the `{user}` system user, which is unusable: \
         {detail}; install PostgreSQL (Debian: apt install postgresql) or run as a normal user"
    )]
    ServiceUser { user: &'static str, detail: String },

    #[error(
        "PostgreSQL for {}{} does not accept connections on {}: {source}{}",
        .data_dir.display(),
        .pid.map(|pid| format!(" (postmaster pid {pid})")).unwrap_or_default(),
        .socket_dir.display(),
        log_excerpt(Some(.log_file), .log_tail)
    )]
    NotAccepting {
        data_dir: PathBuf,
        socket_dir: PathBuf,
        pid: Option<u32>,
        log_file: PathBuf,
        log_tail: String,
        #[source]
        source: Box<sqlx::Error>,
    },

    #[error(
        "the socket in {} belongs to the cluster in {actual}, not {}; give each cluster its own \
         parent directory",
        .socket_dir.display(),
        .expected.display()
    )]
    ForeignCluster { socket_dir: PathBuf, expected: PathBuf, actual: String },

    #[error("invalid database name {name:?}: {reason}")]
    InvalidDatabaseName { name: String, reason: &'static str },

    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: Box<sqlx::Error>,
    },

    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

type Result<T, E = LocalPostgresError> = std::result::Result<T, E>;

/// A running private cluster; cheap to clone. Dropping it leaves the server
/// running on purpose (other processes may share it); call [`Self::stop`].
#[derive(Debug, Clone)]
pub struct LocalPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log_file: PathBuf,
    lock_file: PathBuf,
    bin_dir: PathBuf,
    runner: Runner,
}

impl LocalPostgres {
    /// Starts (or reuses, if already running) a private cluster under
    /// `data_dir`, running `initdb` first if the directory holds no cluster.
    ///
    /// Safe to call concurrently from many processes: the whole check/init/start
    /// sequence runs under an exclusive lock on `<parent>/<name>.lock`.
    pub async fn ensure_running(data_dir: &Path) -> Result<LocalPostgres> {
        Ok(Self::ensure_running_reporting(data_dir).await?.0)
    }

    /// [`Self::ensure_running`], also saying whether this call started the server (`true`) or
    /// found it running (`false`). Only a caller that started it should think of stopping it.
    pub async fn ensure_running_reporting(data_dir: &Path) -> Result<(LocalPostgres, bool)> {
        let requested = data_dir.to_path_buf();
        let (pg, lock) = tokio::task::spawn_blocking(move || prepare(&requested)).await??;
        pg.init_if_needed().await?;
        let started = pg.start_if_needed().await?;
        drop(lock);
        Ok((pg, started))
    }

    /// The cluster under `data_dir` without starting anything: `None` when no cluster was ever
    /// created there. For `payoutd postgres stop` / `status`.
    pub async fn locate(data_dir: &Path) -> Result<Option<LocalPostgres>> {
        let requested = std::path::absolute(data_dir).map_err(io_err("resolve", data_dir))?;
        if !requested.parent().is_some_and(Path::is_dir) {
            return Ok(None);
        }
        let (pg, lock) = tokio::task::spawn_blocking(move || prepare(&requested)).await??;
        drop(lock);
        Ok(pg.data_dir.join("PG_VERSION").is_file().then_some(pg))
    }

    /// The postmaster's pid when the server is running (`pg_ctl status`), else `None`.
    pub fn running_pid(&self) -> Result<Option<u32>> {
        let status = self.runner.command(
            &self.bin_dir.join("pg_ctl"),
            &[OsStr::new("-D"), self.data_dir.as_os_str(), OsStr::new("status")],
        );
        let (command, output) = run_blocking(status)?;
        match output.status.code() {
            Some(0) => Ok(read_pid(&self.data_dir.join("postmaster.pid"))),
            // 3: not running; 4: no accessible data directory.
            Some(3 | 4) => Ok(None),
            _ => check(command, output, Some(&self.log_file)).map(|_| None),
        }
    }

    /// Connect options for database `db` over the private Unix socket.
    pub fn connect_options(&self, db: &str) -> PgConnectOptions {
        // Without pgpass/PGSSLMODE surprises from the environment: trust auth,
        // and the server has no TLS on its socket.
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(db)
            .ssl_mode(PgSslMode::Disable)
    }

    /// Creates database `db` if it does not exist yet.
    ///
    /// Concurrent callers are serialized with an advisory lock, and a lost
    /// race (duplicate database) still counts as success.
    pub async fn ensure_database(&self, db: &str) -> Result<()> {
        validate_database_name(db)?;
        let db_err = |context: &str| {
            let context = format!("{context} (database {db:?}, socket {})", self.socket_dir.display());
            move |source: sqlx::Error| LocalPostgresError::Database { context, source: Box::new(source) }
        };
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres"))
            .await
            .map_err(db_err("cannot connect to the `postgres` database"))?;
        // Session-level lock, released when the connection closes.
        sqlx::query("SELECT pg_advisory_lock(7460021, hashtext($1))")
            .bind(db)
            .execute(&mut conn)
            .await
            .map_err(db_err("cannot take the create-database lock"))?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(db)
            .fetch_one(&mut conn)
            .await
            .map_err(db_err("cannot look up database"))?;
        if !exists {
            let sql = format!("CREATE DATABASE {}", quote_ident(db));
            if let Err(err) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
                // 42P04 duplicate_database; 23505 when two CREATEs race past
                // the existence check (possible without the advisory lock).
                let code = err.as_database_error().and_then(|e| e.code());
                if !matches!(code.as_deref(), Some("42P04" | "23505")) {
                    return Err(db_err("cannot create database")(err));
                }
            }
        }
        // Closing only releases the advisory lock; failure there is harmless.
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`): ends sessions, no recovery
    /// needed on next start. Stopping a stopped cluster is not an error.
    pub fn stop(&self) -> Result<()> {
        let _lock = acquire_lock(&self.lock_file)?;
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let status = self
            .runner
            .command(&pg_ctl, &[OsStr::new("-D"), self.data_dir.as_os_str(), OsStr::new("status")]);
        let (_, output) = run_blocking(status)?;
        // 3: not running; 4: no accessible data directory.
        if matches!(output.status.code(), Some(3 | 4)) {
            return Ok(());
        }
        let timeout = START_TIMEOUT_SECS.to_string();
        let stop = self.runner.command(
            &pg_ctl,
            &[
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-m"),
                OsStr::new("fast"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(&timeout),
                OsStr::new("-s"),
                OsStr::new("stop"),
            ],
        );
        let (command, output) = run_blocking(stop)?;
        check(command, output, Some(&self.log_file)).map(drop)
    }

    /// Where the cluster lives (may differ from the requested path as root).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Port number, i.e. the suffix of the socket file name `.s.PGSQL.<port>`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server log written by `pg_ctl -l`.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Database superuser name.
    pub fn username(&self) -> &str {
        SUPERUSER
    }

    async fn init_if_needed(&self) -> Result<()> {
        if self.data_dir.join("PG_VERSION").is_file() {
            return self.fix_ownership().await;
        }
        match fs::read_dir(&self.data_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(LocalPostgresError::InvalidDataDir {
                        path: self.data_dir.clone(),
                        reason: "it is not empty but holds no PG_VERSION; refusing to overwrite it".into(),
                    });
                }
                fs::remove_dir(&self.data_dir).map_err(io_err("remove empty", &self.data_dir))?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("read", &self.data_dir)(err)),
        }
        // initdb into a staging directory and rename it into place, so a
        // killed initdb never leaves a half-made cluster behind a PG_VERSION.
        let staging = sibling(&self.data_dir, ".", ".initdb-tmp")?;
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err("remove stale", &staging))?;
        }
        self.make_service_dir(&staging, 0o700, None)?;
        let initdb = self.runner.command(
            &self.bin_dir.join("initdb"),
            &[
                OsStr::new("-D"),
                staging.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--auth=trust"),
                OsStr::new("--encoding=UTF8"),
                // C collation: the same on every machine, and UTF8 always
                // matches it whatever the environment's locale is.
                OsStr::new("--no-locale"),
                OsStr::new("--no-instructions"),
            ],
        );
        run_checked(initdb, None).await?;
        fs::rename(&staging, &self.data_dir).map_err(io_err("move initialized cluster to", &self.data_dir))
    }

    /// As root, a cluster left owned by another user (e.g. root) cannot start.
    async fn fix_ownership(&self) -> Result<()> {
        let Runner::AsServiceUser { uid, .. } = self.runner else {
            return Ok(());
        };
        let meta = fs::metadata(&self.data_dir).map_err(io_err("inspect", &self.data_dir))?;
        if meta.uid() == uid {
            return Ok(());
        }
        let owner = format!("{SERVICE_USER}:{SERVICE_USER}");
        let mut chown = Command::new("chown");
        chown.arg("-R").arg(owner).arg(&self.data_dir);
        run_checked(chown, None).await.map(drop)
    }

    /// Whether this call started the server.
    async fn start_if_needed(&self) -> Result<bool> {
        let first_error = match self.probe().await? {
            Ok(()) => return Ok(false),
            Err(err) => err,
        };
        if let Some(pid) = read_pid(&self.data_dir.join("postmaster.pid"))
            && postmaster_alive(pid, &self.data_dir)
        {
            // Ours and alive, maybe still starting up or recovering.
            return self.wait_ready(first_error).await.map(|()| false);
        }
        self.remove_stale_lock_files()?;
        let timeout = START_TIMEOUT_SECS.to_string();
        let mut server_opts = OsString::from("-k ");
        server_opts.push(sh_quote(self.socket_dir.as_os_str()));
        server_opts.push(format!(" -c listen_addresses='' -p {}", self.port));
        let start = self.runner.command(
            &self.bin_dir.join("pg_ctl"),
            &[
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-l"),
                self.log_file.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(&timeout),
                OsStr::new("-s"),
                OsStr::new("-o"),
                &server_opts,
                OsStr::new("start"),
            ],
        );
        run_checked(start, Some(&self.log_file)).await?;
        match self.probe().await? {
            Ok(()) => Ok(true),
            Err(err) => self.wait_ready(err).await.map(|()| true),
        }
    }

    /// Outer error: a server answered but is not ours. Inner error: nothing
    /// usable answered.
    async fn probe(&self) -> Result<Result<(), sqlx::Error>> {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&self.connect_options("postgres")).await?;
            let dir: String =
                sqlx::query_scalar("SELECT current_setting('data_directory')").fetch_one(&mut conn).await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(dir)
        };
        let actual = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(dir)) => dir,
            Ok(Err(err)) => return Ok(Err(err)),
            Err(_) => {
                let timed_out = io::Error::new(io::ErrorKind::TimedOut, "no answer on the socket in time");
                return Ok(Err(sqlx::Error::Io(timed_out)));
            }
        };
        if same_dir(Path::new(&actual), &self.data_dir) {
            Ok(Ok(()))
        } else {
            Err(LocalPostgresError::ForeignCluster {
                socket_dir: self.socket_dir.clone(),
                expected: self.data_dir.clone(),
                actual,
            })
        }
    }

    async fn wait_ready(&self, mut last: sqlx::Error) -> Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match self.probe().await? {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
        }
        Err(LocalPostgresError::NotAccepting {
            data_dir: self.data_dir.clone(),
            socket_dir: self.socket_dir.clone(),
            pid: read_pid(&self.data_dir.join("postmaster.pid")),
            log_file: self.log_file.clone(),
            log_tail: read_tail(&self.log_file),
            source: Box::new(last),
        })
    }

    /// The server is known not to run: lock files naming a dead (or reused)
    /// pid would make it refuse to start, e.g. after a container restart.
    fn remove_stale_lock_files(&self) -> Result<()> {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
        for path in [self.data_dir.join("postmaster.pid"), socket_lock, socket] {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale PostgreSQL lock file"),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("remove stale", &path)(err)),
            }
        }
        Ok(())
    }

    /// Creates `dir` for the server's use: owned by the service user (and
    /// `group`, else its own group) when we are root, else by us.
    fn make_service_dir(&self, dir: &Path, mode: u32, group: Option<u32>) -> Result<()> {
        match fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(err) => return Err(io_err("create directory", dir)(err)),
        }
        if let Runner::AsServiceUser { uid, gid, .. } = self.runner {
            let gid = group.unwrap_or(gid);
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io_err("chown", dir))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))
    }
}

/// The blocking part of [`LocalPostgres::ensure_running`]: take the lock, pick
/// directories and binaries, create the socket directory.
fn prepare(requested: &Path) -> Result<(LocalPostgres, File)> {
    let requested = std::path::absolute(requested).map_err(io_err("resolve", requested))?;
    let (Some(parent), Some(name)) = (requested.parent(), requested.file_name()) else {
        return Err(LocalPostgresError::InvalidDataDir {
            path: requested.clone(),
            reason: "it has no parent directory or final name".into(),
        });
    };
    fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    let parent = fs::canonicalize(parent).map_err(io_err("resolve", parent))?;
    let requested = parent.join(name);
    let lock_file = sibling(&requested, "", ".lock")?;
    let lock = acquire_lock(&lock_file)?;

    let uid = current_uid();
    let runner = Runner::detect(uid)?;
    let tmp_base = || private_tmp_dir(uid, &requested, &runner);
    let cluster_parent = if runner.can_traverse(&parent)? {
        parent
    } else {
        tracing::info!(
            requested = %requested.display(),
            "postgres user cannot reach the requested data directory; using one under /tmp"
        );
        tmp_base()?
    };
    let data_dir = cluster_parent.join(name);
    let mut socket_dir = cluster_parent.join("run");
    if !socket_path_fits(&socket_dir, PORT) {
        socket_dir = tmp_base()?.join("run");
    }
    let bin_dir = find_bin_dir(&candidate_bin_dirs(std::env::var_os("PAYOUTD_PG_BIN")))?;
    let pg = LocalPostgres {
        log_file: data_dir.join("server.log"),
        data_dir,
        socket_dir,
        port: PORT,
        lock_file,
        bin_dir,
        runner,
    };
    // Trust auth makes whoever reaches the socket a superuser, so only we may
    // reach it: 0700 as a normal user; as root, owned by postgres:root with
    // 0750, so root gets in through the group bits even without
    // CAP_DAC_OVERRIDE.
    if pg.runner.is_service_user() {
        pg.make_service_dir(&pg.socket_dir, 0o750, Some(0))?;
    } else {
        pg.make_service_dir(&pg.socket_dir, 0o700, None)?;
    }
    Ok((pg, lock))
}

/// Opens and exclusively locks `path`; the lock lasts as long as the `File`.
fn acquire_lock(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    file.lock().map_err(io_err("lock", path))?;
    Ok(file)
}

/// How the server binaries are run.
#[derive(Debug, Clone)]
enum Runner {
    /// Not root: run them directly as ourselves.
    Direct,
    /// Root: PostgreSQL refuses to run as root, so switch to `postgres`.
    AsServiceUser { switch: Switch, uid: u32, gid: u32 },
}

#[derive(Debug, Clone)]
enum Switch {
    Runuser(PathBuf),
    Su(PathBuf),
}

impl Runner {
    fn detect(uid: u32) -> Result<Self> {
        if uid != 0 {
            return Ok(Runner::Direct);
        }
        let switch = if let Some(path) = find_program("runuser") {
            Switch::Runuser(path)
        } else if let Some(path) = find_program("su") {
            Switch::Su(path)
        } else {
            return Err(LocalPostgresError::ServiceUser {
                user: SERVICE_USER,
                detail: "neither runuser nor su is installed".into(),
            });
        };
        Ok(Runner::AsServiceUser { switch, uid: service_user_id("-u")?, gid: service_user_id("-g")? })
    }

    fn is_service_user(&self) -> bool {
        matches!(self, Runner::AsServiceUser { .. })
    }

    /// A command running `program args` as the server's OS user, from `/`
    /// (the service user may not be able to enter our working directory).
    fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        let mut cmd = match self {
            Runner::Direct => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Runner::AsServiceUser { switch: Switch::Runuser(runuser), .. } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", SERVICE_USER, "--"]).arg(program).args(args);
                cmd
            }
            Runner::AsServiceUser { switch: Switch::Su(su), .. } => {
                let mut line = sh_quote(program.as_os_str());
                for arg in args {
                    line.push(" ");
                    line.push(sh_quote(arg));
                }
                let mut cmd = Command::new(su);
                cmd.args([SERVICE_USER, "-s", "/bin/sh", "-c"]).arg(line);
                cmd
            }
        };
        cmd.current_dir("/");
        cmd
    }

    /// Whether the server's OS user can reach entries of `dir`.
    fn can_traverse(&self, dir: &Path) -> Result<bool> {
        if !self.is_service_user() {
            return Ok(true);
        }
        let test = self.command(Path::new("test"), &[OsStr::new("-x"), dir.as_os_str()]);
        Ok(run_blocking(test)?.1.status.success())
    }
}

fn service_user_id(flag: &str) -> Result<u32> {
    let mut id = Command::new("id");
    id.arg(flag).arg(SERVICE_USER);
    let (_, output) = run_blocking(id)?;
    let parsed = String::from_utf8_lossy(&output.stdout).trim().parse::<u32>();
    match parsed {
        Ok(value) if output.status.success() => Ok(value),
        _ => Err(LocalPostgresError::ServiceUser {
            user: SERVICE_USER,
            detail: format!("`id {flag} {SERVICE_USER}` failed: {}", tail(&output.stderr)),
        }),
    }
}

/// Effective uid, from the owner of `/proc/self` (no libc dependency), else
/// `id -u`. Unknown counts as non-root.
fn current_uid() -> u32 {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid();
    }
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// `/tmp/payoutd-<uid>-<hash>`: short (for socket paths) and reachable by the
/// service user. Refuses a pre-existing directory someone else could control.
fn private_tmp_dir(uid: u32, requested: &Path, runner: &Runner) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/tmp/payoutd-{uid}-{:016x}", fnv1a64(requested.as_os_str().as_bytes())));
    let mode = if runner.is_service_user() { 0o755 } else { 0o700 };
    match fs::DirBuilder::new().mode(mode).create(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(io_err("create directory", &dir)(err)),
    }
    let meta = fs::symlink_metadata(&dir).map_err(io_err("inspect", &dir))?;
    let reason = if !meta.is_dir() {
        Some("it is not a directory")
    } else if meta.uid() != uid {
        Some("it is owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("it is writable by other users")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(LocalPostgresError::UnsafeDir { path: dir, reason: reason.into() });
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &dir))?;
    Ok(dir)
}

fn socket_path_fits(socket_dir: &Path, port: u16) -> bool {
    socket_dir.as_os_str().len() + format!("/.s.PGSQL.{port}").len() <= MAX_SOCKET_PATH
}

/// `<dir>/<prefix><name><suffix>` for `path` = `<dir>/<name>`.
fn sibling(path: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(LocalPostgresError::InvalidDataDir {
            path: path.to_path_buf(),
            reason: "it has no parent directory or final name".into(),
        });
    };
    let mut file = OsString::from(prefix);
    file.push(name);
    file.push(suffix);
    Ok(dir.join(file))
}

/// Where to look for the server binaries, best first: `PAYOUTD_PG_BIN` alone
/// if set (an explicit choice should not silently fall back), else
/// `pg_config --bindir`, the newest `/usr/lib/postgresql/<version>/bin`,
/// `/usr/local/pgsql/bin`, and the directory of `initdb` on `PATH`.
fn candidate_bin_dirs(env_override: Option<OsString>) -> Vec<PathBuf> {
    if let Some(dir) = env_override.filter(|dir| !dir.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !text.is_empty() {
            dirs.push(PathBuf::from(text));
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let versions = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        dirs.extend(newest_first(versions).into_iter().map(|dir| dir.join("bin")));
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(initdb) = find_program("initdb") {
        // Resolve symlinks like /usr/local/bin/initdb -> .../15/bin/initdb so
        // pg_ctl and postgres come from the same installation.
        let real = fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent() {
            dirs.push(dir.to_path_buf());
        }
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// Sorts version directories (`9.6`, `10`, `15`) newest first; names that are
/// not versions go last.
fn newest_first(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let key = |dir: &PathBuf| -> Vec<u32> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>().unwrap_or_default()
    };
    dirs.sort_by_key(|dir| std::cmp::Reverse(key(dir)));
    dirs
}

/// A PostgreSQL client program such as `pg_dump` or `pg_restore`: from the installation the
/// embedded cluster would use (`PAYOUTD_PG_BIN`, `pg_config`, /usr/lib/postgresql), else on `PATH`.
pub fn client_program(name: &str) -> Result<PathBuf> {
    let candidates = candidate_bin_dirs(std::env::var_os("PAYOUTD_PG_BIN"));
    candidates
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .or_else(|| find_program(name))
        .ok_or(LocalPostgresError::BinariesNotFound { searched: candidates })
}

/// The first candidate holding all of initdb, pg_ctl and postgres.
fn find_bin_dir(candidates: &[PathBuf]) -> Result<PathBuf> {
    candidates
        .iter()
        .find(|dir| REQUIRED_BINARIES.iter().all(|bin| is_executable(&dir.join(bin))))
        .cloned()
        .ok_or_else(|| LocalPostgresError::BinariesNotFound { searched: candidates.to_vec() })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

/// `name` on `PATH`, then in the sbin directories that a non-login `PATH`
/// often lacks (runuser lives in /usr/sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    let text = fs::read_to_string(pid_file).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// A postmaster changes into its data directory, so a live process whose cwd
/// is `data_dir` is ours; a pid reused by anything else is not.
fn postmaster_alive(pid: u32, data_dir: &Path) -> bool {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => same_dir(&cwd, data_dir),
        // Gone, or another user's process (ours would be readable).
        Err(_) => false,
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// Runs `cmd` to completion and fails unless it exits successfully.
async fn run_checked(mut cmd: Command, log_file: Option<&Path>) -> Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let command = describe(&cmd);
    let output = tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(|source| LocalPostgresError::Spawn { command: command.clone(), source })?;
    check(command, output, log_file)
}

fn run_blocking(mut cmd: Command) -> Result<(String, Output)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let command = describe(&cmd);
    match cmd.output() {
        Ok(output) => Ok((command, output)),
        Err(source) => Err(LocalPostgresError::Spawn { command, source }),
    }
}

/// Turns a failed exit into an error carrying the output and log tails.
fn check(command: String, output: Output, log_file: Option<&Path>) -> Result<Output> {
    if output.status.success() {
        return Ok(output);
    }
    let stream =
        if output.stderr.iter().all(u8::is_ascii_whitespace) { &output.stdout } else { &output.stderr };
    Err(LocalPostgresError::CommandFailed {
        command,
        status: output.status.to_string(),
        stderr_tail: tail(stream),
        log_file: log_file.map(Path::to_path_buf),
        log_tail: log_file.map(read_tail).unwrap_or_default(),
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let plain =
                part.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"/-_.=:,@+%".contains(b));
            let part = if plain { part.to_os_string() } else { sh_quote(part) };
            part.to_string_lossy().into_owned()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last lines of some output, enough to see why a command failed.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut out = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if out.len() > TAIL_BYTES {
        let mut cut = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

fn read_tail(path: &Path) -> String {
    fs::read(path).map(|bytes| tail(&bytes)).unwrap_or_default()
}

fn log_excerpt(log_file: Option<&Path>, log_tail: &str) -> String {
    match log_file {
        Some(path) if log_tail.is_empty() => format!("; server log: {}", path.display()),
        Some(path) => format!("; server log {}:\n{log_tail}", path.display()),
        None => String::new(),
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere".into();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Single-quotes `s` for /bin/sh (pg_ctl -o and su -c go through a shell).
fn sh_quote(s: &OsStr) -> OsString {
    let mut out = vec![b'\''];
    for &byte in s.as_bytes() {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn validate_database_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        "it is longer than 63 bytes"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(LocalPostgresError::InvalidDatabaseName { name: name.to_owned(), reason })
}

/// FNV-1a: a hash that is stable across Rust versions and runs, unlike
/// `DefaultHasher`, so the same data dir always maps to the same /tmp path.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// `map_err` adapter attaching what we tried to do, and to which path.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalPostgresError {
    let path = path.to_path_buf();
    move |source| LocalPostgresError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A fresh directory under the system temp dir (no tempfile dependency).
    fn unique_dir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::env::temp_dir().join(format!("payoutd-lpg-{tag}-{}-{nanos}", std::process::id()))
    }

    /// Stops the cluster and removes the directories even if the test fails.
    struct Cleanup {
        pg: Option<LocalPostgres>,
        dirs: Vec<PathBuf>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(pg) = &self.pg
                && let Err(err) = pg.stop()
            {
                eprintln!("cleanup: {err}");
            }
            for dir in &self.dirs {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }

    async fn start_time(pg: &LocalPostgres) -> String {
        let mut conn = PgConnection::connect_with(&pg.connect_options("postgres")).await.expect("connect");
        sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
            .fetch_one(&mut conn)
            .await
            .expect("start time")
    }

    #[test]
    fn missing_binaries_error_says_what_to_install() {
        let bogus = PathBuf::from("/nonexistent/payoutd-test/bin");
        let err = find_bin_dir(std::slice::from_ref(&bogus)).expect_err("nothing to find");
        assert!(matches!(&err, LocalPostgresError::BinariesNotFound { searched } if searched == &[bogus]));
        let message = err.to_string();
        assert!(message.contains("apt install postgresql"), "{message}");
        assert!(message.contains("/nonexistent/payoutd-test/bin"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }

    #[test]
    fn explicit_bin_dir_does_not_fall_back() {
        let dirs = candidate_bin_dirs(Some(OsString::from("/nonexistent/pg/bin")));
        assert_eq!(dirs, vec![PathBuf::from("/nonexistent/pg/bin")]);
        assert!(find_bin_dir(&dirs).is_err());
    }

    #[test]
    fn picks_first_dir_with_all_binaries() {
        let root = unique_dir("bins");
        let _cleanup = Cleanup { pg: None, dirs: vec![root.clone()] };
        let partial = root.join("partial");
        let complete = root.join("complete");
        for (dir, bins) in [(&partial, &["initdb", "pg_ctl"][..]), (&complete, &REQUIRED_BINARIES[..])] {
            fs::create_dir_all(dir).expect("mkdir");
            for bin in bins {
                let path = dir.join(bin);
                fs::write(&path, "#!/bin/sh\n").expect("write");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            }
        }
        let found = find_bin_dir(&[root.join("missing"), partial, complete.clone()]).expect("found");
        assert_eq!(found, complete);
    }

    #[test]
    fn versions_sort_newest_first() {
        let dirs = ["9.6", "15", "x", "10", "16"].map(|v| PathBuf::from("/usr/lib/postgresql").join(v));
        let sorted: Vec<String> = newest_first(dirs.to_vec())
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(sorted, ["16", "15", "10", "9.6", "x"]);
    }

    #[test]
    fn quoting_and_names() {
        assert_eq!(sh_quote(OsStr::new("/a b/it's")), OsString::from("'/a b/it'\\''s'"));
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert!(validate_database_name("payoutd_test").is_ok());
        assert!(validate_database_name("").is_err());
        assert!(validate_database_name(&"x".repeat(64)).is_err());
        assert!(socket_path_fits(Path::new("/tmp/payoutd-0-0123456789abcdef/run"), PORT));
        assert!(!socket_path_fits(&PathBuf::from(format!("/{}", "d".repeat(100))), PORT));
    }

    #[test]
    fn su_fallback_passes_arguments_intact() {
        let Some(su) = find_program("su").filter(|_| current_uid() == 0) else {
            eprintln!("skipped: needs root and su");
            return;
        };
        let (uid, gid) = match (service_user_id("-u"), service_user_id("-g")) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            _ => return eprintln!("skipped: no postgres user"),
        };
        let runner = Runner::AsServiceUser { switch: Switch::Su(su), uid, gid };
        let cmd = runner.command(Path::new("/bin/echo"), &[OsStr::new("a  b"), OsStr::new("it's")]);
        let (_, output) = run_blocking(cmd).expect("run su");
        assert!(output.status.success(), "{}", tail(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "a  b it's\n");
    }

    #[tokio::test]
    async fn long_paths_get_a_short_socket_dir() {
        let top = unique_dir("long");
        let mut cleanup = Cleanup { pg: None, dirs: vec![top.clone()] };
        let root = top.join("a".repeat(60)).join("b".repeat(60));
        let (pg, _lock) = prepare(&root.join("postgres")).expect("prepare");
        cleanup.dirs.extend(pg.socket_dir.parent().map(Path::to_path_buf));
        let socket_dir = pg.socket_dir.to_string_lossy();
        assert!(socket_dir.starts_with("/tmp/payoutd-"), "{socket_dir}");
        assert!(socket_path_fits(&pg.socket_dir, pg.port));
        assert_eq!(pg.data_dir, fs::canonicalize(&root).expect("canonical").join("postgres"));
    }

    #[tokio::test]
    async fn cluster_lifecycle() {
        let root = unique_dir("life");
        let data_dir = root.join("postgres");
        let mut cleanup = Cleanup { pg: None, dirs: vec![root.clone()] };

        // Cold start, raced by three callers: one initdb, one server.
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            LocalPostgres::ensure_running(&data_dir),
            LocalPostgres::ensure_running(&data_dir),
            LocalPostgres::ensure_running(&data_dir),
        );
        let pg = a.expect("start a");
        cleanup.pg = Some(pg.clone());
        b.expect("start b");
        c.expect("start c");
        eprintln!("cold start (initdb + start, 3 racing callers): {:?}", started.elapsed());
        assert!(pg.data_dir().join("PG_VERSION").is_file());
        assert!(!root.join(".postgres.initdb-tmp").exists());

        let (x, y) = tokio::join!(pg.ensure_database("payoutd_test"), pg.ensure_database("payoutd_test"));
        x.expect("create db");
        y.expect("create db again");
        pg.ensure_database(r#"odd "name""#).await.expect("quoted name");

        let mut conn =
            PgConnection::connect_with(&pg.connect_options("payoutd_test")).await.expect("connect");
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.expect("select");
        assert_eq!(one, 1);
        let listen: String =
            sqlx::query_scalar("SHOW listen_addresses").fetch_one(&mut conn).await.expect("show");
        assert_eq!(listen, "", "must not listen on TCP");
        conn.close().await.expect("close");

        // Reuse: same server, no re-init.
        let boot = start_time(&pg).await;
        let version_meta = fs::metadata(pg.data_dir().join("PG_VERSION")).expect("meta");
        let started = Instant::now();
        let again = LocalPostgres::ensure_running(&data_dir).await.expect("reuse");
        eprintln!("reuse of a running cluster: {:?}", started.elapsed());
        assert_eq!(again.data_dir(), pg.data_dir());
        assert_eq!(start_time(&again).await, boot);
        let after = fs::metadata(again.data_dir().join("PG_VERSION")).expect("meta");
        assert_eq!((after.ino(), after.mtime()), (version_meta.ino(), version_meta.mtime()));

        // Stop; stopping twice is fine.
        pg.stop().expect("stop");
        pg.stop().expect("stop again");
        assert!(PgConnection::connect_with(&pg.connect_options("postgres")).await.is_err());

        // A pid file naming a live non-postgres process (here: us), as after
        // a container restart, must not block the next start.
        fs::write(pg.data_dir().join("postmaster.pid"), format!("{}\n", std::process::id())).expect("write");
        let started = Instant::now();
        let restarted = LocalPostgres::ensure_running(&data_dir).await.expect("restart");
        eprintln!("restart of an initialized cluster: {:?}", started.elapsed());
        assert_ne!(start_time(&restarted).await, boot);
        restarted.ensure_database("payoutd_test").await.expect("db survives restart");
    }

    #[tokio::test]
    async fn root_uses_tmp_when_postgres_cannot_reach_the_dir() {
        if current_uid() != 0 {
            eprintln!("skipped: only meaningful as root");
            return;
        }
        let root = unique_dir("private");
        let hidden = root.join("hidden");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&hidden).expect("mkdir");
        fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).expect("chmod");
        let mut cleanup = Cleanup { pg: None, dirs: vec![root.clone()] };

        let pg = LocalPostgres::ensure_running(&hidden.join("postgres")).await.expect("start");
        cleanup.pg = Some(pg.clone());
        if let Some(base) = pg.data_dir().parent() {
            cleanup.dirs.push(base.to_path_buf());
        }
        let data_dir = pg.data_dir().to_string_lossy();
        assert!(data_dir.starts_with("/tmp/payoutd-0-"), "{data_dir}");
        assert!(hidden.join("postgres.lock").is_file());
        pg.ensure_database("payoutd_test").await.expect("db");
    }
}
