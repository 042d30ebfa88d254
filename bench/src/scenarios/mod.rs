//! The scenarios and what they share: seeding, the mark-paid request, the
//! wait for every operation to be final, the correctness checks, profiling.
mod chaos;
mod cleanup;
mod drain;
mod enqueue;
mod latency;
mod limited;
mod payments;
mod replay;
mod scale;

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, FromArgMatches};
use sqlx::PgPool;

pub use chaos::ChaosArgs;
pub use cleanup::CleanupArgs;
pub use drain::DrainArgs;
pub use enqueue::EnqueueArgs;
pub use latency::LatencyArgs;
pub use limited::LimitedArgs;
pub use payments::PaymentsArgs;
pub use replay::ReplayArgs;
pub use scale::ScaleArgs;

use crate::{
    fleet::Fleet,
    progress,
    report::{Report, Statement},
    server::{RunDb, Server},
    BenchArgs, Scenario,
};

/// The body every mark-paid request of the bench sends.
pub const MARK_PAID_BODY: &str = r#"{"paymentMethod":"card"}"#;

pub async fn run(server: &Server, args: &BenchArgs) -> anyhow::Result<Vec<Report>> {
    let list = match &args.scenario {
        Scenario::All => vec![
            Scenario::Enqueue(defaults()),
            Scenario::Drain(defaults()),
            Scenario::Payments(defaults()),
            Scenario::Latency(defaults()),
            Scenario::Replay(defaults()),
            Scenario::Limited(defaults()),
            Scenario::Cleanup(defaults()),
        ],
        one => vec![one.clone()],
    };
    let mut reports = Vec::new();
    for scenario in &list {
        reports.push(run_one(server, scenario).await);
    }
    Ok(reports)
}

/// A scenario's flags with their defaults (for `all`).
fn defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    T::from_arg_matches(&cmd.get_matches_from(["defaults"])).expect("defaults parse")
}

