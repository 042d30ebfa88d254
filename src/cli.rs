//! `idemq` subcommands (docs/configuration.md).
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use idemq_api::config::ApiConfig;
use idemq_worker::config::WorkerConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, SharedConfig};

#[derive(Debug, Parser)]
#[command(
    name = "idemq",
    version,
    about = "Makes state-changing HTTP requests safe to repeat"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub shared: SharedConfig,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process for local work: a private Postgres (unless
    /// DATABASE_URL is set), migrations, demo rows, API and workers.
    Dev {
        #[command(flatten)]
        api: ApiConfig,
        #[command(flatten)]
        worker: WorkerConfig,
    },
    /// The HTTP API.
    Api {
        #[command(flatten)]
        api: ApiConfig,
    },
    /// A worker process (run as many as you like).
    Worker {
        #[command(flatten)]
        worker: WorkerConfig,
        /// When set, a listener for supervisors and Prometheus: `/healthz`,
        /// `/readyz` (database reachable) and `/metrics` (this worker's jobs).
        #[arg(
            long,
            env = "IDEMQ_WORKER_HEALTH_ADDR",
            value_name = "IDEMQ_WORKER_HEALTH_ADDR"
        )]
        health_addr: Option<std::net::SocketAddr>,
    },
    /// Apply migrations (apalis's and ours) and exit.
    Migrate,
    /// Run one cleanup now (expired records, old finished queue jobs, stale
    /// queue workers, old duty ticks), print what it deleted per table, exit.
    /// Reads the same IDEMQ_QUEUE_RETENTION / IDEMQ_CLEANUP_BATCH_SIZE as a worker.
    Cleanup {
        #[command(flatten)]
        worker: WorkerConfig,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Pause or resume a queue (docs/switches.md, "Pausing a queue"): the API keeps
    /// accepting; no worker of the fleet takes a paused queue's jobs.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Measure a real fleet (API + worker processes, started by the bench):
    /// throughput, latency, peak RSS, CPU split, correctness. Runs the
    /// `idemq-bench` binary beside this one (`idemq bench --help` for its options).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
    /// Insert demo rows: invoices inv-1…, applications app-1…, contracts ctr-1….
    Seed {
        #[arg(long, default_value_t = 10)]
        invoices: i64,
        #[arg(long, default_value_t = 3)]
        applications: i64,
        #[arg(long, default_value_t = 2)]
        contracts: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Stop workers fleet-wide from taking QUEUE's jobs (from their next
    /// fetch); survives restarts until `resume`.
    Pause {
        queue: String,
        /// Who pauses, for the log (default: `cli:$USER`).
        #[arg(long)]
        by: Option<String>,
    },
    /// Let workers take QUEUE's jobs again (woken at once).
    Resume {
        queue: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Which queues are paused, since when, by whom.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for principal NAME (created if new); prints the token
    /// alone on the last line. Only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List the tokens: id, principal, created, revoked (never a secret).
    List,
    /// Revoke the token with this id, or every live token of the principal
    /// with this name. Every API process refuses it within about a second.
    Revoke {
        /// A token id (from `token list`) or a principal name.
        which: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev { api, worker } => crate::dev::run(cli.db, cli.shared, api, worker).await,
        Command::Api { api } => {
            let pool = connect_sized(&cli.db, cli.db.api_pool(), "idemq-api").await?;
            let shutdown = shutdown_on_signal();
            let listeners = idemq_api::process::bind_api(&api).await?;
            println!("api listening on http://{}", listeners.api_addr()?);
            if let Some(ops) = listeners.ops_addr() {
                println!("ops listening on http://{ops}");
            }
            let metrics = crate::telemetry::install_metrics();
            let ttl = cli.shared.idempotency_ttl;
            idemq_api::process::serve_api(listeners, pool, &api, ttl, metrics, shutdown).await
        }
        Command::Worker { worker, health_addr } => {
            let pool = connect_sized(&cli.db, cli.db.worker_pool(&worker), "idemq-worker").await?;
            let shutdown = shutdown_on_signal();
            if let Some(addr) = health_addr {
                crate::worker_health::spawn(addr, pool.clone(), shutdown.clone()).await?;
            }
            let settings = idemq_worker::WorkerSettings {
                config: worker,
                idempotency_ttl: cli.shared.idempotency_ttl,
            };
            idemq_worker::run(pool, settings, shutdown).await
        }
        Command::Migrate => {
            // Migrations take session locks and build indexes outside a
            // transaction: never through a transaction-mode pooler.
            let pool = match cli.db.listen_database_url.as_deref().filter(|u| !u.is_empty()) {
                Some(direct) => connect_url(direct, cli.db.api_pool(), "idemq-migrate").await?,
                None => connect_sized(&cli.db, cli.db.api_pool(), "idemq-migrate").await?,
            };
            idemq_core::db::migrate(&pool).await.context("migrating")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Cleanup { worker } => {
            let config = idemq_worker::maintenance::cleanup_config(&worker)?;
            let pool = connect(&cli.db).await?;
            let report = idemq_worker::maintenance::cleanup::run_once(&pool, &config)
                .await
                .context("cleanup")?;
            print!("{}", cleanup_table(&report));
            Ok(())
        }
        Command::Bench { args } => Err(exec_bench(&cli.db, args)),
        Command::Queue { command } => {
            let pool = connect(&cli.db).await?;
            let operator = |by: Option<String>| {
                by.unwrap_or_else(|| {
                    format!(
                        "cli:{}",
                        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
                    )
                })
            };
            let (queue, done) = match command {
                QueueCommand::Pause { queue, by } => {
                    let done = idemq_core::ops::pause_queue(&pool, &queue, &operator(by)).await?;
                    (
                        queue,
                        done.map(|changed| if changed { "paused" } else { "already paused" }),
                    )
                }
                QueueCommand::Resume { queue, by } => {
                    let done = idemq_core::ops::resume_queue(&pool, &queue, &operator(by)).await?;
                    (
                        queue,
                        done.map(|changed| if changed { "resumed" } else { "not paused" }),
                    )
                }
                QueueCommand::Status => {
                    let paused = idemq_core::ops::paused_queues(&pool).await?;
                    for queue in idemq_core::queue::ALL {
                        match paused.iter().find(|p| p.queue == queue) {
                            Some(p) => println!(
                                "{queue}\tpaused since {} by {}",
                                p.paused_at.to_rfc3339(),
                                p.paused_by
                            ),
                            None => println!("{queue}\trunning"),
                        }
                    }
                    return Ok(());
                }
            };
            match done {
                Ok(what) => {
                    println!("{queue}: {what}");
                    Ok(())
                }
                Err(unknown) => anyhow::bail!(
                    "there is no queue {:?} (queues: {})",
                    unknown.0,
                    idemq_core::queue::ALL.join(", ")
                ),
            }
        }
        Command::Token {
            command: TokenCommand::List,
        } => {
            let pool = connect(&cli.db).await?;
            let tokens = idemq_core::principal::list_tokens(&pool).await?;
            print!("{}", token_table(&tokens));
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { which },
        } => {
            let pool = connect(&cli.db).await?;
            let revoked = idemq_core::principal::revoke(&pool, &which).await?;
            if revoked.is_empty() {
                anyhow::bail!("no live token has the id or principal name {which:?}");
            }
            for id in revoked {
                println!("revoked {id}");
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { name },
        } => {
            let pool = connect(&cli.db).await?;
            let (principal, token) = idemq_core::principal::create_token(&pool, &name).await?;
            println!(
                "token for principal {} (shown once, only its hash is stored):",
                principal.name()
            );
            println!("{token}");
            Ok(())
        }
        Command::Seed {
            invoices,
            applications,
            contracts,
        } => {
            let pool = connect(&cli.db).await?;
            let s = idemq_core::seed::seed(&pool, invoices, applications, contracts).await?;
            println!(
                "seeded {} invoices, {} applications, {} contracts",
                s.invoices, s.applications, s.contracts
            );
            Ok(())
        }
    }
}

/// Replaces this process with the `idemq-bench` beside it (the bench is a
/// binary of its own, so that this one carries none of its dependencies).
/// Returns only on failure.
fn exec_bench(db: &DatabaseConfig, args: Vec<std::ffi::OsString>) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let bench = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("idemq-bench"),
        Err(e) => return anyhow::Error::new(e).context("locating the idemq executable"),
    };
    let mut cmd = std::process::Command::new(&bench);
    cmd.args(args);
    // `idemq --database-url URL bench …` means the bench's server too.
    if let Some(url) = &db.database_url {
        cmd.env("DATABASE_URL", url);
    }
    let e = cmd.exec();
    anyhow::Error::new(e).context(format!(
        "running {} (`cargo build --release` builds it beside idemq; container images carry no bench)",
        bench.display()
    ))
}

/// `idemq cleanup`'s output: one line per table, then the total.
pub fn cleanup_table(report: &idemq_worker::maintenance::cleanup::CleanupReport) -> String {
    let mut out = String::new();
    for (table, n) in report.per_table() {
        out.push_str(&format!("{table:<16}{n:>10}\n"));
    }
    out.push_str(&format!("{:<16}{:>10}\n", "total", report.total()));
    out
}

/// A pool of `db.api_pool()` connections for a command of the CLI (use
/// `connect_sized` otherwise).
pub async fn connect(db: &DatabaseConfig) -> anyhow::Result<PgPool> {
    connect_sized(db, db.api_pool(), "idemq-cli").await
}

/// `process`: what the connections are called in `pg_stat_activity`
/// (`application_name`, unless the URL sets it).
pub async fn connect_sized(
    db: &DatabaseConfig,
    max_connections: u32,
    process: &str,
) -> anyhow::Result<PgPool> {
    let url = db
        .database_url
        .as_deref()
        .context("DATABASE_URL is not set (only `idemq dev` can do without it)")?;
    match db.listen_database_url.as_deref().filter(|u| !u.is_empty()) {
        Some(direct) => idemq_core::db::connect_pooled(url, direct, max_connections, process)
            .await
            .with_context(|| format!("connecting to DATABASE_URL ({}) as a pooler", redact(url))),
        None => connect_url(url, max_connections, process).await,
    }
}

pub async fn connect_url(url: &str, max_connections: u32, process: &str) -> anyhow::Result<PgPool> {
    idemq_core::db::connect_named(url, max_connections, process)
        .await
        .with_context(|| format!("connecting to DATABASE_URL ({})", redact(url)))
}

/// The URL with its password (in the user info or a `password` query
/// parameter, both of which sqlx reads) replaced by `***`, for messages.
fn redact(raw: &str) -> String {
    // A string that is no URL with a host may hold anything: show nothing.
    let mut url = match url::Url::parse(raw) {
        Ok(url) if !url.cannot_be_a_base() => url,
        _ => return "not a valid URL".into(),
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

/// Cancelled on SIGTERM or SIGINT (Ctrl-C). A second signal exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stopping (a second signal exits at once)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Used by `dev` to bound how long it waits for its parts to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// `idemq token list`: one token a line under a header.
fn token_table(tokens: &[idemq_core::principal::TokenInfo]) -> String {
    let width = tokens.iter().map(|t| t.principal.len()).max().unwrap_or(0).max(9);
    let mut out = format!(
        "{:<36}  {:<width$}  {:<20}  revoked\n",
        "id", "principal", "created"
    );
    for t in tokens {
        const AT: &str = "%Y-%m-%dT%H:%M:%SZ";
        out.push_str(&format!(
            "{:<36}  {:<width$}  {:<20}  {}\n",
            t.id,
            t.principal,
            t.created_at.format(AT),
            t.revoked_at
                .map(|d| d.format(AT).to_string())
                .unwrap_or_else(|| "-".into())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_the_password_and_keeps_the_rest() {
        for (raw, shown) in [
            (
                "postgres://app:s3cr%40t@db.internal:5432/idemq?sslmode=require",
                "postgres://app:***@db.internal:5432/idemq?sslmode=require",
            ),
            (
                "postgres://app@db:5432/idemq?password=s3cret&application_name=x",
                "postgres://app@db:5432/idemq?password=***&application_name=x",
            ),
            ("postgres://app@db/idemq", "postgres://app@db/idemq"),
            (
                "postgres:///idemq?host=/run/postgresql",
                "postgres:///idemq?host=/run/postgresql",
            ),
        ] {
            assert_eq!(redact(raw), shown, "{raw}");
        }
        for garbled in ["app:s3cret@db", "s3cret@db/idemq"] {
            assert_eq!(redact(garbled), "not a valid URL");
        }
    }
}
