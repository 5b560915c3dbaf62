//! The `payoutd serve` and `payoutd worker` child processes: started from the real binary,
//! configured only by environment, SIGKILLed and restarted, each with a log file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use payoutd_core::Secret;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::process::{Child, Command};

use crate::{Counters, SERVICE_ID, SoakError, Timings};

/// A child that exits on its own this soon after starting, this many times in a row, is taken
/// for a configuration problem and ends the run.
const QUICK_EXIT: Duration = Duration::from_secs(5);
const QUICK_EXITS_ALLOWED: u32 = 5;
const LOG_TAIL_BYTES: u64 = 3000;

/// A free port on 127.0.0.1 for the API (bound, read, released).
pub fn free_local_addr() -> Result<SocketAddr, SoakError> {
    let io = |source| SoakError::Io { action: "find a free local port".to_owned(), source };
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    listener.local_addr().map_err(io)
}

/// How every child is configured.
#[derive(Debug, Clone)]
pub struct ChildEnv {
    pub database_url: Secret,
    /// The API address of `payoutd serve` (kept across its restarts: the sandbox's callbacks
    /// go there).
    pub listen: SocketAddr,
    pub sandbox_url: String,
    pub secret: Secret,
    pub timings: Timings,
    pub concurrency: usize,
    pub log: String,
    pub extra: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    Serve,
    Worker,
}

impl ChildKind {
    fn command(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Worker => "worker",
        }
    }
}

struct Slot {
    kind: ChildKind,
    log: PathBuf,
    child: Child,
    started: Instant,
    quick_exits: u32,
}

impl Slot {
    fn name(&self) -> String {
        format!("payoutd {} ({})", self.kind.command(), self.log.display())
    }
}

/// The serve process and the worker processes.
pub struct Fleet {
    bin: PathBuf,
    env: ChildEnv,
    serve: Slot,
    workers: Vec<Slot>,
}

impl Fleet {
    pub async fn start(bin: &Path, logs: &Path, env: ChildEnv, workers: usize) -> Result<Self, SoakError> {
        std::fs::create_dir_all(logs)
            .map_err(|source| SoakError::Io { action: format!("create {}", logs.display()), source })?;
        let serve = start_slot(bin, &env, ChildKind::Serve, logs.join("serve.log"))?;
        let mut fleet = Self { bin: bin.to_owned(), env, serve, workers: Vec::new() };
        for n in 0..workers {
            let slot =
                start_slot(&fleet.bin, &fleet.env, ChildKind::Worker, logs.join(format!("worker-{n}.log")))?;
            fleet.workers.push(slot);
        }
        Ok(fleet)
    }

