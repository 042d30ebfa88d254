//! `latency`: an open loop — requests arrive at a fixed rate whatever the
//! answers do — each new mark-paid with `Prefer: wait=10`; the time from the
//! request's scheduled send to its final answer (a 202 after the wait is
//! followed by waiting polls of the operation).
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::Value;

use super::{
    at_most, check_payments, fleet, mark_paid, payments::truncate, profile_reset, profile_take, seed_history,
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
    /// Seconds of the same load before the measured ones, reported on their
    /// own: the fleet's first requests after it started.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
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
    invoice: u64,
}

pub async fn run(server: &Server, db: &RunDb, args: &LatencyArgs, report: &mut Report) -> anyhow::Result<()> {
    let n = args.rate * args.seconds;
    // Invoices 1..=warm are the warm-up's, the next n the measured ones.
    let warm = args.rate * args.warmup;
    report.param("rate", args.rate);
    report.param("seconds", args.seconds);
    report.param("warmup", args.warmup);
    report.param("workers", args.workers);
    seed_invoices(&db.pool, warm + n).await?;
    seed_history(db, server.history, report).await?;
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    fleet.start_workers(args.workers, &db.pool).await?;
    let client = http_client()?;

    progress(format!(
        "latency: {} requests/s for {} s after {} s of warm-up (open loop, Prefer: wait=10)",
        args.rate, args.seconds, args.warmup
    ));
    let probe = CpuProbe::new(fleet.api_pid(), fleet.worker_pids(), &db.pool).await;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let send = |first: u64, count: u64, start: Instant| {
        let (client, api, token) = (client.clone(), fleet.api_url.clone(), db.token.clone());
        open_loop(client, api, token, interval, first, count, start)
    };
    // The warm-up first, on its own: the counters below need a quiet moment.
    let warmup = send(1, warm, Instant::now()).await?;
    let db_before = DbSnapshot::take(&db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    // The database's clocks are wall clocks: `stages` and `slowest` put the
    // measured requests' schedule on the same axis.
    let t0 = Instant::now() + Duration::from_millis(20);
    let wall_t0 = SystemTime::now() + t0.saturating_duration_since(Instant::now());
    let measured = send(warm + 1, n, t0).await?;
    let mut samples = Samples::default();
    let mut timeline = Vec::with_capacity(n as usize);
    let (mut polled, mut bad, mut first_bad, mut max_lag) = (0u64, 0u64, None, Duration::ZERO);
    for o in &measured {
        samples.record(o.latency);
        timeline.push((o.invoice, o.latency));
        max_lag = max_lag.max(o.send_lag);
        if o.polls > 0 {
            polled += 1;
        }
    }
    for o in warmup.iter().chain(&measured) {
        if o.status != 200 {
            bad += 1;
            if first_bad.is_none() {
                first_bad = o.note.clone();
            }
        }
    }
    let elapsed = t0.elapsed();
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take_settled(&db.pool).await;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());
    wait_all_final(&db.pool, &mut fleet, Duration::from_secs(60)).await?;

    let l = samples.summary();
    report.latency("send_to_final_ms", &l);
    if !warmup.is_empty() {
        let mut w = Samples::default();
        warmup.iter().for_each(|o| w.record(o.latency));
        report.latency("warmup_send_to_final_ms", &w.summary());
    }
    stages(db, report, wall_t0).await?;
    pauses(db, report, wall_t0).await?;
    stage_medians(db, report, wall_t0, interval, warm, &timeline, Band::All).await?;
    stage_medians(db, report, wall_t0, interval, warm, &timeline, Band::Slowest).await?;
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
            "{bad} of {} not 200{}",
            warm + n,
            first_bad.map(|b| format!("; first: {b}")).unwrap_or_default()
        ),
    );
    check_payments(&db.pool, report, Some((warm + n) as i64)).await?;
    fleet.shutdown().await;
    Ok(())
}

/// Sends invoices `first..first + count` at `interval` from `start`, each
/// on its own task whatever the answers do, and waits for every outcome.
async fn open_loop(
    client: reqwest::Client,
    api: String,
    token: String,
    interval: Duration,
    first: u64,
    count: u64,
    start: Instant,
) -> anyhow::Result<Vec<Outcome>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, api, token) = (client.clone(), api.clone(), token.clone());
        tasks.spawn(async move { one(&client, &api, &token, first + i, scheduled).await });
    }
    let mut outcomes = Vec::with_capacity(count as usize);
    while let Some(o) = tasks.join_next().await {
        outcomes.push(o?);
    }
    Ok(outcomes)
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
        invoice,
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
            invoice,
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
                invoice,
            };
        }
    }
    fail(format!("operation {id} not final after 60 s"), 6)
}

