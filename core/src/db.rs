//! Pool and migrations (ours and apalis's).
pub mod apalis_overrides;

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{
    pool::{PoolConnection, PoolConnectionMetadata},
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
    Connection, Executor, PgPool, Postgres,
};

use crate::Error;

/// How often a server backend checks, while it runs a statement, that its
/// client is still there. A worker killed mid-job leaves a backend that
/// otherwise keeps its statement (a lock wait, a slow query) and the row
/// locks of its transaction until the statement ends; with the check it is
/// gone within this interval and the job's next attempt is not blocked.
pub const CLIENT_CONNECTION_CHECK_INTERVAL: &str = "1s";

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    connect_named(url, max_connections, "idemq").await
}

/// [`connect`], the connections named `process` in `pg_stat_activity`
/// (`application_name`) unless the URL names them itself: an operator (or
/// `idemq bench`) tells the API's backends from the workers', and each
/// pool's from the others' ([`with_role`]).
pub async fn connect_named(url: &str, max_connections: u32, process: &str) -> Result<PgPool, Error> {
    let options = named(PgConnectOptions::from_str(url)?, process);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast (503) rather than hang when the database is gone.
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .after_connect(prepare_connection)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// `options` named `process`, unless they carry a name already.
fn named(options: PgConnectOptions, process: &str) -> PgConnectOptions {
    match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(process),
    }
}

/// The name of a pool's connections for one part of a process
/// (`idemq-worker/queue`), when the name is ours (`idemq…`); a name the URL
/// gave stays as it is.
fn with_role(options: PgConnectOptions, role: &str) -> PgConnectOptions {
    let process = match options.get_application_name() {
        Some(name) if name.starts_with("idemq") => name.split('/').next().unwrap_or(name).to_owned(),
        _ => return options,
    };
    options.application_name(&format!("{process}/{role}"))
}

/// A pool of one session connection of its own (a LISTEN, a notifier's
/// connection), named for its `role`: straight to Postgres when `pool` goes
/// through a pooler ([`session_pool`]). Connects when first used.
pub fn session_connection(pool: &PgPool, role: &str) -> PgPool {
    let sessions = session_pool(pool);
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(sessions.options().get_acquire_timeout())
        .connect_lazy_with(with_role((*sessions.connect_options()).clone(), role))
}

