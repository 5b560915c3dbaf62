//! Issue 5, items 11 and 12 at start-up, through the binary's own CLI and database code
//! (`payoutd::cli::execute` is what `main` runs after parsing; the environment is passed in so
//! tests need not change the process environment).
//!
//! - A production command without DATABASE_URL refuses to start, naming DATABASE_URL and
//!   `--embedded-postgres`, and starts no private cluster; the demo keeps its zero setup.
//! - The private cluster is announced, `payoutd postgres status|stop` manage it, and the demo
//!   stops a cluster it started unless `--keep-postgres`.
//! - An unreachable database fails within seconds with its cause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use payoutd::cli::{Cli, execute};
use payoutd::config::Config;
use payoutd::database::{self, Fallback, Source};
use payoutd::local_postgres::{LocalPostgres, LocalPostgresError};
use payoutd_core::Secret;

/// A directory of its own under the system temp dir (not created).
fn unique_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("payoutd-startup-{tag}-{}", uuid::Uuid::new_v4().simple()))
}

/// A process environment of exactly `pairs`.
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// What `payoutd <args>` runs with in the environment `pairs`.
fn invocation(args: &[&str], pairs: &[(&str, &str)]) -> (Cli, Config) {
    let cli =
        Cli::try_parse_args(std::iter::once("payoutd").chain(args.iter().copied())).expect("arguments parse");
    let config = cli.config_with_env(env(pairs)).expect("configuration loads");
    (cli, config)
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------------
// Item 11

#[tokio::test]
async fn item11_serve_without_database_url_refuses_to_start() {
    let data_dir = unique_dir("no-url");
    let data_dir_text = data_dir.display().to_string();
    let environment = [
        ("PAYOUTD_DATA_DIR", data_dir_text.as_str()),
        ("PAYOUTD_8B_PARTNER_BASE_URL", "http://127.0.0.1:9"),
        ("PAYOUTD_8B_PARTNER_SERVICE_ID", "svc"),
        ("PAYOUTD_8B_PARTNER_SECRET", "s3cret"),
    ];
    let id = uuid::Uuid::now_v7().to_string();
    let commands: [&[&str]; 6] = [
        &["serve", "--listen", "127.0.0.1:0"],
        &["worker"],
        &["migrate"],
        &["token", "create", "--scope", "*"],
        &["token", "revoke", &id],
        &["show", &id],
    ];
    for args in commands {
        let (cli, config) = invocation(args, &environment);
        let started = Instant::now();
        let err = execute(cli, config).await.expect_err("must refuse to start without a database URL");
        let message = format!("{err:#}");
        assert!(message.contains("DATABASE_URL"), "{args:?}: {message}");
        assert!(message.contains("--embedded-postgres"), "{args:?}: {message}");
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?} took {:?}", started.elapsed());
        assert!(!data_dir.exists(), "{args:?} created {} (a private cluster?)", data_dir.display());
    }
}

#[test]
fn item11_the_private_cluster_is_used_only_when_asked_for_or_for_the_demo() {
    let production = |args: &[&str], pairs: &[(&str, &str)]| {
        let (_, config) = invocation(args, pairs);
        database::source(&config, Fallback::ExplicitOnly).map_err(|e| e.to_string())
    };
    assert!(production(&["serve"], &[]).is_err());
    assert!(production(&["worker"], &[("PAYOUTD_EMBEDDED_POSTGRES", "0")]).is_err());
    assert_eq!(production(&["serve", "--embedded-postgres"], &[]), Ok(Source::Embedded));
    assert_eq!(production(&["--embedded-postgres", "migrate"], &[]), Ok(Source::Embedded));
    assert_eq!(production(&["worker"], &[("PAYOUTD_EMBEDDED_POSTGRES", "1")]), Ok(Source::Embedded));
    assert_eq!(production(&["worker"], &[("PAYOUTD_EMBEDDED_POSTGRES", "true")]), Ok(Source::Embedded));
    // A URL always wins over the private cluster.
    let url = [("DATABASE_URL", "postgres://u@db.example:5432/payoutd")];
    assert_eq!(production(&["serve", "--embedded-postgres"], &url), Ok(Source::Url));
    assert_eq!(production(&["serve"], &url), Ok(Source::Url));

    // The config file's `embedded_postgres = true` counts as asking.
    let file = unique_dir("toml").with_extension("toml");
    std::fs::write(&file, "embedded_postgres = true\n").expect("write config");
    let file_text = file.display().to_string();
    assert_eq!(production(&["--config", &file_text, "serve"], &[]), Ok(Source::Embedded));
    let _ = std::fs::remove_file(&file);

    // A bad flag value is an error, not silently off.
    let cli = Cli::try_parse_args(["payoutd", "serve"]).expect("parse");
    assert!(cli.config_with_env(env(&[("PAYOUTD_EMBEDDED_POSTGRES", "maybe")])).is_err());

    // The demo keeps its zero-setup default.
    let (_, config) = invocation(&["demo"], &[]);
    assert_eq!(database::source(&config, Fallback::Embedded).ok(), Some(Source::Embedded));
}

