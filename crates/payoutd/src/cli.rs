//! The command line. `anyhow` lives here, at the binary's edge, and nowhere below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payoutd_core::Secret;
use payoutd_store::{api_tokens, payouts};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::local_postgres::LocalPostgres;
use crate::{app, database, demo, telemetry};

#[derive(Debug, Parser)]
#[command(name = "payoutd", version, about = "Durable payout workflow worker")]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "PAYOUTD_CONFIG")]
    config: Option<PathBuf>,
    /// Without a database URL, use (and start if needed) payoutd's private Postgres under the
    /// data dir. Also: PAYOUTD_EMBEDDED_POSTGRES=1 or `embedded_postgres = true`. Without it,
    /// serve, worker, migrate, token and show refuse to start when DATABASE_URL is missing.
    #[arg(long, global = true)]
    embedded_postgres: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Parses `args` (the program name first) as `main` parses the command line.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }

    /// The configuration this invocation runs with: the config file, then the environment as
    /// `env` tells it, then the flags.
    pub fn config_with_env(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut config = Config::load_with_env(self.config.as_deref(), env)?;
        if self.embedded_postgres {
            config.embedded_postgres = true;
        }
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API, provider callbacks and a worker in one process.
    Serve {
        /// Overrides `listen` / PAYOUTD_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// A worker only (run as many as you like against one database).
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI 3.1 document of the HTTP API (also served at GET /openapi.json).
    Openapi,
    /// API client tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a payout and its full event timeline.
    Show { id: uuid::Uuid },
    /// Webhook endpoints, the delivery log and redelivery.
    Webhook {
        #[command(subcommand)]
        command: crate::webhooks::WebhookCommand,
    },
    /// Mass-payout batches (`batch ...`, over the API) and `reconcile`.
    #[command(flatten)]
    Batches(crate::batch_cli::Commands),
    /// Run the 8B partner simulator standalone.
    Sandbox(SandboxArgs),
    /// Sandbox + workers + a few thousand payouts with faults on, then a summary.
    Demo(demo::DemoArgs),
    /// Throughput, latency and cost figures of the money path on this machine (a database of
    /// its own, created and dropped), with the machine's commit capacity for comparison.
    Bench(crate::bench::BenchArgs),
    /// payoutd's private Postgres cluster (the one `--embedded-postgres` and the demo use).
    Postgres {
        #[command(subcommand)]
        command: PostgresCommand,
    },
    /// Operator controls: status, pause, resume, payout, limits, retention.
    #[command(flatten)]
    Operator(crate::operator_cli::OperatorCommand),
    /// After restoring the database from a backup: mark it, check it against the providers.
    Restore {
        #[command(subcommand)]
        command: crate::restore_cli::RestoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PostgresCommand {
    /// Stop the private cluster (a fast shutdown: sessions end, nothing is lost).
    Stop {
        /// payoutd's data dir, whose `postgres` folder holds the cluster (default: `data_dir` /
        /// PAYOUTD_DATA_DIR, else `.payoutd`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Say whether the private cluster is running, and where it lives.
    Status {
        /// As for `stop`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token. It is printed once and stored only as a hash.
    Create {
        /// Scopes: payouts.create, payouts.read or * (repeat or comma-separate).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// The API client this token acts for; payouts and idempotency keys are per client.
        #[arg(long, default_value = "default")]
        client_id: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Days until the token expires (default: never).
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// Revoke a token by its id.
    Revoke { id: uuid::Uuid },
}

#[derive(Debug, clap::Args)]
struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    #[arg(long, default_value = "sandbox-service", env = "PAYOUTD_8B_PARTNER_SERVICE_ID")]
    service_id: String,
    /// The partner secret the sandbox verifies signatures with.
    #[arg(long, env = "PAYOUTD_8B_PARTNER_SECRET", hide_env_values = true)]
    secret: String,
    /// Where to send signed callbacks, e.g. http://127.0.0.1:8080/v1/callbacks/8b_partner
    #[arg(long)]
    callback_url: Option<String>,
    /// Seconds from submit to final result.
    #[arg(long, default_value_t = 2.0)]
    processing_delay_secs: f64,
    /// Minimum seconds between submit and the first status check (spec: 60).
    #[arg(long, default_value_t = 60.0)]
    min_check_delay_secs: f64,
    /// Starting balance of the partner account.
    #[arg(long, default_value = "1000000000")]
    balance: String,
    /// Fault probabilities as JSON, e.g. '{"error_5xx_rate":0.05,"decline_rate":0.02}'.
    #[arg(long)]
    faults: Option<String>,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = matches!(
        cli.command,
        Command::Demo(_)
            | Command::Bench(_)
            | Command::Show { .. }
            | Command::Token { .. }
            | Command::Postgres { .. }
            | Command::Webhook { .. }
            | Command::Operator(_)
            | Command::Restore { .. }
            | Command::Openapi
    );
    let telemetry = telemetry::init(if quiet { "error" } else { "info,sqlx=warn" });
    let result = match cli.config_with_env(|name| std::env::var(name).ok()) {
        Ok(config) => execute(cli, config).await,
        Err(e) => Err(e),
    };
    // Whatever happened, what was recorded leaves the process.
    telemetry.shutdown().await;
    result
}

/// Runs the command of `cli` with `config` (already loaded, see [`Cli::config_with_env`]).
pub async fn execute(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen } => {
            let pool = database::open(&config, pool_size(&config)).await?;
            let connectors = app::connectors(&config, Some(&pool))?;
            let addr = listen.unwrap_or(config.listen);
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let shutdown = CancellationToken::new();
            app::cancel_on_signals(shutdown.clone());
            let http = config.http_limits();
            let engine = Some(config.engine_config());
            let ops = app::operations(&config).await?;
            app::run(pool, connectors, Some(listener), http, engine, &config.webhooks, ops, shutdown).await
        }
        Command::Worker => {
            let pool = database::open(&config, pool_size(&config)).await?;
            let connectors = app::connectors(&config, Some(&pool))?;
            let shutdown = CancellationToken::new();
            app::cancel_on_signals(shutdown.clone());
            let http = config.http.limits();
            let engine = Some(config.engine_config());
            let ops = app::operations(&config).await?;
            app::run(pool, connectors, None, http, engine, &config.webhooks, ops, shutdown).await
        }
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&payoutd_server::openapi::document())?);
            Ok(())
        }
        Command::Migrate => {
            database::open(&config, 2).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { command } => token(&config, command).await,
        Command::Show { id } => show(&config, id).await,
        Command::Webhook { command } => crate::webhooks::run(&config, command).await,
        Command::Batches(commands) => crate::batch_cli::run(&config, commands).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Demo(args) => demo::run(&config, args).await,
        Command::Bench(args) => crate::bench::run(&config, args).await,
        Command::Postgres { command } => postgres(&config, command).await,
        Command::Operator(command) => crate::operator_cli::run(&config, command).await,
        Command::Restore { command } => crate::restore_cli::run(&config, command).await,
    }
}

async fn postgres(config: &Config, command: PostgresCommand) -> anyhow::Result<()> {
    let (stop, data_dir) = match command {
        PostgresCommand::Stop { data_dir } => (true, data_dir),
        PostgresCommand::Status { data_dir } => (false, data_dir),
    };
    let data_dir = data_dir.unwrap_or_else(|| config.data_dir.clone());
    let requested = data_dir.join("postgres");
    let Some(pg) = LocalPostgres::locate(&requested)
        .await
        .with_context(|| format!("looking for payoutd's private Postgres under {}", data_dir.display()))?
    else {
        println!("no private Postgres under {}", display_dir(&data_dir));
        return Ok(());
    };
    let pid = pg.running_pid().context("asking pg_ctl for the server's status")?;
    match (stop, pid) {
        (false, Some(pid)) => {
            println!("running (pid {pid})");
            println!("  data dir  {}", pg.data_dir().display());
            println!("  socket    {}", pg.socket_dir().display());
            println!("  log       {}", pg.log_file().display());
            println!("  stop it with: {}", database::stop_command(&data_dir));
        }
        (false, None) => println!("stopped (data dir {})", pg.data_dir().display()),
        (true, None) => println!("not running (data dir {})", pg.data_dir().display()),
        (true, Some(pid)) => {
            let dir = pg.data_dir().to_path_buf();
            tokio::task::spawn_blocking(move || pg.stop())
                .await?
                .with_context(|| format!("stopping the private Postgres in {}", dir.display()))?;
            println!("stopped the private Postgres (pid {pid}, data dir {})", dir.display());
        }
    }
    Ok(())
}

fn display_dir(dir: &Path) -> String {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string()
}

fn pool_size(config: &Config) -> u32 {
    (config.engine.concurrency as u32).saturating_add(10)
}

async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let pool = database::open(config, 2).await?;
    match command {
        TokenCommand::Create { scopes, client_id, label, expires_in_days } => {
            for s in &scopes {
                if !payoutd_server::auth::KNOWN_SCOPES.contains(&s.as_str()) {
                    anyhow::bail!(
                        "unknown scope {s:?}; known: {}",
                        payoutd_server::auth::KNOWN_SCOPES.join(", ")
                    );
                }
            }
            let expires = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(d));
            let created = api_tokens::create(&pool, &client_id, &label, &scopes, expires).await?;
            eprintln!(
                "token id {} for client {} with scopes {}",
                created.id,
                created.client_id,
                created.scopes.join(",")
            );
            eprintln!("the token is shown once; store it now:");
            println!("{}", created.token.expose());
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            if api_tokens::revoke(&pool, id).await? {
                println!("revoked {id}");
                Ok(())
            } else {
                anyhow::bail!("no live token with id {id}")
            }
        }
    }
}

