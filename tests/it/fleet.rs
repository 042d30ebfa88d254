//! The worker fleet under crashes (issue 5): real `idemq worker` processes,
//! spawned and killed for real, against the API in-process. Faults come from
//! the database (triggers on `invoices` that sleep or raise) or, for a panic,
//! from the worker's test-only `IDEMQ_FAULT_PANIC_INVOICE`.
//!
//! Lease 2 s everywhere (heartbeat 400 ms), poll 100 ms. Measured recovery
//! times are printed (`cargo test fleet:: -- --nocapture`).
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use idemq_devcluster::ClusterOptions;
use idemq_worker::maintenance::{
    reconciler::{self, Reconciler, ReconcilerConfig, ReconcilerOptions},
    Service, Why,
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const LEASE: Duration = Duration::from_secs(2);
/// Slack on top of the lease for "picked up by another worker" on a shared,
/// loaded 2-core machine (measured recovery is lease + ~0.5 s).
const MARGIN: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------- harness

/// A real `idemq worker` process of the fleet (lease 2 s, poll 100 ms, plain
/// logs), `env` on top.
fn spawn_worker(db_url: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = idemq(["worker"])
        .env("DATABASE_URL", db_url)
        .env("IDEMQ_WORKER_LEASE", "2s")
        .env("IDEMQ_QUEUE_POLL_INTERVAL", "100ms")
        .env("IDEMQ_WORKER_CONCURRENCY", "4")
        .env("IDEMQ_QUEUE_BATCH_SIZE", "10")
        .env("IDEMQ_DB_MAX_CONNECTIONS", "20")
        .env("IDEMQ_CLEANUP_ENABLED", "false")
        .env("IDEMQ_LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("NO_COLOR", "1");
    for var in [
        "IDEMQ_FAULT_PANIC_INVOICE",
        "IDEMQ_FAULT_PANIC_ATTEMPTS",
        "IDEMQ_JOB_MAX_ATTEMPTS",
        "IDEMQ_JOB_TIMEOUT",
        "IDEMQ_SHUTDOWN_GRACE",
        "IDEMQ_DB_LOST_GRACE",
        "IDEMQ_RECONCILE_INTERVAL",
    ] {
        cmd = cmd.env_remove(var);
    }
    cmd.envs(env).spawn()
}

/// (status, attempts) of an operation.
async fn op_state(pool: &PgPool, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM operations WHERE id = $1")
        .bind(op_uuid(id))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls the database (not the API) until the operation is final.
async fn await_final_within(pool: &PgPool, id: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _) = op_state(pool, id).await;
        if status == "succeeded" || status == "failed" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "operation {id} still {status} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` backends of this database sit in `pg_sleep` (the jobs
/// are provably in flight).
async fn await_sleepers(pool: &PgPool, n: i64) {
    eventually(&format!("{n} jobs sleeping in the database"), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event = 'PgSleep'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                >= n
        }
    })
    .await;
}

/// The pid of the worker process holding the operation's job, from the
/// apalis worker name `queue@host-PID-ULID[.generation]`.
async fn holder_pid(pool: &PgPool, id: &str) -> u32 {
    let lock_by: Option<String> = sqlx::query_scalar(
        "SELECT j.lock_by FROM apalis.jobs j JOIN operations o ON o.job_id = j.id WHERE o.id = $1",
    )
    .bind(op_uuid(id))
    .fetch_one(pool)
    .await
    .unwrap();
    let lock_by = lock_by.expect("the job is locked by a worker");
    let instance = lock_by.split_once('@').unwrap().1;
    let mut parts = instance.rsplitn(3, '-');
    let (_ulid, pid) = (parts.next(), parts.next().unwrap());
    pid.parse().unwrap_or_else(|_| panic!("no pid in {lock_by}"))
}

// ---------------------------------------------------------------- crashes

#[tokio::test]
async fn a_job_held_by_a_killed_worker_is_finished_by_another_within_the_lease() {
    let app = spawn_app().await;
    app.insert_invoice("inv-held").await;
    // The first attempt hangs in the database: the job is provably in flight.
    invoice_trigger(&app.db.pool, "IF attempt = 1 THEN PERFORM pg_sleep(60); END IF;").await;
    let mut a = spawn_worker(&app.db.url, &[]);
    let mut b = spawn_worker(&app.db.url, &[]);
    a.wait_output("worker ready", DEADLINE).await;
    b.wait_output("worker ready", DEADLINE).await;

    let op = submit(&app, "inv-held", "k-held").await;
    await_sleepers(&app.db.pool, 1).await;
    assert_eq!(op_state(&app.db.pool, &op).await, ("running".into(), 1));
    let holder = holder_pid(&app.db.pool, &op).await;
    let (victim, survivor) = if holder == a.pid() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(victim.pid(), holder);

    victim.kill9();
    let recovered = await_final_within(&app.db.pool, &op, LEASE + MARGIN).await;
    println!("recovery after SIGKILL of the holder: {recovered:?} (lease {LEASE:?})");

    assert!(survivor.is_running());
    assert_eq!(op_state(&app.db.pool, &op).await, ("succeeded".into(), 2));
    assert_paid_once(&app.db.pool, "inv-held", &op).await;
    // The dead worker's attempt is closed as abandoned by the next start,
    // which the survivor ran to the end.
    let attempts: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT worker, outcome FROM operation_attempts WHERE operation_id = $1 ORDER BY id")
            .bind(op_uuid(&op))
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.as_deref(), Some("abandoned"), "{attempts:?}");
    assert_eq!(attempts[1].1.as_deref(), Some("succeeded"), "{attempts:?}");
    assert_ne!(attempts[0].0, attempts[1].0, "two workers: {attempts:?}");
    let replay = app.mark_paid("inv-held", "k-held").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_job_that_kills_its_worker_every_time_stops_at_the_attempt_bound() {
    let app = spawn_app().await;
    app.insert_invoice("inv-killer").await;
    invoice_trigger(&app.db.pool, "PERFORM pg_sleep(60);").await;
    // No warm-up: its rehearsed payment would run the trigger too.
    let env = [
        ("IDEMQ_JOB_MAX_ATTEMPTS", "3"),
        ("IDEMQ_WORKER_WARM_CONNECTIONS", "0"),
    ];
    let op = submit(&app, "inv-killer", "k-killer").await;

    let mut worker = spawn_worker(&app.db.url, &env);
    let mut killed_at: Option<Instant> = None;
    for attempt in 1..=3 {
        eventually(&format!("attempt {attempt} in flight"), || {
            let pool = app.db.pool.clone();
            let op = op.clone();
            async move { op_state(&pool, &op).await.1 == attempt }
        })
        .await;
        await_sleepers(&app.db.pool, 1).await;
        if let Some(t) = killed_at {
            println!(
                "attempt {attempt} started {:?} after the previous holder was killed",
                t.elapsed()
            );
        }
        // The job "kills its worker": the worker dies while it holds it.
        worker.kill9();
        killed_at = Some(Instant::now());
        worker = spawn_worker(&app.db.url, &env);
    }
    await_final_within(&app.db.pool, &op, LEASE + MARGIN).await;

    let done = app.await_final(&op).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["response"]["status"], 500);
    assert_eq!(
        done["response"]["body"]["type"],
        "https://idemq.dev/problems/operation-failed"
    );
    // Three attempts ran; the fourth start found the bound and gave up.
    assert_eq!(op_state(&app.db.pool, &op).await.1, 4);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'UNPAID'")
            .await,
        1
    );
    assert!(worker.is_running());
}

