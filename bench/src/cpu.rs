//! Where the CPU went during a measured window: the bench itself (the load
//! generator), the API, the workers, Postgres (the postmaster and all its
//! children), and everything else on the machine (other builds, say) — from
//! `/proc`, in percent of one core (the machine has `cores` × 100 %).
use std::{collections::HashMap, time::Instant};

use serde::Serialize;
use sqlx::PgPool;

pub struct CpuProbe {
    api: Option<u32>,
    workers: Vec<u32>,
    postmaster: Option<u32>,
    pool: PgPool,
}

pub struct CpuSnapshot {
    at: Instant,
    bench: u64,
    api: u64,
    workers: u64,
    postgres: Option<u64>,
    machine_busy: u64,
    machine_iowait: u64,
    /// Ticks of each live child of the postmaster (backends, WAL writer,
    /// checkpointer, autovacuum…); `postgres` adds the postmaster and its
    /// reaped children.
    backends: HashMap<u32, u64>,
}

/// Percent of one core over the window.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSplit {
    pub seconds: f64,
    pub bench: f64,
    pub api: f64,
    pub workers: f64,
    /// `None` when the server is not on this machine.
    pub postgres: Option<f64>,
    /// Busy CPU not accounted for above (other processes on the machine).
    pub other: f64,
    pub machine_busy: f64,
    pub iowait: f64,
    pub cores: usize,
    /// Postgres's share by who its backends serve (`application_name`, else
    /// the backend type: `walwriter`, `autovacuum worker`…), largest first;
    /// `exited or postmaster` for the postmaster and the processes gone
    /// before the window's end. Empty when the
    /// server is not on this machine.
    pub postgres_by_connection: Vec<(String, f64)>,
}

impl CpuProbe {
    /// `pool` is any pool on the server: a backend's parent is the postmaster.
    pub async fn new(api: Option<u32>, workers: Vec<u32>, pool: &PgPool) -> CpuProbe {
        let backend: Option<i32> = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
            .ok();
        let postmaster = backend.and_then(|pid| {
            let (comm, fields) = stat_fields(pid as u32)?;
            // Only if that pid is a postgres backend on this machine.
            (comm == "postgres")
                .then(|| fields.get(1)?.parse().ok())
                .flatten()
        });
        CpuProbe {
            api,
            workers,
            postmaster,
            pool: pool.clone(),
        }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        let (busy, iowait) = machine_ticks();
        // One pass over /proc for Postgres: its total and each backend's share.
        let backends = self.postmaster.map(children_ticks).unwrap_or_default();
        CpuSnapshot {
            at: Instant::now(),
            bench: proc_ticks(std::process::id(), false),
            api: self.api.map(|p| proc_ticks(p, false)).unwrap_or(0),
            workers: self.workers.iter().map(|p| proc_ticks(*p, false)).sum(),
            postgres: self
                .postmaster
                .map(|pm| proc_ticks(pm, true) + backends.values().sum::<u64>()),
            machine_busy: busy,
            machine_iowait: iowait,
            backends,
        }
    }