async fn run_one(server: &Server, scenario: &Scenario) -> Report {
    let name = match scenario {
        Scenario::Enqueue(_) => "enqueue",
        Scenario::Drain(_) => "drain",
        Scenario::Payments(_) => "payments",
        Scenario::Latency(_) => "latency",
        Scenario::Replay(_) => "replay",
        Scenario::Limited(_) => "limited",
        Scenario::Cleanup(_) => "cleanup",
        Scenario::Chaos(_) => "chaos",
        Scenario::Scale(_) => "scale",
        Scenario::All => unreachable!("expanded by run"),
    };
    // Runs on a private cluster of its own (it restarts Postgres).
    if let Scenario::Chaos(a) = scenario {
        progress("scenario chaos: preparing its own cluster");
        let mut report = Report::new(name);
        if let Err(e) = chaos::run(server, a, &mut report).await {
            progress(format!("scenario {name} failed: {e:#}"));
            report.error = Some(format!("{e:#}"));
        }
        progress(format!("scenario {name}: done"));
        return report;
    }
    progress(format!("scenario {name}: preparing a fresh database"));
    let mut report = Report::new(name);
    if let Some(note) = &server.profile_note {
        report.note(note.clone());
    }
    if server.async_commit {
        report.param("experiment_async_commit", true);
        report.note(
            "experiment: synchronous_commit = off for this database (commits do not wait for the disk)",
        );
    }
    let db = match server.fresh_db(name).await {
        Ok(db) => db,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    let result = match scenario {
        Scenario::Enqueue(a) => enqueue::run(server, &db, a, &mut report).await,
        Scenario::Drain(a) => drain::run(server, &db, a, &mut report).await,
        Scenario::Payments(a) => payments::run(server, &db, a, &mut report).await,
        Scenario::Latency(a) => latency::run(server, &db, a, &mut report).await,
        Scenario::Replay(a) => replay::run(server, &db, a, &mut report).await,
        Scenario::Limited(a) => limited::run(server, &db, a, &mut report).await,
        Scenario::Cleanup(a) => cleanup::run(server, &db, a, &mut report).await,
        Scenario::Scale(a) => scale::run(server, &db, a, &mut report).await,
        Scenario::Chaos(_) | Scenario::All => unreachable!(),
    };
    if let Err(e) = result {
        progress(format!("scenario {name} failed: {e:#}"));
        report.error = Some(format!("{e:#}"));
    }
    server.drop_db(db).await;
    progress(format!("scenario {name}: done"));
    report
}

/// A fleet for this scenario (its children's logs are named after it).
fn fleet(server: &Server, db: &RunDb, report: &Report) -> Fleet {
    Fleet::new(&server.exe, &db.url, &server.logs, &report.scenario)
}

/// Unpaid invoices `inv-1` … `inv-n`.
async fn seed_invoices(pool: &PgPool, n: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO invoices (id, amount_cents)
         SELECT 'inv-' || n, 1000 + (n % 50) * 100 FROM generate_series(1, $1) n",
    )
    .bind(n as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The idempotency keys of `seed_history`'s operations start so.
const HISTORY_KEY_PREFIX: &str = "history-";

/// `n` finished payments of the past day (keys `history-…`), then `ANALYZE`:
/// the tables and the planner's statistics of a deployment in its steady
/// state (`--history`). Created over the last 23 hours and kept a day each,
/// none expires within the hour: the cleanup duty deletes none of them
/// during a run.
/// The operations only: the fetch and the job transaction reach them by
/// primary key, the queue's fetch index holds pending jobs only.
async fn seed_history(db: &RunDb, n: u64, report: &mut Report) -> anyhow::Result<()> {
    report.param("history", n);
    if n == 0 {
        return Ok(());
    }
    sqlx::query(
        r#"INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, status,
                                queue, job_id, attempts, response_status, response_content_type,
                                response_body, created_at, updated_at, finished_at, expires_at)
         SELECT gen_random_uuid(), $1, $2 || i, sha256(convert_to($2 || i, 'UTF8')), 'invoice.mark_paid',
                jsonb_build_object('params', jsonb_build_object('id', 'old-' || i),
                                   'body', jsonb_build_object('paymentMethod', 'card')),
                'succeeded', 'payments', $2 || i, 1, 200, 'application/json',
                '{"invoice":{"id":"old-' || i || '","status":"PAID"}}', at, at, at, at + interval '1 day'
         FROM generate_series(1, $3) i,
              LATERAL (SELECT now() - interval '23 hours' * i / ($3 + 1) AS at) t"#,
    )
    .bind(db.principal.id())
    .bind(HISTORY_KEY_PREFIX)
    .bind(n as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query("ANALYZE operations").execute(&db.pool).await?;
    // What the fleet's plans will be made for: the planner's row count.
    let planned: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'operations'::regclass")
            .fetch_one(&db.pool)
            .await?;
    report.param("history_planner_rows", planned.round() as i64);
    Ok(())
}

/// `PATCH /invoices/{invoice}/mark-paid` with a key.
fn mark_paid(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    invoice: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    client
        .patch(format!("{api}/invoices/{invoice}/mark-paid"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(MARK_PAID_BODY)
}

async fn unfinished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        // `finished_at IS NULL` is the unfinished operations' partial index.
        sqlx::query_scalar("SELECT count(*) FROM operations WHERE finished_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Polls until no operation is queued or running; the moment it saw that.
/// How long to wait before counting the operations left again. The count
/// reads an index entry per operation left, and at 20,000 left every 20 ms
/// it cost Postgres ≈ 0.09 ms per job of a drain (README, "Issue 14"): the
/// bench took CPU from what it measured. So, while many are left, wait as
/// long as the fleet needs at least for them at 5,000 jobs/s (more than any
/// run here reaches, so the wait never passes the end); the last 100 are
/// looked for every 20 ms, as before, which bounds the clock's error.
fn next_look(left: i64) -> Duration {
    const FASTEST_JOBS_PER_S: u64 = 5_000;
    let at_least = Duration::from_millis(u64::try_from(left).unwrap_or(0) * 1_000 / FASTEST_JOBS_PER_S);
    at_least.clamp(Duration::from_millis(20), Duration::from_secs(1))
}

async fn wait_all_final(pool: &PgPool, fleet: &mut Fleet, deadline: Duration) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        let left = unfinished(pool).await?;
        if left == 0 {
            return Ok(Instant::now());
        }
        fleet.check_alive()?;
        if started.elapsed() > deadline {
            bail!("{left} operations still queued or running after {deadline:?}");
        }
        tokio::time::sleep(next_look(left)).await;
    }
}

/// The payment checks: no invoice paid twice, every operation final, and
/// (when given) exactly `expected` invoices paid, audit entries and
/// succeeded operations.
async fn check_payments(pool: &PgPool, report: &mut Report, expected: Option<i64>) -> anyhow::Result<()> {
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT entity_id FROM audit_log WHERE entity_type = 'invoice'
         GROUP BY entity_id HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        "every invoice paid at most once",
        twice == 0,
        format!("{twice} invoices with more than one audit entry"),
    );
    let left = unfinished(pool).await?;
    report.check(
        "every operation final",
        left == 0,
        format!("{left} operations queued or running"),
    );
    if let Some(n) = expected {
        let (paid, audit, succeeded, operations): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM invoices WHERE status = 'PAID'),
                    (SELECT count(*) FROM audit_log WHERE entity_type = 'invoice'),
                    (SELECT count(*) FROM operations WHERE status = 'succeeded' AND NOT starts_with(idempotency_key, $1)),
                    (SELECT count(*) FROM operations WHERE NOT starts_with(idempotency_key, $1))",
        )
        .bind(HISTORY_KEY_PREFIX)
        .fetch_one(pool)
        .await?;
        report.check("invoices paid", paid == n, format!("{paid} PAID (expected {n})"));
        report.check("audit entries", audit == n, format!("{audit} (expected {n})"));
        report.check(
            "operations succeeded",
            succeeded == n && operations == n,
            format!("{succeeded} succeeded of {operations} (expected {n} of {n})"),
        );
    }
    Ok(())
}

