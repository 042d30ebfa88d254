//! A job's acknowledgement (docs/job-path.md, "The job transaction", and
//! worker/src/ack.rs): the job transaction that settles an operation marks
//! the apalis job that delivered it `Done`, and apalis sends no
//! acknowledgement of its own for it; every other end of a job (a
//! redelivery, a missing operation, a hand-back) is acknowledged by the
//! queue as before. Counted by the database: a trigger records every write
//! that gives a job row a final status, with its transaction, and another
//! the transaction that finished each operation.
use std::time::Duration;

use idemq_core::{
    job::{Ack, QueueJob, Start},
    operation::OperationId,
};
use idemq_worker::{config::WorkerConfig, JobRunner, WorkerSettings};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// Records in `test_job_completions` every update that leaves an
/// `apalis.jobs` row final (apalis's acknowledgement writes one, and the job
/// transaction now does), and in `test_op_finishes` the transaction that
/// finished each operation.
async fn record_completions(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE TABLE test_job_completions (job_id text NOT NULL, status text NOT NULL, xid xid8 NOT NULL);
         CREATE FUNCTION test_job_completed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.test_job_completions VALUES (NEW.id, NEW.status, pg_current_xact_id());
             RETURN NULL;
         END $$;
         CREATE TRIGGER test_job_completed AFTER UPDATE ON apalis.jobs FOR EACH ROW
             WHEN (NEW.status IN ('Done', 'Failed', 'Killed'))
             EXECUTE FUNCTION test_job_completed();
         CREATE TABLE test_op_finishes (job_id text NOT NULL, xid xid8 NOT NULL);
         CREATE FUNCTION test_op_finished() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.test_op_finishes VALUES (NEW.job_id, pg_current_xact_id());
             RETURN NULL;
         END $$;
         CREATE TRIGGER test_op_finished AFTER UPDATE ON operations FOR EACH ROW
             WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
             EXECUTE FUNCTION test_op_finished();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

/// A payment recorded through the API: its operation id.
async fn recorded(app: &TestApp, invoice: &str) -> String {
    app.insert_invoice(invoice).await;
    let r = app.mark_paid(invoice, &format!("key-{invoice}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    op["id"].as_str().unwrap().to_owned()
}

async fn job_of(app: &TestApp, op: &str) -> String {
    sqlx::query_scalar("SELECT job_id FROM operations WHERE id = $1")
        .bind(op_uuid(op))
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// (status, done_at set, last_result, attempts, lock_by) of a job row.
async fn job_row(app: &TestApp, job: &str) -> (String, bool, Option<Value>, i32, Option<String>) {
    sqlx::query_as(
        "SELECT status, done_at IS NOT NULL, last_result, attempts, lock_by FROM apalis.jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_settled_job_is_marked_done_by_its_own_transaction_and_not_acknowledged_again() {
    let mut app = spawn_app().await;
    record_completions(&app).await;
    // Ten waiting when the worker starts (a batch), then five one at a time.
    let mut ops = Vec::new();
    for i in 0..10 {
        ops.push(recorded(&app, &format!("inv-batch-{i}")).await);
    }
    app.start_worker().await;
    for op in &ops {
        assert_eq!(app.await_final(op).await["status"], "succeeded");
    }
    for i in 0..5 {
        let op = recorded(&app, &format!("inv-single-{i}")).await;
        assert_eq!(app.await_final(&op).await["status"], "succeeded");
        ops.push(op);
    }
    // A stop sends every acknowledgement still waiting: any that apalis
    // would send for these jobs is in the database after it.
    app.stop_workers().await;

    let jobs = ops.len() as i64;
    for op in &ops {
        let job = job_of(&app, op).await;
        let (status, done_at, last_result, attempts, lock_by) = job_row(&app, &job).await;
        // The columns apalis's acknowledgement writes, as it writes them.
        assert_eq!(status, "Done", "job {job}");
        assert!(done_at, "job {job}: done_at");
        assert_eq!(last_result, Some(serde_json::json!({ "Ok": null })), "job {job}");
        assert_eq!(attempts, 1, "job {job}");
        assert!(
            lock_by.is_some_and(|w| w.starts_with("payments@")),
            "job {job}: still its worker's"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM test_job_completions").await,
        jobs,
        "one write per job leaves it final: no acknowledgement after the job's own"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM test_job_completions c
             JOIN test_op_finishes f ON f.job_id = c.job_id AND f.xid = c.xid
             WHERE c.status = 'Done'"
        )
        .await,
        jobs,
        "each job marked Done in the transaction that finished its operation"
    );
}

#[tokio::test]
async fn a_redelivery_and_a_missing_operation_are_still_acknowledged_by_the_queue() {
    let mut app = spawn_app().await;
    record_completions(&app).await;
    app.start_worker().await;
    let op = recorded(&app, "inv-once").await;
    assert_eq!(app.await_final(&op).await["status"], "succeeded");
    let job = job_of(&app, &op).await;
    eventually("the job marked Done", || async {
        job_row(&app, &job).await.0 == "Done"
    })
    .await;
    // Its completion lost (as after a Postgres crash): delivered again.
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL
         WHERE id = $1",
    )
    .bind(&job)
    .execute(&app.db.pool)
    .await
    .unwrap();
    // A job whose operation does not exist (pushed by hand).
    let orphan = idemq_core::queue::new_job_id();
    let mut conn = app.db.pool.acquire().await.unwrap();
    idemq_core::queue::push(&mut conn, "payments", orphan, OperationId::new())
        .await
        .unwrap();
    drop(conn);
    let orphan = orphan.to_string();

    // Both found nothing to do; the queue acknowledges them (the poll timer
    // takes them: no notice was sent).
    for (job, completions) in [(&job, 2), (&orphan, 1)] {
        eventually(&format!("job {job} acknowledged"), || async {
            app.count(&format!(
                "SELECT count(*) FROM test_job_completions WHERE job_id = '{job}'"
            ))
            .await
                == completions
        })
        .await;
        let (status, done_at, last_result, attempts, _) = job_row(&app, job).await;
        assert_eq!(status, "Done");
        assert!(done_at);
        assert_eq!(last_result, Some(serde_json::json!({ "Ok": null })));
        assert!(attempts >= 1);
    }
    app.stop_workers().await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM test_job_completions c
             WHERE job_id IN ('{job}', '{orphan}')
               AND NOT EXISTS (SELECT FROM test_op_finishes f WHERE f.xid = c.xid)"
        ))
        .await,
        2,
        "the redelivery's and the orphan's acknowledgements: the queue's own transactions"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'PAID'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_job_handed_back_at_shutdown_is_acknowledged_failed_by_the_queue() {
    let mut app = spawn_app().await;
    record_completions(&app).await;
    // Every attempt on this invoice fails (an unexplained error: retried).
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'test: refused'; END $$;
         CREATE TRIGGER test_refuse BEFORE UPDATE ON invoices
             FOR EACH ROW WHEN (OLD.id = 'inv-stuck') EXECUTE FUNCTION test_refuse();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let op = recorded(&app, "inv-stuck").await;
    let job = job_of(&app, &op).await;
    // A lease far longer than the test: on a loaded machine a late
    // heartbeat would otherwise let the worker's own orphan sweep put the
    // job back `Pending` (a correct path, but not the one under test).
    app.start_worker_with(WorkerConfig {
        worker_lease: Duration::from_secs(120),
        ..test_worker_config()
    })
    .await;
    eventually("a failed attempt", || async {
        app.count(&format!(
            "SELECT count(*) FROM operation_attempts WHERE operation_id = '{}' AND outcome = 'error'",
            op_uuid(&op)
        ))
        .await
            >= 1
    })
    .await;
    // Between attempts (or in one: it fails, and the wait for the next
    // ends at once): handed back.
    app.stop_workers().await;
    let row = job_row(&app, &job).await;
    let (status, done_at, last_result, _, _) = row.clone();
    // The whole row on failure: `last_result` tells which path put it back.
    assert_eq!(
        status, "Failed",
        "(status, done, last_result, attempts, lock_by): {row:?}"
    );
    assert!(done_at);
    assert_eq!(
        last_result,
        Some(serde_json::json!({ "Err": "worker stopping: job handed back to the queue" }))
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM test_job_completions WHERE job_id = '{job}'"
        ))
        .await,
        1
    );
    let unfinished = app
        .count(&format!(
            "SELECT count(*) FROM operations WHERE id = '{}' AND finished_at IS NULL",
            op_uuid(&op)
        ))
        .await;
    assert_eq!(unfinished, 1, "not settled: another worker continues it");
}

/// Two apalis workers (the rows `lock_by` refers to) and a recorded
/// payment whose job the first holds: (operation, job).
async fn held_by_worker_a(app: &TestApp, invoice: &str) -> (OperationId, String) {
    let op = recorded(app, invoice).await;
    let job = job_of(app, &op).await;
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Queued', lock_by = 'payments@a', lock_at = now() WHERE id = $1",
    )
    .bind(&job)
    .execute(&app.db.pool)
    .await
    .unwrap();
    (op.parse().unwrap(), job)
}

