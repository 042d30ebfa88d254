//! What our migrations change in apalis's schema for speed (README
//! "Performance"): a future apalis migration that undid one would be caught.
use crate::helpers::*;

#[tokio::test]
async fn apalis_jobs_keeps_only_the_indexes_its_queries_use() {
    let app = spawn_app().await;
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'apalis' AND tablename = 'jobs'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "apalis_jobs_finished_idx",        // cleanup of finished jobs
            "idemq_apalis_jobs_in_flight_idx", // the orphan sweep
            "idx_apalis_jobs_fetch_partial",   // get_jobs
            "idx_apalis_jobs_lock_by",         // the workers foreign key
            "jobs_pkey",
        ]
    );
}

#[tokio::test]
async fn the_fetch_function_keeps_its_plan_and_no_insert_notifies_in_its_commit() {
    let app = spawn_app().await;
    let language: String = sqlx::query_scalar(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'apalis' AND p.proname = 'get_jobs'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(language, "plpgsql");
    assert_eq!(
        app.count(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'apalis.jobs'::regclass AND NOT tgisinternal"
        )
        .await,
        0
    );
}
