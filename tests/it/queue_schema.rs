//! What idemq changes in apalis's schema for speed (README "Performance";
//! the overrides are core/src/db/apalis_overrides.rs): they are in force
//! after every `migrate()`, even when apalis's migrations run again after
//! ours (an apalis upgrade on an existing database), and they were checked
//! against the apalis migrations that this build carries.
use idemq_core::db::apalis_overrides::{self, ADDED_INDEXES, GET_JOBS_FILE, GET_JOBS_SQL};
use sqlx::PgPool;

use crate::helpers::*;

/// apalis.jobs's indexes after `migrate()`: apalis's that our queries use,
/// and ours.
const JOBS_INDEXES: [&str; 5] = [
    "apalis_jobs_finished_idx",        // ours: cleanup of finished jobs
    "idemq_apalis_jobs_in_flight_idx", // ours: the orphan sweep
    "idx_apalis_jobs_fetch_partial",   // get_jobs
    "idx_apalis_jobs_lock_by",         // the workers foreign key
    "jobs_pkey",
];

async fn jobs_indexes(pool: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'apalis.jobs'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn get_jobs_definition(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SELECT pg_get_functiondef('apalis.get_jobs(text, text, integer)'::regprocedure)")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The definition Postgres reports for our file, made in a transaction that
/// is rolled back.
async fn our_get_jobs_definition(pool: &PgPool) -> String {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(GET_JOBS_SQL))
        .execute(&mut *tx)
        .await
        .unwrap();
    let ours = get_jobs_definition(&mut tx).await;
    tx.rollback().await.unwrap();
    ours
}

/// `pg_get_indexdef` of an index built from `definition`, named `name`, in a
/// transaction that is rolled back.
async fn reference_indexdef(pool: &PgPool, name: &str, definition: &str) -> String {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE INDEX {name} {definition}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    let def: String = sqlx::query_scalar("SELECT pg_get_indexdef(to_regclass($1))")
        .bind(format!("apalis.{name}"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    def
}

/// Our fetch function, no trigger on apalis.jobs, and exactly the expected
/// indexes, each valid and (ours) defined as in the overrides.
async fn assert_overrides_in_force(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        get_jobs_definition(&mut conn).await,
        our_get_jobs_definition(pool).await,
        "apalis.get_jobs is not the one in {GET_JOBS_FILE}"
    );
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'apalis.jobs'::regclass AND NOT tgisinternal",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(triggers.is_empty(), "triggers on apalis.jobs: {triggers:?}");
    let indexes = jobs_indexes(pool).await;
    assert_eq!(
        indexes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        JOBS_INDEXES
    );
    assert!(
        indexes.iter().all(|(_, valid)| *valid),
        "an invalid index: {indexes:?}"
    );
    for index in ADDED_INDEXES {
        let actual: String = sqlx::query_scalar("SELECT pg_get_indexdef(to_regclass($1))")
            .bind(format!("apalis.{}", index.name))
            .fetch_one(pool)
            .await
            .unwrap();
        let reference =
            reference_indexdef(pool, &format!("reference_{}", index.name), index.definition).await;
        assert_eq!(actual, reference.replace("reference_", ""), "{}", index.name);
    }
}

#[tokio::test]
async fn a_migrated_database_has_our_fetch_no_trigger_and_only_the_indexes_its_queries_use() {
    let db = fresh_db().await;
    assert_overrides_in_force(&db.pool).await;
}

/// An apalis upgrade on an existing database: apalis's migrator runs first
/// and applies its new migrations after ours. Simulated by making it apply
/// again the migrations that define the fetch, the trigger and its indexes,
/// and by what a later one could do: restore the indexes we drop, rebuild
/// the table without ours. Plus a concurrent build of ours that failed
/// half-way and left an INVALID index under our name.
#[tokio::test]
async fn the_overrides_survive_apalis_migrations_applied_again_over_a_migrated_database() {
    let db = fresh_db().await;
    let pool = &db.pool;
    sqlx::raw_sql(
        "INSERT INTO apalis.jobs (job, id, job_type) VALUES
             ('\\x00', '01KBFKJ5G6WZ7Z0Z0Z0Z0Z0Z0A', 'payments'),
             ('\\x00', '01KBFKJ5G6WZ7Z0Z0Z0Z0Z0Z0B', 'payments')",
    )
    .execute(pool)
    .await
    .unwrap();

    sqlx::query(
        "DELETE FROM apalis._sqlx_migrations
         WHERE description IN ('notify run at', 'streamline indices', 'remove pl in get jobs')",
    )
    .execute(pool)
    .await
    .unwrap();
    apalis_postgres::PostgresStorage::setup(pool).await.unwrap();
    sqlx::raw_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS unique_job_id ON apalis.jobs (id);
         CREATE INDEX IF NOT EXISTS LIdx ON apalis.jobs (lock_by);
         CREATE UNIQUE INDEX idx_jobs_idempotency_key ON apalis.jobs (job_type, idempotency_key);
         DROP INDEX apalis.idemq_apalis_jobs_in_flight_idx;
         DROP INDEX apalis.apalis_jobs_finished_idx;",
    )
    .execute(pool)
    .await
    .unwrap();
    let failed =
        sqlx::raw_sql("CREATE UNIQUE INDEX CONCURRENTLY apalis_jobs_finished_idx ON apalis.jobs ((1))")
            .execute(pool)
            .await;
    assert!(failed.is_err(), "the two rows must make the unique build fail");

    // The simulation did undo the overrides.
    let language: String = sqlx::query_scalar(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.oid = 'apalis.get_jobs(text, text, integer)'::regprocedure",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(language, "sql");
    assert_eq!(
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'apalis.jobs'::regclass AND tgname = 'notify_workers'"
        )
        .fetch_one(pool)
        .await
        .unwrap(),
        1
    );
    let before = jobs_indexes(pool).await;
    assert!(
        before.contains(&("apalis_jobs_finished_idx".into(), false)),
        "{before:?}"
    );
    assert!(
        before.iter().any(|(n, _)| n == "idx_jobs_idempotency_key"),
        "{before:?}"
    );

    idemq_core::db::migrate(pool).await.unwrap();
    assert_overrides_in_force(pool).await;
    // And again: nothing left to do, nothing changes.
    idemq_core::db::migrate(pool).await.unwrap();
    assert_overrides_in_force(pool).await;
}

/// Collapses whitespace, drops `--` comments.
fn normalised(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// apalis's latest migration that defines `apalis.get_jobs`, and its SQL
/// normalised.
fn apalis_latest_get_jobs() -> (sqlx::migrate::Migration, String) {
    let latest = apalis_postgres::PostgresStorage::migrations()
        .iter()
        .rfind(|m| m.sql.as_str().contains("FUNCTION apalis.get_jobs"))
        .cloned()
        .expect("apalis defines get_jobs");
    let theirs = normalised(latest.sql.as_str());
    (latest, theirs)
}

/// Ours is apalis's latest `get_jobs` statement, word for word, with only
/// the language changed (a PL/pgSQL body: BEGIN RETURN QUERY … END) and the
/// paused-queue check added.
#[tokio::test]
async fn our_fetch_is_apalis_latest_fetch_statement_in_plpgsql() {
    let db = fresh_db().await;
    // The whole definition in the database is the file's.
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(
        get_jobs_definition(&mut conn).await,
        our_get_jobs_definition(&db.pool).await
    );

    let (latest, theirs) = apalis_latest_get_jobs();
    // Our one addition (the pause check) aside.
    let pause_check =
        "IF EXISTS (SELECT 1 FROM public.queue_pauses WHERE queue = v_job_type) THEN RETURN; END IF; ";
    let ours = normalised(GET_JOBS_SQL);
    assert!(ours.contains(pause_check), "{ours}");
    let ours_as_sql = ours
        .replace(pause_check, "")
        .replace("LANGUAGE plpgsql", "LANGUAGE sql")
        .replace("AS $$ BEGIN RETURN QUERY ", "AS $$ ")
        .replace("; END; $$;", "; $$;");
    assert_eq!(
        ours_as_sql, theirs,
        "{GET_JOBS_FILE} is no longer apalis's fetch (migration {} {}) in PL/pgSQL: re-check it",
        latest.version, latest.description
    );
}

/// The worker's fetch (`FETCH_STARTING_ATTEMPTS`) takes jobs with apalis's
/// latest `get_jobs` statement, word for word, but for the parameters, the
/// paused-queue limit and the statement being one step of a larger one.
#[test]
fn the_workers_fetch_takes_jobs_with_apalis_latest_fetch_statement() {
    let (latest, theirs) = apalis_latest_get_jobs();
    let from = theirs.find("WITH jobs AS (").expect("apalis's statement starts");
    let to = theirs.find("RETURNING j.*").expect("apalis's statement ends") + "RETURNING j.*".len();
    let statement = theirs[from..to]
        .replace("job_type = v_job_type", "job_type = $2")
        .replace(
            "LIMIT v_job_count",
            "LIMIT (CASE WHEN queue_paused($2) THEN 0 ELSE $3 END)",
        )
        .replace(") UPDATE apalis.jobs j", "), taken AS ( UPDATE apalis.jobs j")
        .replace("lock_by = worker_id", "lock_by = $1");
    let ours = normalised(idemq_worker::fetch_gate::FETCH_STARTING_ATTEMPTS);
    assert!(
        ours.starts_with(&statement),
        "the worker's fetch no longer takes jobs as apalis's fetch does (migration {} {}): \
         re-check worker/src/fetch_gate.rs\napalis: {statement}\nours:   {ours}",
        latest.version,
        latest.description
    );
}

/// The fetch's paused-queue check is PL/pgSQL, which keeps its plan per
/// connection: as LANGUAGE sql, called in the fetch's LIMIT, its body was
/// parsed and planned again by every fetch (4 % of Postgres's CPU at
/// 440 requests/s; migration `20261207100000`). And it still answers.
#[tokio::test]
async fn the_paused_queue_check_keeps_its_plan_per_connection() {
    let db = fresh_db().await;
    let language: String = sqlx::query_scalar(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.proname = 'queue_paused' AND p.pronamespace = 'public'::regnamespace",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(language, "plpgsql");
    assert!(!queue_paused(&db.pool, "payments").await);
    sqlx::query("INSERT INTO queue_pauses (queue, paused_by) VALUES ('payments', 'test')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(queue_paused(&db.pool, "payments").await);
    assert!(!queue_paused(&db.pool, "approvals").await);
}

async fn queue_paused(pool: &PgPool, queue: &str) -> bool {
    sqlx::query_scalar("SELECT queue_paused($1)")
        .bind(queue)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The overrides were written against apalis-postgres's migration list
/// (`APALIS_MIGRATIONS_REVIEWED`); an upgrade that changes it must be
/// reviewed before this passes.
#[test]
fn apalis_migrations_are_the_ones_the_overrides_were_checked_against() {
    let now = apalis_overrides::apalis_migrations();
    let reviewed: Vec<(i64, String, String)> = apalis_overrides::APALIS_MIGRATIONS_REVIEWED
        .iter()
        .map(|(v, d, c)| (*v, d.to_string(), c.to_string()))
        .collect();
    let changed: Vec<String> = now
        .iter()
        .filter(|m| !reviewed.contains(m))
        .map(|(v, d, _)| format!("{v}_{}.sql (new or changed)", d.replace(' ', "_")))
        .chain(
            reviewed
                .iter()
                .filter(|m| !now.contains(m))
                .map(|(v, d, _)| format!("{v}_{}.sql (gone or changed)", d.replace(' ', "_"))),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "apalis-postgres's migrations differ from the ones idemq's overrides of its schema were \
         checked against. Re-check {GET_JOBS_FILE} and the trigger and index lists in \
         core/src/db/apalis_overrides.rs against apalis-postgres's migrations/: {changed:#?}. \
         Then update APALIS_MIGRATIONS_REVIEWED there."
    );
}
