//! `idemq dev`: the one-command local run.
use std::path::PathBuf;

use anyhow::Context;
use idemq_api::config::ApiConfig;
use idemq_worker::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, SharedConfig};
use idemq_devcluster::{ClusterOptions, PgCluster};

/// Where `idemq dev` keeps its private cluster (reused on the next run).
pub const DEV_DIR: &str = ".idemq";
pub const DEV_DATABASE: &str = "idemq";

pub async fn run(
    db: DatabaseConfig,
    shared: SharedConfig,
    api: ApiConfig,
    worker: WorkerConfig,
) -> anyhow::Result<()> {
    let (url, cluster) = match db.database_url.clone() {
        Some(url) => (url, None),
        None => {
            let dir = std::env::current_dir()?.join(DEV_DIR);
            let cluster = start_cluster(dir).await?;
            (cluster.url(DEV_DATABASE), Some(cluster))
        }
    };
    let result = run_on(&url, &db, shared, api, worker).await;
    if let Some(cluster) = cluster {
        println!("stopping the private Postgres cluster");
        tokio::task::spawn_blocking(move || cluster.stop())
            .await?
            .context("stopping the private Postgres cluster")?;
    }
    result
}

async fn start_cluster(dir: PathBuf) -> anyhow::Result<PgCluster> {
    println!("starting a private Postgres cluster in {}", dir.display());
    let cluster = tokio::task::spawn_blocking(move || {
        PgCluster::start(ClusterOptions {
            data_dir: dir,
            port: 0,
            fast: false,
        })
    })
    .await??;
    // Killed without a chance to clean up, we still leave no server behind.
    cluster.stop_when_process_exits(std::process::id(), false)?;
    let admin = crate::cli::connect_url(&cluster.url("postgres"), 2, "idemq-dev").await?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        DEV_DATABASE,
    )
    .fetch_one(&admin)
    .await?;
    if !exists {
        // Dynamic: a database name is an identifier, not a parameter.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DEV_DATABASE}")))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    Ok(cluster)
}

async fn run_on(
    url: &str,
    db: &DatabaseConfig,
    shared: SharedConfig,
    api: ApiConfig,
    worker: WorkerConfig,
) -> anyhow::Result<()> {
    // One process serves both: the API's pool and a worker's.
    let size = db
        .db_max_connections
        .unwrap_or(db.api_pool() + db.worker_pool(&worker));
    let pool = crate::cli::connect_url(url, size, "idemq-dev").await?;
    idemq_core::db::migrate(&pool).await.context("migrating")?;
    idemq_core::seed::seed(&pool, 10, 3, 2)
        .await
        .context("seeding demo rows")?;
    let (_, token) = idemq_core::principal::create_token(&pool, "dev").await?;

    let shutdown = crate::cli::shutdown_on_signal();
    let mut api = api;
    // The ops listener needs a token: make one for this run if none is set.
    let ops_token = api
        .ops_token
        .get_or_insert_with(|| format!("ops_{}", uuid_like()))
        .clone();
    let listeners = idemq_api::process::bind_api(&api).await?;
    let addr = listeners.api_addr()?;
    let ops_addr = listeners.ops_addr();
    let ttl = shared.idempotency_ttl;
    let api_pool = pool.clone();
    let api_shutdown = shutdown.clone();
    let demo = crate::demo::router(&token);
    let metrics = crate::telemetry::install_metrics();
    let api_task = tokio::spawn(async move {
        let extra = Some(demo);
        idemq_api::process::serve_api_with(listeners, api_pool, &api, ttl, metrics, api_shutdown, extra).await
    });
    let settings = idemq_worker::WorkerSettings {
        config: worker,
        idempotency_ttl: shared.idempotency_ttl,
    };
    let worker_task = tokio::spawn(idemq_worker::run(pool.clone(), settings, shutdown.clone()));

    print_banner(&addr.to_string(), url, &token);
    if let Some(ops) = ops_addr {
        println!(
            "Ops (dashboard, operations, /metrics): http://{ops}/  — any user name, password {ops_token}"
        );
        println!("  curl -s http://{ops}/metrics -H 'Authorization: Bearer {ops_token}'\n");
    }
    println!("api listening on http://{addr}");
    stop_all(shutdown, api_task, worker_task).await
}

async fn stop_all(
    shutdown: CancellationToken,
    api_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    worker_task: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::pin!(api_task, worker_task);
    // Whichever part ends first (a signal, or a failure) stops the other.
    let first = tokio::select! {
        r = &mut api_task => r.map_err(anyhow::Error::from).and_then(|r| r),
        r = &mut worker_task => r.map_err(anyhow::Error::from).and_then(|r| r),
    };
    shutdown.cancel();
    let rest = tokio::time::timeout(crate::cli::STOP_GRACE, async {
        if !api_task.is_finished() {
            let _ = (&mut api_task).await;
        }
        if !worker_task.is_finished() {
            let _ = (&mut worker_task).await;
        }
    })
    .await;
    if rest.is_err() {
        tracing::warn!("parts did not stop within the grace period");
    }
    first
}

fn print_banner(addr: &str, url: &str, token: &str) {
    println!(
        r#"
idemq dev is running.
  API        http://{addr}
  database   {url}
  token      {token}
  demo page  http://{addr}/demo/

Mark invoice inv-1 paid (repeat the same line: the stored response is replayed):
  curl -i -X PATCH http://{addr}/invoices/inv-1/mark-paid \
    -H 'Authorization: Bearer {token}' \
    -H 'Idempotency-Key: demo-1' -H 'Prefer: wait=5' \
    -H 'Content-Type: application/json' -d '{{"paymentMethod":"card"}}'

Ctrl-C stops everything.
"#
    );
}

/// 128 random bits as hex, for a dev-only ops token.
fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
