//! What idemq changes in apalis-postgres's schema, and its re-assertion.
//!
//! Our migrations drop apalis's notify trigger, replace its fetch function
//! and change its indexes (README "Performance"). apalis runs its own
//! migrator first, so on an existing database a later apalis migration would
//! run after ours and silently win. `migrate()` therefore re-asserts every
//! override after both migrators, on every run: each step is idempotent and
//! does nothing (and takes no lock on `apalis.jobs`) when the schema is
//! already as it should be. This module (and the SQL file it includes) is the
//! one source of truth for the overrides; the migrations that first made them
//! stay as history (sqlx checksums applied migrations, they cannot change).
//!
//! The overrides were written against apalis-postgres's migration list in
//! [`APALIS_MIGRATIONS_REVIEWED`]; `tests/it/queue_schema.rs` fails when the
//! list changes, and says what to re-check.
use std::time::Duration;

use sqlx::{pool::PoolConnection, PgPool, Postgres};

use crate::Error;

/// The file that defines `apalis.get_jobs` (relative to the repository).
pub const GET_JOBS_FILE: &str = "migrations/overrides/apalis_get_jobs.sql";
/// `CREATE OR REPLACE FUNCTION apalis.get_jobs …` in PL/pgSQL (why: in the file).
pub const GET_JOBS_SQL: &str = include_str!("../../../migrations/overrides/apalis_get_jobs.sql");

/// Triggers of apalis's on `apalis.jobs` that must not exist. `notify_workers`
/// calls pg_notify per inserted job inside the enqueueing transaction; a
/// notifying commit holds Postgres's cluster-wide notify lock through its WAL
/// flush, so every request's commit ran alone. idemq wakes workers after the
/// commit instead (core/src/notifier.rs).
pub const DROPPED_TRIGGERS: &[&str] = &["notify_workers"];

/// Indexes of apalis's on `apalis.jobs` that cost writes and serve no query:
/// `unique_job_id` and `lidx` duplicate the primary key and
/// `idx_apalis_jobs_lock_by`; `idx_jobs_idempotency_key` serves apalis's
/// push-time deduplication, which idemq never uses (every job has a NULL key;
/// key semantics live in `operations`). A job row is written four times, and
/// each write put an entry in each of them.
pub const DROPPED_INDEXES: &[&str] = &["unique_job_id", "lidx", "idx_jobs_idempotency_key"];

/// An index of ours on `apalis.jobs`.
pub struct AddedIndex {
    pub name: &'static str,
    /// What follows `CREATE INDEX … name` (the table is `apalis.jobs`).
    pub definition: &'static str,
}

/// Indexes our queries need on `apalis.jobs` (measured: README "Operations").
pub const ADDED_INDEXES: &[AddedIndex] = &[
    // The orphan sweep (every heartbeat of every queue loop) joins jobs in
    // flight to silent workers; finished jobs keep their `lock_by`, so
    // without it the sweep scanned the whole table.
    AddedIndex {
        name: "idemq_apalis_jobs_in_flight_idx",
        definition: "ON apalis.jobs (lock_by) WHERE status IN ('Running', 'Queued')",
    },
    // The cleanup's scan of finished jobs older than the retention (the
    // predicate is the cleanup query's, so that the planner can use it).
    AddedIndex {
        name: "apalis_jobs_finished_idx",
        definition: "ON apalis.jobs (done_at) \
                     WHERE status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts)",
    },
];

