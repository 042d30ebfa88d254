//! The test harness. With `DATABASE_URL` unset, one private cluster is
//! started per test run (fsync off: throwaway data) and stopped when the test
//! binary exits; each test gets its own database cloned from a migrated
//! template.
#![allow(dead_code)]

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use idemq_api::config::ApiConfig;
use idemq_devcluster::{ClusterOptions, PgCluster};
use idemq_worker::config::WorkerConfig;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);
/// What an API process logs once its notice listener is connected (and its
/// token cache emptied).
pub const NOTICE_LISTENER_CONNECTED: &str = "notice listener connected";

struct Server {
    /// URL of a database we may connect to for administration.
    admin_url: String,
    /// Base URL without the database name.
    base: String,
    template: String,
    _cluster: Option<PgCluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
/// CREATE DATABASE … TEMPLATE must not run while the template is in use.
static CREATE_DB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        // Runs once, on a thread of its own with its own runtime, because the
        // calling test's runtime may be single-threaded.
        std::thread::spawn(start_server)
            .join()
            .expect("starting the test Postgres")
    })
}

fn start_server() -> Server {
    let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = std::env::temp_dir().join(format!("idemq-test-{}", std::process::id()));
            let cluster = PgCluster::start(ClusterOptions {
                data_dir: dir,
                port: 0,
                fast: true,
            })
            .expect("start a throwaway Postgres cluster");
            cluster
                .stop_when_process_exits(std::process::id(), true)
                .expect("watchdog for the test cluster");
            (cluster.url("postgres"), Some(cluster))
        }
    };
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .expect("database url");
    let template = format!("idemq_template_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = PgPool::connect(&admin_url)
            .await
            .expect("connect to test Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}")))
            .execute(&admin)
            .await
            .unwrap();
        let pool = PgPool::connect(&format!("{base}/{template}")).await.unwrap();
        idemq_core::db::migrate(&pool)
            .await
            .expect("migrate the template database");
        pool.close().await;
        admin.close().await;
    });
    Server {
        admin_url,
        base,
        template,
        _cluster: cluster,
    }
}

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

pub async fn fresh_db() -> TestDb {
    let server = server();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    {
        let _guard = CREATE_DB.lock().await;
        let admin = PgPool::connect(&server.admin_url).await.unwrap();
        let sql = format!("CREATE DATABASE {name} TEMPLATE {}", server.template);
        let started = Instant::now();
        loop {
            match sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&admin)
                .await
            {
                Ok(_) => break,
                // An autovacuum worker may be visiting the template.
                Err(e) if started.elapsed() < DEADLINE => {
                    eprintln!("retrying CREATE DATABASE: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("CREATE DATABASE: {e}"),
            }
        }
        admin.close().await;
    }
    let url = format!("{}/{name}", server.base);
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .unwrap();
    TestDb { name, url, pool }
}

pub fn test_worker_config() -> WorkerConfig {
    WorkerConfig {
        worker_concurrency: 4,
        // Off: tests/it/warmup.rs is about it.
        worker_warm_connections: 0,
        worker_lease: Duration::from_secs(2),
        job_max_attempts: 8,
        job_timeout: Duration::from_secs(10),
        job_groups: 2,
        queue_batch_size: 10,
        queue_poll_interval: Duration::from_millis(100),
        queue_backup_fetch_delay: Duration::from_millis(20),
        shutdown_grace: Duration::from_secs(10),
        db_lost_grace: Duration::from_secs(30),
        reconcile_interval: Duration::from_secs(30),
        // Off in tests unless a test is about it (tests/it/cleanup.rs): a
        // worker would otherwise catch up today's 02:00 run at start.
        cleanup_enabled: false,
        cleanup_schedule: idemq_worker::config::parse_cron(idemq_worker::config::DEFAULT_CLEANUP_SCHEDULE)
            .unwrap(),
        queue_retention: Duration::from_secs(24 * 3600),
        cleanup_batch_size: 1000,
    }
}

pub fn test_api_config() -> ApiConfig {
    ApiConfig {
        api_addr: "127.0.0.1:0".parse().unwrap(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        ops_token: Some("ops-secret".into()),
        ops_https: false,
        require_idempotency_key: true,
        body_limit_bytes: 16 * 1024,
        // Off here: most tests send more than 10 mutating requests a minute.
        // The rate-limit tests switch it on.
        rate_limit_enabled: false,
        rate_limit_sensitive: idemq_api::config::RateSpec::parse("10/min").unwrap(),
        rate_limit_read: idemq_api::config::RateSpec::parse("1200/min").unwrap(),
        rate_limit_scope: idemq_api::config::RateLimitScope::Fleet,
        trust_proxy: false,
        // Off: tests/it/warmup.rs is about it.
        api_warm_connections: 0,
        record_batches: 2,
        record_batch_max: 64,
    }
}

pub struct TestApp {
    pub addr: String,
    pub db: TestDb,
    pub token: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    workers: Vec<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for (w, _) in &self.workers {
            w.cancel();
        }
    }
}

/// The API in-process on port 0, on a fresh database, with a token; no worker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_api_config()).await
}