/// A connection idle for less than this goes out without a ping.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// sqlx pings a connection when it goes back to the pool and, by default,
/// again when it is handed out: two round trips per checkout, as many as a
/// job's whole effect takes. The ping on return stays (sqlx always sends
/// it); the one on checkout is kept only for a connection that has been idle
/// for [`PING_IF_IDLE_FOR`] or more, because one that answered a ping less
/// than a second ago is dead only if the server went away in that second, and
/// then the checkout's first statement fails as a statement in flight at
/// that moment would have.
fn ping_if_idle(
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IF_IDLE_FOR {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// Connections that just ended their work cleanly, kept for the next user
/// instead of going back to the pool: sqlx pings every connection that goes
/// back (a round trip), and one that answered its last statement less than
/// [`PING_IF_IDLE_FOR`] ago needs no check. Older ones go back to the pool,
/// which checks them when it next hands them out ([`ping_if_idle`]). At most
/// as many are kept as were in use at once, and none while the pool may
/// have a checkout waiting ([`may_keep`]).
#[derive(Debug)]
pub struct Kept<T> {
    idle: Mutex<Vec<(T, Instant)>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Kept<T> {
    /// The most recently kept connection, if it is fresh; the stale ones
    /// are dropped (back to their pool), also when a fresh one is found: a
    /// burst leaves many kept, and under light traffic after it only the
    /// newest is ever taken again, so the older ones would otherwise sit
    /// out of their pool (out of its idle count and its idle timeout) for
    /// as long as that traffic lasts.
    pub fn take(&self) -> Option<T> {
        let (fresh, stale) = {
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Kept in order, oldest first: the stale ones are a prefix.
            let stale_count = idle.partition_point(|(_, at)| at.elapsed() >= PING_IF_IDLE_FOR);
            let stale: Vec<(T, Instant)> = idle.drain(..stale_count).collect();
            (idle.pop().map(|(conn, _)| conn), stale)
        };
        // Outside the lock: a pool connection's drop starts its return.
        drop(stale);
        fresh
    }

    /// Keeps `conn`: only one whose last statement ended without an error
    /// and outside a transaction.
    pub fn keep(&self, conn: T) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Stamped under the lock, so the list stays oldest first (`take`
        // relies on it) however many tasks keep at once.
        idle.push((conn, Instant::now()));
    }

    /// For tests: keeps `conn` as if it had ended its work at `at`, which
    /// must not be later than anything kept after it.
    #[cfg(test)]
    fn keep_since(&self, conn: T, at: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.push((conn, at));
    }
}

/// Whether a connection of `pool` may be kept out of it: not if the pool is
/// at its size with none idle, because then a checkout may be waiting for a
/// connection to come back, and a kept one would not (it would wait for
/// the acquire timeout: a 503). A checkout waits only then: with one idle
/// it takes it, under the size it opens one.
pub fn may_keep(pool: &PgPool) -> bool {
    pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections()
}

/// A pool and its [`Kept`] connections, for a path that runs statements of
/// their own (no transaction) per checkout and must know them committed
/// before it answers: the API's record.
#[derive(Clone, Debug)]
pub struct KeptPool {
    pool: PgPool,
    kept: Arc<Kept<PoolConnection<Postgres>>>,
    /// Behind a transaction-mode pooler ([`connect_pooled`]) every checkout
    /// is a transaction, committed when the connection goes back: such a
    /// connection is never kept, and [`KeptPool::done`] commits it first.
    pooled: bool,
}

impl KeptPool {
    pub fn new(pool: PgPool) -> KeptPool {
        KeptPool {
            pooled: is_pooled(&pool),
            pool,
            kept: Arc::default(),
        }
    }

    /// A kept connection if one is fresh, else one from the pool.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, Error> {
        match self.kept.take() {
            Some(conn) => Ok(conn),
            None => Ok(self.pool.acquire().await?),
        }
    }

    /// Ends a checkout whose statements all succeeded: what they wrote is
    /// committed when this returns. Kept for the next checkout, or, behind
    /// a pooler, its checkout's transaction committed here (not in the
    /// pool's release, which runs after the caller has answered) and the
    /// connection handed back.
    pub async fn done(&self, mut conn: PoolConnection<Postgres>) -> Result<(), Error> {
        if self.pooled {
            conn.execute(CHECKOUT_COMMIT).await?;
            return Ok(());
        }
        if may_keep(&self.pool) {
            self.kept.keep(conn);
        }
        Ok(())
    }
}

/// Ends the statements a caller ran on one checkout of `pool` (no
/// transaction of its own) that wrote: what they wrote is committed when
/// this returns. Behind a transaction-mode pooler ([`connect_pooled`]) a
/// checkout is a transaction, and the pool's release commits it in a task of
/// its own, after the caller has moved on (an API answer could leave first,
/// and the rows stay locked until then); here it is committed. On a direct
/// pool each statement committed itself.
pub async fn commit_checkout(pool: &PgPool, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    if is_pooled(pool) {
        conn.execute(CHECKOUT_COMMIT).await?;
    }
    Ok(())
}

/// Commits a pooled checkout's transaction before its release would, and
/// opens another as [`CHECKOUT_BEGIN`] does, which the release commits
/// (empty).
const CHECKOUT_COMMIT: &str = "COMMIT; BEGIN; SET LOCAL client_min_messages = error";

fn prepare_connection(
    conn: &mut PgConnection,
    _: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        // PostgreSQL 14+ (Linux); older servers reject the name: run without it.
        // Dynamic: SET takes no parameters, and query! would check
        // the name against the build's server, not the one we run on.
        let set = format!("SET client_connection_check_interval = '{CLIENT_CONNECTION_CHECK_INTERVAL}'");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(set)).execute(&mut *conn).await {
            tracing::debug!(error = %e, "client_connection_check_interval not available");
        }
        Ok(())
    })
}

