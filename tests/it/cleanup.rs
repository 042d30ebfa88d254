//! Expiry and the scheduled cleanup (issue 6): what expires and when, what
//! the cleanup deletes and keeps, once per tick for the whole fleet (real
//! processes, and in-process services observed through their signals), the
//! catch-up of a missed tick, the takeover of a dead runner's tick, bounded
//! batches under live traffic, and `idemq cleanup`.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::ExitStatus,
    str::FromStr,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use idemq_worker::{
    maintenance::{
        cleanup::{self, Cleanup, CleanupConfig, CleanupOptions},
        DutyRunner, Service, Signal, Step, Why,
    },
    WorkerSettings,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

fn settings_with_ttl(ttl: Duration) -> WorkerSettings {
    WorkerSettings {
        config: test_worker_config(),
        idempotency_ttl: ttl,
    }
}

async fn principal_id(pool: &PgPool, name: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM principals WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `n` finished operations of `principal` whose expiry has passed, keys
/// `{prefix}-1`…, inserted in one statement.
async fn insert_expired_operations(pool: &PgPool, principal: uuid::Uuid, prefix: &str, n: i64) {
    sqlx::query(
        "INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, status,
                                 queue, job_id, response_status, response_content_type, response_body,
                                 created_at, finished_at, expires_at)
         SELECT gen_random_uuid(), $1, $2 || '-' || g, sha256(convert_to($2 || '-' || g, 'UTF8')),
                'invoice.mark_paid', '{\"params\":{\"id\":\"x\"},\"body\":{\"paymentMethod\":\"card\"}}',
                'succeeded', 'payments', 'job-' || g, 200, 'application/json', '{}',
                now() - interval '3 days', now() - interval '2 days', now() - interval '1 day'
         FROM generate_series(1, $3) g",
    )
    .bind(principal)
    .bind(prefix)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn expiry_is_finish_plus_ttl_and_after_cleanup_the_key_starts_a_new_operation() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker_with_settings(settings_with_ttl(Duration::from_secs(1)))
        .await;
    let first: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(app.await_final(&first_id).await["status"], "succeeded");
    // Set at finish: finish time + IDEMQ_IDEMPOTENCY_TTL.
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE expires_at - finished_at = interval '1 second'")
            .await,
        1
    );
    eventually("the record has expired", || async {
        app.count("SELECT count(*) FROM operations WHERE expires_at <= now()")
            .await
            == 1
    })
    .await;

    let report = cleanup::run_once(&app.db.pool, &CleanupConfig::default())
        .await
        .unwrap();

    assert_eq!(report.operations, 1);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.get_operation(&first_id).await.status(), StatusCode::NOT_FOUND);
    let again = app.mark_paid("123", "key-1").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&again, "idempotent-replayed"), None);
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["id"], first["id"]);
    assert_eq!(again["status"], "queued");
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
}

#[tokio::test]
async fn an_expired_record_counts_as_absent_before_cleanup_deletes_it() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker_with_settings(settings_with_ttl(Duration::from_secs(1)))
        .await;
    let first: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    app.await_final(first["id"].as_str().unwrap()).await;
    eventually("the record has expired", || async {
        app.count("SELECT count(*) FROM operations WHERE expires_at <= now()")
            .await
            == 1
    })
    .await;

    // Another body under the same key: no 422 once the record has expired.
    let r = app
        .request(Method::PATCH, "/invoices/123/mark-paid")
        .header("Idempotency-Key", "key-1")
        .json(&serde_json::json!({ "paymentMethod": "cash" }))
        .send()
        .await
        .unwrap();

    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["id"], first["id"]);
    // Replaced in the request's transaction: one record for the key.
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE idempotency_key = 'key-1'")
            .await,
        1
    );
}

