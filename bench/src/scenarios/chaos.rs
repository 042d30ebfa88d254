//! `chaos`: faults at scale, as figures. P payments (one mark-paid request
//! per invoice, each with its own key) from C clients against W worker
//! processes, while one worker is SIGKILLed and replaced every K ms and
//! Postgres is stopped and started again once, when half of the payments are
//! acknowledged. The clients behave like real ones: after a 503 or a
//! connection error they retry with the same key (after `Retry-After`).
//!
//! It runs on a private cluster of its own (under `--dir`), whatever
//! `DATABASE_URL` says: restarting a shared server is not the bench's to do.
//!
//! Reported: operations lost (acknowledged but missing or not final at the
//! end), invoices paid twice, 5xx answers split into 503-while-down and
//! others, and the time from Postgres back to the last operation final. Any
//! lost operation, double payment or other 5xx fails the run.
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use idemq_devcluster::{ClusterOptions, PgCluster};
use tokio::sync::watch;

use super::{mark_paid, payments::truncate, seed_invoices, wait_all_final};
use crate::{
    cpu::CpuProbe,
    fleet::Fleet,
    load::http_client,
    progress,
    report::Report,
    server::{pool, Server},
    stats::Samples,
};

/// A 503 counts as "while down" if its request was in flight at some point
/// between Postgres going down and this long after it was back (the API's
/// pool finds its connections broken and opens new ones).
const SETTLE: Duration = Duration::from_secs(1);
/// A client gives up on a payment after this many attempts (then it counts
/// as unanswered, and the run fails).
const MAX_ATTEMPTS: u32 = 100;
/// Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);
/// After a connection error or another 5xx, before the retry.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Payments: invoices, each paid by one request with its own key
    /// (retried with the same key after a 503 or a connection error).
    #[arg(long, default_value_t = 10_000)]
    pub payments: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Worker processes (a killed one is replaced at once).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Milliseconds between two SIGKILLs of a worker.
    #[arg(long, default_value_t = 2000)]
    pub kill_every_ms: u64,
    /// Milliseconds Postgres stays stopped before it is started again.
    #[arg(long, default_value_t = 2000)]
    pub down_ms: u64,
    /// The workers' IDEMQ_WORKER_LEASE: a killed worker's jobs are run
    /// again once it is over.
    #[arg(long, default_value = "10s")]
    pub lease: String,
}

/// When Postgres was stopped and when it accepted connections again
/// (offsets from the first request).
#[derive(Debug, Clone, Copy, Default)]
struct Outage {
    down: Option<Duration>,
    up: Option<Duration>,
}

/// One 5xx or transport failure: when its request was sent and answered.
#[derive(Debug, Clone, Copy)]
struct Failure {
    status: u16,
    sent: Duration,
    answered: Duration,
}

#[derive(Default)]
struct ClientTally {
    /// Invoices whose payment was acknowledged (202, or 200 replayed).
    acked: Vec<usize>,
    unanswered: Vec<usize>,
    failures: Vec<Failure>,
    /// Answers that are neither 2xx, 5xx nor transport errors.
    unexpected: Vec<String>,
    first_other_5xx: Option<String>,
    retries: u64,
    samples: Samples,
}