/// `at` as the database's `extract(epoch …)` gives it.
fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Milliseconds for a report line (`?`: none).
fn one_decimal(ms: Option<f64>) -> String {
    ms.map(|v| format!("{v:.1}")).unwrap_or_else(|| "?".into())
}

/// Where the measured requests' time went, from the database's clocks: the
/// record's transaction (`operations.created_at`) to the job's fetch
/// (`apalis.jobs.lock_at`), to the job's transaction (`finished_at` is its
/// `now()`). The rest of a client's latency is the API before its record,
/// the job's statements and commit, and the wake-up of the waiting request.
async fn stages(db: &RunDb, report: &mut Report, wall_t0: SystemTime) -> anyhow::Result<()> {
    let t0 = epoch_seconds(wall_t0);
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
             WHERE o.finished_at IS NOT NULL AND o.created_at >= to_timestamp($1))
         SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY queued)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY queued)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY running)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY running)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY total)::float8,
                percentile_disc(0.99) WITHIN GROUP (ORDER BY total)::float8
         FROM s",
    )
    .bind(t0)
    .fetch_one(&db.pool)
    .await?;
    let f = one_decimal;
    report.results.push((
        "stages_ms".into(),
        serde_json::json!({
            "queued_p50": row.0, "queued_p99": row.1,
            "running_p50": row.2, "running_p99": row.3,
            "commit_to_finished_p50": row.4, "commit_to_finished_p99": row.5,
        }),
        format!(
            "record → job taken (lock_at) p50 {} p99 {} | taken → job transaction starts p50 {} p99 {} | record → job starts p50 {} p99 {} ms",
            f(row.0), f(row.1), f(row.2), f(row.3), f(row.4), f(row.5)
        ),
    ));
    Ok(())
}

/// Which requests `stage_medians` describes.
#[derive(Clone, Copy, PartialEq)]
enum Band {
    /// Every measured request: where the typical (p50) request's time goes.
    All,
    /// Those at or above the p99.
    Slowest,
}