// ---------------------------------------------------------------- chaos

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_workers_killed_and_replaced_while_clients_pay_500_invoices() {
    const INVOICES: usize = 500;
    const CLIENTS: usize = 8;
    let app = Arc::new(spawn_app().await);
    sqlx::query(
        "INSERT INTO invoices (id, amount_cents) SELECT 'inv-' || g, 100 * g FROM generate_series(1, $1) g",
    )
    .bind(INVOICES as i32)
    .execute(&app.db.pool)
    .await
    .unwrap();
    // Jobs take 50–200 ms, so that kills find them in flight.
    invoice_trigger(&app.db.pool, "PERFORM pg_sleep(0.05 + random() * 0.15);").await;

    let mut fleet: Vec<Proc> = (0..3).map(|_| spawn_worker(&app.db.url, &[])).collect();
    for w in &mut fleet {
        w.wait_output("worker ready", DEADLINE).await;
    }
    let started = Instant::now();

    // The load comes in waves, each released by a kill, so that the kills
    // are spread over the run whatever the machine's speed: wave k (of
    // KILLS + 1) is sent once k workers holding jobs have been killed.
    const KILLS: usize = 5;
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(0usize);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let app = app.clone();
        let sent = sent.clone();
        let mut killed = killed_rx.clone();
        clients.spawn(async move {
            let mut ids = Vec::new();
            for i in (1..=INVOICES).filter(|i| i % CLIENTS == c) {
                let wave = (i - 1) * (KILLS + 1) / INVOICES;
                killed
                    .wait_for(|k| *k >= wave)
                    .await
                    .expect("the chaos task ended early");
                let (invoice, key) = (format!("inv-{i}"), format!("key-{i}"));
                let r = app.mark_paid(&invoice, &key).await;
                assert_eq!(r.status(), StatusCode::ACCEPTED, "first request for {invoice}");
                let op: Value = r.json().await.unwrap();
                let id = op["id"].as_str().unwrap().to_owned();
                if i % 3 == 0 {
                    let again = app.mark_paid(&invoice, &key).await;
                    assert!(
                        matches!(again.status(), StatusCode::ACCEPTED | StatusCode::OK),
                        "repeat for {invoice}: {}",
                        again.status()
                    );
                    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
                }
                ids.push((invoice, id));
                sent.fetch_add(1, Ordering::Relaxed);
            }
            ids
        });
    }

    // Chaos: as soon as a worker holds a job, SIGKILL it and start a
    // replacement (ready before the next kill, so that the fleet keeps
    // working); at least KILLS times, and on until the clients are done.
    let stop = CancellationToken::new();
    let chaos = {
        let stop = stop.clone();
        let url = app.db.url.clone();
        let pool = app.db.pool.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            loop {
                if stop.is_cancelled() && kills >= KILLS {
                    break;
                }
                let holders: Vec<String> = sqlx::query_scalar(
                    "SELECT lock_by FROM apalis.jobs WHERE status IN ('Queued', 'Running') AND lock_by IS NOT NULL",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let victim = fleet
                    .iter()
                    .position(|w| holders.iter().any(|h| h.contains(&format!("-{}-", w.pid()))));
                let Some(victim) = victim else {
                    // Polling for the next job in flight, not pacing.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                fleet[victim].kill9();
                fleet[victim] = spawn_worker(&url, &[]);
                fleet[victim].wait_output("worker ready", DEADLINE).await;
                kills += 1;
                killed_tx.send_replace(kills);
            }
            (fleet, kills)
        })
    };

    // The clients and the chaos, within one overall deadline.
    let mut ops = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(joined) = clients.join_next().await {
            ops.extend(joined.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "clients not done in 120 s ({} sent)",
            sent.load(Ordering::Relaxed)
        )
    });
    stop.cancel();
    let (mut fleet, kills) = tokio::time::timeout(Duration::from_secs(60), chaos)
        .await
        .expect("the chaos task found no more jobs in flight to kill")
        .unwrap();
    let submitted_in = started.elapsed();
    assert_eq!(ops.len(), INVOICES);
    assert!(kills >= KILLS, "only {kills} kills");

    // Every operation finishes (the survivors rescue what the dead held).
    let drain = Instant::now();
    eventually_within("every operation finished", Duration::from_secs(40), || {
        let pool = app.db.pool.clone();
        async move { unfinished_operations(&pool).await == 0 }
    })
    .await;
    // Operations whose job died with its worker and was run again.
    let rescued = app
        .count("SELECT count(*) FROM operations WHERE attempts > 1")
        .await;
    println!(
        "chaos: {} operations submitted in {submitted_in:?} with {kills} SIGKILLs; \
         {rescued} of them re-run after their worker died; the last finished {:?} after the \
         last request",
        ops.len(),
        drain.elapsed()
    );
    assert!(rescued >= 1, "no kill hit a job in flight");

    let n = INVOICES as i64;
    assert_eq!(app.count("SELECT count(*) FROM operations").await, n);
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'succeeded' AND response_status = 200")
            .await,
        n
    );
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'PAID'")
            .await,
        n
    );
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, n);
    assert_eq!(
        app.count("SELECT count(DISTINCT entity_id) FROM audit_log").await,
        n
    );
    // Each invoice was paid by its own operation.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM invoices i JOIN operations o ON o.id = i.paid_by_operation
             WHERE o.request->'params'->>'id' = i.id"
        )
        .await,
        n
    );
    // Replays give the stored answer.
    for (invoice, _) in ops.iter().step_by(50) {
        let key = format!("key-{}", invoice.trim_start_matches("inv-"));
        let r = app.mark_paid(invoice, &key).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "idempotent-replayed"), Some("true"));
    }
    // Nothing stuck in the queue either: orphans of the dead are re-run
    // (and found finished) once their lease is over.
    eventually_within("no job left in flight", LEASE + MARGIN, || {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 0
        }
    })
    .await;
    for w in &mut fleet {
        assert!(w.is_running(), "a worker died by itself:\n{}", w.output());
    }
}