/// Starts nothing if the Postgres server binaries are missing (the message says so).
fn binaries_missing(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(e.downcast_ref::<LocalPostgresError>(), Some(LocalPostgresError::BinariesNotFound { .. }))
    })
}

async fn running(cluster_dir: &Path) -> Option<u32> {
    let pg = LocalPostgres::locate(cluster_dir).await.expect("locate").expect("a cluster exists");
    pg.running_pid().expect("pg_ctl status")
}

#[tokio::test]
async fn item11_demo_stops_the_cluster_it_started_unless_kept_and_postgres_stop_stops_it() {
    let data_dir = unique_dir("demo");
    let data_dir_text = data_dir.display().to_string();
    let cluster_dir = data_dir.join("postgres");
    let environment = [("PAYOUTD_DATA_DIR", data_dir_text.as_str())];

    // Nothing there yet: status says so and creates nothing.
    let (cli, config) = invocation(&["postgres", "status"], &environment);
    execute(cli, config).await.expect("status of nothing");
    assert!(!data_dir.exists());

    // --keep-postgres: the cluster the demo started is still running afterwards.
    let demo = ["demo", "--payouts", "4", "--workers", "1", "--concurrency", "4", "--no-faults"];
    let (cli, config) = invocation(&[&demo[..], &["--keep-postgres"]].concat(), &environment);
    match execute(cli, config).await {
        Ok(()) => {}
        Err(e) if binaries_missing(&e) => {
            eprintln!("skipped: no PostgreSQL server binaries here ({e:#})");
            return;
        }
        Err(e) => panic!("demo failed: {e:#}"),
    }
    let pid = running(&cluster_dir).await.expect("kept running");

    let (cli, config) = invocation(&["postgres", "status"], &environment);
    execute(cli, config).await.expect("status");
    let (cli, config) = invocation(&["postgres", "stop", "--data-dir", &data_dir_text], &[]);
    execute(cli, config).await.expect("stop");
    assert_eq!(running(&cluster_dir).await, None, "postgres stop stopped pid {pid}");
    // Stopping a stopped cluster is fine.
    let (cli, config) = invocation(&["postgres", "stop"], &environment);
    execute(cli, config).await.expect("stop again");

    // Without the flag the demo stops the cluster it started.
    let (cli, config) = invocation(&demo, &environment);
    execute(cli, config).await.expect("demo");
    assert_eq!(running(&cluster_dir).await, None, "the demo left its cluster running");

    // A cluster that was already running is not the demo's to stop.
    let (pg, started) = LocalPostgres::ensure_running_reporting(&cluster_dir).await.expect("start");
    assert!(started);
    let (cli, config) = invocation(&demo, &environment);
    execute(cli, config).await.expect("demo on a running cluster");
    assert!(running(&cluster_dir).await.is_some(), "the demo stopped a cluster it did not start");
    let (again, started) = LocalPostgres::ensure_running_reporting(&cluster_dir).await.expect("reuse");
    assert!(!started);
    drop(again);

    pg.stop().expect("stop");
    let real = pg.data_dir().parent().map(Path::to_path_buf);
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Some(real) = real.filter(|r| r.starts_with("/tmp/payoutd-")) {
        let _ = std::fs::remove_dir_all(real);
    }
}

// ---------------------------------------------------------------------------------------------
// Item 12

#[tokio::test]
async fn item12_unreachable_database_at_startup_names_the_cause_quickly() {
    let url = format!("postgres://payoutd:pw-Xq7@127.0.0.1:{}/payoutd", closed_port());
    let mut config = Config { database_url: Some(Secret::new(url)), ..Config::default() };
    let started = Instant::now();
    let err = database::open(&config, 2).await.expect_err("nothing listens there");
    let elapsed = started.elapsed();
    let message = format!("{err:#}");
    eprintln!("connection refused reported after {elapsed:?}: {message}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(message.contains("127.0.0.1"), "the message names the server: {message}");
    assert!(!message.contains("pw-Xq7"), "the password never shows: {message}");

    // A server that answers but refuses us says why (here: an unknown role).
    if let Ok(url) = std::env::var("DATABASE_URL")
        && let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>()
        && options.get_socket().is_none()
    {
        let bad =
            format!("postgres://no_such_role_x9@{}:{}/postgres", options.get_host(), options.get_port());
        config.database_url = Some(Secret::new(bad));
        let started = Instant::now();
        let err = database::open(&config, 2).await.expect_err("unknown role");
        let message = format!("{err:#}");
        eprintln!("unknown role reported after {:?}: {message}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(message.contains("no_such_role_x9"), "{message}");
    }
}
