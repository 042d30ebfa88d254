//! The fetch gate (worker/src/fetch_gate.rs, docs/job-path.md "Waking and
//! fetching"): a worker fetches after a notice, after a full batch and on
//! its poll timer, and at no other time. Fetches are counted by the
//! database: `queue_paused`, which every fetch calls once for its limit, is
//! wrapped, for the test, in a function that records each call (in the
//! fetch's own statement, so the count is exact and visible as soon as the
//! fetch returns); the jobs a fetch took share its `lock_at`.
use std::time::Duration;

use idemq_core::{
    fingerprint::Fingerprint,
    idempotency::{self, NewOperation, NextAction},
    key::IdempotencyKey,
    operation::{OperationId, OperationKind},
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

/// Wraps `queue_paused` (the fetch's paused-queue check, made once per
/// fetch) so that every fetch is a row of `test_fetches`. Before any worker
/// connects (a connection keeps its plan).
async fn count_fetches(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE TABLE test_fetches (queue text NOT NULL);
         ALTER FUNCTION queue_paused(text) RENAME TO queue_paused_uncounted;
         CREATE FUNCTION queue_paused(p_queue text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
         BEGIN
             INSERT INTO public.test_fetches VALUES (p_queue);
             RETURN queue_paused_uncounted(p_queue);
         END $$;",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn fetches(app: &TestApp, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM test_fetches WHERE queue = $1")
        .bind(queue)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// No timer during the test: every fetch is a notice's (or a full batch's).
fn no_timer() -> idemq_worker::WorkerConfig {
    idemq_worker::WorkerConfig {
        queue_poll_interval: Duration::from_secs(3600),
        ..test_worker_config()
    }
}

async fn paid(app: &TestApp, invoice: &str) -> Value {
    let r = app.mark_paid(invoice, &format!("key-{invoice}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    app.await_final(op["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn one_job_at_a_time_costs_one_fetch_each() {
    let mut app = spawn_app().await;
    count_fetches(&app).await;
    for i in 0..11 {
        app.insert_invoice(&format!("inv-{i}")).await;
    }
    app.start_worker_with(no_timer()).await;
    // Past the start (its first fetch, the listener's first wake-up).
    assert_eq!(paid(&app, "inv-0").await["status"], "succeeded");
    let before = fetches(&app, "payments").await;

    let jobs: i32 = 10;
    for i in 1..=jobs {
        assert_eq!(paid(&app, &format!("inv-{i}")).await["status"], "succeeded");
    }
    let per_job = fetches(&app, "payments").await - before;
    println!("{per_job} fetches for {jobs} jobs, one at a time");
    // One fetch per notice; none after handing the job out, none after it
    // finished (apalis's own backend made 3 or more per job here). One
    // spare: a notice drained while a fetch is in flight is answered by
    // one more fetch.
    assert!(
        (i64::from(jobs)..=i64::from(jobs) + 1).contains(&per_job),
        "{per_job} fetches for {jobs} jobs"
    );
    // A fetch stamps the jobs it takes with its `lock_at` (and its worker).
    let found = app
        .count("SELECT count(DISTINCT (lock_by, lock_at)) FROM apalis.jobs WHERE job_type = 'payments'")
        .await;
    assert_eq!(
        found,
        i64::from(jobs) + 1,
        "each job was found by a fetch of its own"
    );
}

#[tokio::test]
async fn a_burst_of_notices_is_at_most_two_fetches() {
    let mut app = spawn_app().await;
    count_fetches(&app).await;
    app.insert_invoice("inv-0").await;
    app.insert_invoice("inv-1").await;
    app.start_worker_with(no_timer()).await;
    assert_eq!(paid(&app, "inv-0").await["status"], "succeeded");
    let before = fetches(&app, "payments").await;

    // 100 notices for the queue in one commit, no job behind them.
    sqlx::query(
        "SELECT pg_notify('apalis::job::insert', json_build_object('job_type', 'payments', 'id', i::text)::text)
         FROM generate_series(1, 100) AS i",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    // A real job after them: once it is done, the burst has been drained
    // (notices arrive in order).
    assert_eq!(paid(&app, "inv-1").await["status"], "succeeded");
    let after = fetches(&app, "payments").await - before;
    println!("{after} fetches for a burst of 100 notices and one job");
    // The burst: one fetch, or two if the listener was still handing it
    // over when the first started; the job: one, or two likewise.
    assert!(after <= 4, "{after} fetches for 100 notices and one job");
}

/// Two worker processes share the notices: each job is fetched for by the
/// one its id picks, not by both (wake_strategy.rs, `Fleet`). Until each
/// has read the other's registration, both may fetch; so the test waits,
/// within a deadline, for a round of jobs that costs one fetch each. With
/// every process fetching for every notice, no round ever does (two each).
#[tokio::test]
async fn two_worker_processes_fetch_once_per_job() {
    let mut app = spawn_app().await;
    count_fetches(&app).await;
    let config = idemq_worker::WorkerConfig {
        // Never within the test: a notice the other process owns is never
        // fetched for by this one.
        queue_backup_fetch_delay: Duration::from_secs(10),
        ..no_timer()
    };
    app.start_worker_with(config.clone()).await;
    app.start_worker_with(config).await;
    eventually("both processes registered on payments", || async {
        app.count("SELECT count(*) FROM apalis.workers WHERE worker_type = 'payments'")
            .await
            == 2
    })
    .await;

    let round: i64 = 6;
    let started = std::time::Instant::now();
    let mut invoices = 0;
    let mut rounds = Vec::new();
    loop {
        let before = fetches(&app, "payments").await;
        for _ in 0..round {
            invoices += 1;
            let invoice = format!("inv-{invoices}");
            app.insert_invoice(&invoice).await;
            assert_eq!(paid(&app, &invoice).await["status"], "succeeded");
        }
        let spent = fetches(&app, "payments").await - before;
        rounds.push(spent);
        // One spare, as for one process: a notice drained while a fetch is
        // in flight is answered by one more fetch.
        if spent <= round + 1 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no round of {round} jobs cost one fetch each in {} rounds; the last: {:?} fetches",
            rounds.len(),
            &rounds[rounds.len().saturating_sub(5)..]
        );
    }
    println!("fetches per round of {round} jobs: {rounds:?}");
}

/// A notice whose owner takes no job (here: nine registered processes that
/// do not exist, so most notices are theirs) is fetched for by the backup
/// fetch, after `IDEMQ_QUEUE_BACKUP_FETCH_DELAY`: every job is taken,
/// though the poll timer never fires.
#[tokio::test]
async fn a_notice_whose_owner_takes_no_job_is_fetched_for_after_the_backup_delay() {
    let mut app = spawn_app().await;
    count_fetches(&app).await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)
         SELECT 'payments@ghost-' || i, 'payments', 'ghost', now() + interval '1 hour'
         FROM generate_series(1, 9) AS i",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    app.start_worker_with(no_timer()).await;
    for i in 0..8 {
        let invoice = format!("inv-{i}");
        app.insert_invoice(&invoice).await;
        assert_eq!(
            paid(&app, &invoice).await["status"],
            "succeeded",
            "job {i} taken without its owner"
        );
    }
    let ghosts = app
        .count("SELECT count(*) FROM apalis.jobs WHERE lock_by LIKE '%ghost%'")
        .await;
    assert_eq!(ghosts, 0);
}

#[tokio::test]
async fn a_job_enqueued_without_a_notice_is_taken_on_the_poll_timer() {
    let mut app = spawn_app().await;
    count_fetches(&app).await;
    app.insert_invoice("inv-quiet").await;
    app.start_worker_with(idemq_worker::WorkerConfig {
        queue_poll_interval: Duration::from_millis(300),
        ..test_worker_config()
    })
    .await;
    // The worker has started and looked once.
    eventually("the worker's first fetch", || async {
        fetches(&app, "payments").await >= 1
    })
    .await;

    // Recorded and enqueued by the core, as the API does, but no notice
    // (as for a retry or a delayed job).
    let (principal, _) = idemq_core::principal::create_token(&app.db.pool, "quiet")
        .await
        .unwrap();
    let body = json!({ "paymentMethod": "card" });
    let id = OperationId::new();
    let key = IdempotencyKey::parse(b"quiet-1").unwrap();
    let fingerprint =
        Fingerprint::compute("PATCH", "/invoices/{id}/mark-paid", &[("id", "inv-quiet")], &body);
    let request = json!({ "params": { "id": "inv-quiet" }, "body": body });
    let next = idempotency::begin(
        &app.db.pool,
        NewOperation {
            id,
            announce_finish: false,
            principal: &principal,
            key: &key,
            fingerprint,
            kind: OperationKind::InvoiceMarkPaid,
            request: &request,
        },
    )
    .await
    .unwrap();
    assert!(matches!(next, NextAction::Started(_)));
    let done = format!(
        "SELECT count(*) FROM operations WHERE id = '{}' AND status = 'succeeded'",
        id.uuid()
    );
    eventually("the job taken without a notice", || async {
        app.count(&done).await == 1
    })
    .await;
}

#[tokio::test]
async fn jobs_fetched_but_not_handed_out_go_back_at_shutdown() {
    let mut app = spawn_app().await;
    // Every payment sleeps: one runs, the rest of the batch waits in the
    // worker's buffer.
    sqlx::raw_sql(
        "CREATE FUNCTION test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
         CREATE TRIGGER test_slow BEFORE UPDATE ON invoices
            FOR EACH ROW EXECUTE FUNCTION test_slow();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let mut ops = Vec::new();
    for i in 0..5 {
        app.insert_invoice(&format!("inv-{i}")).await;
        let r = app.mark_paid(&format!("inv-{i}"), &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let op: Value = r.json().await.unwrap();
        ops.push(op["id"].as_str().unwrap().to_owned());
    }
    app.start_worker_with(idemq_worker::WorkerConfig {
        worker_concurrency: 1,
        queue_batch_size: 10,
        queue_poll_interval: Duration::from_secs(3600),
        ..test_worker_config()
    })
    .await;
    eventually("the five jobs fetched in one batch", || async {
        app.count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running')")
            .await
            == 5
    })
    .await;
    eventually("one job running", || async {
        app.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .await
            == 1
    })
    .await;
    // The fetch counted all five attempts, the four waiting included.
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'running' AND attempts = 1")
            .await,
        5
    );
    assert_eq!(
        app.count("SELECT count(*) FROM operation_attempts WHERE ended_at IS NULL")
            .await,
        5
    );
    app.stop_workers().await;

    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running')")
            .await,
        0,
        "nothing left held by the stopped worker"
    );
    let pending = app
        .count("SELECT count(*) FROM apalis.jobs WHERE status = 'Pending' AND lock_by IS NULL")
        .await;
    let done = app
        .count("SELECT count(*) FROM operations WHERE status = 'succeeded'")
        .await;
    assert!(done >= 1, "the running job finished");
    assert_eq!(pending + done, 5, "the others are back in the queue");
    // Those never ran: their counts and attempt rows are given back.
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'queued' AND attempts = 0")
            .await,
        pending
    );
    assert_eq!(
        app.count("SELECT count(*) FROM operation_attempts").await,
        done,
        "a row for each attempt that ran, none for those given back"
    );
    // Another worker takes them at once, each as its attempt 1.
    app.start_worker().await;
    for op in &ops {
        assert_eq!(app.await_final(op).await["status"], "succeeded");
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM operations o WHERE o.attempts = 1
             AND (SELECT count(*) FROM operation_attempts a
                  WHERE a.operation_id = o.id AND a.attempt = 1 AND a.outcome = 'succeeded') = 1"
        )
        .await,
        5
    );
}

/// Wraps `start_attempt` so that every call of it is a row of
/// `test_starts`. Before any worker connects.
async fn count_starts(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE TABLE test_starts (operation uuid NOT NULL);
         ALTER FUNCTION start_attempt(uuid, text) RENAME TO start_attempt_uncounted;
         CREATE FUNCTION start_attempt(p_operation uuid, p_worker text)
         RETURNS void LANGUAGE plpgsql VOLATILE AS $$
         BEGIN
             INSERT INTO public.test_starts VALUES (p_operation);
             PERFORM start_attempt_uncounted(p_operation, p_worker);
         END $$;",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn succeeded(app: &TestApp, n: i64) {
    eventually_within(&format!("{n} operations succeeded"), DEADLINE, || async {
        app.count("SELECT count(*) FROM operations WHERE status = 'succeeded'")
            .await
            == n
    })
    .await;
}

/// The fetch counts the attempt of each job it takes, in its own
/// statement: a first attempt starts no transaction of its own.
#[tokio::test]
async fn the_fetch_counts_each_first_attempt_and_no_attempt_starts_itself() {
    let mut app = spawn_app().await;
    count_starts(&app).await;
    for i in 0..12 {
        app.insert_invoice(&format!("inv-{i}")).await;
    }
    // Waited for in the database, not with `Prefer: wait`: a waiting request
    // flags the operation under its row lock, and a fetch that meets that
    // lock leaves the count to the attempt (SKIP LOCKED), as it should.
    // Two taken before the worker starts (its first fetch), then one at a
    // time, then a burst.
    for i in 0..2 {
        let r = app.mark_paid(&format!("inv-{i}"), &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    app.start_worker_with(no_timer()).await;
    succeeded(&app, 2).await;
    for i in 2..6 {
        let r = app.mark_paid(&format!("inv-{i}"), &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        succeeded(&app, i + 1).await;
    }
    for i in 6..12 {
        let r = app.mark_paid(&format!("inv-{i}"), &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    succeeded(&app, 12).await;
    assert_eq!(
        app.count("SELECT count(*) FROM test_starts").await,
        0,
        "no attempt started itself"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'succeeded' AND attempts = 1")
            .await,
        12
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM operation_attempts
             WHERE attempt = 1 AND outcome = 'succeeded' AND worker IS NOT NULL AND ended_at IS NOT NULL"
        )
        .await,
        12,
        "each attempt has its row, closed by its finish"
    );
}

/// A payment on a new invoice, recorded (no worker runs): its operation.
async fn recorded(app: &TestApp, invoice: &str) -> uuid::Uuid {
    app.insert_invoice(invoice).await;
    let r = app.mark_paid(invoice, &format!("key-{invoice}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    op_uuid(r.json::<Value>().await.unwrap()["id"].as_str().unwrap())
}

/// What the fetch counts, and what it leaves to the attempt itself: the
/// worker's fetch statement on its own, no worker.
#[tokio::test]
async fn the_fetch_skips_final_locked_and_foreign_jobs_and_counts_the_rest() {
    let app = spawn_app().await;
    let free = recorded(&app, "inv-free").await;
    let locked = recorded(&app, "inv-locked").await;
    let fin = recorded(&app, "inv-final").await;
    let again = recorded(&app, "inv-again").await;
    let pool = &app.db.pool;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE operations SET status = 'succeeded', finished_at = now(), response_status = 200 WHERE id = '{fin}';
         -- attempt 2 of an operation whose attempt 1 died with its worker
         UPDATE operations SET status = 'running', attempts = 1 WHERE id = '{again}';
         INSERT INTO operation_attempts (operation_id, attempt, worker) VALUES ('{again}', 1, 'dead');
         INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES ('w', 'payments', 'test');
         INSERT INTO apalis.jobs (job, id, job_type, run_at)
             VALUES ('\\xff00', '{}', 'payments', now() - interval '1 s');",
        idemq_core::queue::new_job_id()
    )))
    .execute(pool)
    .await
    .unwrap();
    // An attempt in flight elsewhere holds this one's row.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM operations WHERE id = $1 FOR UPDATE")
        .bind(locked)
        .execute(&mut *holder)
        .await
        .unwrap();

    // The worker's statement, as it runs it.
    let fetched: Vec<(String, Vec<u8>)> = sqlx::query(idemq_worker::fetch_gate::FETCH_STARTING_ATTEMPTS)
        .bind("w")
        .bind("payments")
        .bind(10)
        .bind("proc")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("id"), row.get("job")))
        .collect();
    holder.rollback().await.unwrap();
    assert_eq!(fetched.len(), 5, "every job is handed out");
    let payloads: Vec<Value> = fetched
        .iter()
        .filter_map(|(_, job)| serde_json::from_slice(job).ok())
        .collect();
    assert_eq!(
        payloads.len(),
        4,
        "the foreign payload comes back as stored: {fetched:?}"
    );
    let started = |op: uuid::Uuid| {
        payloads
            .iter()
            .find(|p| p["operationId"] == op.to_string())
            .map(|p| p["startedAttempt"].clone())
            .unwrap()
    };
    assert_eq!(started(free), json!(1));
    assert_eq!(started(again), json!(2));
    assert_eq!(
        started(locked),
        Value::Null,
        "locked by an attempt in flight: not counted"
    );
    assert_eq!(started(fin), Value::Null, "final: not counted");
    let state = |op: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32)>("SELECT status, attempts FROM operations WHERE id = $1")
                .bind(op)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(state(free).await, ("running".into(), 1));
    assert_eq!(state(again).await, ("running".into(), 2));
    assert_eq!(state(locked).await, ("queued".into(), 0));
    assert_eq!(state(fin).await, ("succeeded".into(), 0));
    let rows: Vec<(uuid::Uuid, i32, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT operation_id, attempt, worker, outcome FROM operation_attempts ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.contains(&(again, 1, Some("dead".into()), Some("abandoned".into()))),
        "{rows:?}"
    );
    assert!(rows.contains(&(again, 2, Some("proc".into()), None)), "{rows:?}");
    assert!(rows.contains(&(free, 1, Some("proc".into()), None)), "{rows:?}");
}
