//! What a figure cost: CPU of this process and of the Postgres server processes serving the
//! bench database (from /proc), transactions committed or rolled back in that database
//! (`pg_stat_database`, reads included) and WAL bytes written (`pg_current_wal_lsn`, which is
//! cluster-wide: other sessions' writes on a shared server show up too).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use payoutd_store::PgPool;

/// Counters at one moment.
pub struct Snapshot {
    at: Instant,
    own_ticks: u64,
    /// CPU ticks of the Postgres processes serving the database, summed over every process
    /// seen since the meter started (one that exited keeps its last reading).
    pg_ticks: u64,
    xacts: i64,
    wal_lsn: i64,
    rate_limit_writes: i64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub elapsed: Duration,
    pub own_cpu: Duration,
    pub pg_cpu: Duration,
    pub xacts: i64,
    pub wal_bytes: i64,
    /// Inserts and updates of `provider_rate_limits` rows.
    pub rate_limit_writes: i64,
}

impl Cost {
    /// This cost divided over `n` units of work (payouts, requests).
    pub fn per(&self, n: u64) -> PerUnit {
        let n = n.max(1) as f64;
        PerUnit {
            own_ms: self.own_cpu.as_secs_f64() * 1000.0 / n,
            pg_ms: self.pg_cpu.as_secs_f64() * 1000.0 / n,
            xacts: self.xacts as f64 / n,
            wal_bytes: self.wal_bytes as f64 / n,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PerUnit {
    pub own_ms: f64,
    pub pg_ms: f64,
    pub xacts: f64,
    pub wal_bytes: f64,
}

/// The kernel's clock ticks per second for /proc times (USER_HZ, 100 on Linux everywhere).
const TICKS_PER_SECOND: u64 = 100;

/// utime + stime of a process, in ticks; `None` when it is gone or unreadable.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// The Postgres processes that work for `database`: its backends (their command line names
/// the database) and the server's WAL writer, checkpointer and background writer. Found in
/// /proc, so only when Postgres runs on this machine.
fn pg_processes(database: &str) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let needle = format!(" {database} ");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.starts_with("postgres: ") {
                return None;
            }
            let aux = ["walwriter", "checkpointer", "background writer"]
                .iter()
                .any(|a| cmdline.trim_end().ends_with(a));
            if !(aux || cmdline.contains(&needle)) {
                return None;
            }
            Some((pid, process_ticks(&pid.to_string())?))
        })
        .collect()
}

/// Follows the Postgres processes of one database from start to stop, sampling /proc a few
/// times a second, so that backends which exit during a figure (a pool closed with its
/// worker) still count with their last reading.
pub struct PgCpu {
    /// Per process: ticks when first seen (0 for processes born after the start) and last seen.
    seen: std::sync::Arc<std::sync::Mutex<HashMap<u32, (u64, u64)>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl PgCpu {
    pub fn start(database: &str) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        {
            let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
            for (pid, t) in pg_processes(database) {
                map.insert(pid, (t, t));
            }
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let (map, until, database) = (seen.clone(), stop.clone(), database.to_owned());
        tokio::spawn(async move {
            while !until.is_cancelled() {
                let found = tokio::task::spawn_blocking({
                    let database = database.clone();
                    move || pg_processes(&database)
                })
                .await
                .unwrap_or_default();
                {
                    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                    for (pid, t) in found {
                        map.entry(pid).or_insert((0, 0)).1 = t;
                    }
                }
                tokio::select! {
                    _ = until.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Self { seen, stop }
    }

    /// Ticks used since the start.
    fn ticks(&self, database: &str) -> u64 {
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (pid, t) in pg_processes(database) {
            map.entry(pid).or_insert((0, 0)).1 = t;
        }
        map.values().map(|(first, last)| last.saturating_sub(*first)).sum()
    }
}

impl Drop for PgCpu {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads the counters. `pg` follows the database's Postgres processes.
pub async fn snapshot(pool: &PgPool, pg: &PgCpu) -> anyhow::Result<Snapshot> {
    // Backends report their statistics at most once a second (and when idle): wait for them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (database, xacts, wal_lsn, rate_limit_writes): (String, i64, i64, i64) = sqlx::query_as(
        "SELECT current_database()::text,
                (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
                (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8,
                COALESCE((SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables
                           WHERE relname = 'provider_rate_limits'), 0)",
    )
    .fetch_one(pool)
    .await
    .context("reading pg_stat_database")?;
    Ok(Snapshot {
        at: Instant::now(),
        own_ticks: process_ticks("self").unwrap_or(0),
        pg_ticks: pg.ticks(&database),
        xacts,
        wal_lsn,
        rate_limit_writes,
    })
}

impl Snapshot {
    /// The cost from `self` to `later`. `elapsed` is the caller's to set when the work took less
    /// than the span between the snapshots.
    pub fn to(&self, later: &Snapshot) -> Cost {
        Cost {
            elapsed: later.at - self.at,
            own_cpu: ticks_to_duration(later.own_ticks.saturating_sub(self.own_ticks)),
            pg_cpu: ticks_to_duration(later.pg_ticks.saturating_sub(self.pg_ticks)),
            // The snapshot's own query is one transaction.
            xacts: (later.xacts - self.xacts - 1).max(0),
            wal_bytes: later.wal_lsn - self.wal_lsn,
            rate_limit_writes: later.rate_limit_writes - self.rate_limit_writes,
        }
    }
}

/// Resident set size of this process now, and its high-water mark, in bytes.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The `q` quantile (0..=1) of `samples` (sorted here).
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}
