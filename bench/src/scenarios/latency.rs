//! `latency`: an open loop — requests arrive at a fixed rate whatever the
//! answers do — each new mark-paid with `Prefer: wait=10`; the time from the
//! request's scheduled send to its final answer (a 202 after the wait is
//! followed by waiting polls of the operation).
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::{
    at_most, check_payments, fleet, mark_paid, payments::truncate, profile_reset, profile_take,
    seed_invoices, wait_all_final,
};
use crate::{
    cpu::CpuProbe,
    dbstats::DbSnapshot,
    load::http_client,
    progress,
    report::Report,
    server::{RunDb, Server},
    stats::Samples,
};

const TARGET_P50_MS: f64 = 15.0;
const TARGET_P99_MS: f64 = 50.0;

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Arrivals per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// How one request ended.
struct Outcome {
    latency: Duration,
    /// Final HTTP status of the operation's response (0: none).
    status: u16,
    polls: u32,
    send_lag: Duration,
    note: Option<String>,
}

pub async fn run(server: &Server, db: &RunDb, args: &LatencyArgs, report: &mut Report) -> anyhow::Result<()> {
    let n = args.rate * args.seconds;
    report.param("rate", args.rate);
    report.param("seconds", args.seconds);
    report.param("workers", args.workers);
    seed_invoices(&db.pool, n).await?;
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    fleet.start_workers(args.workers, &db.pool).await?;
    let client = http_client()?;

    progress(format!(
        "latency: {} requests/s for {} s (open loop, Prefer: wait=10)",
        args.rate, args.seconds
    ));
    let probe = CpuProbe::new(fleet.api_pid(), fleet.worker_pids(), &db.pool).await;
    let db_before = DbSnapshot::take(&db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    let t0 = Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let scheduled = t0 + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, api, token) = (client.clone(), fleet.api_url.clone(), db.token.clone());
        tasks.spawn(async move { one(&client, &api, &token, i + 1, scheduled).await });
    }
    let mut samples = Samples::default();
    let (mut polled, mut bad, mut first_bad, mut max_lag) = (0u64, 0u64, None, Duration::ZERO);
    while let Some(o) = tasks.join_next().await {
        let o = o?;
        samples.record(o.latency);
        max_lag = max_lag.max(o.send_lag);
        if o.polls > 0 {
            polled += 1;
        }
        if o.status != 200 {
            bad += 1;
            if first_bad.is_none() {
                first_bad = o.note;
            }
        }
    }
    let elapsed = t0.elapsed();
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take(&db.pool).await;
    report.cpu = Some(probe.split(&before, &after));
    report.set_rss(fleet.rss());
    wait_all_final(&db.pool, &mut fleet, Duration::from_secs(60)).await?;

    let l = samples.summary();
    report.latency("send_to_final_ms", &l);
    stages(db, report).await?;
    report.figure(
        "achieved_rate",
        n as f64 / elapsed.as_secs_f64(),
        "requests/s (send to last answer)",
    );
    report.count("answered_after_polling", polled);
    report.figure(
        "max_send_lag_ms",
        max_lag.as_secs_f64() * 1000.0,
        "ms (generator behind schedule)",
    );
    DbSnapshot::report(db_before, db_after, n as f64, "op", report);
    report.headline = format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms at {}/s",
        l.p50, l.p99, l.max, args.rate
    );
    at_most(report, "p50 send → final", l.p50, TARGET_P50_MS, "ms");
    at_most(report, "p99 send → final", l.p99, TARGET_P99_MS, "ms");
    report.note("targets apply at half the sustainable rate (see payments operations/s)");
    report.check(
        "every request answered 200 (paid)",
        bad == 0,
        format!(
            "{bad} of {n} not 200{}",
            first_bad.map(|b| format!("; first: {b}")).unwrap_or_default()
        ),
    );
    check_payments(&db.pool, report, Some(n as i64)).await?;
    fleet.shutdown().await;
    Ok(())
}