// ---------------------------------------------------------------- database loss

/// The API in-process on a database of a private cluster.
struct OwnApi {
    addr: String,
    token: String,
    client: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for OwnApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OwnApi {
    async fn mark_paid(&self, invoice: &str, key: &str) -> reqwest::Response {
        Call::to(
            &self.client,
            &self.addr,
            reqwest::Method::PATCH,
            &format!("/invoices/{invoice}/mark-paid"),
        )
        .token(&self.token)
        .key(key)
        .json(&serde_json::json!({ "paymentMethod": "card" }))
        .response()
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_api_answers_503_workers_reconnect_nothing_accepted_is_lost() {
    // Its own cluster: the shared one serves every other test.
    let dir = own_cluster_dir("fleet-pg");
    let cluster = start_own_cluster(ClusterOptions {
        data_dir: dir.clone(),
        port: 0,
        fast: true,
    })
    .await;
    let port = cluster.port();
    let (url, pool) = create_migrated_db(&cluster).await;
    sqlx::query("INSERT INTO invoices (id) SELECT 'inv-' || g FROM generate_series(1, 100) g")
        .execute(&pool)
        .await
        .unwrap();
    let (_, token) = idemq_core::principal::create_token(&pool, "tester")
        .await
        .unwrap();

    let api_pool = idemq_core::db::connect(&url, 10).await.unwrap();
    let state = idemq_api::AppState::new(api_pool, &test_api_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = OwnApi {
        addr: format!("http://{}", listener.local_addr().unwrap()),
        token,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        stop: CancellationToken::new(),
    };
    tokio::spawn(idemq_api::serve(listener, state, api.stop.clone()));

    // `steady` rides the outage out; `brittle` gives up after 2 s of it.
    let mut steady = spawn_worker(&url, &[]);
    let mut brittle = spawn_worker(&url, &[("IDEMQ_DB_LOST_GRACE", "2s")]);
    steady.wait_output("worker ready", DEADLINE).await;
    brittle.wait_output("worker ready", DEADLINE).await;

    let mut accepted = Vec::new();
    for i in 1..=30 {
        let r = api.mark_paid(&format!("inv-{i}"), &format!("k-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        accepted.push(i);
    }
    // Down, probably with jobs in flight.
    pool.close().await;
    let down = Instant::now();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();

    // While it is down: 503 problem+json, within the pool's acquire timeout;
    // meanwhile the brittle worker exits non-zero and the steady one waits.
    let refusals = async {
        for i in 31..=32 {
            let asked = Instant::now();
            let r = api.mark_paid(&format!("inv-{i}"), &format!("k-{i}")).await;
            assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                asked.elapsed() < Duration::from_secs(8),
                "503 took {:?}",
                asked.elapsed()
            );
            let problem: Value = r.json().await.unwrap();
            assert_eq!(problem["type"], "https://idemq.dev/problems/service-unavailable");
        }
    };
    let brittle_exit = async {
        let status = brittle.wait_exit(Duration::from_secs(20)).await;
        (status, down.elapsed())
    };
    let ((), (status, exited_after)) = tokio::join!(refusals, brittle_exit);
    println!(
        "worker with IDEMQ_DB_LOST_GRACE=2s exited ({status}) {exited_after:?} after the database went down"
    );
    assert!(!status.success(), "{status}");
    assert!(
        brittle.output().contains("IDEMQ_DB_LOST_GRACE"),
        "{}",
        brittle.output()
    );
    assert!(steady.is_running(), "{}", steady.output());

    let cluster = start_own_cluster(ClusterOptions {
        data_dir: dir,
        port,
        fast: true,
    })
    .await;
    let back = Instant::now();
    println!("database was down for {:?}", down.elapsed());

    // Up again: the API accepts at once, the steady worker reconnects.
    for i in 34..=50 {
        let r = api.mark_paid(&format!("inv-{i}"), &format!("k-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "after the restart");
        accepted.push(i);
    }
    let pool = PgPool::connect(&url).await.unwrap();
    eventually_within(
        "every accepted operation finished",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move { unfinished_operations(&pool).await == 0 }
        },
    )
    .await;
    println!(
        "all accepted operations finished {:?} after the database came back",
        back.elapsed()
    );
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    let n = accepted.len() as i64;
    assert_eq!(
        count("SELECT count(*) FROM operations").await,
        n,
        "nothing recorded for the 503s"
    );
    assert_eq!(
        count("SELECT count(*) FROM operations WHERE status = 'succeeded'").await,
        n
    );
    assert_eq!(
        count("SELECT count(*) FROM invoices WHERE status = 'PAID'").await,
        n
    );
    assert_eq!(count("SELECT count(*) FROM audit_log").await, n);
    assert!(steady.is_running(), "{}", steady.output());
    // Every loop that lost the database starts again once it answers; a loop
    // that was between polls may do so after the payments have finished.
    steady
        .wait_output(
            "restarting the worker loop under a new name",
            Duration::from_secs(30),
        )
        .await;
    // A key refused with 503 was recorded nowhere: it works now.
    let r = api.mark_paid("inv-31", "k-31").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    pool.close().await;
    drop(steady);
    let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
}

// ---------------------------------------------------------------- job faults

#[tokio::test]
async fn a_poison_job_stops_at_the_bound_with_a_stored_500_that_replays_and_no_hot_loop() {
    let app = spawn_app().await;
    app.insert_invoice("inv-poison").await;
    sqlx::query("CREATE SEQUENCE poison_runs")
        .execute(&app.db.pool)
        .await
        .unwrap();
    // An infrastructure error on every attempt (the sequence survives the rollback).
    invoice_trigger(
        &app.db.pool,
        "PERFORM nextval('poison_runs'); RAISE EXCEPTION 'injected infrastructure fault';",
    )
    .await;
    // No warm-up: its rehearsed payment would count in `poison_runs` too.
    let _worker = spawn_worker(
        &app.db.url,
        &[
            ("IDEMQ_JOB_MAX_ATTEMPTS", "3"),
            ("IDEMQ_WORKER_WARM_CONNECTIONS", "0"),
        ],
    );

    let op = submit(&app, "inv-poison", "k-poison").await;
    let done = app.await_final(&op).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["response"]["status"], 500);
    assert_eq!(
        done["response"]["body"]["type"],
        "https://idemq.dev/problems/operation-failed"
    );
    // Exactly three attempts, spaced by the backoff (≥ 50 ms + 100 ms), and
    // no more later.
    let (attempts, took): (i32, f64) = sqlx::query_as(
        "SELECT attempts, extract(epoch FROM finished_at - created_at)::float8 FROM operations",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 3);
    assert!((0.15..10.0).contains(&took), "took {took}s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.count("SELECT last_value FROM poison_runs").await, 3);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        1
    );

    let replay = app.mark_paid("inv-poison", "k-poison").await;
    assert_problem(&replay, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body, done["response"]["body"]);
}

#[tokio::test]
async fn a_hung_job_times_out_and_a_panicking_job_is_retried_while_the_worker_serves_others() {
    let app = spawn_app().await;
    for id in ["inv-hang", "inv-panic", "inv-plain"] {
        app.insert_invoice(id).await;
    }
    invoice_trigger(
        &app.db.pool,
        "IF NEW.id = 'inv-hang' AND attempt = 1 THEN PERFORM pg_sleep(60); END IF;",
    )
    .await;
    // 3 s, not less: every statement of every attempt runs under the same
    // limit, and on a loaded machine a retry's statements were seen to take
    // more than 1 s (a third attempt, where the test counts two).
    let mut worker = spawn_worker(
        &app.db.url,
        &[
            ("IDEMQ_JOB_TIMEOUT", "3s"),
            ("IDEMQ_FAULT_PANIC_INVOICE", "inv-panic"),
            ("IDEMQ_FAULT_PANIC_ATTEMPTS", "1"),
        ],
    );
    worker.wait_output("worker ready", DEADLINE).await;

    let hang = submit(&app, "inv-hang", "k-hang").await;
    let panic = submit(&app, "inv-panic", "k-panic").await;
    let plain = submit(&app, "inv-plain", "k-plain").await;

    for op in [&hang, &panic, &plain] {
        assert_eq!(app.await_final(op).await["status"], "succeeded", "{op}");
    }
    assert_eq!(
        op_state(&app.db.pool, &hang).await.1,
        2,
        "hung once, timed out, retried"
    );
    assert_eq!(
        op_state(&app.db.pool, &panic).await.1,
        2,
        "panicked once, retried"
    );
    assert_eq!(op_state(&app.db.pool, &plain).await.1, 1);
    let took: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM operations WHERE id = $1",
    )
    .bind(op_uuid(&hang))
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    // The time limit, not the 60 s sleep: Postgres dropped the statement too.
    assert!((3.0..20.0).contains(&took), "hung job took {took}s");
    for (invoice, op) in [("inv-hang", &hang), ("inv-panic", &panic), ("inv-plain", &plain)] {
        assert_paid_once(&app.db.pool, invoice, op).await;
    }
    assert!(worker.is_running());
    let log = worker.output();
    assert!(log.contains("fault injection armed"), "{log}");
    assert!(log.contains("panicked"), "{log}");
    // The worker's time limit or Postgres's statement_timeout (the same 3 s),
    // whichever noticed first.
    assert!(
        log.contains("timed out after 3s") || log.contains("statement timeout"),
        "{log}"
    );
}

// ---------------------------------------------------------------- stopping

#[tokio::test]
async fn sigterm_finishes_the_jobs_in_flight_takes_no_new_ones_and_exits_0() {
    let app = spawn_app().await;
    for i in 1..=4 {
        app.insert_invoice(&format!("inv-{i}")).await;
    }
    invoice_trigger(
        &app.db.pool,
        "IF NEW.id <> 'inv-4' THEN PERFORM pg_sleep(2); END IF;",
    )
    .await;
    // Queued before the worker starts, so that its first fetch takes all
    // three and hands them out at once: a job fetched but not yet handed
    // out when the signal comes goes back to the queue instead (the
    // contract, but not what this test is about).
    let mut ops = Vec::new();
    for i in 1..=3 {
        ops.push(submit(&app, &format!("inv-{i}"), &format!("k-{i}")).await);
    }
    let mut worker = spawn_worker(&app.db.url, &[("IDEMQ_SHUTDOWN_GRACE", "20s")]);
    worker.wait_output("worker ready", DEADLINE).await;
    // All three handed to the worker, one at least in its transaction
    // (jobs that arrive together share a group transaction, and run one
    // after the other in it: docs/job-path.md, "Group commit").
    await_sleepers(&app.db.pool, 1).await;
    eventually("3 jobs held by the worker", || async {
        app.count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running')")
            .await
            == 3
    })
    .await;

    let asked = Instant::now();
    worker.sigterm();
    // Submitted once the worker is stopping: it must wait for another worker.
    worker
        .wait_output("stopping: no new jobs", DEADLINE.saturating_sub(asked.elapsed()))
        .await;
    let late = submit(&app, "inv-4", "k-4").await;
    // Its job is in the queue, free, while the worker finishes the three
    // others (2 s each): it could take it, and must not.
    eventually("the late job queued while the worker still runs", || {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM apalis.jobs WHERE status = 'Pending' AND lock_by IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    println!(
        "SIGTERM with 3 jobs in flight: exit {status} after {:?}",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", worker.output());

    for op in &ops {
        assert_eq!(op_state(&app.db.pool, op).await, ("succeeded".into(), 1));
    }
    assert_eq!(op_state(&app.db.pool, &late).await, ("queued".into(), 0));
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running')")
            .await,
        0,
        "nothing left running"
    );
    // The next worker takes the late one.
    let _next = spawn_worker(&app.db.url, &[]);
    assert_eq!(app.await_final(&late).await["status"], "succeeded");
}

/// Live registrations (heartbeat younger than the 60 s lease set below) of
/// the worker process with this pid (its instance name holds the pid).
async fn live_registrations(app: &TestApp, pid: u32) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.workers
         WHERE id LIKE '%-' || $1 || '-%' AND last_seen > now() - interval '60 seconds'",
    )
    .bind(pid.to_string())
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

/// A worker that stops cleanly leaves the fleet at once: its registrations
/// are no longer live, so the other processes' next view of the fleet
/// gives it no notices to own. A killed one stays live until its lease
/// runs out (apalis's rule, which the orphan sweep keeps).
#[tokio::test]
async fn a_clean_stop_leaves_the_fleet_at_once_and_a_kill_does_not() {
    let app = spawn_app().await;
    let lease = [("IDEMQ_WORKER_LEASE", "60s")];
    let mut clean = spawn_worker(&app.db.url, &lease);
    let mut killed = spawn_worker(&app.db.url, &lease);
    let queues = idemq_core::queue::ALL.len() as i64;
    for worker in [&clean, &killed] {
        let pid = worker.pid();
        eventually("every queue of the worker registered", || async {
            live_registrations(&app, pid).await == queues
        })
        .await;
    }

    clean.sigterm();
    let status = clean.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", clean.output());
    assert_eq!(live_registrations(&app, clean.pid()).await, 0);
    // Still registered (the board shows it), only no longer live.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM apalis.workers WHERE id LIKE '%-{}-%'",
            clean.pid()
        ))
        .await,
        queues
    );

    killed.kill9();
    assert_eq!(live_registrations(&app, killed.pid()).await, queues);
}

#[tokio::test]
async fn sigterm_past_the_grace_exits_non_zero_and_the_job_is_rescued() {
    let app = spawn_app().await;
    app.insert_invoice("inv-stuck").await;
    invoice_trigger(&app.db.pool, "IF attempt = 1 THEN PERFORM pg_sleep(60); END IF;").await;
    let mut worker = spawn_worker(&app.db.url, &[("IDEMQ_SHUTDOWN_GRACE", "1s")]);
    worker.wait_output("worker ready", DEADLINE).await;
    let op = submit(&app, "inv-stuck", "k-stuck").await;
    await_sleepers(&app.db.pool, 1).await;

    let asked = Instant::now();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    println!(
        "SIGTERM past a 1s grace: exit {status} after {:?}",
        asked.elapsed()
    );
    assert!(!status.success(), "{status}");
    assert!(worker.output().contains("IDEMQ_SHUTDOWN_GRACE"));

    let _next = spawn_worker(&app.db.url, &[]);
    let rescued = await_final_within(&app.db.pool, &op, LEASE + MARGIN + Duration::from_secs(2)).await;
    println!("job left by the late worker rescued {rescued:?} after it exited");
    assert_eq!(op_state(&app.db.pool, &op).await, ("succeeded".into(), 2));
    assert_paid_once(&app.db.pool, "inv-stuck", &op).await;
}

// ---------------------------------------------------------------- reconciler

async fn job_of(pool: &PgPool, op: &str) -> String {
    sqlx::query_scalar("SELECT job_id FROM operations WHERE id = $1")
        .bind(op_uuid(op))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_reconciler_redrives_lost_jobs_and_finishes_dead_ones_once_per_tick() {
    let app = spawn_app().await; // no worker yet: everything stays queued
    for id in ["inv-gone", "inv-dead", "inv-done", "inv-fine", "inv-later"] {
        app.insert_invoice(id).await;
    }
    let gone = submit(&app, "inv-gone", "k-gone").await;
    let dead = submit(&app, "inv-dead", "k-dead").await;
    let done = submit(&app, "inv-done", "k-done").await;
    let fine = submit(&app, "inv-fine", "k-fine").await;
    let pool = &app.db.pool;
    // Job row deleted by hand.
    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1")
        .bind(job_of(pool, &gone).await)
        .execute(pool)
        .await
        .unwrap();
    // Job dead, attempts used up.
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed' WHERE id = $1")
        .bind(job_of(pool, &dead).await)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE operations SET attempts = 8, status = 'running' WHERE id = $1")
        .bind(op_uuid(&dead))
        .execute(pool)
        .await
        .unwrap();
    // Job `Done` while the operation is not.
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = $1")
        .bind(job_of(pool, &done).await)
        .execute(pool)
        .await
        .unwrap();
    let old_gone_job = job_of(pool, &gone).await;

    let cfg = ReconcilerConfig::new(ReconcilerOptions {
        interval: Duration::from_secs(1),
        stale_after: Duration::ZERO,
        max_attempts: 8,
        batch_size: 100,
        idempotency_ttl: Duration::from_secs(86_400),
    })
    .unwrap();
    let report = reconciler::run_once(pool, &cfg).await.unwrap();
    assert_eq!(report.candidates, 3, "{report:?}");
    assert_eq!(
        (
            report.requeued_missing,
            report.requeued_dead,
            report.requeued_done,
            report.failed_exhausted
        ),
        (1, 0, 1, 1),
        "{report:?}"
    );
    assert_ne!(job_of(pool, &gone).await, old_gone_job, "a new job");
    assert_eq!(op_state(pool, &fine).await, ("queued".into(), 0), "left alone");
    let failed = app.await_final(&dead).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["response"]["status"], 500);
    assert_eq!(
        failed["response"]["body"]["type"],
        "https://idemq.dev/problems/operation-failed"
    );
    let replay = app.mark_paid("inv-dead", "k-dead").await;
    assert_problem(&replay, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    // Nothing left to do.
    assert_eq!(
        reconciler::run_once(pool, &cfg).await.unwrap(),
        Default::default()
    );

    // Once per tick for the whole fleet: the maintenance services of two
    // processes, the same tick.
    let tick = idemq_worker::maintenance::tick_of(chrono::Utc::now(), Duration::from_secs(3600));
    let duty = Reconciler { config: cfg };
    let in_process =
        |name: &str| Service::new(pool.clone(), name, LEASE).runner_for(duty, CancellationToken::new());
    assert!(in_process("one")
        .run_tick(tick, Why::Schedule)
        .await
        .unwrap()
        .is_some());
    assert!(in_process("two")
        .run_tick(tick, Why::Schedule)
        .await
        .unwrap()
        .is_none());

    // One more lost job, for the worker process's own reconciler (every
    // second here, so an operation is stale after one second).
    let later = submit(&app, "inv-later", "k-later").await;
    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1")
        .bind(job_of(pool, &later).await)
        .execute(pool)
        .await
        .unwrap();
    let _worker = spawn_worker(&app.db.url, &[("IDEMQ_RECONCILE_INTERVAL", "1s")]);
    for op in [&gone, &done, &fine, &later] {
        assert_eq!(app.await_final(op).await["status"], "succeeded", "{op}");
    }
    let acted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM duty_ticks WHERE duty = 'reconciler' AND finished_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(acted >= 1);
    for (invoice, op) in [
        ("inv-gone", &gone),
        ("inv-done", &done),
        ("inv-fine", &fine),
        ("inv-later", &later),
    ] {
        assert_paid_once(pool, invoice, op).await;
    }
}
