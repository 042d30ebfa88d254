//! The fleet through PgBouncer in transaction pooling mode (issue 16): two
//! real `idemq api` and two real `idemq worker` processes whose statements go
//! through a pgbouncer the test starts, their LISTENs straight to Postgres
//! (`IDEMQ_LISTEN_DATABASE_URL`).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::helpers::*;

/// Debian's pgbouncer (1.18 on bookworm: no prepared statements in
/// transaction mode).
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// The server user of the harness's cluster (see the `idemq-devcluster` crate).
const SERVER_USER: &str = "postgres";

/// A pgbouncer in front of the harness's cluster; killed when dropped.
struct Bouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // The child is `setpriv`/`runuser`; pgbouncer dies with its parent
        // (`--pdeathsig`), and by its pid file in case it did not.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bouncer {
    /// Starts pgbouncer on a free port in front of `db_url`'s server, in
    /// transaction mode with the reset README names, and waits until it
    /// accepts connections.
    async fn start(db_url: &str) -> Bouncer {
        let (user, pg_host, pg_port, _) = split_url(db_url);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("idemq-pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 * = host={pg_host} port={pg_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 server_reset_query = DEALLOCATE ALL\n\
                 server_reset_query_always = 1\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 max_client_conn = 500\n\
                 default_pool_size = 20\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        // pgbouncer refuses to run as root, as Postgres does.
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        // Each process in the chain dies with its parent (a test that
        // panics or is killed leaves no pgbouncer behind).
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL"]);
        if root {
            Command::new("chown")
                .args(["-R", SERVER_USER])
                .arg(&dir)
                .status()
                .expect("chown the pgbouncer dir");
            cmd.args([
                "runuser",
                "-u",
                SERVER_USER,
                "--",
                "setpriv",
                "--pdeathsig",
                "KILL",
            ]);
        }
        cmd.arg(PGBOUNCER);
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {PGBOUNCER} (apt-get install pgbouncer): {e}"));
        let bouncer = Bouncer { child, dir, port };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "pgbouncer did not listen:\n{}",
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bouncer
    }

    /// `db_url` with pgbouncer's address in place of the server's.
    fn url(&self, db_url: &str) -> String {
        let (user, host, _, db) = split_url(db_url);
        format!("postgres://{user}@{host}:{}/{db}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

/// `(user, host, port, database)` of the harness's `postgres://user@host:port/db`.
fn split_url(db_url: &str) -> (String, String, u16, String) {
    let rest = db_url.strip_prefix("postgres://").expect("postgres:// url");
    let (user, rest) = rest.split_once('@').expect("user@");
    let (addr, db) = rest.split_once('/').expect("/database");
    let (host, port) = addr.split_once(':').expect("host:port");
    (
        user.to_owned(),
        host.to_owned(),
        port.parse().unwrap(),
        db.to_owned(),
    )
}

/// A real `idemq worker` process; killed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Worker {
    fn spawn(env: &[(&str, &str)]) -> Worker {
        let log = std::env::temp_dir().join(format!("idemq-worker-{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(idemq_bin())
            .arg("worker")
            .env("IDEMQ_WORKER_CONCURRENCY", "4")
            .env("IDEMQ_QUEUE_POLL_INTERVAL", "1s")
            .env("IDEMQ_LOG_FORMAT", "pretty")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn idemq worker");
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn finished_ticks(db: &TestDb, duty: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM duty_ticks WHERE duty = $1 AND finished_at IS NOT NULL")
        .bind(duty)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A fresh database, PgBouncer in front of it, the pooled URL, and a token.
async fn bounced_db() -> (TestDb, Bouncer, String, String) {
    let db = fresh_db().await;
    let bouncer = Bouncer::start(&db.url).await;
    let pooled = bouncer.url(&db.url);
    let (_, token) = idemq_core::principal::create_token(&db.pool, "bouncer-tester")
        .await
        .unwrap();
    (db, bouncer, pooled, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_through_pgbouncer_in_transaction_mode_are_paid_once_and_answered() {
    const INVOICES: usize = 40;
    let (db, bouncer, pooled, token) = bounced_db().await;
    for i in 0..INVOICES {
        sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ($1, 5000)")
            .bind(format!("inv-{i}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let env = [
        ("DATABASE_URL", pooled.as_str()),
        ("IDEMQ_LISTEN_DATABASE_URL", db.url.as_str()),
        ("IDEMQ_DB_MAX_CONNECTIONS", "12"),
    ];
    // The fleet-wide limiter's leases go through the pooler too.
    let mut api_env = env.to_vec();
    api_env.extend_from_slice(&[
        ("IDEMQ_RATE_LIMIT_ENABLED", "true"),
        ("IDEMQ_RATE_LIMIT_SENSITIVE", "1000/min"),
    ]);
    let apis: Vec<ApiProcess> = (0..2).map(|_| spawn_api_process(&pooled, &api_env)).collect();
    let duties = [
        ("IDEMQ_CLEANUP_SCHEDULE", "* * * * * *"),
        ("IDEMQ_RECONCILE_INTERVAL", "1s"),
    ];
    let mut worker_env = env.to_vec();
    worker_env.extend_from_slice(&duties);
    let workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(&worker_env)).collect();
    eventually("both workers are ready", || async {
        workers.iter().all(|w| w.log().contains("worker ready"))
    })
    .await;

    // Every invoice once through each API (round-robin), each request
    // waiting for its answer; then the same keys again.
    let client = reqwest::Client::new();
    let pay = |i: usize, api: &ApiProcess| {
        client
            .patch(format!("{}/invoices/inv-{i}/mark-paid", api.url))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("key-{i}"))
            .header("Prefer", "wait=20")
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .send()
    };
    let answers = futures::future::join_all((0..INVOICES).map(|i| pay(i, &apis[i % 2]))).await;
    let replays = futures::future::join_all((0..INVOICES).map(|i| pay(i, &apis[(i + 1) % 2]))).await;
    let logs = || {
        format!(
            "--- pgbouncer ---\n{}\n--- api 0 ---\n{}\n--- worker 0 ---\n{}",
            bouncer.log(),
            apis[0].log(),
            workers[0].log()
        )
    };
    for (i, answer) in answers.into_iter().chain(replays).enumerate() {
        let answer = answer.unwrap();
        let status = answer.status();
        let applied = header(&answer, "preference-applied").map(str::to_owned);
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "request {i}: {body}\n{}", logs());
        assert_eq!(body["invoice"]["status"], "PAID", "request {i}: {body}");
        if i < INVOICES {
            assert_eq!(applied.as_deref(), Some("wait=20"), "request {i}");
        }
    }

    // Paid once each: one operation, one payment, one attempt per invoice.
    let (paid, by, operations): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM invoices WHERE status = 'PAID'),
                (SELECT count(DISTINCT paid_by_operation) FROM invoices),
                (SELECT count(*) FROM operations)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let n = INVOICES as i64;
    assert_eq!((paid, by, operations), (n, n, n), "{}", logs());
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_attempts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, INVOICES as i64, "each job ran once");

    // The duties through the pooler: ticks keep finishing, each run once.
    let (cleanup_before, reconcile_before) = (
        finished_ticks(&db, "cleanup").await,
        finished_ticks(&db, "reconciler").await,
    );
    eventually("three more cleanup and reconciler ticks", || async {
        finished_ticks(&db, "cleanup").await >= cleanup_before + 3
            && finished_ticks(&db, "reconciler").await >= reconcile_before + 3
    })
    .await;
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM duty_ticks WHERE finished_at IS NULL AND claimed_at < now() - interval '5 seconds'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(unfinished, 0, "a tick was claimed and never finished");
    let ran: usize = workers
        .iter()
        .map(|w| w.log().matches("cleanup tick claimed: running").count())
        .sum();
    let cleanup_ticks: i64 = sqlx::query_scalar("SELECT count(*) FROM duty_ticks WHERE duty = 'cleanup'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // A run may be between its claim (logged) and its row's read here.
    assert!(
        (ran as i64 - cleanup_ticks).abs() <= 1,
        "{ran} cleanup runs logged for {cleanup_ticks} ticks"
    );
    for w in &workers {
        let log = w.log();
        assert!(!log.contains("prepared statement"), "{log}");
    }
    for a in &apis {
        let log = a.log();
        assert!(!log.contains("prepared statement"), "{log}");
    }
}

/// Makes every commit that wrote a row of `table` take 300 ms (a deferred
/// trigger runs at commit): a commit left to sqlx's release, which runs after
/// the caller has moved on, is then still running when the answer arrives.
async fn slow_commits_of(db: &TestDb, table: &str) {
    let sql = format!(
        "DROP TRIGGER IF EXISTS slow_commit ON rate_limit_budgets;
         DROP TRIGGER IF EXISTS slow_commit ON operations;
         CREATE OR REPLACE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON {table}
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Behind a transaction-mode pooler every checkout is a transaction; what a
/// request wrote (the fleet rate limiter's lease, the record) is committed
/// before its answer leaves, not by the pool's release after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_request_wrote_through_pgbouncer_is_committed_before_its_answer() {
    let (db, _bouncer, pooled, token) = bounced_db().await;
    sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ('inv-1', 5000), ('inv-2', 5000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let api = spawn_api_process(
        &pooled,
        &[
            ("IDEMQ_LISTEN_DATABASE_URL", db.url.as_str()),
            ("IDEMQ_DB_MAX_CONNECTIONS", "4"),
            ("IDEMQ_RATE_LIMIT_ENABLED", "true"),
            ("IDEMQ_RATE_LIMIT_SENSITIVE", "1000/min"),
        ],
    );
    let client = reqwest::Client::new();
    let pay = |invoice: &str, key: &str| {
        client
            .patch(format!("{}/invoices/{invoice}/mark-paid", api.url))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .send()
    };
    let pool = db.pool.clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            n
        }
    };

    // The first request of the principal leases from its fleet-wide budget;
    // every request records its operation.
    let steps = [
        (
            "rate_limit_budgets",
            "inv-1",
            "key-1",
            "SELECT count(*) FROM rate_limit_budgets",
            "the lease",
        ),
        (
            "operations",
            "inv-2",
            "key-2",
            "SELECT count(*) FROM operations WHERE idempotency_key = 'key-2'",
            "the record",
        ),
    ];
    for (table, invoice, key, written, what) in steps {
        slow_commits_of(&db, table).await;
        let answer = pay(invoice, key).await.unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "{}", api.log());
        assert_eq!(
            count(written).await,
            1,
            "{what} is committed when the answer arrives"
        );
    }
    drop(api);
}
