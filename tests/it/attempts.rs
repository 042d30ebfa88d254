//! One job's attempts, run in-process by `JobRunner::run` (no apalis): the
//! attempt's start folded into the job transaction's opening message
//! (`job::open_attempt`), the bound checked under the operation's lock, the
//! worker's name written as given, and a failed opening that leaves no
//! broken connection in the pool.
use std::time::Duration;

use idemq_core::{job::Start, operation::OperationId};
use idemq_worker::{JobRunner, WorkerSettings};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

const TTL: Duration = Duration::from_secs(24 * 3600);

/// A runner with at most `max_attempts` attempts on a pool of `connections`.
async fn runner(app: &TestApp, max_attempts: u32, connections: u32, name: &str) -> JobRunner {
    let mut config = test_worker_config();
    config.job_max_attempts = max_attempts;
    let pool = idemq_core::db::connect(&app.db.url, connections).await.unwrap();
    let settings = WorkerSettings {
        config,
        idempotency_ttl: TTL,
    };
    JobRunner::new(pool, &settings).named(name.to_owned())
}

/// A payment recorded (and enqueued, but no worker runs it): its id.
async fn recorded(app: &TestApp, invoice: &str, key: &str) -> OperationId {
    app.insert_invoice(invoice).await;
    let r: Value = app.mark_paid(invoice, key).await.json().await.unwrap();
    r["id"].as_str().unwrap().parse().unwrap()
}

/// (status, attempts, response status, content type, body) of an operation.
async fn stored(
    pool: &PgPool,
    op: OperationId,
) -> (String, i32, Option<i16>, Option<String>, Option<String>) {
    sqlx::query_as(
        "SELECT status, attempts, response_status, response_content_type, response_body
         FROM operations WHERE id = $1",
    )
    .bind(op.uuid())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// (attempt, worker, outcome) of each of the operation's attempt rows.
async fn attempt_rows(pool: &PgPool, op: OperationId) -> Vec<(i32, String, Option<String>)> {
    sqlx::query_as(
        "SELECT attempt, worker, outcome FROM operation_attempts WHERE operation_id = $1 ORDER BY id",
    )
    .bind(op.uuid())
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_attempt_started_past_the_bound_runs_nothing_and_stores_the_exhausted_500() {
    let app = spawn_app().await;
    let pool = &app.db.pool;
    let op = recorded(&app, "inv-bound", "k-bound").await;
    // Three attempts killed their workers: counted, the last row still open.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE operations SET status = 'running', attempts = 3 WHERE id = '{0}';
         INSERT INTO operation_attempts (operation_id, attempt, worker, ended_at, outcome)
         VALUES ('{0}', 1, 'dead-1', now(), 'abandoned'), ('{0}', 2, 'dead-2', now(), 'abandoned');
         INSERT INTO operation_attempts (operation_id, attempt, worker) VALUES ('{0}', 3, 'dead-3')",
        op.uuid()
    )))
    .execute(pool)
    .await
    .unwrap();
    // The reference: what the exhausted finish stores after three attempts.
    let reference = recorded(&app, "inv-reference", "k-reference").await;
    sqlx::query("UPDATE operations SET status = 'running', attempts = 3 WHERE id = $1")
        .bind(reference.uuid())
        .execute(pool)
        .await
        .unwrap();
    assert!(idemq_core::job::finish_exhausted(pool, reference, 3, TTL)
        .await
        .unwrap());

    runner(&app, 3, 2, "it-worker")
        .await
        .run(op, Start::Here, None)
        .await
        .unwrap();

    let (status, attempts, code, content_type, body) = stored(pool, op).await;
    // The fourth start counted itself, found the bound and ran nothing.
    assert_eq!((status.as_str(), attempts), ("failed", 4));
    let (_, _, ref_code, ref_type, ref_body) = stored(pool, reference).await;
    assert_eq!((code, &content_type, &body), (ref_code, &ref_type, &ref_body));
    assert_eq!(code, Some(500));
    let body: Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(body["type"], problem_type("operation-failed"));
    assert!(
        body["detail"].as_str().unwrap().contains("after 3 attempts"),
        "{body}"
    );
    assert_eq!(
        attempt_rows(pool, op).await,
        vec![
            (1, "dead-1".into(), Some("abandoned".into())),
            (2, "dead-2".into(), Some("abandoned".into())),
            (3, "dead-3".into(), Some("abandoned".into())),
            (4, "it-worker".into(), Some("exhausted".into())),
        ]
    );
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'UNPAID'")
            .await,
        2
    );
    let done = app.await_final(&op.to_string()).await;
    assert_eq!(done["response"]["status"], 500);
}

#[tokio::test]
async fn the_worker_name_is_written_as_given_whatever_it_holds() {
    let app = spawn_app().await;
    let pool = &app.db.pool;
    let op = recorded(&app, "inv-name", "k-name").await;
    let name = r#"it's a \ "name"'); DELETE FROM invoices; --"#;

    runner(&app, 3, 2, name)
        .await
        .run(op, Start::Here, None)
        .await
        .unwrap();

    assert_eq!(stored(pool, op).await.0, "succeeded");
    assert_eq!(
        attempt_rows(pool, op).await,
        vec![(1, name.to_owned(), Some("succeeded".into()))]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'PAID'")
            .await,
        1
    );
    // A redelivery: the start changes nothing, no attempt row is opened.
    runner(&app, 3, 2, "again")
        .await
        .run(op, Start::Here, None)
        .await
        .unwrap();
    assert_eq!(stored(pool, op).await.1, 1);
    assert_eq!(attempt_rows(pool, op).await.len(), 1);
}

#[tokio::test]
async fn a_failed_opening_message_leaves_no_broken_connection_behind() {
    let app = spawn_app().await;
    let pool = &app.db.pool;
    let op = recorded(&app, "inv-opening", "k-opening").await;
    // The first start fails inside the opening message (in its own
    // transaction, which the server then holds aborted); the sequence
    // survives the rollback.
    sqlx::raw_sql(
        "CREATE SEQUENCE opening_faults;
         CREATE FUNCTION test_opening_fault() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
            IF nextval('opening_faults') = 1 THEN RAISE EXCEPTION 'injected start fault'; END IF;
            RETURN NEW;
         END $f$;
         CREATE TRIGGER test_opening_fault BEFORE INSERT ON operation_attempts
            FOR EACH ROW EXECUTE FUNCTION test_opening_fault();",
    )
    .execute(pool)
    .await
    .unwrap();

    // One connection: the next opening gets a fresh one only if the broken
    // one was closed, not handed back to the pool.
    runner(&app, 3, 1, "it-worker")
        .await
        .run(op, Start::Here, None)
        .await
        .unwrap();

    assert_eq!(app.count("SELECT last_value FROM opening_faults").await, 2);
    let (status, attempts, ..) = stored(pool, op).await;
    // The failed start was rolled back: it counted nothing.
    assert_eq!((status.as_str(), attempts), ("succeeded", 1));
    assert_eq!(
        attempt_rows(pool, op).await,
        vec![(1, "it-worker".into(), Some("succeeded".into()))]
    );
}
