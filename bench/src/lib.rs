//! `idemq bench`: the instrument. Each scenario starts a real fleet — the
//! `idemq api` process and N `idemq worker` processes, children of the bench —
//! against a fresh database (on `DATABASE_URL`'s server, or on a private
//! cluster under `./.idemq-bench/` with the durability defaults users run:
//! fsync and synchronous_commit on), drives it over HTTP, and reports
//! throughput, latency, peak RSS of every process, where the CPU went, and
//! whether the result is correct (every invoice paid at most once, every
//! operation final). Human tables by default, `--json` for machines.
//!
//! Children inherit the bench's environment, so every `IDEMQ_*` setting
//! (`IDEMQ_QUEUE_BATCH_SIZE`, `IDEMQ_WORKER_CONCURRENCY`,
//! `IDEMQ_DB_MAX_CONNECTIONS`, …) can be tried without a rebuild; the bench
//! sets only the addresses, the database and the switches a scenario needs.
mod cpu;
mod dbstats;
mod fleet;
mod load;
mod report;
mod scenarios;
mod server;
mod stats;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};

pub use report::Report;
pub use scenarios::{
    ChaosArgs, CleanupArgs, DrainArgs, EnqueueArgs, LatencyArgs, LimitedArgs, PaymentsArgs, ReplayArgs,
    ScaleArgs,
};

/// `idemq bench …`
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Print one JSON document on stdout (progress still goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the private Postgres cluster and the children's logs live
    /// (the cluster is used only when DATABASE_URL is unset).
    #[arg(long, global = true, default_value = ".idemq-bench", value_name = "DIR")]
    pub dir: PathBuf,
    /// Keep each scenario's database instead of dropping it.
    #[arg(long, global = true)]
    pub keep_db: bool,
    /// Add the top statements by database time (pg_stat_statements) to each
    /// report. The private cluster loads the extension for it (restart);
    /// a DATABASE_URL server must already preload it.
    #[arg(long, global = true)]
    pub profile: bool,
    /// Experiment, not a production setting: `synchronous_commit = off` for
    /// each scenario's database (no commit waits for its WAL flush). Tells
    /// how much of a figure is the disk's flush latency and how much CPU.
    #[arg(long, global = true)]
    pub async_commit: bool,
    /// Seconds to wait before each reading of Postgres's statistics
    /// (commits, WAL flushes) at either end of a scenario's window. A
    /// backend that goes idle less than a second after its last report
    /// holds its counts for 10 s: a shorter wait moves counts across the
    /// window's ends (1.1 s reported 1.2–2.6 commits per `payments`
    /// operation from run to run, 11 s 1.69 twice). The tests' smoke runs
    /// use 1.
    #[arg(long, global = true, default_value_t = 11.0, value_name = "SECONDS")]
    pub stats_settle: f64,
    /// Finished operations in the database before `payments` and `latency`
    /// start, as a deployment holds those of the last day (the stored
    /// responses' time to live). On an empty database each connection's
    /// cached generic plans are made while `operations` is empty, and they
    /// kept scanning the whole table (2 sequential scans per fetch, a
    /// quarter of Postgres's CPU at 200 requests/s) until autovacuum's first
    /// analyze, which a run of seconds never reached. 0: an empty database.
    #[arg(long, global = true, default_value_t = 20_000, value_name = "ROWS")]
    pub history: u64,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// New mark-paid requests over HTTP with no worker running (the API's
    /// record + enqueue path), beside the raw durable-commit ceiling of
    /// Postgres at the same concurrency.
    Enqueue(EnqueueArgs),
    /// N operations enqueued up front (the API's record + enqueue code),
    /// then W worker processes started: jobs/s until all are final.
    Drain(DrainArgs),
    /// The standard workload: 5,000 unpaid invoices, 6,000 mark-paid requests
    /// (1,000 exact repeats) from 16 clients, workers running: operations/s
    /// from the first request until every operation is final.
    Payments(PaymentsArgs),
    /// Open loop at a fixed arrival rate, each request with `Prefer: wait`:
    /// time from send to final answer.
    Latency(LatencyArgs),
    /// Repeats of finished requests (stored responses): requests/s and latency.
    Replay(ReplayArgs),
    /// The 429 path (a tiny sensitive limit) beside `/healthz` at the same
    /// concurrency.
    Limited(LimitedArgs),
    /// `idemq cleanup` over ROWS expired operations (and their finished jobs)
    /// while a steady enqueue load runs: cleanup time, the load's drop.
    Cleanup(CleanupArgs),
    /// Faults at scale: 10,000 payments from 16 clients, 3 workers, one
    /// SIGKILLed and replaced every 2 s, Postgres stopped and started again
    /// once at half-way (on a private cluster of its own): operations lost,
    /// invoices paid twice, 5xx answers, recovery time. Not part of `all`.
    Chaos(ChaosArgs),
    /// Payments under each fleet shape (1 and 2 API processes × 1, 2 and 4
    /// workers), each on a fresh database: operations/s, and per operation
    /// the Postgres CPU time, commits and WAL bytes. Not part of `all`.
    Scale(ScaleArgs),
    /// Every scenario above with its defaults (but `chaos`).
    All,
}

/// Runs the scenario(s), prints the report(s), and fails if a correctness
/// check failed (after printing).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.stats_settle.is_finite() && (0.0..=60.0).contains(&args.stats_settle)) {
        anyhow::bail!("--stats-settle must be between 0 and 60 seconds");
    }
    dbstats::settle_for(Duration::from_secs_f64(args.stats_settle));
    let server = server::Server::start(&args).await?;
    let reports = scenarios::run(&server, &args).await;
    let environment = server.environment().await;
    server.stop().await;
    let reports = reports?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json_document(&environment, &reports))?
        );
    } else {
        print!("{}", report::human_document(&environment, &reports));
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.correct())
        .map(|r| r.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("failed, or a correctness check failed, in: {}", failed.join(", "));
    }
    Ok(())
}

/// Progress lines (stderr, so that `--json` stdout stays one document).
pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}