pub async fn spawn_app_with(config: ApiConfig) -> TestApp {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "tester")
        .await
        .unwrap();
    let api_pool = idemq_core::db::connect(&db.url, 10).await.unwrap();
    let state = idemq_api::AppState::new(api_pool, &config);
    let listener = tokio::net::TcpListener::bind(config.api_addr).await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(idemq_api::serve(listener, state, shutdown.clone()));
    TestApp {
        addr,
        db,
        token,
        client: reqwest::Client::new(),
        shutdown,
        workers: Vec::new(),
    }
}

impl TestApp {
    /// A worker loop in-process, on its own pool.
    pub async fn start_worker(&mut self) {
        self.start_worker_with(test_worker_config()).await
    }

    pub async fn start_worker_with(&mut self, config: WorkerConfig) {
        let pool = idemq_core::db::connect(&self.db.url, 10).await.unwrap();
        let stop = CancellationToken::new();
        let settings = idemq_worker::WorkerSettings {
            config,
            idempotency_ttl: Duration::from_secs(24 * 3600),
        };
        let handle = tokio::spawn(idemq_worker::run(pool, settings, stop.clone()));
        self.workers.push((stop, handle));
    }

    /// Stops the in-process workers and waits until they have stopped.
    pub async fn stop_workers(&mut self) {
        for (stop, handle) in self.workers.drain(..) {
            stop.cancel();
            // It returns within its shutdown grace (10 s here) whatever
            // its jobs do: still running at the deadline is a defect.
            let _ = tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("an in-process worker did not stop within the deadline");
        }
    }

    pub async fn token_for(&self, name: &str) -> String {
        idemq_core::principal::create_token(&self.db.pool, name)
            .await
            .unwrap()
            .1
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(&self.token)
    }

    /// `PATCH /invoices/{id}/mark-paid` with a key.
    pub async fn mark_paid(&self, invoice: &str, key: &str) -> Response {
        self.patch(&format!("/invoices/{invoice}/mark-paid"))
            .key(key)
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .response()
            .await
    }

    pub async fn get_operation(&self, id: &str) -> Response {
        self.get(&format!("/operations/{id}")).response().await
    }

    /// Polls the operation until it is final; panics after the deadline.
    pub async fn await_final(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let r = self
                .get(&format!("/operations/{id}"))
                .header("Prefer", "wait=5")
                .send()
                .await;
            assert_eq!(r.status, StatusCode::OK);
            let op = r.json();
            if op["status"] == "succeeded" || op["status"] == "failed" {
                return op;
            }
            assert!(started.elapsed() < DEADLINE, "operation {id} not final: {op}");
        }
    }

    pub async fn insert_invoice(&self, id: &str) {
        sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ($1, 5000)")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// Waits until `check` holds, polling, or panics after `DEADLINE`.
/// Operations not yet final (`queued` or `running`).
pub async fn unfinished_operations(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM operations WHERE status IN ('queued', 'running')")
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, DEADLINE, check).await
}