/// apalis-postgres's migrations (version, description, SHA-384 checksum as
/// its embedded sqlx migrator reports them) that the overrides above were
/// checked against: apalis-postgres 1.0.0. When an upgrade changes this list,
/// re-read each new or changed migration for what it does to `get_jobs`,
/// triggers and indexes on `apalis.jobs`, adjust the overrides, then update
/// this list.
#[rustfmt::skip]
pub const APALIS_MIGRATIONS_REVIEWED: &[(i64, &str, &str)] = &[
    (20220530084123, "jobs workers", "d0839c6f57a379769dc27ccd581feb3d2709239c8f138e05271c9e3c760c4517a78a4d8912ab3d63b074b28d15ec74e9"),
    (20220709210445, "add job fn", "14f906e53a627f1b27996e74e8e69dbc29ee70519e7af4f0032a27c75ed706a34af8bafecc8f8572855f314cbc5a7ba9"),
    (20230330210841, "replace add job fn", "d9b6e57e6de60db1647e2447cf36bf0eafbec266f1d482bd196affc97617efbc4c07bad826706c7b3a0b3960cf9f727b"),
    (20230408110421, "drop old push job", "3656a91fe9c652ca23df775a601409a9252357f47088d6bcf2025fda2dd67e50c99ad94d1d2ca569c91c343189c58e33"),
    (20230408234928, "add get jobs fn ", "176c3acaf1097ff45da76d4c746af766640027b6721a056b3fc3fcc4ab8192344920b4415e8dae46f5136ee223ed5f6b"),
    (20240225141841, "replace add job fn remove jid", "c53560b7a312915d696ed6c7e18bda478d9bf1278c4d59e3c53b47c45d8a903f089c728a5ff2e131cd5b629cdfe7d4cb"),
    (20250210092135, "include failed in get jobs", "810786bd8f1007bf523bec8ed9de0a9ae789e634e5434a1a5cc9c1b766bd758b4d37912ef390dcf95e8de23910eeef55"),
    (20250223193249, "fix get jobs conditional", "cfda3f3d62b4122b6321af0e45ba162fd3ad5d07f95e4eefe858600551167e31454ebd57d45b62e880336fcfef3ef2a7"),
    (20250307001101, "add job priority", "b5d318f2da5e909d66db190f58b76ae52f6808733d2a88d180555430d28518fee783fb0ff1e1c37ed1dc79627abd9694"),
    (20250404160441, "cleanup old push jobs fn", "962242ef0971de54905cafbdefe26a3c1f32c1c52ef13b6937c2920445b1ce97cd2dcf7db9c293becc95dc55412e7a15"),
    (20250722071207, "improve notify", "b3a1f712f8fbdfe38004134d8f55e49857b764f3277f38dd9d13299d5e0afbc895005b62fa0355b8a0d8595a38be6db7"),
    (20251018164839, "update result", "e4e3d1efc77746e4db164b49017c90785613b35520da84f9a5a3f8981d60420d9dec3c94af9e8632ab711ffac7c1e199"),
    (20251018164912, "add metadata", "803a4510201392a36e20ef81c9b05230ffa734a292c875f87ea65bc73944642b1d260a38741c4bdb88c0096338c152c0"),
    (20251018165007, "move to bytes", "dcbb8181c56cc4b9511ddc940f81f5bb9420436d0f4edf1bc9978011324e6b8d5437c50830b8651e2168608d04977272"),
    (20251018165033, "add started at", "21b1264f3881a4cf4fb209ff2cc75c21946441691745d7cbc9ab1dd812a1e1c08648e47ea8b4de060784da581dab2246"),
    (20251018165056, "queue jobs", "dd02b7e9c23a7da0f71bff73b469c51b7305d1830e7f4bd6de083c11315e8492801e242755d9981381760a5ace6d8fe7"),
    (20251018165121, "notify run at", "a99e6c60687ec15c1bf8132763db63a0d9d18e1ee814527254fc95ee733e65bdf2f0ae64ca86cae0d1f232654d189fda"),
    (20251225090252, "include primary keys", "fd9f16bd772c5682ecb3f6b0a21efed5581a85316770ab8d620b38346e9319ae239ef784e8eb46735d6be735e7b3b5be"),
    (20260508093314, "idempotency key", "f2686534e1abbba2fcde715c1ca724e7937a4e1f49d6a9a462ed4f1c2e8b83518f4f78868a111d6451afba770207c2d0"),
    (20260605000000, "confine generate ulid to apalis", "c56dbd61156387934579af19b51ba95bd0cbe203f9528f0cd619c191730788858eca89044a7aa0622d308b9a3028e2c5"),
    (20260824233636, "streamline indices", "09c57f5bd9cce210564e8b12da0520289290ad729ef4205cdd55bd2a60ac85f889df8c23b20a4a01d959f0c8b5775a6d"),
    (20260826101335, "metadata hstore", "cc38c9e6fd38157b443f6dd584e322405d49dedfd3a60867604102078a99320f97279e6c244cb87f84152ab9be7d41be"),
    (20260902075949, "remove pl in get jobs", "0dc0483d69bf530508d451bec9346f7d14be68c37308b130910462d130cab0827eb2825d20072105c83ae3a66ed82c6b"),
];

