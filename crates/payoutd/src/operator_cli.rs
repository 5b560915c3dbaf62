//! Operator controls in the binary: the `[operator]` and `[retention]` settings (file and
//! environment) and the commands
//!
//! ```text
//! payoutd status                                  paused accounts, queue counts, recent operator events
//! payoutd pause  (--account A | --all) --reason R stop submits (payouts wait before their intent)
//! payoutd resume (--account A | --all) --reason R
//! payoutd payout list [--state S,..] [--account A] [--client C] [--external-id E] [--from T] [--to T] [--batch B]
//! payoutd payout resolve ID --to paid|failed --reason R
//! payoutd payout retry ID --reason R
//! payoutd payout cancel ID --reason R
//! payoutd payout status-query ID --reason R
//! payoutd payout bulk ACTION [--to ..] [filter] --reason R [--confirm TOKEN]
//! payoutd limits show|set|clear CLIENT ...
//! payoutd retention run [--reason R]
//! ```
//!
//! The command line talks to the database directly, so whoever runs it holds every operator
//! scope; events name the actor `operator:cli/<login>`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use payoutd_core::{Currency, PayoutState};
use payoutd_engine::retention_timer::RetentionTimerConfig;
use payoutd_server::operator_api::OperatorApi;
use payoutd_store::account_pauses::{self, ALL_ACCOUNTS};
use payoutd_store::client_limits::{self, ClientLimits, CurrencyLimits};
use payoutd_store::operator::{self, Reason, ResolveTo, Retried};
use payoutd_store::operator_bulk::{self, BulkAction, BulkRequest};
use payoutd_store::operator_filter::{self, Cursor, PayoutFilter};
use payoutd_store::retention::{self, RetentionPolicy, RetentionRun};
use payoutd_store::{PgPool, operator_events, stats};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use crate::config::{Config, ConfigError, MAX_SETTING_SECS, seconds_setting};
use crate::{app, database};

const DAY_SECS: f64 = 24.0 * 3600.0;

/// The `[operator]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorSettings {
    /// The most payouts one bulk action may touch (`PAYOUTD_BULK_CAP`).
    pub bulk_cap: i64,
    /// How long a bulk confirmation token stays valid.
    pub confirmation_ttl_secs: f64,
    /// How soon a payout waiting for a paused account looks again; the wait grows with the
    /// pause's age up to the maximum. Resuming wakes waiting payouts at once.
    pub pause_recheck_min_secs: f64,
    pub pause_recheck_max_secs: f64,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        let api = OperatorApi::default();
        let engine = payoutd_engine::EngineConfig::default();
        Self {
            bulk_cap: api.bulk_cap,
            confirmation_ttl_secs: api.confirmation_ttl.as_secs_f64(),
            pause_recheck_min_secs: engine.pause_recheck_min.as_secs_f64(),
            pause_recheck_max_secs: engine.pause_recheck_max.as_secs_f64(),
        }
    }
}

/// The `[retention]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Workers run the pass on a timer (one pass per period across the fleet).
    pub enabled: bool,
    /// Destination details of final payouts are masked this many days after they became final
    /// (`PAYOUTD_RETENTION_DESTINATION_DAYS`).
    pub destination_days: f64,
    /// Callback bodies are pruned this many days after they were received, final payouts only;
    /// at most `destination_days` (`PAYOUTD_RETENTION_CALLBACK_DAYS`).
    pub callback_days: f64,
    /// The timer's period (`PAYOUTD_RETENTION_EVERY_SECS`).
    pub every_secs: f64,
    /// Rows per statement.
    pub batch_size: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let t = RetentionTimerConfig::default();
        Self {
            enabled: t.enabled,
            destination_days: t.policy.destination_after.as_secs_f64() / DAY_SECS,
            callback_days: t.policy.callbacks_after.as_secs_f64() / DAY_SECS,
            every_secs: t.every.as_secs_f64(),
            batch_size: t.policy.batch_size,
        }
    }
}

fn parse_env<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string() })
}