#[tokio::test]
async fn only_the_worker_that_holds_the_job_marks_it() {
    let app = spawn_app().await;
    sqlx::raw_sql(
        "INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES
             ('payments@a', 'payments', 'PgStorage'), ('payments@b', 'payments', 'PgStorage')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let pool = idemq_core::db::connect(&app.db.url, 2).await.unwrap();
    let settings = WorkerSettings {
        config: test_worker_config(),
        idempotency_ttl: Duration::from_secs(3600),
    };
    let runner = JobRunner::new(pool, &settings).named("it".into());
    let delivered = |job: &str, worker: &str| QueueJob {
        id: job.to_owned(),
        worker: worker.to_owned(),
        attempt: 3,
    };

    // Taken over by b after a's lease expired: a's late run does not mark it.
    let (op, job) = held_by_worker_a(&app, "inv-a").await;
    sqlx::query("UPDATE apalis.jobs SET lock_by = 'payments@b' WHERE id = $1")
        .bind(&job)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let ack = runner
        .run(op, Start::Here, Some(&delivered(&job, "payments@a")))
        .await
        .unwrap();
    assert_eq!(ack, Ack::ByQueue);
    let (status, done_at, _, _, lock_by) = job_row(&app, &job).await;
    assert_eq!(
        (status.as_str(), done_at, lock_by.as_deref()),
        ("Queued", false, Some("payments@b"))
    );

    // Still a's: marked, with apalis's attempt.
    let (op, job) = held_by_worker_a(&app, "inv-b").await;
    let ack = runner
        .run(op, Start::Here, Some(&delivered(&job, "payments@a")))
        .await
        .unwrap();
    assert_eq!(ack, Ack::Committed);
    let (status, done_at, last_result, attempts, _) = job_row(&app, &job).await;
    assert_eq!(
        (status.as_str(), done_at, last_result, attempts),
        ("Done", true, Some(serde_json::json!({ "Ok": null })), 3)
    );

    // Not the operation's current job (the reconciler enqueued another):
    // the delivered one is marked, not `operations.job_id`'s.
    let (op, job) = held_by_worker_a(&app, "inv-c").await;
    let newer = idemq_core::queue::new_job_id().to_string();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
         SELECT $2, job_type, job, 'Pending', 0, max_attempts, now(), 0, ''::hstore FROM apalis.jobs WHERE id = $1",
    )
    .bind(&job)
    .bind(&newer)
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE operations SET job_id = $2 WHERE id = $1")
        .bind(op.uuid())
        .bind(&newer)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let ack = runner
        .run(op, Start::Here, Some(&delivered(&job, "payments@a")))
        .await
        .unwrap();
    assert_eq!(ack, Ack::Committed);
    assert_eq!(job_row(&app, &job).await.0, "Done");
    assert_eq!(job_row(&app, &newer).await.0, "Pending");
}
