//! The Postgres server the bench runs against (`DATABASE_URL`'s, or a private
//! cluster started like `idemq dev` does), and a fresh database per scenario.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::Context;
use idemq_core::principal::Principal;
use idemq_devcluster::{ClusterOptions, PgCluster};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::{progress, BenchArgs};

pub struct Server {
    admin_url: String,
    /// `admin_url` without its database name (and query).
    base: String,
    query: String,
    cluster: Option<PgCluster>,
    pub exe: PathBuf,
    pub logs: PathBuf,
    /// `--profile` asked for and pg_stat_statements is loaded.
    pub profile: bool,
    pub profile_note: Option<String>,
    keep_db: bool,
    pub async_commit: bool,
    /// `--history`.
    pub history: u64,
    seq: AtomicU32,
}

/// A scenario's own database, migrated, with a principal and its token.
pub struct RunDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub principal: Principal,
    pub token: String,
}

impl Server {
    pub async fn start(args: &BenchArgs) -> anyhow::Result<Server> {
        let exe = idemq_beside_us()?;
        let dir =
            std::path::absolute(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => (url, None),
            _ => {
                let cluster = start_cluster(dir.clone()).await?;
                (cluster.url("postgres"), Some(cluster))
            }
        };
        let (without_query, query) = match admin_url.split_once('?') {
            Some((u, q)) => (u.to_owned(), format!("?{q}")),
            None => (admin_url.clone(), String::new()),
        };
        let base = without_query
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .filter(|b| b.contains("://"))
            .context("DATABASE_URL has no database name (postgres://user@host:port/db)")?;
        let mut server = Server {
            admin_url,
            base,
            query,
            cluster,
            exe,
            logs,
            profile: false,
            profile_note: None,
            keep_db: args.keep_db,
            async_commit: args.async_commit,
            history: args.history,
            seq: AtomicU32::new(0),
        };
        server.prepare_profile(args.profile).await?;
        Ok(server)
    }

    async fn admin(&self) -> anyhow::Result<PgPool> {
        pool(&self.admin_url, 1)
            .await
            .context("connecting to the Postgres server (admin)")
    }