#[tokio::test]
async fn queued_and_running_records_never_expire_however_old() {
    let app = spawn_app().await; // no worker: operations stay queued
    app.insert_invoice("123").await;
    for key in ["queued-old", "running-old", "finished-fresh"] {
        assert_eq!(app.mark_paid("123", key).await.status(), StatusCode::ACCEPTED);
    }
    sqlx::query(
        "UPDATE operations SET created_at = now() - interval '90 days', updated_at = now() - interval '90 days'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE operations SET status = 'running', attempts = 1 WHERE idempotency_key = 'running-old'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    // Finished an hour ago, expires in 23 h.
    sqlx::query(
        "UPDATE operations SET status = 'succeeded', response_status = 200, response_content_type = 'application/json',
                response_body = '{}', finished_at = now() - interval '1 hour', expires_at = now() + interval '23 hours'
         WHERE idempotency_key = 'finished-fresh'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    insert_expired_operations(
        &app.db.pool,
        principal_id(&app.db.pool, "tester").await,
        "expired",
        3,
    )
    .await;

    let report = cleanup::run_once(&app.db.pool, &CleanupConfig::default())
        .await
        .unwrap();

    assert_eq!(report.operations, 3);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM operations ORDER BY idempotency_key")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(left, ["finished-fresh", "queued-old", "running-old"]);
    // Their jobs are untouched too.
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 3);
}

#[tokio::test]
async fn cleanup_deletes_exactly_what_is_due_in_each_table() {
    let db = fresh_db().await;
    let pool = &db.pool;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen) VALUES
            ('stale-free', 'payments', 'pg', now() - interval '2 hours'),
            ('stale-busy', 'payments', 'pg', now() - interval '2 hours'),
            ('stale-holds-old-done', 'payments', 'pg', now() - interval '2 hours'),
            ('live', 'payments', 'pg', now())",
    )
    .execute(pool)
    .await
    .unwrap();
    // (id, status, attempts, max_attempts, done hours ago, lock_by)
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, done_at, lock_by)
         SELECT '\\x00'::bytea, id, 'payments', status, attempts, max_attempts,
                now() - hours * interval '1 hour', lock_by
         FROM (VALUES
            ('done-old', 'Done', 1, 25, 30, 'live'),
            ('killed-old', 'Killed', 1, 25, 30, NULL),
            ('failed-exhausted-old', 'Failed', 25, 25, 30, NULL),
            ('failed-retrying-old', 'Failed', 3, 25, 30, NULL),
            ('done-recent', 'Done', 1, 25, 1, 'live'),
            ('running', 'Running', 1, 25, NULL, 'stale-busy'),
            ('done-old-2', 'Done', 1, 25, 48, 'stale-holds-old-done')
         ) AS j(id, status, attempts, max_attempts, hours, lock_by)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO duty_ticks (duty, tick, claimed_by, finished_at) VALUES
            ('cleanup', now() - interval '30 days', 'w', now()),
            ('cleanup', now() - interval '8 days', 'w', now()),
            ('cleanup', now() - interval '1 day', 'w', now()),
            ('reconciler', now() - interval '30 days', 'w', now()),
            ('reconciler', now() - interval '20 days', 'w', now())",
    )
    .execute(pool)
    .await
    .unwrap();

    let report = cleanup::run_once(pool, &CleanupConfig::default()).await.unwrap();

    let ids = |sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_all(pool)
            .await
            .unwrap()
    };
    assert_eq!(
        ids("SELECT id FROM apalis.jobs ORDER BY id").await,
        ["done-recent", "failed-retrying-old", "running"]
    );
    // The stale worker whose old job was deleted in the same run goes too;
    // one that a job still points at stays (jobs.lock_by has an FK).
    assert_eq!(
        ids("SELECT id FROM apalis.workers ORDER BY id").await,
        ["live", "stale-busy"]
    );
    // Older than a week goes, but the newest tick of each duty stays (the
    // catch-up at start compares against it).
    assert_eq!(
        ids("SELECT duty || ' ' || (now() - tick > interval '10 days') FROM duty_ticks ORDER BY duty, tick")
            .await,
        ["cleanup false", "reconciler true"]
    );
    assert_eq!(
        (report.jobs, report.workers, report.duty_ticks, report.operations),
        (4, 2, 3, 0)
    );
    assert_eq!(report.total(), 9);

    // A second run finds nothing.
    let again = cleanup::run_once(pool, &CleanupConfig::default()).await.unwrap();
    assert_eq!(again.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_expired_rows_go_in_batches_while_enqueues_keep_succeeding() {
    let app = spawn_app().await;
    let principal = principal_id(&app.db.pool, "tester").await;
    insert_expired_operations(&app.db.pool, principal, "expired", 50_000).await;
    let config = CleanupConfig::new(CleanupOptions {
        batch_size: 1_000,
        ..CleanupOptions::default()
    })
    .unwrap();

    let pool = app.db.pool.clone();
    let started = Instant::now();
    let run = tokio::spawn(async move { cleanup::run_once(&pool, &config).await });
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while !run.is_finished() {
        let batch: Vec<_> = (0..4)
            .map(|_| {
                i += 1;
                let key = format!("live-{i}");
                let app = &app;
                async move {
                    let t = Instant::now();
                    let status = app.mark_paid("123", &key).await.status();
                    (status, t.elapsed())
                }
            })
            .collect();
        for (status, took) in futures::future::join_all(batch).await {
            statuses.push(status);
            slowest = slowest.max(took);
        }
        assert!(started.elapsed() < DEADLINE * 3, "cleanup did not finish");
    }
    let report = run.await.unwrap().unwrap();
    eprintln!(
        "cleanup of 50,000 rows: {:?}; {} enqueues meanwhile, slowest {slowest:?}",
        started.elapsed(),
        statuses.len()
    );

    assert_eq!(report.operations, 50_000);
    assert!(!report.interrupted);
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE idempotency_key LIKE 'expired-%'")
            .await,
        0
    );
    assert!(
        statuses.len() >= 8,
        "only {} enqueues ran during the cleanup",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    // Every operation enqueued meanwhile is still there, with its job.
    let live = statuses.len() as i64;
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE idempotency_key LIKE 'live-%'")
            .await,
        live
    );
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, live);
}