    /// Waits until the API answers `/health/live`; fails if serve exits first.
    pub async fn wait_ready(&mut self, api: &str, limit: Duration) -> Result<(), SoakError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| SoakError::Child(format!("cannot build an HTTP client: {e}")))?;
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = try_wait(&mut self.serve)? {
                return Err(SoakError::Child(format!(
                    "{} exited ({status}) instead of serving; if it refuses the soak's settings, change \
                     the timings or pass --child-env NAME=VALUE; its log ends with:\n{}",
                    self.serve.name(),
                    log_tail(&self.serve.log)
                )));
            }
            if let Ok(r) = client.get(format!("{api}/health/live")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(SoakError::Child(format!(
                    "{} did not answer /health/live within {limit:?}; its log ends with:\n{}",
                    self.serve.name(),
                    log_tail(&self.serve.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts children that exited on their own (counted); fails when one keeps exiting
    /// right after start, which means it refuses its configuration.
    pub async fn supervise(&mut self, counters: &mut Counters) -> Result<(), SoakError> {
        for slot in std::iter::once(&mut self.serve).chain(self.workers.iter_mut()) {
            let Some(status) = try_wait(slot)? else { continue };
            counters.unexpected_exits += 1;
            if slot.started.elapsed() < QUICK_EXIT {
                slot.quick_exits += 1;
            } else {
                slot.quick_exits = 1;
            }
            if slot.quick_exits >= QUICK_EXITS_ALLOWED {
                return Err(failed_to_start(slot, status));
            }
            respawn(&self.bin, &self.env, slot)?;
        }
        Ok(())
    }

    /// SIGKILLs the serve process or a random worker, reaps it, and starts it again.
    pub async fn kill_one(
        &mut self,
        kind: ChildKind,
        rng: &mut StdRng,
        counters: &mut Counters,
    ) -> Result<(), SoakError> {
        let slot = match kind {
            ChildKind::Serve => &mut self.serve,
            ChildKind::Worker => {
                let n = rng.random_range(0..self.workers.len());
                &mut self.workers[n]
            }
        };
        kill(slot).await?;
        match kind {
            ChildKind::Serve => counters.serve_kills += 1,
            ChildKind::Worker => counters.worker_kills += 1,
        }
        respawn(&self.bin, &self.env, slot)
    }

    /// SIGKILLs every child (the end of the run; not counted).
    pub async fn stop_all(&mut self) {
        for slot in std::iter::once(&mut self.serve).chain(self.workers.iter_mut()) {
            // A child that is already gone is fine.
            let _ = kill(slot).await;
        }
    }
}

fn try_wait(slot: &mut Slot) -> Result<Option<ExitStatus>, SoakError> {
    slot.child
        .try_wait()
        .map_err(|source| SoakError::Io { action: format!("check on {}", slot.name()), source })
}

async fn kill(slot: &mut Slot) -> Result<(), SoakError> {
    // SIGKILL on Unix; an already exited child only needs reaping.
    let _ = slot.child.start_kill();
    slot.child
        .wait()
        .await
        .map_err(|source| SoakError::Io { action: format!("reap {}", slot.name()), source })?;
    Ok(())
}

fn respawn(bin: &Path, env: &ChildEnv, slot: &mut Slot) -> Result<(), SoakError> {
    slot.child = spawn(bin, env, slot.kind, &slot.log)?;
    slot.started = Instant::now();
    Ok(())
}

fn start_slot(bin: &Path, env: &ChildEnv, kind: ChildKind, log: PathBuf) -> Result<Slot, SoakError> {
    // A fresh log per run; restarts append to it.
    File::create(&log)
        .map_err(|source| SoakError::Io { action: format!("create {}", log.display()), source })?;
    let child = spawn(bin, env, kind, &log)?;
    Ok(Slot { kind, log, child, started: Instant::now(), quick_exits: 0 })
}

fn spawn(bin: &Path, env: &ChildEnv, kind: ChildKind, log: &Path) -> Result<Child, SoakError> {
    let io = |action: String| move |source| SoakError::Io { action, source };
    let mut out =
        File::options().append(true).create(true).open(log).map_err(io(format!("open {}", log.display())))?;
    writeln!(out, "=== soak: starting payoutd {} ===", kind.command())
        .map_err(io(format!("write {}", log.display())))?;
    let err = out.try_clone().map_err(io(format!("open {}", log.display())))?;
    let t = &env.timings;
    let mut command = Command::new(bin);
    command.arg(kind.command());
    // Nothing from the soak's own environment may reconfigure the children.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("PAYOUTD_") || name == "DATABASE_URL" || name == "RUST_LOG" {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env("DATABASE_URL", env.database_url.expose())
        .env("PAYOUTD_LISTEN", env.listen.to_string())
        .env("PAYOUTD_8B_PARTNER_BASE_URL", &env.sandbox_url)
        .env("PAYOUTD_8B_PARTNER_SERVICE_ID", SERVICE_ID)
        .env("PAYOUTD_8B_PARTNER_SECRET", env.secret.expose())
        .env("PAYOUTD_8B_PARTNER_STATUS_INTERVAL_SECS", t.status_interval.as_secs_f64().to_string())
        .env("PAYOUTD_8B_PARTNER_REQUEST_TIMEOUT_MS", t.request_timeout.as_millis().to_string())
        .env("PAYOUTD_LEASE_SECS", t.lease.as_secs_f64().to_string())
        .env("PAYOUTD_SAFETY_MARGIN_SECS", t.safety_margin.as_secs_f64().to_string())
        .env("PAYOUTD_CONCURRENCY", env.concurrency.to_string())
        .env("PAYOUTD_IDLE_POLL_MS", "200")
        .env("PAYOUTD_RETRY_BASE_MS", "200")
        .env("PAYOUTD_PROVIDER_CALLS_PER_SECOND", "2000")
        .env("RUST_LOG", &env.log)
        .envs(env.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    command.spawn().map_err(io(format!("start {} {}", bin.display(), kind.command())))
}

fn failed_to_start(slot: &Slot, status: ExitStatus) -> SoakError {
    SoakError::Child(format!(
        "{} exited ({status}) right after starting, again and again: it probably refuses the soak's \
         settings (pass --child-env NAME=VALUE or other timings if it names one); its log ends with:\n{}",
        slot.name(),
        log_tail(&slot.log)
    ))
}

/// The end of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