pub async fn run(server: &Server, args: &ChaosArgs, report: &mut Report) -> anyhow::Result<()> {
    if args.payments == 0 || args.clients == 0 || args.workers == 0 {
        bail!("--payments, --clients and --workers must be at least 1");
    }
    report.param("payments", args.payments);
    report.param("clients", args.clients);
    report.param("workers", args.workers);
    report.param("kill_every_ms", args.kill_every_ms);
    report.param("down_ms", args.down_ms);
    report.param("lease", args.lease.clone());
    report.param("private_cluster", true);

    let dir = server
        .logs
        .parent()
        .context("the bench directory")?
        .join(format!("chaos-pg-{}", std::process::id()));
    progress(format!(
        "chaos: starting a private Postgres cluster in {} (fsync on)",
        dir.display()
    ));
    let cluster = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            PgCluster::start(ClusterOptions {
                data_dir: dir,
                port: 0,
                fast: false,
            })
        })
        .await??
    };
    cluster.stop_when_process_exits(std::process::id(), true)?;
    let cluster = Arc::new(Mutex::new(Some(cluster)));
    let result = run_on(server, args, report, &dir, cluster.clone()).await;
    let left = cluster.lock().map(|mut c| c.take()).unwrap_or(None);
    if let Some(cluster) = left {
        match tokio::task::spawn_blocking(move || cluster.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => progress(format!("chaos: stopping the private cluster: {e:#}")),
            Err(e) => progress(format!("chaos: stopping the private cluster: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_on(
    server: &Server,
    args: &ChaosArgs,
    report: &mut Report,
    dir: &std::path::Path,
    cluster: Arc<Mutex<Option<PgCluster>>>,
) -> anyhow::Result<()> {
    let (admin_url, url, port) = {
        let c = cluster.lock().expect("cluster lock");
        let c = c.as_ref().context("no cluster")?;
        (c.url("postgres"), c.url("idemq_chaos"), c.port())
    };
    let admin = pool(&admin_url, 1).await?;
    sqlx::query("CREATE DATABASE idemq_chaos").execute(&admin).await?;
    admin.close().await;
    let db = pool(&url, 10).await?;
    idemq_core::db::migrate(&db).await.context("migrating")?;
    let (_, token) = idemq_core::principal::create_token(&db, "bench").await?;
    seed_invoices(&db, args.payments as u64).await?;

    let mut fleet = Fleet::new(&server.exe, &url, &server.logs, &report.scenario);
    fleet.worker_env("IDEMQ_WORKER_LEASE", &args.lease);
    fleet.start_api(&[]).await?;
    fleet.start_workers(args.workers, &db).await?;
    let api = fleet.api_url.clone();
    // Workers are replaced and the postmaster restarts: only the machine's
    // and the API's CPU are comparable over the run.
    let probe = CpuProbe::new(fleet.api_pid(), vec![], &db).await;
    report.note(
        "CPU: the workers' and Postgres's processes change during the run (kills, restart); \
         their split is not meaningful here",
    );

    progress(format!(
        "chaos: {} payments from {} clients, {} workers, a SIGKILL every {} ms, \
         Postgres down {} ms at half-way",
        args.payments, args.clients, args.workers, args.kill_every_ms, args.down_ms
    ));
    let client = http_client()?;
    let before = probe.snapshot();
    let t0 = Instant::now();
    let acked = Arc::new(AtomicUsize::new(0));
    let (acked_tx, acked_rx) = watch::channel(0usize);
    let acked_tx = Arc::new(acked_tx);
    let cursor = Arc::new(AtomicUsize::new(1));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (client, api, token) = (client.clone(), api.clone(), token.clone());
        let (cursor, acked, acked_tx) = (cursor.clone(), acked.clone(), acked_tx.clone());
        let payments = args.payments;
        clients.spawn(async move {
            let mut tally = ClientTally::default();
            loop {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                if i > payments {
                    break;
                }
                if pay(&client, &api, &token, i, t0, &mut tally).await {
                    tally.acked.push(i);
                    let n = acked.fetch_add(1, Ordering::Relaxed) + 1;
                    acked_tx.send_replace(n);
                } else {
                    tally.unanswered.push(i);
                }
            }
            tally
        });
    }

    // The faults, one at a time: a kill every K ms, and the restart as soon
    // as half of the payments are acknowledged.
    let (stop, stopped) = watch::channel(false);
    let outage = Arc::new(Mutex::new(Outage::default()));
    let driver = tokio::spawn(drive_faults(
        fleet,
        db.clone(),
        cluster.clone(),
        FaultPlan {
            kill_every: Duration::from_millis(args.kill_every_ms.max(1)),
            down_for: Duration::from_millis(args.down_ms),
            restart_at: args.payments.div_ceil(2),
            data_dir: dir.to_owned(),
            port,
        },
        acked_rx,
        outage.clone(),
        t0,
        stopped,
    ));

    drop(acked_tx);
    let mut tally = ClientTally::default();
    while let Some(t) = clients.join_next().await {
        let t = t?;
        tally.acked.extend(t.acked);
        tally.unanswered.extend(t.unanswered);
        tally.failures.extend(t.failures);
        tally.unexpected.extend(t.unexpected);
        tally.first_other_5xx = tally.first_other_5xx.or(t.first_other_5xx);
        tally.retries += t.retries;
        tally.samples.extend(t.samples);
    }
    let sent = t0.elapsed();
    // The faults last as long as the load; then the fleet recovers.
    stop.send_replace(true);
    let (mut fleet, faults) = driver.await??;
    let final_at = wait_all_final(&db, &mut fleet, Duration::from_secs(300)).await?;
    fleet.check_alive()?;
    let after = probe.snapshot();
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());
    fleet.shutdown().await;

    let outage = *outage.lock().expect("outage lock");
    let total = final_at.duration_since(t0);
    report.figure2(
        "seconds",
        total.as_secs_f64(),
        "s (first request → every operation final)",
    );
    report.figure(
        "payments_per_s",
        args.payments as f64 / total.as_secs_f64(),
        "payments/s (faults included)",
    );
    report.figure2(
        "sending_seconds",
        sent.as_secs_f64(),
        "s (first request → last answer)",
    );
    report.latency("request_latency_ms", &tally.samples.summary());
    report.count("sigkills", faults.kills);
    report.count("sigkills_of_workers_holding_jobs", faults.kills_holding);
    report.count("postgres_restarts", faults.restarts);

    // Lost: acknowledged, but at the end missing or not final.
    let keys: Vec<String> = tally.acked.iter().map(|i| key(*i)).collect();
    let final_keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM operations
         WHERE idempotency_key = ANY($1) AND status IN ('succeeded', 'failed')",
    )
    .bind(&keys)
    .fetch_all(&db)
    .await?;
    let final_keys: HashSet<String> = final_keys.into_iter().collect();
    let lost = keys.iter().filter(|k| !final_keys.contains(*k)).count();
    report.count("operations_lost", lost as u64);
    let (twice, paid, audit, succeeded, failed, rerun): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT entity_id FROM audit_log WHERE entity_type = 'invoice'
                 GROUP BY entity_id HAVING count(*) > 1) d),
                (SELECT count(*) FROM invoices WHERE status = 'PAID'),
                (SELECT count(*) FROM audit_log WHERE entity_type = 'invoice'),
                (SELECT count(*) FROM operations WHERE status = 'succeeded'),
                (SELECT count(*) FROM operations WHERE status = 'failed'),
                (SELECT count(*) FROM operations WHERE attempts > 1)",
    )
    .fetch_one(&db)
    .await?;
    report.count("invoices_paid_twice", twice as u64);
    report.count("jobs_run_again", rerun as u64);

    // 5xx: 503 while Postgres was down (or settling), and the others.
    let (down, up) = (outage.down, outage.up);
    let while_down = |f: &Failure| match (down, up) {
        (Some(d), Some(u)) => f.answered >= d && f.sent <= u + SETTLE,
        (Some(d), None) => f.answered >= d,
        _ => false,
    };
    let fives: Vec<&Failure> = tally.failures.iter().filter(|f| f.status >= 500).collect();
    let down_503 = fives.iter().filter(|f| f.status == 503 && while_down(f)).count();
    let other_5xx = fives.len() - down_503;
    let transport = tally.failures.iter().filter(|f| f.status == 0).count();
    report.count("answers_5xx", fives.len() as u64);
    report.count("answers_503_while_down", down_503 as u64);
    report.count("answers_5xx_other", other_5xx as u64);
    report.count("connection_errors", transport as u64);
    report.count("retries", tally.retries);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for f in &fives {
        *by_status.entry(f.status).or_default() += 1;
    }
    report.text(
        "answers_5xx_by_status",
        by_status
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let (Some(d), Some(u)) = (down, up) {
        report.figure2("postgres_down_at_s", d.as_secs_f64(), "s after the first request");
        report.figure2(
            "postgres_down_for_s",
            (u - d).as_secs_f64(),
            "s (stop → accepting again)",
        );
        let back = t0 + u;
        report.figure2(
            "postgres_back_to_last_final_s",
            final_at.saturating_duration_since(back).as_secs_f64(),
            "s (Postgres accepting again → every operation final)",
        );
        // The backlog of the outage: operations recorded before Postgres was
        // back (by the database's clock, which also stamps `finished_at`).
        let backlog: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(finished_at) - $1::timestamptz)::float8 FROM operations
             WHERE created_at < $1::timestamptz",
        )
        .bind(faults.up_db_time)
        .fetch_one(&db)
        .await?;
        if let Some(b) = backlog {
            report.figure2(
                "postgres_back_to_backlog_final_s",
                b.max(0.0),
                "s (Postgres back → the last operation accepted before it was back final)",
            );
        }
    }
    report.headline = format!(
        "{lost} lost, {twice} paid twice, {other_5xx} other 5xx ({down_503} 503 while down); \
         {} SIGKILLs, {} restart; all final {:.1} s after Postgres was back",
        faults.kills,
        faults.restarts,
        up.map(|u| final_at.saturating_duration_since(t0 + u).as_secs_f64())
            .unwrap_or(f64::NAN)
    );
    db.close().await;

    let n = args.payments;
    report.check(
        "every payment acknowledged",
        tally.acked.len() == n && tally.unanswered.is_empty() && tally.unexpected.is_empty(),
        format!(
            "{} of {n} acknowledged, {} given up after {MAX_ATTEMPTS} attempts, {} unexpected answers{}",
            tally.acked.len(),
            tally.unanswered.len(),
            tally.unexpected.len(),
            tally
                .unexpected
                .first()
                .map(|u| format!("; first: {u}"))
                .unwrap_or_default()
        ),
    );
    report.check(
        "no operation lost",
        lost == 0,
        format!("{lost} acknowledged operations missing or not final"),
    );
    report.check(
        "no invoice paid twice",
        twice == 0 && paid == audit && paid == succeeded,
        format!("{twice} invoices with more than one audit entry; {paid} PAID, {audit} audit entries, {succeeded} succeeded"),
    );
    report.check(
        "every payment succeeded",
        succeeded == n as i64 && failed == 0,
        format!("{succeeded} succeeded, {failed} failed (expected {n})"),
    );
    report.check(
        "no 5xx but 503 while Postgres was down",
        other_5xx == 0,
        format!(
            "{other_5xx} other 5xx{}",
            tally
                .first_other_5xx
                .as_deref()
                .map(|f| format!("; first: {f}"))
                .unwrap_or_default()
        ),
    );
    report.check(
        "the faults happened",
        faults.restarts == 1 && faults.kills >= 1,
        format!("{} restart, {} SIGKILLs", faults.restarts, faults.kills),
    );
    Ok(())
}

