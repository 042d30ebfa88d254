//! The fleet under test: `idemq api` and `idemq worker` as child processes
//! of the bench (the `idemq` binary beside `idemq-bench`, see
//! `server::idemq_beside_us`), their logs in files, their peak RSS.
//! Every child dies with the bench: SIGKILL on drop (`kill_on_drop`), and
//! `PR_SET_PDEATHSIG` in case the bench itself is killed.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use idemq_devcluster::free_port;
use serde::Serialize;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::progress;

/// How long a child may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a child may take to stop on SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

pub struct Proc {
    pub role: String,
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

/// Peak resident memory of one child (`VmHWM`).
#[derive(Debug, Clone, Serialize)]
pub struct ProcRss {
    pub role: String,
    pub pid: u32,
    pub peak_rss_mib: f64,
}

pub struct Fleet {
    exe: PathBuf,
    db_url: String,
    logs: PathBuf,
    tag: String,
    pub api_url: String,
    api: Option<Proc>,
    workers: Vec<Proc>,
    /// Peak RSS of children already stopped.
    stopped: Vec<ProcRss>,
    next_worker: usize,
    /// Added to every worker's environment (e.g. a shorter lease).
    worker_env: Vec<(String, String)>,
}

impl Fleet {
    pub fn new(exe: &Path, db_url: &str, logs: &Path, tag: &str) -> Fleet {
        Fleet {
            exe: exe.to_owned(),
            db_url: db_url.to_owned(),
            logs: logs.to_owned(),
            tag: tag.to_owned(),
            api_url: String::new(),
            api: None,
            workers: Vec::new(),
            stopped: Vec::new(),
            next_worker: 1,
            worker_env: Vec::new(),
        }
    }

