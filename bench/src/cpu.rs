//! Where the CPU went during a measured window: the bench itself (the load
//! generator), the API, the workers, Postgres (the postmaster and all its
//! children), and everything else on the machine (other builds, say) — from
//! `/proc`, in percent of one core (the machine has `cores` × 100 %).
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

pub struct CpuProbe {
    api: Option<u32>,
    workers: Vec<u32>,
    postmaster: Option<u32>,
}

pub struct CpuSnapshot {
    at: Instant,
    bench: u64,
    api: u64,
    workers: u64,
    postgres: Option<u64>,
    machine_busy: u64,
    machine_iowait: u64,
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
        }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        let (busy, iowait) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            bench: proc_ticks(std::process::id(), false),
            api: self.api.map(|p| proc_ticks(p, false)).unwrap_or(0),
            workers: self.workers.iter().map(|p| proc_ticks(*p, false)).sum(),
            postgres: self.postmaster.map(postgres_ticks),
            machine_busy: busy,
            machine_iowait: iowait,
        }
    }

    pub fn split(&self, start: &CpuSnapshot, end: &CpuSnapshot) -> CpuSplit {
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

/// The postmaster, its reaped children, and every live child (backends,
/// WAL writer, checkpointer, autovacuum…).
fn postgres_ticks(postmaster: u32) -> u64 {
    let mut total = proc_ticks(postmaster, true);
    let pm = postmaster.to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((_, f)) = stat_fields(pid) {
                if f.get(1) == Some(&pm) {
                    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    total += get(11) + get(12);
                }
            }
        }
    }
    total
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
