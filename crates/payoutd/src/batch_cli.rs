//! Batches and reconciliation in the binary: the `[batches]` settings, the `payoutd batch ...`
//! commands (they speak to the HTTP API like any client: `--api-url` / `PAYOUTD_API_URL`,
//! `--token` / `PAYOUTD_TOKEN`), and `payoutd reconcile` (an operator command: it reads the
//! database and asks the provider directly, like `payoutd show`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use payoutd_core::PayoutState;
use payoutd_core::batch_file::BatchLimits;
use payoutd_engine::reconciliation::{self, ReconcileOptions, Source};
use payoutd_providers::eightb_partner::registry::parse_time;
use payoutd_providers::eightb_partner::statement::StatementSource;
use payoutd_providers::eightb_partner::{EightBPartner, EightBPartnerConfig};
use payoutd_server::batches_api::BatchSettings;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::{app, database};

/// The `[batches]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchesSettings {
    /// Rows one upload may hold (stated in the refusal).
    pub max_rows: usize,
    /// Bytes one upload may hold (stated in the refusal).
    pub max_bytes: usize,
    /// Every batch waits for another client's approval (scope `batches.approve`).
    pub require_approval: bool,
    /// Refuse a batch whose total per account exceeds the provider balance (unless `force`).
    pub preflight_balance: bool,
}

impl Default for BatchesSettings {
    fn default() -> Self {
        let d = BatchSettings::default();
        Self {
            max_rows: d.limits.max_rows,
            max_bytes: d.limits.max_bytes,
            require_approval: d.require_approval,
            preflight_balance: d.preflight_balance,
        }
    }
}

impl BatchesSettings {
    /// What the API applies.
    pub fn api(&self) -> BatchSettings {
        BatchSettings {
            limits: BatchLimits { max_rows: self.max_rows.max(1), max_bytes: self.max_bytes.max(1) },
            require_approval: self.require_approval,
            preflight_balance: self.preflight_balance,
        }
    }

    /// `PAYOUTD_BATCH_MAX_ROWS`, `PAYOUTD_BATCH_MAX_BYTES`, `PAYOUTD_BATCH_REQUIRE_APPROVAL`,
    /// `PAYOUTD_BATCH_PREFLIGHT_BALANCE`.
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string() })
        }
        fn flag(name: &'static str, v: &str) -> Result<bool, ConfigError> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "" | "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Env { name, reason: format!("{v:?} is not a yes/no value") }),
            }
        }
        if let Some(v) = get("PAYOUTD_BATCH_MAX_ROWS") {
            self.max_rows = parse("PAYOUTD_BATCH_MAX_ROWS", &v)?;
        }
        if let Some(v) = get("PAYOUTD_BATCH_MAX_BYTES") {
            self.max_bytes = parse("PAYOUTD_BATCH_MAX_BYTES", &v)?;
        }
        if let Some(v) = get("PAYOUTD_BATCH_REQUIRE_APPROVAL") {
            self.require_approval = flag("PAYOUTD_BATCH_REQUIRE_APPROVAL", &v)?;
        }
        if let Some(v) = get("PAYOUTD_BATCH_PREFLIGHT_BALANCE") {
            self.preflight_balance = flag("PAYOUTD_BATCH_PREFLIGHT_BALANCE", &v)?;
        }
        Ok(())
    }
}

/// The commands this module adds to `payoutd` (flattened into its command list).
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Mass-payout batches, over the HTTP API.
    Batch {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Compare an account's payouts of a period with the provider's own registry.
    Reconcile(ReconcileArgs),
}

