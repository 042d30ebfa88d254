//! Group commit of the job transaction (`worker/src/job_groups.rs`,
//! `core/src/job_group.rs`): jobs that become ready while the worker's group
//! transactions are busy share the next one's commit, and each still does
//! exactly what it would alone. The test keeps the one group transaction
//! busy by holding a row lock on an invoice its job must update, and reads
//! which transaction finished each operation from the rows' `xmin`.
use reqwest::StatusCode;
use sqlx::{PgPool, Postgres, Transaction};

use crate::helpers::*;

/// One group transaction at a time (so the test knows which jobs wait for
/// it), and room for the waiting jobs' handlers.
fn grouped(groups: u32) -> idemq_worker::WorkerConfig {
    idemq_worker::WorkerConfig {
        job_groups: groups,
        worker_concurrency: 8,
        job_max_attempts: 2,
        ..test_worker_config()
    }
}

/// Holds the row lock of `invoice` until the transaction is dropped or
/// committed: a job that pays it waits, and its transaction with it.
async fn hold(pool: &PgPool, invoice: &str) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM invoices WHERE id = $1 FOR UPDATE")
        .bind(invoice)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Jobs fetched (handed to the worker), done or not.
async fn fetched(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status <> 'Pending'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The most operations one transaction finished (the `xmin` of their rows).
async fn largest_commit(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM operations GROUP BY xmin::text) per_commit",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn state(pool: &PgPool, op: &str) -> (String, i32, Option<i16>) {
    sqlx::query_as("SELECT status, attempts, response_status FROM operations WHERE id = $1")
        .bind(op_uuid(op))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The first job waits on `inv-hold`'s lock inside the worker's one group
/// transaction; `then` are submitted meanwhile and are fetched and handed
/// out, then the lock goes. Returns the operations, `inv-hold`'s first.
async fn behind_a_busy_group(app: &TestApp, then: &[&str]) -> Vec<(String, String)> {
    let held = hold(&app.db.pool, "inv-hold").await;
    let mut ops = vec![(
        "inv-hold".to_owned(),
        submit(app, "inv-hold", "key-inv-hold").await,
    )];
    eventually("the first job waits for the invoice's lock", || async {
        lock_waiters(&app.db.pool).await >= 1
    })
    .await;
    for invoice in then {
        ops.push((
            invoice.to_string(),
            submit(app, invoice, &format!("key-{invoice}")).await,
        ));
    }
    let expected = ops.len() as i64;
    eventually("every job handed to the worker", || async {
        fetched(&app.db.pool).await == expected
    })
    .await;
    held.commit().await.unwrap();
    ops
}

#[tokio::test]
async fn jobs_ready_while_the_group_transaction_is_busy_share_its_next_commit() {
    let mut app = spawn_app().await;
    let invoices = ["inv-1", "inv-2", "inv-3", "inv-4", "inv-5"];
    app.insert_invoice("inv-hold").await;
    for invoice in invoices {
        app.insert_invoice(invoice).await;
    }
    app.start_worker_with(grouped(1)).await;

    let ops = behind_a_busy_group(&app, &invoices).await;
    for (invoice, op) in &ops {
        let done = app.await_final(op).await;
        assert_eq!(done["status"], "succeeded", "{invoice}: {done}");
        assert_eq!(state(&app.db.pool, op).await.1, 1, "{invoice}: one attempt");
        assert_paid_once(&app.db.pool, invoice, op).await;
    }
    // The five that waited were finished by fewer commits than jobs.
    let largest = largest_commit(&app.db.pool).await;
    assert!(largest >= 2, "no commit finished more than one operation");
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        6,
        "every job marked Done with its effect"
    );
    // The replay is what the group stored.
    let replay = app.mark_paid("inv-3", "key-inv-3").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    app.stop_workers().await;
}

#[tokio::test]
async fn with_groups_off_every_job_commits_alone() {
    let mut app = spawn_app().await;
    let invoices = ["inv-1", "inv-2", "inv-3"];
    app.insert_invoice("inv-hold").await;
    for invoice in invoices {
        app.insert_invoice(invoice).await;
    }
    app.start_worker_with(grouped(0)).await;

    let ops = behind_a_busy_group(&app, &invoices).await;
    for (invoice, op) in &ops {
        assert_eq!(app.await_final(op).await["status"], "succeeded");
        assert_paid_once(&app.db.pool, invoice, op).await;
    }
    assert_eq!(largest_commit(&app.db.pool).await, 1);
    app.stop_workers().await;
}

#[tokio::test]
async fn a_job_that_fails_inside_a_group_fails_alone_and_costs_the_others_no_attempt() {
    let mut app = spawn_app().await;
    for invoice in ["inv-hold", "inv-1", "inv-bad", "inv-2"] {
        app.insert_invoice(invoice).await;
    }
    // Every update of inv-bad fails, as a broken row or a bug would.
    invoice_trigger(
        &app.db.pool,
        "IF NEW.id = 'inv-bad' THEN RAISE EXCEPTION 'inv-bad cannot be paid'; END IF;",
    )
    .await;
    app.start_worker_with(grouped(1)).await;

    let ops = behind_a_busy_group(&app, &["inv-1", "inv-bad", "inv-2"]).await;
    for (invoice, op) in &ops {
        let done = app.await_final(op).await;
        if invoice == "inv-bad" {
            assert_eq!(done["status"], "failed", "{done}");
            let (_, attempts, response) = state(&app.db.pool, op).await;
            assert_eq!(response, Some(500));
            assert!((1..=2).contains(&attempts), "{attempts}");
        } else {
            assert_eq!(done["status"], "succeeded", "{invoice}: {done}");
            // The group that rolled back did not spend their counted attempt.
            assert_eq!(state(&app.db.pool, op).await.1, 1, "{invoice}");
            assert_paid_once(&app.db.pool, invoice, op).await;
        }
    }
    // Nothing of the failed job was written by the group that held it.
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE id = 'inv-bad' AND status = 'UNPAID'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE entity_id = 'inv-bad'")
            .await,
        0
    );
    app.stop_workers().await;
}

#[tokio::test]
async fn a_group_too_slow_only_for_its_size_charges_none_of_its_jobs_an_attempt() {
    let mut app = spawn_app().await;
    let invoices = ["inv-1", "inv-2", "inv-3", "inv-4"];
    app.insert_invoice("inv-hold").await;
    for invoice in invoices {
        app.insert_invoice(invoice).await;
    }
    // Each payment takes 0.4 s: four in one group take 1.6 s, past the 1 s
    // limit, though none is slow by itself.
    invoice_trigger(
        &app.db.pool,
        "IF NEW.id <> 'inv-hold' THEN PERFORM pg_sleep(0.4); END IF;",
    )
    .await;
    app.start_worker_with(idemq_worker::WorkerConfig {
        job_timeout: std::time::Duration::from_secs(1),
        ..grouped(1)
    })
    .await;

    let ops = behind_a_busy_group(&app, &invoices).await;
    for (invoice, op) in &ops[1..] {
        let done = app.await_final(op).await;
        assert_eq!(done["status"], "succeeded", "{invoice}: {done}");
        assert_eq!(
            state(&app.db.pool, op).await.1,
            1,
            "{invoice}: the group's time limit is not its failure"
        );
        assert_paid_once(&app.db.pool, invoice, op).await;
    }
    assert_eq!(app.await_final(&ops[0].1).await["status"], "succeeded");
    app.stop_workers().await;
}