/// Where the requests' time went (every request, or the slowest: those at
/// or above the p99), each request's stages from its own clocks: scheduled
/// send → the record's
/// transaction starts (`operations.created_at`: the HTTP request, auth, the
/// API's wait for a connection) → the job is fetched (`lock_at`: the
/// record's commit, its notice, the worker's wake-up and fetch) → the job's
/// transaction starts (`finished_at` is its `now()`: a free slot, the
/// connection) → the answer is read (the job's statements and commit, the
/// notice to the waiting request, its read-back and the response). And how
/// many distinct 100 ms windows of the schedule they fall in: a few
/// windows mean a stall shared by everything in flight, many mean
/// requests slow on their own.
async fn stage_medians(
    db: &RunDb,
    report: &mut Report,
    wall_t0: SystemTime,
    interval: Duration,
    warm: u64,
    timeline: &[(u64, Duration)],
    band: Band,
) -> anyhow::Result<()> {
    let t0 = epoch_seconds(wall_t0);
    let mut slow: Vec<_> = timeline.iter().collect();
    if band == Band::Slowest {
        // The slowest 1 % by rank (at least one): the p99 and above.
        slow.sort_unstable_by_key(|(_, latency)| std::cmp::Reverse(*latency));
        slow.truncate(timeline.len().div_ceil(100).max(1));
    }
    let keys: Vec<String> = slow.iter().map(|(i, _)| format!("lat-{i}")).collect();
    // Scheduled send, epoch seconds: invoice warm + 1 was sent at t0.
    let sent: Vec<f64> = slow
        .iter()
        .map(|(i, _)| t0 + interval.as_secs_f64() * (*i - warm - 1) as f64)
        .collect();
    let answered: Vec<f64> = slow
        .iter()
        .zip(&sent)
        .map(|((_, l), s)| s + l.as_secs_f64())
        .collect();
    type Row = (
        i64,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        i64,
        Option<String>,
        Vec<i64>,
    );
    let row: Row = sqlx::query_as(
        "WITH c AS (SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[]) AS c(key, sent, answered)),
         s AS (
             SELECT (extract(epoch FROM o.created_at) - c.sent) * 1000 AS to_record,
                    extract(epoch FROM j.lock_at - o.created_at) * 1000 AS to_fetch,
                    extract(epoch FROM o.finished_at - j.lock_at) * 1000 AS to_open,
                    (c.answered - extract(epoch FROM o.finished_at)) * 1000 AS to_answer,
                    (c.answered - c.sent) * 1000 AS total,
                    floor((c.sent - $4) * 10) / 10 AS win
             FROM c JOIN operations o ON o.idempotency_key = c.key
                    JOIN apalis.jobs j ON j.id = o.job_id
             WHERE o.finished_at IS NOT NULL)
         SELECT count(*),
                percentile_disc(0.5) WITHIN GROUP (ORDER BY to_record)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY to_fetch)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY to_open)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY to_answer)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY total)::float8,
                count(DISTINCT win),
                (SELECT string_agg(format('%s s: %s', w, n), ', ' ORDER BY w)
                 FROM (SELECT win AS w, count(*) AS n FROM s GROUP BY win) g),
                ARRAY[count(*) FILTER (WHERE to_record = m), count(*) FILTER (WHERE to_fetch = m),
                      count(*) FILTER (WHERE to_open = m), count(*) FILTER (WHERE to_answer = m)]
         FROM (SELECT *, greatest(to_record, to_fetch, to_open, to_answer) AS m FROM s) s",
    )
    .bind(&keys)
    .bind(&sent)
    .bind(&answered)
    .bind(t0)
    .fetch_one(&db.pool)
    .await?;
    let f = one_decimal;
    let name = match band {
        Band::All => "stages_of_all_ms",
        Band::Slowest => "slowest_stages_ms",
    };
    report.results.push((
        name.into(),
        serde_json::json!({
            "requests": row.0, "to_record_p50": row.1, "to_fetch_p50": row.2,
            "to_open_p50": row.3, "to_answer_p50": row.4, "total_p50": row.5,
            "windows_100ms": row.6, "windows": row.7, "longest_stage_counts": row.8,
        }),
        match band {
            // Spread over the whole run: the windows say nothing.
            Band::All => format!(
                "the {} requests, medians: send → record starts {} | → job fetched {} | → job opens {} | → answered {} | total {} ms",
                row.0, f(row.1), f(row.2), f(row.3), f(row.4), f(row.5)
            ),
            Band::Slowest => format!(
                "the {} requests ≥ p99, medians: send → record starts {} | → job fetched {} | → job opens {} | → answered {} | total {} ms; in {} windows of 100 ms ({}); longest stage (record, fetched, opens, answered): {:?}",
                row.0, f(row.1), f(row.2), f(row.3), f(row.4), f(row.5), row.6, row.7.unwrap_or_default(), row.8
            ),
        },
    ));
    Ok(())
}

/// The longest pauses in the measured seconds with no job's transaction
/// started anywhere in the fleet (`finished_at`) while requests kept being
/// recorded: a stall that every operation in flight shares (a slow WAL
/// flush of the disk, the machine's scheduler) shows here as one long gap,
/// a slow worker or a queue in idemq does not.
async fn pauses(db: &RunDb, report: &mut Report, wall_t0: SystemTime) -> anyhow::Result<()> {
    let t0 = epoch_seconds(wall_t0);
    let rows: Vec<(f64, f64, i64)> = sqlx::query_as(
        "WITH f AS (
             SELECT finished_at, lag(finished_at) OVER (ORDER BY finished_at) AS prev
             FROM operations WHERE finished_at IS NOT NULL AND created_at >= to_timestamp($1)
         ), t0 AS (SELECT to_timestamp($1) AS t0)
         SELECT (extract(epoch FROM f.finished_at - f.prev) * 1000)::float8,
                extract(epoch FROM f.prev - t0.t0)::float8,
                (SELECT count(*) FROM operations o
                 WHERE o.created_at > f.prev AND o.created_at < f.finished_at)
         FROM f, t0 WHERE f.prev IS NOT NULL
         ORDER BY f.finished_at - f.prev DESC LIMIT 3",
    )
    .bind(t0)
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
        format!("no job transaction started for {text}"),
    ));
    Ok(())
}