impl OperatorSettings {
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PAYOUTD_BULK_CAP") {
            self.bulk_cap = parse_env("PAYOUTD_BULK_CAP", &v)?;
        }
        Ok(())
    }

    /// The operator API's settings, with `retention` for its retention route.
    pub fn api(&self, retention: &RetentionSettings) -> OperatorApi {
        OperatorApi {
            bulk_cap: self.bulk_cap.max(1),
            confirmation_ttl: seconds_setting(self.confirmation_ttl_secs, 10.0, 3600.0),
            retention: retention.policy(),
        }
    }

    /// The engine's pause recheck bounds (`min`, `max`).
    pub fn pause_recheck(&self) -> (Duration, Duration) {
        let min = seconds_setting(self.pause_recheck_min_secs, 0.1, MAX_SETTING_SECS);
        let max = seconds_setting(self.pause_recheck_max_secs, 0.1, MAX_SETTING_SECS);
        (min, max.max(min))
    }
}

impl RetentionSettings {
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PAYOUTD_RETENTION_DESTINATION_DAYS") {
            self.destination_days = parse_env("PAYOUTD_RETENTION_DESTINATION_DAYS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_RETENTION_CALLBACK_DAYS") {
            self.callback_days = parse_env("PAYOUTD_RETENTION_CALLBACK_DAYS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_RETENTION_EVERY_SECS") {
            self.every_secs = parse_env("PAYOUTD_RETENTION_EVERY_SECS", &v)?;
        }
        Ok(())
    }

    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            destination_after: seconds_setting(self.destination_days * DAY_SECS, 0.0, MAX_SETTING_SECS),
            callbacks_after: seconds_setting(self.callback_days * DAY_SECS, 0.0, MAX_SETTING_SECS),
            batch_size: self.batch_size,
        }
    }

    /// The timer's settings; refused (naming the settings) when the policy would break the
    /// retention rules.
    pub fn timer(&self) -> anyhow::Result<RetentionTimerConfig> {
        let policy = self.policy();
        policy.validate().map_err(|e| anyhow::anyhow!("configuration refused: [retention] {e}"))?;
        Ok(RetentionTimerConfig {
            enabled: self.enabled,
            every: seconds_setting(self.every_secs, 60.0, MAX_SETTING_SECS),
            policy,
        })
    }
}

// ---- commands -------------------------------------------------------------------------------

/// The operator commands, flattened into the top level of `payoutd`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Paused accounts, payouts by state, recent operator events.
    Status,
    /// Stop submits for a provider account (or all): payouts wait before their intent; status
    /// queries and callbacks go on.
    Pause(AccountArgs),
    /// Let a paused account (or all) send again; its waiting payouts go on at once.
    Resume(AccountArgs),
    /// Operator actions on payouts (every client's).
    Payout {
        #[command(subcommand)]
        command: PayoutCommand,
    },
    /// What an API client may send.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// Masking old destination details and pruning old callback bodies.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct AccountArgs {
    /// The configured account name.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    account: Option<String>,
    /// Every account.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// States, comma-separated.
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    #[arg(long)]
    account: Option<String>,
    #[arg(long)]
    client: Option<String>,
    #[arg(long)]
    external_id: Option<String>,
    /// Created at or after (RFC 3339).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    #[arg(long)]
    to: Option<DateTime<Utc>>,
    #[arg(long)]
    batch: Option<Uuid>,
}