fn key(invoice: usize) -> String {
    format!("chaos-{invoice}")
}

/// Pays invoice `i` like a real client: retries with the same key after a
/// 503 (waiting `Retry-After`), a connection error or another 5xx. True
/// once acknowledged (202, or 200 replayed).
async fn pay(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    i: usize,
    t0: Instant,
    tally: &mut ClientTally,
) -> bool {
    let (invoice, key) = (format!("inv-{i}"), key(i));
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            tally.retries += 1;
        }
        let sent = t0.elapsed();
        let t = Instant::now();
        let answer = mark_paid(client, api, token, &invoice, &key).send().await;
        let answered = t0.elapsed();
        match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = r.text().await.unwrap_or_default();
                match status {
                    202 | 200 => {
                        tally.samples.record(t.elapsed());
                        return true;
                    }
                    500..=599 => {
                        tally.failures.push(Failure {
                            status,
                            sent,
                            answered,
                        });
                        if status != 503 && tally.first_other_5xx.is_none() {
                            tally.first_other_5xx = Some(format!(
                                "{status} at {:.2} s for {key}: {}",
                                answered.as_secs_f64(),
                                truncate(&body)
                            ));
                        }
                        let pause = match (status, retry_after) {
                            (503, Some(d)) => d.min(MAX_RETRY_AFTER),
                            _ => RETRY_PAUSE,
                        };
                        tokio::time::sleep(pause).await;
                    }
                    _ => {
                        tally
                            .unexpected
                            .push(format!("{status} for {key}: {}", truncate(&body)));
                        return false;
                    }
                }
            }
            Err(e) => {
                tally.failures.push(Failure {
                    status: 0,
                    sent,
                    answered,
                });
                if tally.first_other_5xx.is_none() && !e.is_connect() {
                    progress(format!("chaos: transport error for {key}: {e}"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    false
}

struct FaultPlan {
    kill_every: Duration,
    down_for: Duration,
    /// Acknowledged payments after which Postgres is restarted.
    restart_at: usize,
    data_dir: std::path::PathBuf,
    port: u16,
}

struct Faults {
    kills: u64,
    kills_holding: u64,
    restarts: u64,
    /// The database's clock when it accepted connections again.
    up_db_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Kills a worker every `kill_every` (one holding jobs when there is one)
/// and starts its replacement; restarts Postgres once `restart_at` payments
/// are acknowledged. One fault at a time: a replacement cannot start while
/// Postgres is down. Ends when `stop` turns true.
#[allow(clippy::too_many_arguments)]
async fn drive_faults(
    mut fleet: Fleet,
    db: sqlx::PgPool,
    cluster: Arc<Mutex<Option<PgCluster>>>,
    plan: FaultPlan,
    mut acked: watch::Receiver<usize>,
    outage: Arc<Mutex<Outage>>,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(Fleet, Faults)> {
    let mut faults = Faults {
        kills: 0,
        kills_holding: 0,
        restarts: 0,
        up_db_time: None,
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + plan.kill_every, plan.kill_every);
    // Ticks missed during the outage are not made up for in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clients_gone = false;
    let result: anyhow::Result<()> = async {
        loop {
            let restart_due = faults.restarts == 0;
            tokio::select! {
                () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
                _ = ticks.tick() => {
                    kill_one(&mut fleet, &db, &mut faults).await?;
                }
                reached = async { acked.wait_for(|n| *n >= plan.restart_at).await.is_ok() },
                    if restart_due && !clients_gone => {
                    if !reached {
                        // Every client is done, short of the mark.
                        clients_gone = true;
                        continue;
                    }
                    restart_postgres(&cluster, &plan, &outage, t0).await?;
                    faults.restarts += 1;
                    faults.up_db_time = sqlx::query_scalar("SELECT now()").fetch_one(&db).await.ok();
                    fleet.check_alive()?;
                }
            }
        }
    }
    .await;
    result.map(|()| (fleet, faults))
}

async fn kill_one(fleet: &mut Fleet, db: &sqlx::PgPool, faults: &mut Faults) -> anyhow::Result<()> {
    // The worker's name carries its pid (`queue@host-PID-ULID`).
    let holders: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lock_by FROM apalis.jobs WHERE status IN ('Queued', 'Running') AND lock_by IS NOT NULL",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    let pids = fleet.worker_pids();
    let holding = pids
        .iter()
        .copied()
        .find(|pid| holders.iter().any(|h| h.contains(&format!("-{pid}-"))));
    let Some(victim) = holding.or_else(|| pids.first().copied()) else {
        return Ok(());
    };
    if fleet.kill_worker(victim).await? {
        faults.kills += 1;
        if holding.is_some() {
            faults.kills_holding += 1;
        }
    }
    fleet.start_workers(1, db).await?;
    Ok(())
}

/// `pg_ctl stop -m fast`, `down_for` without a server, then a start on the
/// same port; the outage's times are recorded for the 503 split.
async fn restart_postgres(
    cluster: &Arc<Mutex<Option<PgCluster>>>,
    plan: &FaultPlan,
    outage: &Arc<Mutex<Outage>>,
    t0: Instant,
) -> anyhow::Result<()> {
    let old = cluster
        .lock()
        .map_err(|_| anyhow::anyhow!("cluster lock"))?
        .take()
        .context("no cluster to restart")?;
    progress("chaos: stopping Postgres");
    outage.lock().expect("outage lock").down = Some(t0.elapsed());
    tokio::task::spawn_blocking(move || old.stop()).await??;
    tokio::time::sleep(plan.down_for).await;
    let (data_dir, port) = (plan.data_dir.clone(), plan.port);
    let new = tokio::task::spawn_blocking(move || {
        PgCluster::start(ClusterOptions {
            data_dir,
            port,
            fast: false,
        })
    })
    .await??;
    outage.lock().expect("outage lock").up = Some(t0.elapsed());
    progress("chaos: Postgres accepting connections again");
    // `start` disarmed the watchdog of the first start: arm it again.
    new.stop_when_process_exits(std::process::id(), true)?;
    *cluster.lock().map_err(|_| anyhow::anyhow!("cluster lock"))? = Some(new);
    Ok(())
}