#[tokio::test]
async fn a_cleanup_stopped_by_shutdown_ends_between_batches() {
    let app = spawn_app().await;
    let principal = principal_id(&app.db.pool, "tester").await;
    insert_expired_operations(&app.db.pool, principal, "expired", 5_000).await;
    let config = CleanupConfig::new(CleanupOptions {
        batch_size: 100,
        ..CleanupOptions::default()
    })
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();

    // Shutdown arrives after the second of 50 batches has committed.
    let mut batches = 0;
    let mut after_batch = |so_far: &cleanup::CleanupReport| {
        batches += 1;
        assert!(!so_far.interrupted, "a batch ran after the stop");
        if batches == 2 {
            stop.cancel();
        }
    };
    let report = cleanup::run_observed(&app.db.pool, &config, &stop, &mut after_batch)
        .await
        .unwrap();

    assert!(report.interrupted, "{report:?}");
    assert_eq!(batches, 2, "batches run after the stop");
    assert_eq!(report.operations, 200, "{report:?}");
    assert_eq!(report.total(), 200, "{report:?}");
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 4_800);
    // The result a worker records for the tick says so too.
    let json = serde_json::to_value(report).unwrap();
    assert_eq!(json["interrupted"], Value::Bool(true));
    assert_eq!(json["operations"], 200);

    // The next run deletes the rest, to the end.
    let next = cleanup::run_once(&app.db.pool, &config).await.unwrap();
    assert!(!next.interrupted, "{next:?}");
    assert_eq!(next.operations, 4_800);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
}

/// A stop before the first batch deletes nothing.
#[tokio::test]
async fn a_cleanup_stopped_before_it_starts_deletes_nothing() {
    let app = spawn_app().await;
    let principal = principal_id(&app.db.pool, "tester").await;
    insert_expired_operations(&app.db.pool, principal, "expired", 300).await;
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();

    let report = cleanup::run_until(&app.db.pool, &CleanupConfig::default(), &stop)
        .await
        .unwrap();

    assert!(report.interrupted);
    assert_eq!(report.total(), 0);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 300);
}

// --- Real worker processes ---

/// Real `idemq worker` processes (tests/it/harness.rs).
struct Procs(Vec<Proc>);

impl Procs {
    fn new() -> Self {
        Procs(Vec::new())
    }

    /// Starts `idemq worker` on `db_url` with these extra variables; returns its index.
    fn spawn_worker(&mut self, db_url: &str, env: &[(&str, &str)]) -> usize {
        let worker = idemq(["worker"])
            .env_clear()
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info")
            .env("IDEMQ_DB_MAX_CONNECTIONS", "5")
            .envs(env)
            .spawn();
        self.0.push(worker);
        self.0.len() - 1
    }

    fn pid(&self, i: usize) -> u32 {
        self.0[i].pid()
    }