async fn show(config: &Config, id: uuid::Uuid) -> anyhow::Result<()> {
    let pool = database::open(config, 2).await?;
    let row = payouts::get(&pool, id).await?.with_context(|| format!("no payout {id}"))?;
    println!("payout    {}", row.id);
    println!("external  {}", row.external_id);
    println!("amount    {}", row.money);
    println!(
        "provider  {} (account {}, reference {})",
        row.provider,
        row.account,
        row.provider_reference.as_deref().unwrap_or("-")
    );
    println!("state     {}{}", row.state, if row.state.is_final() { " (final)" } else { "" });
    if let Some(e) = &row.last_error {
        println!("last err  {e}");
    }
    println!("timeline:");
    for e in payouts::timeline(&pool, id).await? {
        println!(
            "  {}  {:>15} -> {:<15} {:<28} {}",
            e.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.from_state.as_deref().unwrap_or("-"),
            e.to_state,
            e.actor,
            e.reason
        );
    }
    Ok(())
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    use payoutd_sandbox::{Faults, SandboxConfig};
    let mut config = SandboxConfig::new(args.service_id, Secret::new(args.secret));
    config.callback_url = args.callback_url;
    config.processing_delay = Duration::from_secs_f64(args.processing_delay_secs.max(0.0));
    config.min_check_delay = Duration::from_secs_f64(args.min_check_delay_secs.max(0.0));
    config.initial_balance = args.balance.parse().context("--balance must be a decimal")?;
    if let Some(f) = args.faults {
        config.faults = serde_json::from_str::<Faults>(&f).context("--faults must be JSON fault rates")?;
    }
    let shutdown = CancellationToken::new();
    app::cancel_on_signals(shutdown.clone());
    payoutd_sandbox::run_standalone(config, args.listen, async move { shutdown.cancelled().await })
        .await
        .context("sandbox")
}