async fn one(client: &reqwest::Client, api: &str, token: &str, invoice: u64, scheduled: Instant) -> Outcome {
    let send_lag = Instant::now().saturating_duration_since(scheduled);
    let name = format!("inv-{invoice}");
    let key = format!("lat-{invoice}");
    let fail = |note: String, polls| Outcome {
        latency: scheduled.elapsed(),
        status: 0,
        polls,
        send_lag,
        note: Some(note),
    };
    let r = match mark_paid(client, api, token, &name, &key)
        .header("prefer", "wait=10")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(format!("transport error: {e}"), 0),
    };
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    if status != 202 {
        return Outcome {
            latency: scheduled.elapsed(),
            status,
            polls: 0,
            send_lag,
            note: Some(format!("{status}: {}", truncate(&body))),
        };
    }
    // Not final within the wait: poll the operation (each poll waits too).
    let id = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    let Some(id) = id else {
        return fail(format!("202 without an operation id: {}", truncate(&body)), 0);
    };
    for polls in 1..=6 {
        let r = client
            .get(format!("{api}/operations/{id}"))
            .bearer_auth(token)
            .header("prefer", "wait=10")
            .send()
            .await;
        let op: Value = match r {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => return fail(format!("transport error: {e}"), polls),
        };
        if op["status"] == "succeeded" || op["status"] == "failed" {
            return Outcome {
                latency: scheduled.elapsed(),
                status: op["response"]["status"].as_u64().unwrap_or(0) as u16,
                polls,
                send_lag,
                note: Some(format!("operation {id}: {}", truncate(&op.to_string()))),
            };
        }
    }
    fail(format!("operation {id} not final after 60 s"), 6)
}

/// Where the time went, from the database's clocks: the request's commit
/// (`operations.created_at`) to the job's fetch or start (`apalis.jobs.lock_at`),
/// to the effect's commit (`finished_at`). The rest of a client's latency is
/// the API before its commit and the wake-up of the waiting request after.
async fn stages(db: &RunDb, report: &mut Report) -> anyhow::Result<()> {
    type Row = (
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let row: Row = sqlx::query_as(
        "WITH s AS (
             SELECT extract(epoch FROM j.lock_at - o.created_at) * 1000 AS queued,
                    extract(epoch FROM o.finished_at - j.lock_at) * 1000 AS running,
                    extract(epoch FROM o.finished_at - o.created_at) * 1000 AS total
             FROM operations o JOIN apalis.jobs j ON j.id = o.job_id
             WHERE o.finished_at IS NOT NULL)
         SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY queued)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY queued)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY running)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY running)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY total)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY total)::float8
         FROM s",
    )
    .fetch_one(&db.pool)
    .await?;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "?".into());
    report.results.push((
        "stages_ms".into(),
        serde_json::json!({
            "queued_p50": row.0, "queued_p99": row.1,
            "running_p50": row.2, "running_p99": row.3,
            "commit_to_finished_p50": row.4, "commit_to_finished_p99": row.5,
        }),
        format!(
            "request commit → job taken (lock_at) p50 {} p99 {} | taken → effect committed p50 {} p99 {} | both p50 {} p99 {} ms",
            f(row.0), f(row.1), f(row.2), f(row.3), f(row.4), f(row.5)
        ),
    ));
    pauses(db, report).await
}

/// The longest pauses with no effect committed anywhere in the fleet while
/// requests kept being recorded: a stall that every operation in flight
/// shares (a slow WAL flush of the disk, the machine's scheduler) shows
/// here as one long gap, a slow worker or a queue in idemq does not.
async fn pauses(db: &RunDb, report: &mut Report) -> anyhow::Result<()> {
    let rows: Vec<(f64, f64, i64)> = sqlx::query_as(
        "WITH f AS (
             SELECT finished_at, lag(finished_at) OVER (ORDER BY finished_at) AS prev
             FROM operations WHERE finished_at IS NOT NULL
         ), t0 AS (SELECT min(created_at) AS t0 FROM operations)
         SELECT (extract(epoch FROM f.finished_at - f.prev) * 1000)::float8,
                extract(epoch FROM f.prev - t0.t0)::float8,
                (SELECT count(*) FROM operations o
                 WHERE o.created_at > f.prev AND o.created_at < f.finished_at)
         FROM f, t0 WHERE f.prev IS NOT NULL
         ORDER BY f.finished_at - f.prev DESC LIMIT 3",
    )
    .fetch_all(&db.pool)
    .await?;
    let text = rows
        .iter()
        .map(|(gap, at, recorded)| format!("{gap:.0} ms at {at:.1} s ({recorded} recorded meanwhile)"))
        .collect::<Vec<_>>()
        .join(" | ");
    report.results.push((
        "longest_pauses".into(),
        serde_json::json!(rows
            .iter()
            .map(|(gap, at, recorded)| serde_json::json!({"ms": gap, "at_s": at, "recorded": recorded}))
            .collect::<Vec<_>>()),
        format!("no effect committed for {text}"),
    ));
    Ok(())
}
