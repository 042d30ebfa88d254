//! A scenario's report: parameters, figures, targets, peak RSS, CPU split,
//! correctness checks, notes; rendered as a table or as JSON.
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::{cpu::CpuSplit, fleet::ProcRss, stats::LatencySummary};

/// Per process, under load (issue 8).
pub const RSS_TARGET_MIB: f64 = 64.0;

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub wanted: String,
    pub actual: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One line of pg_stat_statements.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Statement {
    pub calls: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub rows: i64,
    pub query: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub params: Vec<(String, Value)>,
    /// key, JSON value, human text.
    pub results: Vec<(String, Value, String)>,
    pub headline: String,
    pub targets: Vec<Target>,
    pub rss: Vec<ProcRss>,
    pub cpu: Option<CpuSplit>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub profile: Vec<Statement>,
    pub error: Option<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            ..Default::default()
        }
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.push((key.to_owned(), value.into()));
    }

    /// A number, rounded to one decimal.
    pub fn figure(&mut self, key: &str, value: f64, unit: &str) {
        let v = (value * 10.0).round() / 10.0;
        self.results
            .push((key.to_owned(), json!(v), format!("{v:.1} {unit}")));
    }

    /// A number, rounded to two decimals.
    pub fn figure2(&mut self, key: &str, value: f64, unit: &str) {
        let v = (value * 100.0).round() / 100.0;
        self.results
            .push((key.to_owned(), json!(v), format!("{v:.2} {unit}")));
    }

    /// A duration in seconds, to the millisecond: a figure that others
    /// divide by (the peer harness's jobs/s is requests ÷ `seconds`).
    pub fn seconds(&mut self, key: &str, value: f64) {
        let v = (value * 1000.0).round() / 1000.0;
        self.results.push((key.to_owned(), json!(v), format!("{v:.3} s")));
    }

    pub fn ratio(&mut self, key: &str, value: f64) {
        let v = (value * 1000.0).round() / 1000.0;
        self.results.push((key.to_owned(), json!(v), format!("{v:.3}")));
    }

    pub fn count(&mut self, key: &str, value: u64) {
        self.results
            .push((key.to_owned(), json!(value), value.to_string()));
    }

    pub fn text(&mut self, key: &str, value: impl Into<String>) {
        let v: String = value.into();
        self.results.push((key.to_owned(), json!(v), v));
    }

    pub fn latency(&mut self, key: &str, l: &LatencySummary) {
        self.results.push((
            key.to_owned(),
            serde_json::to_value(l).unwrap_or_default(),
            l.line(),
        ));
    }

    pub fn target(&mut self, what: &str, wanted: &str, actual: String, met: bool) {
        self.targets.push(Target {
            what: what.into(),
            wanted: wanted.into(),
            actual,
            met,
        });
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Records the children's peak RSS and its target.
    pub fn set_rss(&mut self, rss: Vec<ProcRss>) {
        if let Some(max) = rss.iter().map(|p| p.peak_rss_mib).reduce(f64::max) {
            self.target(
                "peak RSS per process",
                &format!("≤ {RSS_TARGET_MIB} MiB"),
                format!("{max:.1} MiB"),
                max <= RSS_TARGET_MIB,
            );
        }
        self.rss = rss;
    }

    /// Completed and every check passed.
    pub fn correct(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn to_json(&self) -> Value {
        let obj = |pairs: &[(String, Value)]| Value::Object(pairs.iter().cloned().collect::<Map<_, _>>());
        let results: Vec<(String, Value)> = self
            .results
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        json!({
            "scenario": self.scenario,
            "params": obj(&self.params),
            "headline": self.headline,
            "results": obj(&results),
            "targets": self.targets,
            "rss_mib": self.rss,
            "max_rss_mib": self.rss.iter().map(|p| p.peak_rss_mib).reduce(f64::max),
            "cpu_percent_of_core": self.cpu,
            "bottleneck_hint": self.cpu.as_ref().map(CpuSplit::hint),
            "correct": self.correct(),
            "checks": self.checks,
            "notes": self.notes,
            "profile": self.profile,
            "error": self.error,
        })
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        out.push_str(&format!("\n== {}  {}\n", self.scenario, params.join(" ")));
        let row = |out: &mut String, k: &str, v: &str| out.push_str(&format!("  {k:<28} {v}\n"));
        if let Some(e) = &self.error {
            row(&mut out, "ERROR", e);
        }
        for (k, _, text) in &self.results {
            row(&mut out, k, text);
        }
        if !self.rss.is_empty() {
            let rss: Vec<String> = self
                .rss
                .iter()
                .map(|p| format!("{} {:.1}", p.role, p.peak_rss_mib))
                .collect();
            row(&mut out, "peak RSS (MiB)", &rss.join(" | "));
        }
        if let Some(cpu) = &self.cpu {
            row(
                &mut out,
                &format!("CPU % of a core ({:.1} s)", cpu.seconds),
                &cpu.line(),
            );
            if let Some(by) = cpu.postgres_line() {
                row(&mut out, "postgres % by connection", &by);
            }
            row(&mut out, "bottleneck hint", &cpu.hint());
        }
        for t in &self.targets {
            let met = if t.met { "met" } else { "MISSED" };
            row(
                &mut out,
                "target",
                &format!("{} {}: {} — {met}", t.what, t.wanted, t.actual),
            );
        }
        for c in &self.checks {
            let ok = if c.ok { "ok" } else { "FAILED" };
            row(&mut out, "check", &format!("{ok:<6} {}: {}", c.name, c.detail));
        }
        for n in &self.notes {
            row(&mut out, "note", n);
        }
        if !self.profile.is_empty() {
            out.push_str("  profile (pg_stat_statements, this database, top by total time):\n");
            out.push_str(&format!(
                "    {:>8} {:>10} {:>8} {:>8}  query\n",
                "calls", "total ms", "mean ms", "rows"
            ));
            for s in &self.profile {
                out.push_str(&format!(
                    "    {:>8} {:>10.1} {:>8.3} {:>8}  {}\n",
                    s.calls, s.total_ms, s.mean_ms, s.rows, s.query
                ));
            }
        }
        let verdict = if self.correct() { "ok" } else { "FAILED" };
        row(&mut out, "correct", verdict);
        out
    }
}

pub fn json_document(environment: &Value, reports: &[Report]) -> Value {
    json!({
        "environment": environment,
        "correct": reports.iter().all(Report::correct),
        "scenarios": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
    })
}

pub fn human_document(environment: &Value, reports: &[Report]) -> String {
    let mut out = String::new();
    let e = |k: &str| environment.get(k).cloned().unwrap_or(Value::Null);
    out.push_str(&format!(
        "machine: {} cores, {} GiB; postgres: {}; fsync={} synchronous_commit={}; loadavg {}\n",
        e("cores"),
        e("memory_gib"),
        e("postgres").as_str().unwrap_or("?"),
        e("fsync").as_str().unwrap_or("?"),
        e("synchronous_commit").as_str().unwrap_or("?"),
        e("loadavg").as_str().unwrap_or("?"),
    ));
    if let Some(vars) = environment.get("idemq_env").and_then(Value::as_object) {
        if !vars.is_empty() {
            let vars: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            out.push_str(&format!("settings: {}\n", vars.join(" ")));
        }
    }
    for r in reports {
        out.push_str(&r.human());
    }
    if reports.len() > 1 {
        out.push_str("\n== summary\n");
        out.push_str(&format!(
            "  {:<10} {:<44} {:<9} {:<8} {}\n",
            "scenario", "headline", "targets", "correct", "max RSS MiB"
        ));
        for r in reports {
            let met = r.targets.iter().filter(|t| t.met).count();
            let max_rss = r
                .rss
                .iter()
                .map(|p| p.peak_rss_mib)
                .reduce(f64::max)
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "  {:<10} {:<44} {:<9} {:<8} {}\n",
                r.scenario,
                r.headline,
                format!("{met}/{}", r.targets.len()),
                if r.correct() { "ok" } else { "FAILED" },
                max_rss
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_keep_the_millisecond_that_a_rate_divides_by() {
        let mut report = Report::new("payments");
        report.seconds("seconds", 3.5374);
        report.figure("rounded", 3.5374, "s");
        assert_eq!(report.results[0].1, json!(3.537));
        assert_eq!(report.results[0].2, "3.537 s");
        assert_eq!(report.results[1].1, json!(3.5));
    }
}