/// A second pool to the same database whose commits do not wait for their
/// WAL flush (`synchronous_commit = off` for every session), for the
/// worker's writes that carry no effect: apalis's fetch, acknowledgement and
/// heartbeat, and a failed attempt's error. (The attempt count commits
/// asynchronously too, but on the job's own connection, with `SET LOCAL` in
/// the message that opens the job's transaction: `job::open_attempt`.) Why
/// that is safe is docs/job-path.md, "Durability of each commit": a Postgres
/// crash can lose the last few hundred milliseconds of these commits (an
/// attempt goes uncounted, a job is delivered again), and the operation row,
/// locked by the job's own durable transaction, makes both harmless; a
/// worker's crash loses nothing committed.
/// Connects lazily, with the settings (and acquire timeout) of `pool`.
///
/// Behind a transaction-mode pooler (`pool` made by [`connect_pooled`]) the
/// setting cannot be a startup parameter (PgBouncer refuses unknown ones):
/// each checkout's transaction sets it with `SET LOCAL` instead.
pub fn connect_async_commit(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options()).clone();
    let base = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(pool.options().get_acquire_timeout());
    if is_pooled(pool) {
        return base
            .after_connect(|conn, _| {
                Box::pin(async move { conn.execute(ASYNC_CHECKOUT_BEGIN).await.map(|_| ()) })
            })
            .before_acquire(|conn, _| {
                Box::pin(async move { conn.execute(ASYNC_CHECKOUT_BEGIN).await.map(|_| true) })
            })
            .after_release(|conn, _| Box::pin(async move { conn.execute(CHECKOUT_END).await.map(|_| true) }))
            .connect_lazy_with(with_role(options, "queue"));
    }
    base.test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .after_connect(prepare_connection)
        .connect_lazy_with(with_role(options, "queue").options([("synchronous_commit", "off")]))
}

/// [`CHECKOUT_BEGIN`] for the asynchronous-commit pool.
const ASYNC_CHECKOUT_BEGIN: &str =
    "BEGIN; SET LOCAL client_min_messages = error; SET LOCAL synchronous_commit = off";

pub(crate) fn is_pooled(pool: &PgPool) -> bool {
    let key = pool_key(pool);
    SESSION_POOLS
        .lock()
        .map(|pools| pools.iter().any(|(k, _)| *k == key))
        .unwrap_or(false)
}

/// Every checkout of a pooled connection is one explicit transaction. A
/// transaction-mode pooler (PgBouncer `pool_mode = transaction`, 1.18 has no
/// prepared-statement support there) hands a server connection out per
/// transaction; sqlx parses a statement with parameters in one Sync and binds
/// it in the next, so outside a transaction the two halves can land on
/// different servers ("prepared statement … does not exist"). Inside one
/// they cannot. Warnings are silenced for the checkout: a `BEGIN` of our own
/// code inside it only warns "already in a transaction".
const CHECKOUT_BEGIN: &str = "BEGIN; SET LOCAL client_min_messages = error";
/// Ends the checkout's transaction if our code has not (its `COMMIT` ends
/// it otherwise), without the warning a bare `COMMIT` outside one gives; the
/// `RESET` is in the same message, so on the same server.
const CHECKOUT_END: &str = "SET client_min_messages = error; COMMIT; RESET client_min_messages";

/// Sessions of their own (LISTEN, session settings) for pools that reach
/// Postgres through a transaction-mode pooler, keyed by the pooled pool's
/// connect options (shared by its clones).
static SESSION_POOLS: Mutex<Vec<(usize, PgPool)>> = Mutex::new(Vec::new());

fn pool_key(pool: &PgPool) -> usize {
    Arc::as_ptr(&pool.connect_options()) as usize
}

/// The pool to open session connections from (LISTEN, a notifier's own
/// connection): the direct one registered by [`connect_pooled`], else `pool`.
fn session_pool(pool: &PgPool) -> PgPool {
    let key = pool_key(pool);
    SESSION_POOLS
        .lock()
        .ok()
        .and_then(|pools| pools.iter().find(|(k, _)| *k == key).map(|(_, p)| p.clone()))
        .unwrap_or_else(|| pool.clone())
}

