//! `payoutd restore`: the procedure after restoring the database from a backup (docs/restore.md).
//!
//! ```text
//! payoutd restore mark --backup-taken-at T --reason R [--reference-gap N]   before any worker starts
//! payoutd restore check [--margin-secs S] [--dry-run] [--format text|json]  compare, settle, clear
//! payoutd restore status
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use payoutd_engine::reconciliation;
use payoutd_engine::restore_check::{self, AccountSource, RestoreCheckOptions};
use payoutd_store::operator::{ActionError, Reason};
use payoutd_store::restore;

use crate::batch_cli::{eightb_partner, parse_cli_time};
use crate::config::Config;
use crate::operator_cli::cli_actor;
use crate::{app, database};

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Mark this database as restored from a backup: no intent and no submit until `restore
    /// check` has run. Run it right after the restore, before any worker starts.
    Mark {
        /// When the backup was taken (RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" UTC). When unsure,
        /// earlier is safe: the check reads the registry from there.
        #[arg(long)]
        backup_taken_at: String,
        #[arg(long)]
        reason: String,
        /// How far the reference sequence jumps past the highest reference this database knows
        /// (references handed out after the backup must never be handed out again).
        #[arg(long, default_value_t = 1_000_000)]
        reference_gap: i64,
    },
    /// Compare every open payout with each account's registry since the backup, settle what
    /// it shows, and clear the mark when every account was checked completely.
    Check {
        /// How far beyond [backup, now] the registry is read.
        #[arg(long, default_value_t = 300)]
        margin_secs: u64,
        /// Report what would be done; change nothing and keep the mark.
        #[arg(long)]
        dry_run: bool,
        /// Registry call timeout.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Whether the database is marked restored.
    Status,
}

pub async fn run(config: &Config, command: RestoreCommand) -> anyhow::Result<()> {
    let pool = database::open(config, 4).await?;
    match command {
        RestoreCommand::Mark { backup_taken_at, reason, reference_gap } => {
            let at = parse_cli_time(&backup_taken_at)?;
            let reason = Reason::parse(&reason).map_err(|e| anyhow::anyhow!("--reason: {e}"))?;
            let mark =
                restore::mark(&pool, at, &cli_actor(), &reason, reference_gap).await.map_err(refused)?;
            println!(
                "marked restored from the backup of {}; references continue from {}; no submit goes out \
                 until `payoutd restore check` has run",
                mark.backup_taken_at.format("%Y-%m-%dT%H:%M:%SZ"),
                mark.reference_floor + 1
            );
        }
        RestoreCommand::Status => match restore::open_mark(&pool).await? {
            None => println!("not marked restored: submits go out normally"),
            Some(mark) => println!(
                "marked restored by {} at {} (backup of {}): {}; no submit goes out until `payoutd restore check`",
                mark.marked_by,
                mark.marked_at.format("%Y-%m-%dT%H:%M:%SZ"),
                mark.backup_taken_at.format("%Y-%m-%dT%H:%M:%SZ"),
                mark.reason
            ),
        },
        RestoreCommand::Check { margin_secs, dry_run, timeout_secs, format } => {
            if !matches!(format.as_str(), "text" | "json") {
                bail!("--format must be text or json");
            }
            let connectors = app::connectors(config, Some(&pool))?;
            let mut registries = Vec::new();
            let mut no_registry = Vec::new();
            for name in connectors.names().into_iter().map(str::to_owned) {
                let connector = connectors.get(&name).context("configured account")?;
                match reconciliation::unsupported_reason(connector.kind()) {
                    Some(why) => no_registry.push((name, why)),
                    None => {
                        let partner = eightb_partner(config, &name)?;
                        registries
                            .push((name, partner.registry(None, Duration::from_secs(timeout_secs.max(1)))?));
                    }
                }
            }
            let mut accounts: Vec<(String, AccountSource<'_>)> = registries
                .iter()
                .map(|(name, registry)| (name.clone(), AccountSource::Registry(registry)))
                .collect();
            accounts
                .extend(no_registry.into_iter().map(|(name, why)| (name, AccountSource::NoRegistry { why })));
            let options = RestoreCheckOptions {
                margin: Duration::from_secs(margin_secs),
                act: !dry_run,
                actor: cli_actor(),
            };
            let report = restore_check::run(&pool, &connectors, accounts, &options).await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "registry window {} .. {} (backup of {})",
                    report.window_start, report.window_end, report.backup_taken_at
                );
                for a in &report.accounts {
                    println!(
                        "{:<16} {:<12} open {} | not sent since backup {} | paid {} failed {} submitted {} \
                         (references adopted {}) | parked {} | unknown to the database {}{}",
                        a.account,
                        a.outcome,
                        a.open_payouts,
                        a.not_sent_since_backup,
                        a.settled_paid,
                        a.settled_failed,
                        a.settled_submitted,
                        a.adopted_references,
                        a.parked,
                        a.unknown_to_database.len(),
                        if a.detail.is_empty() { String::new() } else { format!("\n    {}", a.detail) }
                    );
                    if !a.unknown_to_database.is_empty() {
                        println!(
                            "    paid by the provider since the backup, unknown here (do not let backends resend \
                             them blindly): {}",
                            a.unknown_to_database.join(", ")
                        );
                    }
                }
                println!(
                    "{}",
                    if report.cleared {
                        "mark cleared: submits go out again"
                    } else if dry_run {
                        "dry run: nothing changed, the mark stays"
                    } else {
                        "mark kept: an account could not be checked completely (see above); run the check again"
                    }
                );
            }
            if !report.cleared && !dry_run {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}

fn refused(e: ActionError) -> anyhow::Error {
    match e {
        ActionError::Refused(why) => anyhow::anyhow!("refused: {why}"),
        other => other.into(),
    }
}
