//! `scale`: the payments workload under each fleet shape — A API processes ×
//! W worker processes, each shape on a fresh database — and what every
//! operation cost Postgres: CPU time of the server's processes, commits
//! (`pg_stat_database.xact_commit`) and WAL bytes (`pg_current_wal_lsn()`).
//! The figures behind docs/SCALING.md.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Args;
use sqlx::PgPool;

use super::{check_payments, mark_paid, seed_invoices, wait_all_final};
use crate::{
    cpu::CpuProbe,
    fleet::Fleet,
    load::http_client,
    progress,
    report::Report,
    server::{RunDb, Server},
};

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Invoices paid under each shape (one request each, its own key).
    #[arg(long, default_value_t = 3000)]
    pub invoices: usize,
    /// Concurrent HTTP clients, spread round-robin over the API processes.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// API process counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub apis: Vec<usize>,
    /// Worker process counts to try (under each API count).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
}

/// What the server's statistics say at one moment.
struct DbCounters {
    commits: i64,
    wal_bytes: f64,
}

/// The server's counters once every backend has reported (`dbstats::settle`).
async fn counters(pool: &PgPool, wait: Duration) -> anyhow::Result<DbCounters> {
    tokio::time::sleep(wait).await;
    let (commits, wal_bytes): (i64, f64) = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8",
    )
    .fetch_one(pool)
    .await?;
    Ok(DbCounters { commits, wal_bytes })
}

pub async fn run(server: &Server, _db: &RunDb, args: &ScaleArgs, report: &mut Report) -> anyhow::Result<()> {
    if args.invoices == 0 || args.clients == 0 || args.apis.contains(&0) || args.workers.contains(&0) {
        bail!("--invoices, --clients and every count in --apis and --workers must be at least 1");
    }
    report.param("invoices", args.invoices);
    report.param("clients", args.clients);
    report.param(
        "apis",
        args.apis
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    report.param(
        "workers",
        args.workers
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut best = (0.0f64, String::new());
    for &apis in &args.apis {
        for &workers in &args.workers {
            let shape = format!("{apis}a{workers}w");
            progress(format!("scale: {apis} API × {workers} worker processes"));
            let db = server.fresh_db(&format!("scale_{shape}")).await?;
            let result = run_shape(server, &db, args, apis, workers, &shape, report).await;
            server.drop_db(db).await;
            let ops = result?;
            if ops > best.0 {
                best = (ops, format!("{apis} API × {workers} workers"));
            }
        }
    }
    report.headline = format!("best {:.0} operations/s with {}", best.0, best.1);
    report.note(
        "per operation: Postgres CPU = CPU time of the postmaster and all its children (/proc), \
         commits = pg_stat_database.xact_commit of the shape's database, WAL = pg_current_wal_lsn() \
         difference (server-wide); each shape on a fresh database",
    );
    Ok(())
}

/// One shape; its operations/s.
async fn run_shape(
    server: &Server,
    db: &RunDb,
    args: &ScaleArgs,
    apis: usize,
    workers: usize,
    shape: &str,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let tag = format!("{}-{shape}", report.scenario);
    seed_invoices(&db.pool, args.invoices as u64).await?;
    let mut fleet = Fleet::new(&server.exe, &db.url, &server.logs, &tag);
    fleet.start_api(&[]).await?;
    // Further API processes, each its own `Fleet` (one API apiece).
    let mut others = Vec::new();
    for i in 2..=apis {
        let mut other = Fleet::new(&server.exe, &db.url, &server.logs, &format!("{tag}-api{i}"));
        other.start_api(&[]).await?;
        others.push(other);
    }
    fleet.start_workers(workers, &db.pool).await?;
    let urls: Arc<Vec<String>> = Arc::new(
        std::iter::once(fleet.api_url.clone())
            .chain(others.iter().map(|o| o.api_url.clone()))
            .collect(),
    );
    let client = http_client()?;
    // The other APIs' CPU shows under "other"; Postgres's is what counts here.
    let probe = CpuProbe::new(fleet.api_pid(), fleet.worker_pids(), &db.pool).await;
    let db_before = counters(&db.pool, crate::dbstats::settle()).await?;
    let before = probe.snapshot();
    let t0 = Instant::now();
    let cursor = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let (cursor, refused, client, urls) = (cursor.clone(), refused.clone(), client.clone(), urls.clone());
        let (token, n) = (db.token.clone(), args.invoices);
        tasks.spawn(async move {
            let api = &urls[c % urls.len()];
            loop {
                let i = cursor.fetch_add(1, Ordering::Relaxed) + 1;
                if i > n {
                    break;
                }
                let ok = mark_paid(&client, api, &token, &format!("inv-{i}"), &format!("pay-{i}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t?;
    }
    let done = wait_all_final(&db.pool, &mut fleet, Duration::from_secs(300)).await?;
    let after = probe.snapshot();
    let db_after = counters(&db.pool, crate::dbstats::settle()).await?;
    let split = probe.split(&before, &after).await;

    let n = args.invoices as f64;
    let secs = done.duration_since(t0).as_secs_f64();
    let ops = n / secs;
    // CPU seconds of the window (the split is in % of one core).
    let pg_ms = split.postgres.map(|p| p / 100.0 * split.seconds * 1000.0 / n);
    let commits = (db_after.commits - db_before.commits) as f64 / n;
    let wal_kib = (db_after.wal_bytes - db_before.wal_bytes) / 1024.0 / n;
    report.figure(&format!("ops_per_s_{shape}"), ops, "operations/s");
    if let Some(ms) = pg_ms {
        report.figure2(
            &format!("pg_cpu_ms_per_op_{shape}"),
            ms,
            "ms of Postgres CPU per operation",
        );
    }
    report.figure2(
        &format!("commits_per_op_{shape}"),
        commits,
        "commits per operation",
    );
    report.figure2(
        &format!("wal_kib_per_op_{shape}"),
        wal_kib,
        "KiB of WAL per operation",
    );
    report.text(
        &format!("{apis} API × {workers} workers"),
        format!(
            "{ops:.0} ops/s | Postgres {} ms CPU/op ({} % of a core) | {commits:.2} commits/op | \
             {wal_kib:.2} KiB WAL/op | machine {:.0} % busy of {} cores, other {:.0} %",
            pg_ms.map(|m| format!("{m:.3}")).unwrap_or_else(|| "?".into()),
            split
                .postgres
                .map(|p| format!("{p:.0}"))
                .unwrap_or_else(|| "?".into()),
            split.machine_busy,
            split.cores * 100,
            split.other,
        ),
    );
    if report.cpu.is_none() {
        report.cpu = Some(split);
    }
    let refused = refused.load(Ordering::Relaxed);
    report.check(
        &format!("answers ({shape})"),
        refused == 0,
        format!("{refused} requests not answered 202"),
    );
    check_payments(&db.pool, report, Some(args.invoices as i64)).await?;
    report.set_rss(fleet.rss());
    for o in others {
        o.shutdown().await;
    }
    fleet.shutdown().await;
    Ok(ops)
}