/// Where the API is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of payoutd's API.
    #[arg(long, env = "PAYOUTD_API_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub api_url: String,
    /// A client token (scopes batches.create / batches.read / batches.approve).
    #[arg(long, env = "PAYOUTD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Upload a CSV or JSON-lines file; prints the batch, or every bad row.
    Upload {
        file: PathBuf,
        /// Account of rows that name none.
        #[arg(long)]
        account: Option<String>,
        /// Your name for this upload: the same reference and content again is the same batch.
        #[arg(long)]
        reference: Option<String>,
        /// csv or jsonl (default: from the file name, else from its first byte).
        #[arg(long)]
        format: Option<String>,
        /// Store it although the provider balance does not cover it.
        #[arg(long)]
        force: bool,
    },
    /// Counts and sums per state and currency.
    Show { id: String },
    /// Live per-state progress bars until every payout of the batch is final.
    Watch {
        id: String,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// The CSV report (one line per row) on standard output.
    Report { id: String },
    /// Release a batch that waits for approval (a client other than the uploader).
    Approve { id: String },
    /// Cancel the batch's payouts that have no intent yet; the others continue.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Your batches, newest first.
    List,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The provider account.
    #[arg(long)]
    pub account: String,
    /// Start of the period (RFC 3339, "YYYY-MM-DD HH:MM[:SS]" UTC, or a date), included.
    #[arg(long)]
    pub from: String,
    /// End of the period, excluded.
    #[arg(long)]
    pub to: String,
    /// text (a summary and the discrepancies), json, or csv (the items).
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Report only: park nothing, write no events.
    #[arg(long)]
    pub dry_run: bool,
    /// The registry URL (default `{base_url}/payout_reestr/`).
    #[arg(long, env = "PAYOUTD_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// The balance statement URL (default `{base_url}/partner/{service_id}/balance_statement`).
    #[arg(long, env = "PAYOUTD_BALANCE_STATEMENT_URL")]
    pub statement_url: Option<String>,
    /// Do not read the balance statement (no aggregate comparison).
    #[arg(long)]
    pub no_statement: bool,
    /// How far beyond the period the registry is read, in seconds.
    #[arg(long, default_value_t = 300)]
    pub margin_secs: u64,
    /// Timeout of one registry call.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

pub async fn run(config: &Config, commands: Commands) -> anyhow::Result<()> {
    match commands {
        Commands::Batch { api, command } => batch(api, command).await,
        Commands::Reconcile(args) => reconcile(config, args).await,
    }
}

// ---- batch ----------------------------------------------------------------------------------

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(args: ApiArgs) -> anyhow::Result<Self> {
        let token = args
            .token
            .filter(|t| !t.is_empty())
            .context("a client token is needed: --token or PAYOUTD_TOKEN")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        Ok(Self { base: args.api_url.trim_end_matches('/').to_owned(), token, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let r =
            self.http.get(self.url(path)).bearer_auth(&self.token).send().await.context("calling the API")?;
        Ok((r.status(), r.text().await?))
    }

    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .context("calling the API")?;
        Ok((r.status(), r.text().await?))
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, text) = self.get(path).await?;
        ok_json(status, &text)
    }
}