    fn raw_logs(&self, i: usize) -> String {
        self.0[i].log()
    }

    /// SIGTERM to each, then waits (with the deadline) until all have exited.
    async fn terminate(&mut self) -> Vec<ExitStatus> {
        terminate_all(&mut self.0, DEADLINE).await
    }
}

/// `(tick, claimed_by, finished)` of every cleanup tick, in order.
async fn cleanup_ticks(pool: &PgPool) -> Vec<(DateTime<Utc>, String, bool)> {
    sqlx::query_as("SELECT tick, claimed_by, finished_at IS NOT NULL FROM duty_ticks WHERE duty = 'cleanup' ORDER BY tick")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn finished_cleanup_ticks(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM duty_ticks WHERE duty = 'cleanup' AND finished_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether process `pid`'s queue workers have registered (it is up).
async fn process_is_up(pool: &PgPool, pid: u32) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM apalis.workers WHERE id LIKE $1)")
        .bind(format!("%-{pid}-%"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_run_each_tick_once_for_the_whole_fleet() {
    let db = fresh_db().await;
    let mut procs = Procs::new();
    let every_second = [("IDEMQ_CLEANUP_SCHEDULE", "* * * * * *")];
    let fleet: Vec<usize> = (0..3)
        .map(|_| procs.spawn_worker(&db.url, &every_second))
        .collect();
    // A fourth process with the switch off carries no schedule.
    let off = procs.spawn_worker(
        &db.url,
        &[
            ("IDEMQ_CLEANUP_SCHEDULE", "* * * * * *"),
            ("IDEMQ_CLEANUP_ENABLED", "0"),
        ],
    );
    eventually("all four workers are up", || async {
        for i in 0..4 {
            if !process_is_up(&db.pool, procs.pid(i)).await {
                return false;
            }
        }
        true
    })
    .await;
    // About six seconds with all of them up (a tick a second).
    let before = finished_cleanup_ticks(&db.pool).await;
    eventually("six more ticks ran", || async {
        finished_cleanup_ticks(&db.pool).await >= before + 6
    })
    .await;
    let exits = procs.terminate().await;

    for (i, exit) in exits.iter().enumerate() {
        assert!(
            exit.success(),
            "worker {i} exited {exit:?}:\n{}",
            procs.raw_logs(i)
        );
    }
    // One row per tick (the primary key), each run to the end, each by one
    // of the three: the fourth, with the switch off, never took part.
    let ticks = cleanup_ticks(&db.pool).await;
    assert!(ticks.len() >= 6, "{ticks:?}");
    assert!(ticks.iter().all(|(_, _, finished)| *finished), "{ticks:?}");
    let process_of = |claimed_by: &str| (0..4).find(|&i| claimed_by.contains(&format!("-{}-", procs.pid(i))));
    let winners: BTreeSet<usize> = ticks
        .iter()
        .map(|(_, by, _)| process_of(by).unwrap_or_else(|| panic!("claimed by {by}?")))
        .collect();
    assert!(winners.iter().all(|w| fleet.contains(w)), "{winners:?} {ticks:?}");
    assert!(!winners.contains(&off));
    eprintln!("{} ticks, {} distinct winners", ticks.len(), winners.len());
    assert!(procs.raw_logs(off).contains("cleanup disabled"));
}

/// A runner of the cleanup duty in a service named `name`.
fn cleanup_runner(
    pool: &PgPool,
    name: &str,
    schedule: &str,
    stop: &CancellationToken,
) -> (Service, DutyRunner<Cleanup>) {
    let service = Service::new(pool.clone(), name, Duration::from_secs(2));
    let duty = Cleanup {
        schedule: cron::Schedule::from_str(schedule).unwrap(),
        config: CleanupConfig::default(),
    };
    let runner = service.runner_for(duty, stop.clone());
    (service, runner)
}

fn is_schedule_outcome(s: &Signal) -> bool {
    s.why == Why::Schedule && matches!(s.step, Step::Claimed | Step::ClaimedElsewhere | Step::Busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_claim_each_tick_once_and_the_others_find_it_claimed() {
    let db = fresh_db().await;
    let stop = CancellationToken::new();
    let mut signals = Vec::new();
    let mut loops = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let (service, runner) = cleanup_runner(&db.pool, name, "* * * * * *", &stop);
        signals.push(service.test_signals());
        loops.push(tokio::spawn(runner.run()));
    }
    for _ in 0..5 {
        signals[0]
            .wait_for(DEADLINE, is_schedule_outcome)
            .await
            .expect("w1 takes part in every tick");
    }
    stop.cancel();
    for l in loops {
        l.await.unwrap().unwrap();
    }
    let seen: Vec<Signal> = signals.iter_mut().flat_map(|s| s.received().to_vec()).collect();

    let mut per_tick: BTreeMap<DateTime<Utc>, Vec<&Signal>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.why == Why::Schedule) {
        per_tick.entry(s.tick).or_default().push(s);
    }
    let count = |signals: &[&Signal], step: &Step| signals.iter().filter(|s| &s.step == step).count();
    let mut complete = 0;
    for (tick, signals) in &per_tick {
        let claimed = count(signals, &Step::Claimed);
        assert!(claimed <= 1, "tick {tick} claimed {claimed} times: {signals:#?}");
        let finished: Vec<_> = signals
            .iter()
            .filter(|s| matches!(s.step, Step::Finished(_)))
            .collect();
        assert_eq!(finished.len(), claimed, "tick {tick}: {signals:#?}");
        let runners: BTreeSet<&str> = signals
            .iter()
            .filter(|s| is_schedule_outcome(s))
            .map(|s| s.runner.as_str())
            .collect();
        if runners.len() == 3 {
            // All three fired; one won, the other two found it claimed.
            complete += 1;
            assert_eq!(claimed, 1, "tick {tick}: {signals:#?}");
            assert_eq!(
                count(signals, &Step::ClaimedElsewhere),
                2,
                "tick {tick}: {signals:#?}"
            );
        }
    }
    assert!(complete >= 4, "{per_tick:#?}");
    // The table agrees: every claimed tick has its finished row.
    let rows = cleanup_ticks(&db.pool).await;
    for (tick, signals) in &per_tick {
        if count(signals, &Step::Claimed) == 1 {
            let winner = signals.iter().find(|s| s.step == Step::Claimed).unwrap();
            assert!(
                rows.contains(&(*tick, winner.runner.clone(), true)),
                "{tick}: {rows:?}"
            );
        }
    }
}

/// The latest 1 January 00:00 UTC: the last due tick of `0 0 0 1 1 *`.
async fn start_of_year(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT date_trunc('year', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
        .fetch_one(pool)
        .await
        .unwrap()
}

const YEARLY: &str = "0 0 0 1 1 *";

/// Starts a service's cleanup loop on the yearly schedule, waits for the
/// catch-up's outcome, stops the loop, and returns the outcome and every
/// signal the service sent.
async fn start_and_catch_up(pool: &PgPool, name: &str) -> (Signal, Vec<Signal>) {
    let stop = CancellationToken::new();
    let (service, runner) = cleanup_runner(pool, name, YEARLY, &stop);
    let mut signals = service.test_signals();
    let duty_loop = tokio::spawn(runner.run());
    let outcome = signals
        .wait_for(DEADLINE, |s| {
            s.why == Why::CatchUp
                && matches!(s.step, Step::Finished(_) | Step::Failed(_) | Step::NothingMissed)
        })
        .await
        .expect("the catch-up ends");
    stop.cancel();
    duty_loop.await.unwrap().unwrap();
    (outcome, signals.received().to_vec())
}

#[tokio::test]
async fn a_missed_tick_is_caught_up_once_at_the_next_start() {
    let db = fresh_db().await;
    let due = start_of_year(&db.pool).await;
    // The tick before it ran; the one due since was missed (no worker up).
    let previous = due - chrono::Duration::days(365);
    sqlx::query(
        "INSERT INTO duty_ticks (duty, tick, claimed_by, claimed_at, finished_at, result)
         VALUES ('cleanup', $1, 'earlier-worker', $1, $1, '{}')",
    )
    .bind(previous)
    .execute(&db.pool)
    .await
    .unwrap();
    let principal = idemq_core::principal::create_token(&db.pool, "tester")
        .await
        .unwrap()
        .0;
    insert_expired_operations(&db.pool, principal.id(), "expired", 10).await;

    let (outcome, first) = start_and_catch_up(&db.pool, "first-start").await;

    let Step::Finished(result) = &outcome.step else {
        panic!("the missed tick was not run: {first:#?}");
    };
    assert_eq!(outcome.tick, due);
    assert_eq!(result["operations"], 10, "{result}");
    // It also removed the year-old tick before it (the newest one stays).
    assert_eq!(result["dutyTicks"], 1, "{result}");
    let stored: Value =
        sqlx::query_scalar("SELECT result FROM duty_ticks WHERE duty = 'cleanup' AND tick = $1")
            .bind(due)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(&stored, result);
    let claims: Vec<&Signal> = first.iter().filter(|s| s.step == Step::Claimed).collect();
    assert_eq!(claims.len(), 1, "{first:#?}");
    assert_eq!(claims[0].why, Why::CatchUp);
    let after_first = cleanup_ticks(&db.pool).await;
    assert_eq!(after_first, [(due, "first-start".to_owned(), true)]);

    // Once: the next start finds the due tick run and does nothing.
    let (outcome, second) = start_and_catch_up(&db.pool, "second-start").await;
    assert_eq!(outcome.step, Step::NothingMissed, "{second:#?}");
    assert_eq!(outcome.tick, due);
    assert!(second.iter().all(|s| s.step != Step::Claimed), "{second:#?}");
    assert_eq!(cleanup_ticks(&db.pool).await, after_first);
}

#[tokio::test]
async fn a_tick_whose_runner_died_is_taken_over_and_a_live_runners_is_not() {
    let db = fresh_db().await;
    let due = start_of_year(&db.pool).await;
    // Claimed by a runner that refreshed its claim just now: alive.
    sqlx::query(
        "INSERT INTO duty_ticks (duty, tick, claimed_by, claimed_at)
         VALUES ('cleanup', $1, 'live-worker', now())",
    )
    .bind(due)
    .execute(&db.pool)
    .await
    .unwrap();
    let (outcome, kept) = start_and_catch_up(&db.pool, "starter").await;
    assert_eq!(outcome.step, Step::NothingMissed, "{kept:#?}");
    assert!(kept.iter().any(|s| s.step == Step::ClaimedElsewhere), "{kept:#?}");
    assert_eq!(
        cleanup_ticks(&db.pool).await,
        [(due, "live-worker".to_owned(), false)]
    );

    // Its last refresh an hour ago (longer than the lease): it died.
    sqlx::query("UPDATE duty_ticks SET claimed_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (outcome, taken) = start_and_catch_up(&db.pool, "starter").await;
    assert!(matches!(outcome.step, Step::Finished(_)), "{taken:#?}");
    assert_eq!(cleanup_ticks(&db.pool).await, [(due, "starter".to_owned(), true)]);
}

#[tokio::test]
async fn idemq_cleanup_runs_once_and_prints_the_counts_per_table() {
    let db = fresh_db().await;
    let principal = idemq_core::principal::create_token(&db.pool, "tester")
        .await
        .unwrap()
        .0;
    insert_expired_operations(&db.pool, principal.id(), "expired", 3).await;
    let url = db.url.clone();

    let out = idemq(["cleanup"])
        .env_clear()
        .env("DATABASE_URL", url)
        .env("IDEMQ_LOG_FORMAT", "json")
        .output()
        .await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let counts: Vec<(String, u64)> = stdout
        .lines()
        .map(|l| {
            let (table, n) = l.split_once(char::is_whitespace).unwrap();
            (table.to_owned(), n.trim().parse().unwrap())
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("operations", 3),
        ("apalis.jobs", 0),
        ("apalis.workers", 0),
        ("duty_ticks", 0),
        ("total", 3),
    ]
    .iter()
    .map(|(t, n)| (t.to_string(), *n))
    .collect();
    assert_eq!(counts, expected, "{stdout}");
    assert!(stderr.contains("cleanup finished"), "{stderr}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_invalid_schedule_stops_the_worker_at_start_naming_the_variable() {
    let out = idemq(["worker"])
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("IDEMQ_CLEANUP_SCHEDULE", "0 2 * * *")
        .output()
        .await;

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IDEMQ_CLEANUP_SCHEDULE"), "{stderr}");
    assert!(stderr.contains("seconds first"), "{stderr}");
}