/// apalis-postgres's migrations as its embedded migrator sees them now, in
/// the form of [`APALIS_MIGRATIONS_REVIEWED`].
pub fn apalis_migrations() -> Vec<(i64, String, String)> {
    apalis_postgres::PostgresStorage::migrations()
        .iter()
        .map(|m| (m.version, m.description.to_string(), hex::encode(&m.checksum)))
        .collect()
}

/// Serialises concurrent re-assertions (two `idemq migrate` at once): one
/// could otherwise drop, as invalid, an index the other is still building.
const LOCK_KEY: i64 = 0x6964_656d_715f_6f76; // "idemq_ov"
/// How often a waiting `migrate()` tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// Re-asserts every override; run after apalis's and our migrations.
///
/// Index builds use `CONCURRENTLY` (no lock that blocks the queue's writes,
/// however large `apalis.jobs` is), so they run outside a transaction, one
/// statement at a time. An index left INVALID by a failed or interrupted
/// concurrent build is dropped and built again.
pub async fn reassert(pool: &PgPool) -> Result<(), Error> {
    let mut conn = pool.acquire().await?;
    // A try-lock, polled: a session blocked in pg_advisory_lock holds a
    // snapshot, and the holder's CREATE INDEX CONCURRENTLY would wait for
    // that snapshot (a deadlock Postgres resolves by failing one of them).
    let mut tries = 0u32;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            break;
        }
        if tries.is_multiple_of(50) {
            tracing::info!("waiting for another migrate to finish re-asserting the apalis overrides");
        }
        tries += 1;
        tokio::time::sleep(LOCK_RETRY).await;
    }
    let result = reassert_locked(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn reassert_locked(conn: &mut PoolConnection<Postgres>) -> Result<(), Error> {
    // No table lock: CREATE OR REPLACE FUNCTION only rewrites the catalog row.
    sqlx::raw_sql(sqlx::AssertSqlSafe(GET_JOBS_SQL))
        .execute(&mut **conn)
        .await?;

    // DROP TRIGGER locks the table even when the trigger is absent: look first.
    for trigger in DROPPED_TRIGGERS {
        let present: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger
                            WHERE tgrelid = 'apalis.jobs'::regclass AND tgname = $1 AND NOT tgisinternal)",
        )
        .bind(trigger)
        .fetch_one(&mut **conn)
        .await?;
        if present {
            tracing::warn!(
                trigger,
                "apalis.jobs: dropping apalis's trigger again (an apalis migration restored it)"
            );
            let sql = format!("DROP TRIGGER IF EXISTS {} ON apalis.jobs", quote_ident(trigger));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut **conn)
                .await?;
        }
    }

    for index in DROPPED_INDEXES {
        if index_valid(conn, index).await?.is_some() {
            tracing::warn!(
                index,
                "apalis.jobs: dropping apalis's index again (an apalis migration restored it)"
            );
            drop_index(conn, index).await?;
        }
    }

    for index in ADDED_INDEXES {
        match index_valid(conn, index.name).await? {
            Some(true) => continue,
            Some(false) => {
                tracing::warn!(
                    index = index.name,
                    "apalis.jobs: rebuilding an INVALID index (a failed concurrent build)"
                );
                drop_index(conn, index.name).await?;
            }
            None => {}
        }
        tracing::info!(index = index.name, "apalis.jobs: building index concurrently");
        let sql = format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} {}",
            quote_ident(index.name),
            index.definition
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut **conn)
            .await?;
    }
    Ok(())
}

/// `None` if `apalis.<name>` is no index, else whether it is valid.
async fn index_valid(conn: &mut PoolConnection<Postgres>, name: &str) -> Result<Option<bool>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'apalis' AND c.relname = $1",
    )
    .bind(name)
    .fetch_optional(&mut **conn)
    .await?)
}

/// Without the ACCESS EXCLUSIVE lock of a plain DROP INDEX, which would
/// stop the queue behind any long transaction.
async fn drop_index(conn: &mut PoolConnection<Postgres>, name: &str) -> Result<(), Error> {
    let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS apalis.{}", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut **conn)
        .await?;
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
