//! `enqueue`: the API's record + enqueue path alone (no worker), beside the
//! durable-commit ceiling of the same server at the same concurrency.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;

use super::{fleet, mark_paid, profile_reset, profile_take};
use crate::{
    cpu::CpuProbe,
    dbstats::DbSnapshot,
    load::{closed_loop_for, http_client, Reply},
    progress,
    report::Report,
    server::{RunDb, Server},
    stats::Samples,
};

/// Issue 8: the API path should reach 0.7 of the bare commit rate.
const TARGET_RATIO: f64 = 0.7;

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    /// Concurrent HTTP clients (and ceiling connections).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Duration of each of the two phases.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Skip the second ceiling (each transaction also NOTIFYs, as an enqueue
    /// does through apalis's insert trigger).
    #[arg(long)]
    pub no_notify_ceiling: bool,
}

pub async fn run(server: &Server, db: &RunDb, args: &EnqueueArgs, report: &mut Report) -> anyhow::Result<()> {
    report.param("clients", args.clients);
    report.param("seconds", args.seconds);
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    let client = http_client()?;
    let api = fleet.api_url.clone();
    let token = db.token.clone();

    // Warm-up (not measured): connections, token cache, plans.
    let warm = {
        let (client, api, token) = (client.clone(), api.clone(), token.clone());
        closed_loop_for(args.clients, Duration::from_millis(500), move |c, n| {
            let key = format!("warm-{c}-{n}");
            let req = mark_paid(&client, &api, &token, &key, &key);
            async move { accepted(req).await }
        })
        .await
    };

    progress(format!(
        "enqueue: {} clients for {} s over HTTP",
        args.clients, args.seconds
    ));
    let probe = CpuProbe::new(fleet.api_pid(), vec![], &db.pool).await;
    let db_before = DbSnapshot::take_settled(&db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    let load = {
        let (client, api, token) = (client.clone(), api.clone(), token.clone());
        closed_loop_for(args.clients, Duration::from_secs(args.seconds), move |c, n| {
            let key = format!("enq-{c}-{n}");
            let req = mark_paid(&client, &api, &token, &key, &key);
            async move { accepted(req).await }
        })
        .await
    };
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take_settled(&db.pool).await;
    fleet.check_alive()?;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());

    progress(format!(
        "enqueue: durable-commit ceiling, {} connections for {} s",
        args.clients, args.seconds
    ));
    let duration = Duration::from_secs(args.seconds);
    let ceiling = ceiling_phase(db, args.clients, duration, false, report).await?;
    if !args.no_notify_ceiling {
        progress(format!(
            "enqueue: the same with a NOTIFY in each transaction, {} connections for {} s",
            args.clients, args.seconds
        ));
        ceiling_phase(db, args.clients, duration, true, report).await?;
    }

    let rate = load.rate();
    let ratio = rate / ceiling.max(1e-9);
    report.results.insert(
        0,
        (
            "requests_per_s".into(),
            serde_json::json!((rate * 10.0).round() / 10.0),
            format!("{rate:.1} requests/s"),
        ),
    );
    let l = load.samples().summary();
    report
        .results
        .insert(1, ("latency_ms".into(), serde_json::to_value(l)?, l.line()));
    report.ratio("ratio_to_ceiling", ratio);
    DbSnapshot::report(db_before, db_after, load.count() as f64, "request", report);
    report.text("statuses", load.statuses_text());
    report.headline = format!("{rate:.0} req/s = {ratio:.2} of ceiling {ceiling:.0}/s");
    report.target(
        "API rate / commit ceiling",
        &format!("≥ {TARGET_RATIO}"),
        format!("{ratio:.3}"),
        ratio >= TARGET_RATIO,
    );

    // Correctness: every 202 is one operation with exactly one job.
    let accepted_total =
        warm.statuses.get(&202).copied().unwrap_or(0) + load.statuses.get(&202).copied().unwrap_or(0);
    report.check(
        "every request accepted (202)",
        load.unexpected == 0 && warm.unexpected == 0,
        match &load.first_unexpected {
            Some(n) => format!("{} unexpected answers; first: {n}", load.unexpected),
            None => format!(
                "{} of {} answers were 202",
                load.statuses.get(&202).copied().unwrap_or(0),
                load.count()
            ),
        },
    );
    let (operations, with_job): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM operations),
                (SELECT count(*) FROM operations o JOIN apalis.jobs j ON j.id = o.job_id)",
    )
    .fetch_one(&db.pool)
    .await?;
    report.check(
        "one operation and one job per accepted request",
        operations == accepted_total as i64 && with_job == operations,
        format!("{accepted_total} accepted, {operations} operations, {with_job} with their job"),
    );
    fleet.shutdown().await;
    Ok(())
}

async fn accepted(req: reqwest::RequestBuilder) -> Reply {
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            // Read the body: the request is complete only then.
            let _ = r.bytes().await;
            Reply::expect(s, s == 202, || format!("status {s}"))
        }
        Err(e) => Reply::transport(e),
    }
}

/// One ceiling phase: its rate and WAL figures under `ceiling_` (plain) or
/// `ceiling_notify_` (each transaction also NOTIFYs, as every enqueue does
/// through apalis's insert trigger). Returns commits/s.
async fn ceiling_phase(
    db: &RunDb,
    clients: usize,
    duration: Duration,
    notify: bool,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let before = DbSnapshot::take_settled(&db.pool).await;
    let (rate, latency) = commit_ceiling(db, clients, duration, notify).await?;
    let after = DbSnapshot::take_settled(&db.pool).await;
    let (prefix, what) = if notify {
        (
            "ceiling_notify_",
            "commits/s (one-row insert + pg_notify + commit)",
        )
    } else {
        ("ceiling_", "commits/s (one-row insert + commit)")
    };
    let mut r = Report::new("ceiling");
    r.figure("commits_per_s", rate, what);
    r.latency("latency_ms", &latency.summary());
    DbSnapshot::report(before, after, latency.len() as f64, "commit", &mut r);
    for (k, v, text) in r.results {
        report.results.push((format!("{prefix}{k}"), v, text));
    }
    Ok(rate)
}

/// `clients` connections, each inserting one row and committing (autocommit,
/// one statement), as fast as it can: the server's durable-commit rate at
/// that concurrency. With `notify`, the statement also calls `pg_notify`.
pub async fn commit_ceiling(
    db: &RunDb,
    clients: usize,
    duration: Duration,
    notify: bool,
) -> anyhow::Result<(f64, Samples)> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_commit_ceiling (
             id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&db.pool)
    .await?;
    let sql = if notify {
        "WITH i AS (INSERT INTO bench_commit_ceiling (client) VALUES ($1) RETURNING id)
         SELECT pg_notify('idemq_bench_ceiling', id::text) FROM i"
    } else {
        "INSERT INTO bench_commit_ceiling (client) VALUES ($1)"
    };
    let pool = crate::server::pool(&db.url, clients as u32).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let pool = pool.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut samples = Samples::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                sqlx::query(sql).bind(c as i32).execute(&mut *conn).await?;
                samples.record(t.elapsed());
            }
            anyhow::Ok(samples)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Samples::default();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((all.len() as f64 / elapsed, all))
}