/// A pool whose statements go through a transaction-mode pooler at
/// `pooler_url`, and whose sessions (see [`session_pool`]) go straight to
/// Postgres at `direct_url`. The pooler must reset server connections after
/// each transaction (PgBouncer `server_reset_query = DEALLOCATE ALL`,
/// `server_reset_query_always = 1`): sqlx names its statements per client
/// connection, and with its cache off leaves them on the server.
pub async fn connect_pooled(
    pooler_url: &str,
    direct_url: &str,
    max_connections: u32,
    process: &str,
) -> Result<PgPool, Error> {
    let options = named(PgConnectOptions::from_str(pooler_url)?, process).statement_cache_capacity(0);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // A new connection is handed out without `before_acquire`.
        .after_connect(|conn, _| Box::pin(async move { conn.execute(CHECKOUT_BEGIN).await.map(|_| ()) }))
        .before_acquire(|conn, _| Box::pin(async move { conn.execute(CHECKOUT_BEGIN).await.map(|_| true) }))
        .after_release(|conn, _| Box::pin(async move { conn.execute(CHECKOUT_END).await.map(|_| true) }))
        .connect_with(options)
        .await?;
    let sessions = PgPoolOptions::new()
        .max_connections(SESSION_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(named(PgConnectOptions::from_str(direct_url)?, process));
    if let Ok(mut pools) = SESSION_POOLS.lock() {
        pools.push((pool_key(&pool), sessions));
    }
    Ok(pool)
}

/// Session connections a process opens: its one LISTEN (the API's for
/// completions and revocations, a worker's for job inserts) and each
/// notifier's own; an upper bound, with room for a reconnect's overlap.
const SESSION_CONNECTIONS: u32 = 6;

/// apalis's schema first, then ours (which may index apalis's tables), then
/// our overrides of apalis's schema again: on an existing database a newer
/// apalis migration runs after ours and could undo them
/// (`apalis_overrides`).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    sqlx::migrate!("../migrations").run(pool).await?;
    apalis_overrides::reassert(pool).await?;
    Ok(())
}

/// Whether every migration of this build has been applied (for `/readyz`).
pub async fn migrations_current(pool: &PgPool) -> Result<bool, Error> {
    let latest = sqlx::migrate!("../migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let applied = sqlx::query_scalar!("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(applied.unwrap_or(0) >= latest)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts its drops, as a pool counts the connections given back.
    struct Conn<'a>(u32, &'a AtomicUsize);

    impl Drop for Conn<'_> {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn take_gives_the_newest_fresh_connection_and_gives_the_stale_ones_back() {
        let given_back = AtomicUsize::new(0);
        let kept = Kept::default();
        let long_ago = Instant::now()
            .checked_sub(PING_IF_IDLE_FOR * 3)
            .expect("a clock this old");
        kept.keep_since(Conn(1, &given_back), long_ago);
        kept.keep_since(Conn(2, &given_back), long_ago);
        kept.keep(Conn(3, &given_back));
        kept.keep(Conn(4, &given_back));

        let newest = kept.take().expect("a fresh connection");
        assert_eq!(newest.0, 4);
        assert_eq!(
            given_back.load(Ordering::SeqCst),
            2,
            "the two stale ones went back"
        );
        let next = kept.take().expect("the other fresh one");
        assert_eq!(next.0, 3);
        assert!(kept.take().is_none());
        assert_eq!(given_back.load(Ordering::SeqCst), 2);
        drop((newest, next));
        assert_eq!(given_back.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn take_gives_nothing_when_every_kept_connection_is_stale() {
        let given_back = AtomicUsize::new(0);
        let kept = Kept::default();
        let long_ago = Instant::now()
            .checked_sub(PING_IF_IDLE_FOR * 2)
            .expect("a clock this old");
        kept.keep_since(Conn(1, &given_back), long_ago);
        kept.keep_since(Conn(2, &given_back), long_ago);
        assert!(kept.take().is_none());
        assert_eq!(given_back.load(Ordering::SeqCst), 2);
    }
}