/// Clears pg_stat_statements before a measured phase (with `--profile`).
async fn profile_reset(server: &Server, db: &RunDb) {
    if server.profile {
        if let Err(e) = sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&db.pool)
            .await
        {
            progress(format!("pg_stat_statements_reset: {e}"));
        }
    }
}

/// The top statements of this database since the reset (with `--profile`).
async fn profile_take(server: &Server, db: &RunDb, report: &mut Report) {
    if !server.profile {
        return;
    }
    let top = sqlx::query_as::<_, Statement>(
        r"SELECT calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows,
                 left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query
          FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY total_exec_time DESC LIMIT 20",
    )
    .fetch_all(&db.pool)
    .await;
    match top {
        Ok(top) => report.profile = top,
        Err(e) => report.note(format!("profile unavailable: {e}")),
    }
}

/// Target helper: `actual ≥ wanted`.
fn at_least(report: &mut Report, what: &str, actual: f64, wanted: f64, unit: &str) {
    report.target(
        what,
        &format!("≥ {wanted} {unit}"),
        format!("{actual:.1} {unit}"),
        actual >= wanted,
    );
}

/// Target helper: `actual ≤ wanted`.
fn at_most(report: &mut Report, what: &str, actual: f64, wanted: f64, unit: &str) {
    report.target(
        what,
        &format!("≤ {wanted} {unit}"),
        format!("{actual:.2} {unit}"),
        actual <= wanted,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_taken_rarely_while_many_are_left_and_every_20_ms_at_the_end() {
        assert_eq!(next_look(20_000), Duration::from_secs(1));
        assert_eq!(next_look(2_500), Duration::from_millis(500));
        assert_eq!(next_look(100), Duration::from_millis(20));
        assert_eq!(next_look(1), Duration::from_millis(20));
        assert_eq!(next_look(-1), Duration::from_millis(20));
    }
}
