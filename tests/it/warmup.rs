//! Warm connections before a process takes work (`idemq_core::warmup`): a
//! rehearsed payment, rolled back, on each connection a process opens at
//! start.
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::{
    harness::idemq,
    helpers::{eventually, fresh_db, spawn_api_process},
};

/// Rows of every table a payment writes.
async fn rows(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "principals",
        "invoices",
        "operations",
        "apalis.jobs",
        "audit_log",
        "operation_attempts",
    ] {
        let sql = format!("SELECT count(*) FROM {table}");
        counts.push(
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .unwrap(),
        );
    }
    counts
}

async fn prepared(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rehearsal_prepares_the_payment_path_and_leaves_no_row() {
    let db = fresh_db().await;
    sqlx::query("INSERT INTO invoices (id) VALUES ('kept')")
        .execute(&db.pool)
        .await
        .unwrap();
    let before = rows(&db.pool).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let cold = prepared(&mut conn).await;

    idemq_core::warmup::rehearse(&mut conn).await.unwrap();

    // The request's statements and the job's are prepared on this connection
    // (token lookup, record, invoice, finish, read-back, and the two inserts
    // of the rehearsal itself)...
    let warm = prepared(&mut conn).await;
    assert!(
        warm >= cold + 6,
        "prepared statements: {cold} before, {warm} after"
    );
    // ...it is idle, out of the rolled-back transaction...
    let in_transaction: bool = sqlx::query_scalar("SELECT txid_current_if_assigned() IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(!in_transaction);
    drop(conn);
    // ...and nothing of the rehearsal stayed.
    assert_eq!(rows(&db.pool).await, before);

    // A second rehearsal on the same connection finds its statements cached.
    let mut conn = db.pool.acquire().await.unwrap();
    idemq_core::warmup::rehearse(&mut conn).await.unwrap();
    assert_eq!(rows(&db.pool).await, before);
}

#[tokio::test]
async fn warm_opens_the_connections_and_gives_them_back_to_the_pool() {
    let db = fresh_db().await;
    let pool = idemq_core::db::connect(&db.url, 6).await.unwrap();
    idemq_core::warmup::warm(&pool, 4).await;
    assert_eq!(pool.size(), 4);
    // Given back (their return to the pool runs on a task of its own).
    eventually("four idle connections", || async { pool.num_idle() == 4 }).await;
    // Held while the next is taken: four different connections, each warm.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.acquire().await.unwrap();
        assert!(prepared(&mut conn).await >= 6);
        held.push(conn);
    }
    assert_eq!(pool.size(), 4);
}

#[tokio::test]
async fn the_api_and_the_worker_processes_warm_their_connections_before_work() {
    let db = fresh_db().await;
    let mut api = spawn_api_process(
        &db.url,
        &[("IDEMQ_LOG_FORMAT", "json"), ("IDEMQ_API_WARM_CONNECTIONS", "3")],
    );
    let warmed = api
        .proc
        .wait_for("connections warmed", Duration::from_secs(30), |p| {
            p.messages("database connections warmed").into_iter().next()
        })
        .await;
    assert_eq!(warmed["connections"], 3, "{warmed}");
    let mut worker = idemq(["worker"])
        .env("DATABASE_URL", &db.url)
        .env("IDEMQ_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .spawn();
    let warmed = worker
        .wait_for("connections warmed", Duration::from_secs(30), |p| {
            p.messages("database connections warmed").into_iter().next()
        })
        .await;
    // The default: one queue's job slots.
    assert_eq!(warmed["connections"], 4, "{warmed}");
    // Before the worker says it is ready.
    worker
        .wait_for("ready", Duration::from_secs(30), |p| {
            p.messages("worker ready").into_iter().next()
        })
        .await;
    let logs = worker.json_logs();
    let at = |m: &str| logs.iter().position(|l| l["message"].as_str() == Some(m));
    assert!(at("database connections warmed") < at("worker ready"), "{logs:?}");
    worker.kill9();
    api.proc.kill9();
}

#[tokio::test]
async fn a_warm_up_that_waits_gives_up_and_lets_the_process_start() {
    let db = fresh_db().await;
    // Every invoice update waits a minute (a lock held elsewhere, a slow
    // trigger): the rehearsal's statement limit ends it.
    sqlx::raw_sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN PERFORM pg_sleep(60); RETURN NEW; END $f$;
         CREATE TRIGGER slow BEFORE UPDATE ON invoices FOR EACH ROW EXECUTE FUNCTION slow();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = rows(&db.pool).await;
    let pool = idemq_core::db::connect(&db.url, 4).await.unwrap();
    let started = std::time::Instant::now();
    idemq_core::warmup::warm(&pool, 2).await;
    let took = started.elapsed();
    assert!(
        took < idemq_core::warmup::WARM_TIMEOUT + Duration::from_secs(1),
        "the start waited {took:?}"
    );
    // Nothing stayed, and the pool serves.
    assert_eq!(rows(&db.pool).await, before);
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
}
