//! The command line. `anyhow` lives here, at the binary's edge, and nowhere below.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payoutd_core::Secret;
use payoutd_store::{api_tokens, payouts};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{app, database, demo, telemetry};

#[derive(Debug, Parser)]
#[command(name = "payoutd", version, about = "Durable payout workflow worker")]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "PAYOUTD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
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
    /// API client tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a payout and its full event timeline.
    Show { id: uuid::Uuid },
    /// Run the 8B partner simulator standalone.
    Sandbox(SandboxArgs),
    /// Sandbox + workers + a few thousand payouts with faults on, then a summary.
    Demo(demo::DemoArgs),
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
    let quiet = matches!(cli.command, Command::Demo(_) | Command::Show { .. } | Command::Token { .. });
    telemetry::init(if quiet { "error" } else { "info,sqlx=warn" });
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { listen } => {
            let connectors = app::connectors(&config)?;
            let pool = database::open(&config, pool_size(&config)).await?;
            let addr = listen.unwrap_or(config.listen);
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let shutdown = CancellationToken::new();
            app::cancel_on_signals(shutdown.clone());
            app::run(pool, connectors, Some(listener), Some(config.engine.engine_config()), shutdown).await
        }
        Command::Worker => {
            let connectors = app::connectors(&config)?;
            let pool = database::open(&config, pool_size(&config)).await?;
            let shutdown = CancellationToken::new();
            app::cancel_on_signals(shutdown.clone());
            app::run(pool, connectors, None, Some(config.engine.engine_config()), shutdown).await
        }
        Command::Migrate => {
            database::open(&config, 2).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { command } => token(&config, command).await,
        Command::Show { id } => show(&config, id).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Demo(args) => demo::run(&config, args).await,
    }
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
