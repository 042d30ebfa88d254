//! The hot reads and writes of one operation go by its primary key whatever
//! the planner believes about the table. A connection keeps the generic plan
//! it built on its sixth execution of a statement, and a fleet's first
//! requests build them while `operations` is nearly empty: an index the
//! planner could use "by principal" then stays in use for the connection's
//! life, and scans every operation of that principal on each call (the
//! latency bench saw 1,040 buffers a read-back, 1 ms instead of 0.02).
use idemq_core::{idempotency, operation::OperationId, principal};
use sqlx::{postgres::PgConnectOptions, postgres::PgPoolOptions, PgPool};

use crate::helpers::*;

/// Index scans of `operations` by index name, as the statistics system has
/// them now.
async fn index_scans(pool: &PgPool, index: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT idx_scan FROM pg_stat_user_indexes, pg_stat_clear_snapshot()
         WHERE relname = 'operations' AND indexrelname = $1",
    )
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn reading_and_watching_an_operation_use_its_primary_key_under_a_generic_plan() {
    let db = fresh_db().await;
    let (principal, _token) = principal::create_token(&db.pool, "plans").await.unwrap();
    // A fresh, never analysed table, as at a fleet's start.
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, queue, job_id)
         VALUES ($1, $2, 'k-1', sha256('x'), 'invoice.mark_paid', '{}', 'payments', 'job-1')",
    )
    .bind(id)
    .bind(principal.id())
    .execute(&db.pool)
    .await
    .unwrap();

    // What the sixth call of a statement on a connection gets.
    let options: PgConnectOptions = db.url.parse().unwrap();
    let generic = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("plan_cache_mode", "force_generic_plan")]))
        .await
        .unwrap();
    const CALLS: i64 = 10;
    for _ in 0..CALLS {
        let found = idempotency::find(&generic, &principal, OperationId::from_uuid(id))
            .await
            .unwrap();
        assert!(found.is_some(), "the principal's operation is found");
        let watched = idempotency::watch(&generic, &principal, OperationId::from_uuid(id))
            .await
            .unwrap();
        assert!(watched.is_some(), "and can be watched");
    }
    // Another principal's id stays not found through the same plans.
    let (stranger, _) = principal::create_token(&db.pool, "stranger").await.unwrap();
    let foreign = idempotency::find(&generic, &stranger, OperationId::from_uuid(id))
        .await
        .unwrap();
    assert!(foreign.is_none(), "another principal's operation is not found");
    let foreign = idempotency::watch(&generic, &stranger, OperationId::from_uuid(id))
        .await
        .unwrap();
    assert!(foreign.is_none(), "nor watched");
    // The tested connection hands its counts to the statistics system.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&generic)
        .await
        .unwrap();

    const BY_PRINCIPAL: &str = "operations_principal_id_idempotency_key_key";
    eventually("every call's index scan is reported", || async {
        index_scans(&db.pool, "operations_pkey").await + index_scans(&db.pool, BY_PRINCIPAL).await
            >= 2 * CALLS + 2
    })
    .await;
    assert_eq!(
        index_scans(&db.pool, BY_PRINCIPAL).await,
        0,
        "no read or watch by id scanned the operations by principal"
    );
}