#[derive(Debug, Subcommand)]
pub enum PayoutCommand {
    /// Payouts matching a filter, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Where the previous page ended.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Resolve a needs_review payout as paid or failed.
    Resolve {
        id: Uuid,
        #[arg(long, value_parser = ["paid", "failed"])]
        to: String,
        #[arg(long)]
        reason: String,
    },
    /// needs_review: run again, asking the provider first; failed: a new payout.
    Retry {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// Cancel a pending or checked payout (no intent recorded).
    Cancel {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// Bring an in_doubt or submitted payout's status query forward (never before the interval).
    StatusQuery {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// One action on every payout a filter matches: without --confirm, the count and a token.
    Bulk {
        #[arg(value_parser = ["resolve", "retry", "cancel", "status_query"])]
        action: String,
        /// For resolve: paid or failed.
        #[arg(long, value_parser = ["paid", "failed"])]
        to: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        reason: String,
        /// The token the first call printed.
        #[arg(long)]
        confirm: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    Show {
        client: String,
    },
    /// Replace every limit of a client.
    Set {
        client: String,
        /// CURRENCY:MAX_PER_PAYOUT:MAX_PER_DAY, `-` for none (repeat per currency), e.g.
        /// IDR:5000000:100000000
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// Allowed destination codes (repeat); none given: any.
        #[arg(long = "allow-destination")]
        destinations: Vec<String>,
        /// Allowed account numbers (repeat); none given: any.
        #[arg(long = "allow-account")]
        accounts: Vec<String>,
        #[arg(long)]
        reason: String,
    },
    /// Remove every limit of a client.
    Clear {
        client: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// One pass now, with the configured periods.
    Run {
        #[arg(long, default_value = "manual retention pass")]
        reason: String,
    },
}

/// The actor of command-line actions.
pub(crate) fn cli_actor() -> String {
    let login =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("operator:cli/{login}")
}

fn reason(text: &str) -> anyhow::Result<Reason> {
    Reason::parse(text).map_err(|e| anyhow::anyhow!("--reason: {e}"))
}

fn filter_of(args: &FilterArgs) -> anyhow::Result<PayoutFilter> {
    let states = args
        .state
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<PayoutState>().map_err(|e| anyhow::anyhow!("--state: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(PayoutFilter {
        states,
        account: args.account.clone(),
        client: args.client.clone(),
        external_id: args.external_id.clone(),
        created_from: args.from,
        created_to: args.to,
        batch: args.batch,
    })
}

pub async fn run(config: &Config, command: OperatorCommand) -> anyhow::Result<()> {
    let pool = database::open(config, 4).await?;
    match command {
        OperatorCommand::Status => status(&pool).await,
        OperatorCommand::Pause(a) => {
            let account = account_name(config, &a)?;
            let p = account_pauses::pause(&pool, &account, &cli_actor(), &reason(&a.reason)?).await?;
            println!(
                "paused {} at {}: payouts wait before their intent until it is resumed",
                p.account, p.paused_at
            );
            Ok(())
        }
        OperatorCommand::Resume(a) => {
            let account = account_name(config, &a)?;
            let woken = account_pauses::resume(&pool, &account, &cli_actor(), &reason(&a.reason)?).await?;
            println!("resumed {account}; {woken} waiting payouts woken");
            Ok(())
        }
        OperatorCommand::Payout { command } => payout(config, &pool, command).await,
        OperatorCommand::Limits { command } => limits(&pool, command).await,
        OperatorCommand::Retention { command: RetentionCommand::Run { reason: why } } => {
            let why = reason(&why)?;
            let policy = config.retention.policy();
            match retention::run(&pool, &policy, &cli_actor(), why.as_str(), None)
                .await
                .map_err(|e| anyhow::anyhow!("retention: {e}"))?
            {
                RetentionRun::Done(r) => println!(
                    "redacted {} payouts ({} webhook events) in {} ms, pruned {} callback bodies in {} ms; \
                     {} ms in all ({} statements)",
                    r.redacted_payouts,
                    r.redacted_webhook_events,
                    r.redact_ms,
                    r.pruned_callbacks,
                    r.prune_ms,
                    r.took_ms,
                    r.statements
                ),
                RetentionRun::Skipped(why) => println!("not run: {why}"),
            }
            Ok(())
        }
    }
}

fn account_name(config: &Config, a: &AccountArgs) -> anyhow::Result<String> {
    let Some(account) = a.account.clone().filter(|_| !a.all) else { return Ok(ALL_ACCOUNTS.to_owned()) };
    if account != ALL_ACCOUNTS && !config.all_accounts().iter().any(|s| s.name == account) {
        let names: Vec<String> = config.all_accounts().into_iter().map(|s| s.name).collect();
        anyhow::bail!("--account {account:?} is not configured; configured: {}", names.join(", "));
    }
    Ok(account)
}

async fn status(pool: &PgPool) -> anyhow::Result<()> {
    if let Some(mark) = payoutd_store::restore::open_mark(pool).await? {
        println!(
            "RESTORED DATABASE: marked by {} at {} (backup of {}); no intent or submit goes out until \
             `payoutd restore check` has run",
            mark.marked_by,
            mark.marked_at.format("%Y-%m-%d %H:%M:%S"),
            mark.backup_taken_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    let pauses = account_pauses::list(pool).await?;
    if pauses.is_empty() {
        println!("paused accounts: none");
    } else {
        println!("paused accounts:");
        for p in &pauses {
            println!(
                "  {:<20} since {}  by {}: {}",
                p.account,
                p.paused_at.format("%Y-%m-%d %H:%M:%S"),
                p.actor,
                p.reason
            );
        }
    }
    let figures = stats::queue_figures(pool).await?;
    println!("open and parked payouts (account, state, count):");
    if figures.by_state.is_empty() {
        println!("  none");
    }
    for c in &figures.by_state {
        println!("  {:<20} {:<16} {}", c.provider, c.state, c.payouts);
    }
    println!("due now: {} (oldest waiting {:.0} s)", figures.due, figures.oldest_due_age_secs);
    let events = operator_events::list(pool, None, None, 5).await?;
    if !events.is_empty() {
        println!("recent operator events:");
        for e in events {
            println!(
                "  {}  {:<16} {:<20} {}: {}",
                e.created_at.format("%Y-%m-%d %H:%M:%S"),
                e.action,
                e.target,
                e.actor,
                e.reason
            );
        }
    }
    Ok(())
}

async fn payout(config: &Config, pool: &PgPool, command: PayoutCommand) -> anyhow::Result<()> {
    let actor = cli_actor();
    match command {
        PayoutCommand::List { filter, limit, cursor } => {
            let filter = filter_of(&filter)?;
            let cursor = match cursor {
                Some(c) => Some(Cursor::decode(&c).context("--cursor is not a cursor payoutd printed")?),
                None => None,
            };
            let (payouts, next) = operator_filter::list(pool, &filter, cursor, limit.clamp(1, 500)).await?;
            for p in &payouts {
                let r = &p.row;
                println!(
                    "{}  {:<15} {:>18} {}  {:<12} {:<20} {}",
                    r.id,
                    r.state,
                    r.money.amount(),
                    r.money.currency().code(),
                    r.provider,
                    r.client_id,
                    r.external_id
                );
            }
            if let Some(next) = next {
                println!("more: --cursor {}", next.encode());
            }
            Ok(())
        }
        PayoutCommand::Resolve { id, to, reason: why } => {
            let to = if to == "paid" { ResolveTo::Paid } else { ResolveTo::Failed };
            let state = operator::resolve(pool, id, to, &actor, &reason(&why)?).await?;
            println!("payout {id} is {state}");
            Ok(())
        }
        PayoutCommand::Retry { id, reason: why } => {
            match operator::retry(pool, id, &actor, &reason(&why)?).await? {
                Retried::Requeued(state) => println!("payout {id} is {state} again"),
                Retried::NewPayout(new) => {
                    println!("payout {id} stays failed; new payout {new} sends it again")
                }
            }
            Ok(())
        }
        PayoutCommand::Cancel { id, reason: why } => {
            operator::cancel(pool, id, &actor, &reason(&why)?).await?;
            println!("payout {id} is cancelled");
            Ok(())
        }
        PayoutCommand::StatusQuery { id, reason: why } => {
            let connectors = app::connectors(config, Some(pool))?;
            let interval_of = payoutd_server::operator_api::interval_of(&connectors);
            let at = operator::force_status_query(pool, id, &interval_of, &actor, &reason(&why)?).await?;
            println!("payout {id}: status query at {at} (the earliest the interval allows)");
            Ok(())
        }
        PayoutCommand::Bulk { action, to, filter, reason: why, confirm } => {
            let action = match (action.as_str(), to.as_deref()) {
                ("resolve", Some("paid")) => BulkAction::ResolvePaid,
                ("resolve", Some("failed")) => BulkAction::ResolveFailed,
                ("resolve", _) => anyhow::bail!("bulk resolve needs --to paid|failed"),
                ("retry", None) => BulkAction::Retry,
                ("cancel", None) => BulkAction::Cancel,
                ("status_query", None) => BulkAction::StatusQuery,
                (_, _) => anyhow::bail!("--to is only for resolve"),
            };
            let why = reason(&why)?;
            let request = BulkRequest { action, filter: filter_of(&filter)? };
            let api = config.operator.api(&config.retention);
            // The command line has no API token; its confirmations are bound to the nil id.
            let Some(token) = confirm else {
                let preview =
                    operator_bulk::preview(pool, &request, Uuid::nil(), api.bulk_cap, api.confirmation_ttl)
                        .await?;
                match preview.confirmation {
                    None => println!("nothing matches: no payout to {}", action.as_str()),
                    Some(c) => {
                        println!("{} payouts would be affected ({}).", preview.count, action.as_str());
                        println!(
                            "to go ahead, repeat the command with --confirm {} (valid until {})",
                            c.token.expose(),
                            c.expires_at
                        );
                    }
                }
                return Ok(());
            };
            let ids = operator_bulk::confirm(pool, &request, Uuid::nil(), &token).await?;
            let connectors = match action {
                BulkAction::StatusQuery => app::connectors(config, Some(pool))?,
                _ => Default::default(),
            };
            let interval_of = payoutd_server::operator_api::interval_of(&connectors);
            let outcome = operator_bulk::act(pool, &request, &ids, &interval_of, &actor, &why).await?;
            println!("{}: {} done, {} refused", action.as_str(), outcome.done.len(), outcome.refused.len());
            for r in outcome.refused {
                println!("  refused {}: {}", r.payout_id, r.reason);
            }
            Ok(())
        }
    }
}

/// `CURRENCY:MAX_PER_PAYOUT:MAX_PER_DAY`, `-` for none.
fn currency_limit(text: &str) -> anyhow::Result<(String, CurrencyLimits)> {
    let parts: Vec<&str> = text.split(':').collect();
    let [code, per_payout, per_day] = parts.as_slice() else {
        anyhow::bail!("--limit {text:?}: expected CURRENCY:MAX_PER_PAYOUT:MAX_PER_DAY (- for none)");
    };
    let currency = Currency::parse(code).map_err(|e| anyhow::anyhow!("--limit {text:?}: {e}"))?;
    let amount = |v: &str| -> anyhow::Result<Option<Decimal>> {
        if v == "-" {
            return Ok(None);
        }
        let d = Decimal::from_str_exact(v)
            .map_err(|_| anyhow::anyhow!("--limit {text:?}: {v:?} is not a decimal"))?;
        if d.is_sign_negative() || d.normalize().scale() > currency.minor_units() {
            anyhow::bail!(
                "--limit {text:?}: {v} must be 0 or more with at most {} decimals",
                currency.minor_units()
            );
        }
        Ok(Some(d))
    };
    let limits =
        CurrencyLimits { max_amount_per_payout: amount(per_payout)?, max_total_per_day: amount(per_day)? };
    Ok((currency.code().to_owned(), limits))
}

async fn limits(pool: &PgPool, command: LimitsCommand) -> anyhow::Result<()> {
    match command {
        LimitsCommand::Show { client } => {
            match client_limits::get_recorded(pool, &client).await? {
                None => println!("client {client} has no limits"),
                Some(l) => println!("{}", serde_json::to_string_pretty(&l)?),
            }
            Ok(())
        }
        LimitsCommand::Set { client, limits, destinations, accounts, reason: why } => {
            let currencies: BTreeMap<String, CurrencyLimits> =
                limits.iter().map(|l| currency_limit(l)).collect::<anyhow::Result<_>>()?;
            let limits = ClientLimits {
                client_id: client.clone(),
                currencies,
                allowed_destination_codes: (!destinations.is_empty()).then_some(destinations),
                allowed_accounts: (!accounts.is_empty()).then_some(accounts),
            };
            client_limits::set(pool, &limits, &cli_actor(), &reason(&why)?).await?;
            println!("limits of {client} replaced");
            Ok(())
        }
        LimitsCommand::Clear { client, reason: why } => {
            if client_limits::clear(pool, &client, &cli_actor(), &reason(&why)?).await? {
                println!("limits of {client} removed");
            } else {
                println!("client {client} had no limits");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_limits_are_parsed_and_bad_ones_named() {
        let (code, l) = currency_limit("IDR:5000000:-").expect("parses");
        assert_eq!(code, "IDR");
        assert_eq!(l.max_amount_per_payout, Some(Decimal::from(5_000_000)));
        assert_eq!(l.max_total_per_day, None);
        assert!(currency_limit("IDR:10.5:-").unwrap_err().to_string().contains("at most 0 decimals"));
        assert!(currency_limit("IDR:10").is_err());
    }

    #[test]
    fn retention_settings_are_checked_at_start_up() {
        RetentionSettings::default().timer().expect("defaults pass");
        let bad = RetentionSettings { callback_days: 120.0, ..Default::default() };
        let err = bad.timer().unwrap_err().to_string();
        assert!(err.contains("[retention]") && err.contains("callback_days (120)"), "{err}");
    }
}