    /// pg_stat_statements must be in `shared_preload_libraries`. On the
    /// private cluster we put it there (and take it out again when not
    /// profiling, so that plain runs carry no profiling overhead).
    async fn prepare_profile(&mut self, wanted: bool) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        let preload: String = sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
            .fetch_one(&admin)
            .await?;
        let loaded = preload.split(',').any(|l| l.trim() == "pg_stat_statements");
        if self.cluster.is_none() {
            self.profile = wanted && loaded;
            if wanted && !loaded {
                self.profile_note = Some(
                    "--profile: pg_stat_statements is not in shared_preload_libraries of the DATABASE_URL server; no profile"
                        .into(),
                );
            }
            return Ok(());
        }
        if wanted == loaded {
            self.profile = wanted;
            return Ok(());
        }
        if wanted {
            progress("loading pg_stat_statements into the private cluster (restart)");
            sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&admin)
                .await?;
        } else {
            // Only the bench writes this cluster's postgresql.auto.conf.
            sqlx::query("ALTER SYSTEM RESET ALL").execute(&admin).await?;
        }
        admin.close().await;
        let cluster = self.cluster.take().expect("checked above");
        let cluster = tokio::task::spawn_blocking(move || cluster.restart().map(|()| cluster)).await??;
        self.cluster = Some(cluster);
        if wanted {
            // Known only once the library is loaded. `all`: statements inside
            // functions too (apalis's fetch is one).
            let admin = self.admin().await?;
            sqlx::query("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
                .execute(&admin)
                .await?;
            sqlx::query("SELECT pg_reload_conf()").execute(&admin).await?;
            admin.close().await;
        }
        self.profile = wanted;
        Ok(())
    }

    /// A fresh database: created, migrated (apalis's schema and ours), with
    /// a principal `bench` and its token.
    pub async fn fresh_db(&self, scenario: &str) -> anyhow::Result<RunDb> {
        let name = format!(
            "idemq_bench_{scenario}_{}_{}_{}",
            std::process::id(),
            chrono::Utc::now().format("%H%M%S"),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.admin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        admin.close().await;
        let url = format!("{}/{name}{}", self.base, self.query);
        let pool = pool(&url, 40)
            .await
            .with_context(|| format!("connecting to {name}"))?;
        idemq_core::db::migrate(&pool).await.context("migrating")?;
        let (principal, token) = idemq_core::principal::create_token(&pool, "bench").await?;
        if self.async_commit {
            // Sessions opened from now on take it: the children's, the ceiling's.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} SET synchronous_commit = off"
            )))
            .execute(&pool)
            .await?;
        }
        if self.profile {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&pool)
                .await
                .context("CREATE EXTENSION pg_stat_statements")?;
        }
        Ok(RunDb {
            name,
            url,
            pool,
            principal,
            token,
        })
    }

    /// Drops the scenario's database (unless `--keep-db`).
    pub async fn drop_db(&self, db: RunDb) {
        db.pool.close().await;
        if self.keep_db {
            progress(format!("kept database {}", db.name));
            return;
        }
        let dropped = async {
            let admin = self.admin().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                db.name
            )))
            .execute(&admin)
            .await?;
            admin.close().await;
            anyhow::Ok(())
        };
        if let Err(e) = dropped.await {
            progress(format!("could not drop database {}: {e:#}", db.name));
        }
    }

    /// What the figures were measured on.
    pub async fn environment(&self) -> Value {
        let mut env = json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "memory_gib": mem_total_gib(),
            "loadavg": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_owned()),
            "private_cluster": self.cluster.is_some(),
            "idemq_env": idemq_env(),
        });
        if let Ok(admin) = self.admin().await {
            let settings: Result<(String, String, String), _> = sqlx::query_as(
                "SELECT version(), current_setting('fsync'), current_setting('synchronous_commit')",
            )
            .fetch_one(&admin)
            .await;
            if let Ok((version, fsync, sync_commit)) = settings {
                env["postgres"] = json!(version);
                env["fsync"] = json!(fsync);
                env["synchronous_commit"] = json!(sync_commit);
            }
            admin.close().await;
        }
        env
    }

    /// Stops the private cluster, if we started one.
    pub async fn stop(self) {
        if let Some(cluster) = self.cluster {
            progress("stopping the private Postgres cluster");
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => progress(format!("stopping the private cluster: {e:#}")),
                Err(e) => progress(format!("stopping the private cluster: {e}")),
            }
        }
    }
}

/// A pool of the bench's own (not logged: its bulk statements are slow on
/// purpose, and its log is not what is measured).
pub async fn pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    use sqlx::ConnectOptions;
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?)
}

/// The fleet's executable: the `idemq` in the bench's own directory (cargo
/// builds both binaries into one directory; `idemq bench` runs the
/// `idemq-bench` beside itself), so the bench measures the production binary.
fn idemq_beside_us() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("locating the idemq-bench executable")?;
    let idemq = bench.with_file_name("idemq");
    anyhow::ensure!(
        idemq.is_file(),
        "{} not found: the bench runs the idemq binary beside itself (build both with `cargo build --release`)",
        idemq.display()
    );
    Ok(idemq)
}

async fn start_cluster(dir: PathBuf) -> anyhow::Result<PgCluster> {
    progress(format!(
        "starting a private Postgres cluster in {} (fsync on)",
        dir.display()
    ));
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
    Ok(cluster)
}

fn mem_total_gib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

/// The `IDEMQ_*` and `RUST_LOG` settings the children inherit (the ops
/// token's value is left out).
pub fn idemq_env() -> Value {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| (k.starts_with("IDEMQ_") && k != "IDEMQ_OPS_TOKEN") || k == "RUST_LOG")
        .collect();
    vars.sort();
    Value::Object(vars.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}