    /// Postgres's CPU over the window by `application_name` (the pools of
    /// `idemq-api`, `idemq-worker`, `idemq-worker/queue`, the listeners and
    /// notifiers), in percent of one core, largest first.
    async fn by_connection(
        &self,
        start: &CpuSnapshot,
        end: &CpuSnapshot,
        percent: impl Fn(u64) -> f64,
    ) -> Vec<(String, f64)> {
        let (Some(a), Some(b)) = (start.postgres, end.postgres) else {
            return Vec::new();
        };
        let names: HashMap<u32, String> = sqlx::query_as::<_, (i32, String)>(
            "SELECT pid, coalesce(nullif(application_name, ''), backend_type, 'other') FROM pg_stat_activity",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(pid, name)| Some((u32::try_from(pid).ok()?, name)))
        .collect();
        let mut ticks: HashMap<String, u64> = HashMap::new();
        let mut counted = 0;
        for (pid, t) in &end.backends {
            // A process that started within the window spent all its ticks in it.
            let spent = t.saturating_sub(start.backends.get(pid).copied().unwrap_or(0));
            let name = names.get(pid).cloned().unwrap_or_else(|| "other".into());
            *ticks.entry(name).or_default() += spent;
            counted += spent;
        }
        // The postmaster, and the processes that ended within the window.
        *ticks.entry("exited or postmaster".into()).or_default() +=
            b.saturating_sub(a).saturating_sub(counted);
        let mut shares = ticks
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| (name, percent(t)))
            .collect::<Vec<_>>();
        shares.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        shares
    }

    pub async fn split(&self, start: &CpuSnapshot, end: &CpuSnapshot) -> CpuSplit {
        let secs = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_second();
        let pct = |a: u64, b: u64| round1(b.saturating_sub(a) as f64 / hz / secs * 100.0);
        let bench = pct(start.bench, end.bench);
        let api = pct(start.api, end.api);
        let workers = pct(start.workers, end.workers);
        let postgres = match (start.postgres, end.postgres) {
            (Some(a), Some(b)) => Some(pct(a, b)),
            _ => None,
        };
        let machine_busy = pct(start.machine_busy, end.machine_busy);
        let accounted = bench + api + workers + postgres.unwrap_or(0.0);
        CpuSplit {
            seconds: round1(secs),
            bench,
            api,
            workers,
            postgres,
            other: round1((machine_busy - accounted).max(0.0)),
            machine_busy,
            iowait: pct(start.machine_iowait, end.machine_iowait),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            postgres_by_connection: self.by_connection(start, end, |t| pct(0, t)).await,
        }
    }
}

impl CpuSplit {
    /// One line for the human report.
    pub fn line(&self) -> String {
        let pg = self
            .postgres
            .map(|p| format!("{p:.0}"))
            .unwrap_or_else(|| "?".into());
        format!(
            "bench {:.0} | api {:.0} | workers {:.0} | postgres {pg} | other {:.0} | machine {:.0} of {} | iowait {:.0}",
            self.bench,
            self.api,
            self.workers,
            self.other,
            self.machine_busy,
            self.cores * 100,
            self.iowait
        )
    }

    /// Postgres's share by connection name, for the human report (the
    /// shares of half a percent or more).
    pub fn postgres_line(&self) -> Option<String> {
        (!self.postgres_by_connection.is_empty()).then(|| {
            self.postgres_by_connection
                .iter()
                .filter(|(_, p)| *p >= 0.5)
                .map(|(name, p)| format!("{name} {p:.0}"))
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }

    /// A first reading of what bounds the window.
    pub fn hint(&self) -> String {
        let capacity = self.cores as f64 * 100.0;
        let mut parts = vec![
            ("bench (load generator)", self.bench),
            ("api", self.api),
            ("workers", self.workers),
            ("other processes", self.other),
        ];
        if let Some(pg) = self.postgres {
            parts.push(("postgres", pg));
        }
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = parts[0];
        if self.machine_busy >= capacity * 0.85 {
            format!(
                "CPU-bound: the machine is {:.0}% busy of {capacity:.0}%; largest share {} ({:.0}%)",
                self.machine_busy, top.0, top.1
            )
        } else {
            format!(
                "not CPU-bound (machine {:.0}% of {capacity:.0}%): waiting — commits (fsync), locks or round trips; largest share {} ({:.0}%)",
                self.machine_busy, top.0, top.1
            )
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// `comm` and the fields after it (field 3, `state`, is index 0).
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields = stat[close + 1..].split_whitespace().map(str::to_owned).collect();
    Some((comm, fields))
}

/// utime + stime (+ cutime + cstime: children that have exited and were reaped).
fn proc_ticks(pid: u32, with_reaped_children: bool) -> u64 {
    let Some((_, f)) = stat_fields(pid) else { return 0 };
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let own = get(11) + get(12);
    if with_reaped_children {
        own + get(13) + get(14)
    } else {
        own
    }
}

/// Each live child of the postmaster and its ticks.
fn children_ticks(postmaster: u32) -> HashMap<u32, u64> {
    let pm = postmaster.to_string();
    let mut children = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((_, f)) = stat_fields(pid) {
                if f.get(1) == Some(&pm) {
                    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    children.insert(pid, get(11) + get(12));
                }
            }
        }
    }
    children
}

/// (busy, iowait) ticks of the whole machine from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, get(4))
}