fn ok_json(status: reqwest::StatusCode, text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    if !status.is_success() {
        bail!("the API answered {status}: {}", v.get("message").or(v.get("error")).unwrap_or(&v));
    }
    Ok(v)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn batch(api: ApiArgs, command: BatchCommand) -> anyhow::Result<()> {
    let api = Api::new(api)?;
    match command {
        BatchCommand::Upload { file, account, reference, format, force } => {
            upload(&api, file, account, reference, format, force).await
        }
        BatchCommand::Show { id } => {
            let v = api.json(&format!("/v1/batches/{}", percent_encode(&id))).await?;
            print_summary(&v);
            Ok(())
        }
        BatchCommand::Watch { id, interval_ms } => {
            watch(&api, &id, Duration::from_millis(interval_ms.max(100))).await
        }
        BatchCommand::Report { id } => {
            let (status, text) = api.get(&format!("/v1/batches/{}/report", percent_encode(&id))).await?;
            if !status.is_success() {
                ok_json(status, &text)?;
            }
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        BatchCommand::Approve { id } => {
            let (status, text) = api
                .post(&format!("/v1/batches/{}/approve", percent_encode(&id)), Vec::new(), "application/json")
                .await?;
            let v = ok_json(status, &text)?;
            print_summary(&v);
            Ok(())
        }
        BatchCommand::Cancel { id, reason } => {
            let body = serde_json::to_vec(&serde_json::json!({ "reason": reason }))?;
            let (status, text) = api
                .post(&format!("/v1/batches/{}/cancel", percent_encode(&id)), body, "application/json")
                .await?;
            let v = ok_json(status, &text)?;
            println!("cancelled now: {}, continuing: {}", v["cancelled_now"], v["continuing"]);
            print_summary(&v);
            Ok(())
        }
        BatchCommand::List => {
            let v = api.json("/v1/batches").await?;
            for b in v["batches"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<18} {:>7} rows  {}  {}",
                    b["id"].as_str().unwrap_or("?"),
                    b["state"].as_str().unwrap_or("?"),
                    b["rows"],
                    b["created_at"].as_str().unwrap_or(""),
                    b["reference"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

async fn upload(
    api: &Api,
    file: PathBuf,
    account: Option<String>,
    reference: Option<String>,
    format: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?.len();
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("reading");
    let mut reader = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        bar.inc(n as u64);
    }
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    bar.finish_with_message("read");
    let kind = match format.as_deref() {
        Some("csv") => "text/csv",
        Some("jsonl") | Some("ndjson") => "application/x-ndjson",
        Some(other) => bail!("--format must be csv or jsonl, not {other:?}"),
        None => match file.extension().and_then(|e| e.to_str()) {
            Some("csv") => "text/csv",
            Some("jsonl") | Some("ndjson") => "application/x-ndjson",
            _ => "application/octet-stream",
        },
    };
    let mut query = Vec::new();
    if let Some(a) = &account {
        query.push(format!("account={}", percent_encode(a)));
    }
    if let Some(r) = &reference {
        query.push(format!("reference={}", percent_encode(r)));
    }
    if force {
        query.push("force=true".to_owned());
    }
    let path =
        if query.is_empty() { "/v1/batches".to_owned() } else { format!("/v1/batches?{}", query.join("&")) };
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("uploading {} bytes (~{lines} lines), validating every row", body.len()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let (status, text) = api.post(&path, body, kind).await?;
    spinner.finish_and_clear();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    match status.as_u16() {
        200 | 201 => {
            if status.as_u16() == 200 {
                println!(
                    "the same reference and content were uploaded before: this is that batch (nothing new stored)"
                );
            }
            println!("uploaded in {:.2} s", started.elapsed().as_secs_f64());
            print_summary(&v);
            Ok(())
        }
        _ => {
            eprintln!("refused ({status}): {}", v.get("message").and_then(Value::as_str).unwrap_or(&text));
            if let Some(id) = v.get("existing_batch_id") {
                eprintln!("existing batch: {id}");
            }
            let errors = v.get("errors").and_then(Value::as_array).cloned().unwrap_or_default();
            for e in &errors {
                eprintln!(
                    "  row {:>6}  {:<16} {}",
                    e["row"],
                    e["column"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                );
            }
            if let Some(p) = v.get("preflight") {
                eprintln!("preflight: {p}");
            }
            bail!("the batch was refused; nothing was stored")
        }
    }
}

const STATES: [PayoutState; 9] = PayoutState::ALL;

fn print_summary(v: &Value) {
    println!("batch     {}", v["id"].as_str().unwrap_or("?"));
    println!("reference {}", v["reference"].as_str().unwrap_or(""));
    println!("state     {}", v["state"].as_str().unwrap_or("?"));
    println!("rows      {} ({} final, {} open)", v["rows"], v["final_payouts"], v["open_payouts"]);
    if let Some(by) = v["approved_by_client"].as_str() {
        println!("approved  by {by} at {}", v["approved_at"].as_str().unwrap_or(""));
    }
    if let Some(at) = v["cancelled_at"].as_str() {
        println!("cancelled {at}: {}", v["cancel_reason"].as_str().unwrap_or(""));
    }
    println!("{:<16} {:>8} {:>8} {:>20}", "state", "currency", "count", "amount");
    for t in v["totals"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:>8} {:>8} {:>20}",
            t["state"].as_str().unwrap_or(""),
            t["currency"].as_str().unwrap_or(""),
            t["count"],
            t["amount"].as_str().unwrap_or("")
        );
    }
    if let Some(p) = v.get("preflight").and_then(Value::as_array).filter(|p| !p.is_empty()) {
        for a in p {
            println!("preflight {}", a);
        }
    }
}

async fn watch(api: &Api, id: &str, every: Duration) -> anyhow::Result<()> {
    let path = format!("/v1/batches/{}", percent_encode(id));
    let first = api.json(&path).await?;
    let rows = first["rows"].as_u64().unwrap_or(0);
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos:>7}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-");
    let bars: BTreeMap<&str, ProgressBar> = STATES
        .iter()
        .map(|s| {
            let bar = multi.add(ProgressBar::new(rows));
            bar.set_style(style.clone());
            bar.set_prefix(s.as_str());
            (s.as_str(), bar)
        })
        .collect();
    let total = multi.add(ProgressBar::new(rows));
    total.set_style(style.clone());
    total.set_prefix("final");
    let mut v = first;
    loop {
        for (state, bar) in &bars {
            bar.set_position(v["counts"][*state].as_u64().unwrap_or(0));
        }
        total.set_position(v["final_payouts"].as_u64().unwrap_or(0));
        if v["state"] == "completed" {
            break;
        }
        tokio::time::sleep(every).await;
        v = api.json(&path).await?;
    }
    for bar in bars.values() {
        bar.finish();
    }
    total.finish();
    println!("batch {id} completed at {}", v["completed_at"].as_str().unwrap_or("?"));
    Ok(())
}

// ---- reconcile ------------------------------------------------------------------------------

/// A time on the command line: RFC 3339, "YYYY-MM-DD HH:MM[:SS]" (UTC), or a date (midnight UTC).
pub fn parse_cli_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Some(t) = parse_time(text) {
        return Ok(t);
    }
    let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .with_context(|| format!("{text:?} is not a time (RFC 3339, \"YYYY-MM-DD HH:MM\" UTC, or a date)"))?;
    date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).context("midnight")
}

/// The 8B partner client of an account, from the configuration.
pub(crate) fn eightb_partner(config: &Config, account: &str) -> anyhow::Result<EightBPartner> {
    let a = config
        .all_accounts()
        .into_iter()
        .find(|a| a.name == account)
        .with_context(|| format!("no account named {account:?} is configured"))?;
    let secret = a
        .secrets
        .iter()
        .find(|(what, _)| *what == "secret")
        .map(|(_, s)| s.clone())
        .with_context(|| format!("account {account:?}: its secret is not set"))?;
    let service_id = a.service_id.clone().with_context(|| format!("account {account:?}: no service_id"))?;
    let mut c = EightBPartnerConfig::new(&a.base_url, service_id, secret);
    c.account_name = a.name.clone();
    c.request_timeout = Duration::from_millis(a.request_timeout_ms.max(1));
    Ok(EightBPartner::new(c)?)
}

async fn reconcile(config: &Config, args: ReconcileArgs) -> anyhow::Result<()> {
    let from = parse_cli_time(&args.from)?;
    let to = parse_cli_time(&args.to)?;
    if !matches!(args.format.as_str(), "text" | "json" | "csv") {
        bail!("--format must be text, json or csv");
    }
    let pool = database::open(config, 4).await?;
    let connectors = app::connectors(config, Some(&pool))?;
    let connector = connectors.get(&args.account).with_context(|| {
        format!("no account named {:?}; configured: {}", args.account, connectors.names().join(", "))
    })?;
    let options = ReconcileOptions {
        margin: Duration::from_secs(args.margin_secs),
        act: !args.dry_run,
        created_by: "cli".into(),
        ..ReconcileOptions::default()
    };
    let (registry, statement);
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let (source, statement_source): (Source<'_>, Option<&dyn StatementSource>) =
        match reconciliation::unsupported_reason(connector.kind()) {
            Some(why) => (Source::Unsupported { why }, None),
            None => {
                let partner = eightb_partner(config, &args.account)?;
                registry = partner.registry(args.registry_url.as_deref(), timeout)?;
                statement = partner.statement(args.statement_url.as_deref(), timeout)?;
                (
                    Source::Registry(&registry),
                    (!args.no_statement).then_some(&statement as &dyn StatementSource),
                )
            }
        };
    let report =
        reconciliation::run(&pool, &connectors, &args.account, from, to, source, statement_source, &options)
            .await?;
    let r = &report.reconciliation;
    match args.format.as_str() {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "reconciliation": r, "items": report.items }))?
        ),
        "csv" => print!(
            "{}",
            payoutd_core::batch_file::write_csv(
                payoutd_store::reconciliation::CSV_HEADER,
                report.items.iter().map(payoutd_store::reconciliation::csv_cells)
            )
        ),
        _ => {
            println!("reconciliation {} of account {} ({})", r.id, r.account, r.kind);
            println!("period          {} .. {}", r.period_start, r.period_end);
            println!("status          {}", r.status);
            if let Some(reason) = r.summary.get("reason").and_then(Value::as_str) {
                println!("{reason}");
            }
            if let Some(e) = r.summary.get("error") {
                println!("error           {e}");
            }
            if let Some(counts) = r.summary.get("counts").and_then(Value::as_object) {
                for (k, v) in counts {
                    println!("  {k:<22} {v}");
                }
            }
            for key in [
                "registry_rows",
                "registry_pages",
                "registry_limit_errors",
                "unpageable_minutes",
                "parked",
                "alerted",
                "balance_statement",
            ] {
                if let Some(v) = r.summary.get(key) {
                    println!("{key:<22} {v}");
                }
            }
            for i in report.items.iter().filter(|i| i.category != "in_progress") {
                println!(
                    "{:<20} {:<22} {:<10} {}",
                    i.category,
                    i.reference.as_deref().unwrap_or("-"),
                    i.action,
                    i.detail
                );
            }
        }
    }
    pool.close().await;
    if r.status == "failed" {
        bail!("the registry could not be read");
    }
    Ok(())
}