/// `eventually` with its own deadline.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn assert_problem(r: &Response, status: StatusCode) {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json")
    );
}

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

pub use crate::harness::{idemq, idemq_bin, terminate_all, Proc};

/// A real `idemq api` process: public and ops listeners on free ports, its
/// log (stderr) collected; killed when dropped.
pub struct ApiProcess {
    pub proc: Proc,
    pub url: String,
    pub ops: String,
}

impl ApiProcess {
    /// What the process has logged so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Kills the process and returns everything it logged.
    pub fn stop(self) -> String {
        self.proc.stop()
    }
}

/// The value of one sample line of the Prometheus text, e.g.
/// `idemq_idempotent_replays_total` or `name{a="b"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// The ops token of an [`ApiProcess`] unless `env` sets `IDEMQ_OPS_TOKEN`.
pub const API_PROCESS_OPS_TOKEN: &str = "ops-process";

/// `idemq api` on `db_url`, listeners on free ports, the defaults of
/// [`spawn_api_process`]; `env` and more to be added before `spawn`.
pub fn api_command(db_url: &str) -> crate::harness::Idemq {
    idemq(["api"])
        .env("DATABASE_URL", db_url)
        .env("IDEMQ_API_ADDR", "127.0.0.1:0")
        .env("IDEMQ_OPS_ADDR", "127.0.0.1:0")
        .env("IDEMQ_OPS_TOKEN", API_PROCESS_OPS_TOKEN)
        .env("RUST_LOG", "info")
        .env_remove("IDEMQ_RATE_LIMIT_SCOPE")
}

/// Starts `idemq api` on `db_url` with `env` on top of the defaults, and
/// returns once it has printed both its addresses.
pub fn spawn_api_process(db_url: &str, env: &[(&str, &str)]) -> ApiProcess {
    api_listening(api_command(db_url).envs(env).spawn())
}

/// An `idemq api` (or `dev`) process, once it has printed both addresses.
pub fn api_listening(mut proc: Proc) -> ApiProcess {
    let (url, ops) = proc.wait_for_blocking("listening", Duration::from_secs(30), |p| {
        Some((
            p.stdout_after("api listening on ")?,
            p.stdout_after("ops listening on ")?,
        ))
    });
    ApiProcess { proc, url, ops }
}

// --- Helpers for the idempotency-contract tests (issue 3) ---

/// The full problem `type` URI for a slug.
pub fn problem_type(slug: &str) -> String {
    format!("https://idemq.dev/problems/{slug}")
}

/// Asserts a problem+json answer with this status and `type` slug; returns its body.
pub async fn expect_problem(r: Response, status: StatusCode, slug: &str) -> Value {
    assert_problem(&r, status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], problem_type(slug), "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    body
}

/// A whole answer, read once, for byte-for-byte comparisons. Two answers
/// are equal when all but `headers` (which holds `Date`, …) are.
#[derive(Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub replayed: Option<String>,
    pub location: Option<String>,
    pub preference_applied: Option<String>,
    pub body: Vec<u8>,
    /// Every header, for the ones the fields above do not name.
    pub headers: reqwest::header::HeaderMap,
}

impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        (
            self.status,
            &self.content_type,
            &self.replayed,
            &self.location,
            &self.preference_applied,
            &self.body,
        ) == (
            other.status,
            &other.content_type,
            &other.replayed,
            &other.location,
            &other.preference_applied,
            &other.body,
        )
    }
}

impl Eq for Answer {}

/// The body as text, so that a failure shows it.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("replayed", &self.replayed)
            .field("location", &self.location)
            .field("preference_applied", &self.preference_applied)
            .field("body", &self.text())
            .finish()
    }
}

