//! The payoutd binary's library: CLI, configuration, the private Postgres, wiring, the demo.
//!
//! - [`cli`]: clap commands (serve, worker, migrate, token, show, sandbox, demo).
//! - [`config`]: TOML file + environment.
//! - [`local_postgres`]: a private Postgres cluster from the local binaries when no
//!   DATABASE_URL is set.
//! - [`database`]: picks DATABASE_URL or the private cluster, connects, migrates.
//! - [`app`]: builds connectors and runs the API and worker until a signal.
//! - [`demo`]: the end-to-end demonstration.
//! - [`bench`]: `payoutd bench`, the throughput and cost figures of the money path.
//! - [`webhooks`]: the `[webhooks]` settings and the `payoutd webhook ...` commands.
//! - [`batch_cli`]: the `[batches]` settings, `payoutd batch ...` (over the API) and
//!   `payoutd reconcile`.
//! - [`operator_cli`]: the `[operator]` and `[retention]` settings and the operator commands
//!   (status, pause, resume, payout, limits, retention).

pub mod accounts;
pub mod app;
pub mod batch_cli;
pub mod bench;
pub mod cli;
pub mod config;
pub mod database;
pub mod demo;
pub mod local_postgres;
pub mod operator_cli;
pub mod restore_cli;
pub mod telemetry;
pub mod webhooks;