    /// Workers started from now on get `key=value` in their environment.
    pub fn worker_env(&mut self, key: &str, value: &str) {
        self.worker_env.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, role: &str, log: &Path) -> anyhow::Result<Command> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(role)
            .env("DATABASE_URL", &self.db_url)
            // N workers on one machine: a fixed health address would collide.
            .env_remove("IDEMQ_WORKER_HEALTH_ADDR")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        // What users run in production unless the caller says otherwise.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if std::env::var_os("IDEMQ_LOG_FORMAT").is_none() {
            cmd.env("IDEMQ_LOG_FORMAT", "json");
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts `idemq api` on free ports and waits for `/healthz`.
    /// `env` adds to (or overrides) the defaults: rate limiting off unless
    /// `IDEMQ_RATE_LIMIT_ENABLED` is set in the bench's environment.
    pub async fn start_api(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let port = free_port()?;
        let log = self.logs.join(format!("{}-api.log", self.tag));
        let mut cmd = self.command("api", &log)?;
        cmd.env("IDEMQ_API_ADDR", format!("127.0.0.1:{port}"))
            .env("IDEMQ_OPS_ADDR", format!("127.0.0.1:{}", free_port()?));
        // Off unless the bench's caller says otherwise (to measure the
        // limiter's cost on accepted requests: on, with a huge budget).
        if std::env::var_os("IDEMQ_RATE_LIMIT_ENABLED").is_none() {
            cmd.env("IDEMQ_RATE_LIMIT_ENABLED", "false");
        }
        if std::env::var_os("IDEMQ_OPS_TOKEN").is_none() {
            cmd.env(
                "IDEMQ_OPS_TOKEN",
                format!("bench-{}", uuid::Uuid::new_v4().simple()),
            );
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning `idemq api`")?;
        let mut proc = Proc {
            role: "api".into(),
            pid: child.id().unwrap_or(0),
            child,
            log,
        };
        self.api_url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.api_url)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = proc.child.try_wait()? {
                bail!(
                    "`idemq api` exited ({status}) before it was ready\n{}",
                    proc.log_tail()
                );
            }
            if started.elapsed() > READY_DEADLINE {
                bail!(
                    "`idemq api` not ready after {READY_DEADLINE:?}\n{}",
                    proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.api = Some(proc);
        Ok(())
    }

    /// Starts `n` worker processes (scheduled cleanup off) without waiting.
    pub fn spawn_workers(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let role = format!("worker-{}", self.next_worker);
            self.next_worker += 1;
            let log = self.logs.join(format!("{}-{role}.log", self.tag));
            let mut cmd = self.command("worker", &log)?;
            cmd.env("IDEMQ_CLEANUP_ENABLED", "false");
            cmd.envs(self.worker_env.iter().map(|(k, v)| (k, v)));
            let child = cmd.spawn().context("spawning `idemq worker`")?;
            self.workers.push(Proc {
                role,
                pid: child.id().unwrap_or(0),
                child,
                log,
            });
        }
        Ok(())
    }

    /// Starts `n` workers and waits until each has registered its queue
    /// workers with apalis (so a job pushed now is noticed at once).
    pub async fn start_workers(&mut self, n: usize, pool: &PgPool) -> anyhow::Result<()> {
        let from = self.workers.len();
        self.spawn_workers(n)?;
        let started = Instant::now();
        for i in from..self.workers.len() {
            loop {
                let w = &mut self.workers[i];
                // The worker's name carries its pid (`queue@host-PID-ULID`).
                let registered: i64 = sqlx::query_scalar(
                    "SELECT count(DISTINCT worker_type) FROM apalis.workers WHERE id LIKE '%-' || $1 || '-%'",
                )
                .bind(w.pid.to_string())
                .fetch_one(pool)
                .await?;
                if registered >= idemq_core::queue::ALL.len() as i64 {
                    break;
                }
                if let Some(status) = w.child.try_wait()? {
                    bail!(
                        "`idemq worker` ({}) exited ({status}) before it was ready\n{}",
                        w.role,
                        w.log_tail()
                    );
                }
                if started.elapsed() > READY_DEADLINE {
                    // Naming may change: fall back on the log line.
                    if w.log_text().contains("worker ready") {
                        progress(format!(
                            "{}: logged `worker ready` but no apalis worker row named after pid {}",
                            w.role, w.pid
                        ));
                        break;
                    }
                    bail!(
                        "`idemq worker` ({}) not ready after {READY_DEADLINE:?}\n{}",
                        w.role,
                        w.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    pub fn api_pid(&self) -> Option<u32> {
        self.api.as_ref().map(|p| p.pid)
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|p| p.pid).collect()
    }

    /// Fails if a child has exited (a crash under load must not go unseen).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.api.iter_mut().chain(self.workers.iter_mut()) {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} (pid {}) exited during the run ({status})\n{}",
                    p.role,
                    p.pid,
                    p.log_tail()
                );
            }
        }
        Ok(())
    }

    /// SIGKILLs the worker with this pid (chaos), keeping its peak RSS for
    /// the report; it leaves the fleet. False if no such worker.
    pub async fn kill_worker(&mut self, pid: u32) -> anyhow::Result<bool> {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return Ok(false);
        };
        let mut w = self.workers.remove(i);
        self.stopped.push(w.rss());
        w.child
            .kill()
            .await
            .with_context(|| format!("killing {}", w.role))?;
        Ok(true)
    }

    /// Stops the workers (SIGTERM, then SIGKILL after a deadline), keeping
    /// their peak RSS for the report.
    pub async fn stop_workers(&mut self) {
        let workers: Vec<Proc> = self.workers.drain(..).collect();
        for w in &workers {
            self.stopped.push(w.rss());
        }
        stop_all(workers).await;
    }

    /// Peak RSS of every child, stopped or running.
    pub fn rss(&self) -> Vec<ProcRss> {
        let mut all = self.stopped.clone();
        all.extend(self.api.iter().chain(self.workers.iter()).map(Proc::rss));
        all.sort_by_key(|p| (p.role != "api", p.role.clone()));
        all
    }

    /// Stops every child gracefully.
    pub async fn shutdown(mut self) {
        let mut procs: Vec<Proc> = self.workers.drain(..).collect();
        procs.extend(self.api.take());
        stop_all(procs).await;
    }
}

async fn stop_all(procs: Vec<Proc>) {
    for p in &procs {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(p.pid as libc::pid_t, libc::SIGTERM);
        }
    }
    for mut p in procs {
        match tokio::time::timeout(STOP_DEADLINE, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                progress(format!(
                    "{} did not stop within {STOP_DEADLINE:?}: killing it",
                    p.role
                ));
                let _ = p.child.kill().await;
            }
        }
    }
}

impl Proc {
    fn rss(&self) -> ProcRss {
        ProcRss {
            role: self.role.clone(),
            pid: self.pid,
            peak_rss_mib: peak_rss_mib(self.pid).unwrap_or(0.0),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "last lines of {}:\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

/// `VmHWM` (peak resident set) of a live process, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}