impl Answer {
    pub async fn read(r: Response) -> Answer {
        let h = |name: &str| header(&r, name).map(str::to_owned);
        let (content_type, replayed, location, preference_applied) = (
            h("content-type"),
            h("idempotent-replayed"),
            h("location"),
            h("preference-applied"),
        );
        let headers = r.headers().clone();
        Answer {
            status: r.status(),
            content_type,
            replayed,
            location,
            preference_applied,
            body: r.bytes().await.unwrap().to_vec(),
            headers,
        }
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and `type` slug; its body.
    pub fn problem(&self, status: StatusCode, slug: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["type"], problem_type(slug), "{body}");
        assert_eq!(body["status"], status.as_u16(), "{body}");
        body
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestApp {
    /// A request with another principal's token.
    pub fn request_as(&self, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(token)
    }

    /// A mutating request with a key and a JSON body.
    pub async fn send(&self, method: Method, path: &str, key: &str, body: Value) -> Response {
        self.call(method, path).key(key).json(&body).response().await
    }

    pub async fn insert_application(&self, id: &str) {
        sqlx::query("INSERT INTO applications (id, applicant, room) VALUES ($1, 'Ada', 'Room 1')")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    pub async fn insert_contract(&self, id: &str) {
        sqlx::query("INSERT INTO contracts (id) VALUES ($1)")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    /// The stored final response of the operation (status, content type, body).
    pub async fn stored_response(&self, op_id: &str) -> (i16, String, String) {
        let uuid: uuid::Uuid = op_id
            .strip_prefix("op_")
            .and_then(|h| h.parse().ok())
            .expect("an operation id");
        sqlx::query_as(
            "SELECT response_status, response_content_type, response_body FROM operations WHERE id = $1",
        )
        .bind(uuid)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }
}

// --- Helpers for the cleanup tests (issue 6) ---

impl TestApp {
    /// A worker loop in-process with settings of its own (a short
    /// idempotency TTL, a cleanup schedule, …), on its own pool.
    pub async fn start_worker_with_settings(&mut self, settings: idemq_worker::WorkerSettings) {
        let pool = idemq_core::db::connect(&self.db.url, 10).await.unwrap();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(idemq_worker::run(pool, settings, stop.clone()));
        self.workers.push((stop, handle));
    }
}

/// The database id of an operation id (`op_…`).
pub fn op_uuid(id: &str) -> uuid::Uuid {
    id.parse::<idemq_core::operation::OperationId>()
        .expect("an operation id")
        .uuid()
}

// --- The request helper: `app.post(path).key(k).json(body).send()` ---

/// One HTTP request to a test server, with the app's token unless told
/// otherwise; [`send`](Call::send) reads the whole [`Answer`].
pub struct Call {
    client: reqwest::Client,
    method: Method,
    url: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    /// The body and, unless set by a header, its content type.
    body: Option<(Option<String>, Vec<u8>)>,
}

impl Call {
    /// `METHOD base+path` with `client`, no token yet.
    pub fn to(client: &reqwest::Client, base: &str, method: Method, path: &str) -> Call {
        Call {
            client: client.clone(),
            method,
            url: format!("{base}{path}"),
            token: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// The bearer token (instead of the app's).
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// No `Authorization` header at all.
    pub fn anonymous(mut self) -> Self {
        self.token = None;
        self
    }

    /// The `Idempotency-Key` header.
    pub fn key(self, key: &str) -> Self {
        self.header("Idempotency-Key", key)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A JSON body (`application/json`).
    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some((Some("application/json".into()), body.to_string().into_bytes()));
        self
    }

    /// A body as given, with this content type.
    pub fn raw(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((Some(content_type.to_owned()), body.into()));
        self
    }

    /// A body as given, no content type added (a `header` may set one).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((None, body.into()));
        self
    }

    /// The request as reqwest would send it, to add to.
    pub fn builder(self) -> reqwest::RequestBuilder {
        let mut r = self.client.request(self.method, self.url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        for (name, value) in &self.headers {
            r = r.header(name, value);
        }
        if let Some((content_type, body)) = self.body {
            let named = self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
            if let Some(content_type) = content_type.filter(|_| !named) {
                r = r.header("content-type", content_type);
            }
            r = r.body(body);
        }
        r
    }

    /// Sends it; the raw response.
    pub async fn response(self) -> Response {
        self.builder().send().await.unwrap()
    }

    /// Sends it and reads the whole answer.
    pub async fn send(self) -> Answer {
        Answer::read(self.response().await).await
    }
}

impl TestApp {
    /// `METHOD path` with the app's token.
    pub fn call(&self, method: Method, path: &str) -> Call {
        Call::to(&self.client, &self.addr, method, path).token(&self.token)
    }

    pub fn get(&self, path: &str) -> Call {
        self.call(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Call {
        self.call(Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> Call {
        self.call(Method::PATCH, path)
    }

    pub fn put(&self, path: &str) -> Call {
        self.call(Method::PUT, path)
    }

    pub fn delete(&self, path: &str) -> Call {
        self.call(Method::DELETE, path)
    }
}

impl ApiProcess {
    /// `METHOD path` on the process's public listener, with `token`.
    pub fn call(&self, method: Method, path: &str, token: &str) -> Call {
        Call::to(&reqwest::Client::new(), &self.url, method, path).token(token)
    }
}

/// The ops router in-process on port 0, on the app's database, with this
/// ops token; served until `shutdown` is cancelled (gracefully, as `idemq
/// serve` does). Its address and its session signer (a key the test knows).
pub async fn spawn_ops_listener(
    app: &TestApp,
    ops_token: &str,
    https: bool,
    shutdown: CancellationToken,
) -> (String, idemq_api::ops::auth::Sessions) {
    use idemq_api::ops::auth::{Sessions, DEFAULT_SESSION_LIFETIME};
    let session = Sessions::with_key(rand::random(), DEFAULT_SESSION_LIFETIME, https);
    let state = idemq_api::ops::OpsState {
        pool: idemq_core::db::connect(&app.db.url, 4).await.unwrap(),
        token: ops_token.into(),
        metrics: None,
        idempotency_ttl: Duration::from_secs(3600),
        session: session.clone(),
        shutdown: shutdown.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, idemq_api::ops::router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    (addr, session)
}

/// A private cluster of a test's own (one that stops or crashes Postgres):
/// started (or started again, on the same data directory and port) off the
/// async runtime, and stopped when the test process exits.
pub async fn start_own_cluster(opts: ClusterOptions) -> PgCluster {
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start(opts))
        .await
        .unwrap()
        .expect("start a private cluster");
    cluster.stop_when_process_exits(std::process::id(), true).unwrap();
    cluster
}

/// A new data directory for [`start_own_cluster`], named after the test.
pub fn own_cluster_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "idemq-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Database `idemq` on `cluster`, migrated: its URL and a pool.
pub async fn create_migrated_db(cluster: &PgCluster) -> (String, PgPool) {
    let admin = PgPool::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE idemq")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = cluster.url("idemq");
    let pool = PgPool::connect(&url).await.unwrap();
    idemq_core::db::migrate(&pool).await.unwrap();
    (url, pool)
}

/// `PATCH /invoices/{invoice}/mark-paid` under `key`, answered `202`: the
/// operation's id.
pub async fn submit(app: &TestApp, invoice: &str, key: &str) -> String {
    let r = app.mark_paid(invoice, key).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    op["id"].as_str().unwrap().to_owned()
}

/// `invoice` paid by `op`, with one audit entry.
pub async fn assert_paid_once(pool: &PgPool, invoice: &str, op: &str) {
    let (status, by): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT status, paid_by_operation FROM invoices WHERE id = $1")
            .bind(invoice)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), by), ("PAID", Some(op_uuid(op))));
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE entity_id = $1")
        .bind(invoice)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(audits, 1, "audit entries of {invoice}");
}

/// A trigger on `invoices` that runs `body` (PL/pgSQL) before each update;
/// `attempt` is the operation's attempt number.
pub async fn invoice_trigger(pool: &PgPool, body: &str) {
    let sql = format!(
        "CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $f$
         DECLARE attempt integer;
         BEGIN
            SELECT attempts INTO attempt FROM operations WHERE id = NEW.paid_by_operation;
            {body}
            RETURN NEW;
         END $f$;
         CREATE TRIGGER test_fault BEFORE UPDATE ON invoices
            FOR EACH ROW EXECUTE FUNCTION test_fault();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}
