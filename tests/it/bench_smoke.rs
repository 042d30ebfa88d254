//! `idemq bench` at tiny sizes, as a user runs it (the real binary, `--json`),
//! against the test server: every scenario runs, reports its figures, and
//! finds the results correct. Figures are not judged here (the test cluster
//! runs with fsync off and shares the machine with the other tests).
use serde_json::Value;

use crate::helpers::{fresh_db, idemq};

/// Runs `idemq bench ARGS --json` on the test server; the parsed document.
async fn bench(args: &[&str]) -> Value {
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("idemq-bench-smoke-{}", uuid::Uuid::new_v4().simple()));
    let dir_arg = dir.display().to_string();
    let all = ["bench"]
        .iter()
        .chain(args)
        // The figures are not judged here: no need to wait for every
        // backend's statistics (`--stats-settle`, 11 s by default).
        .chain(&["--json", "--dir", &dir_arg, "--stats-settle", "1"])
        .copied()
        .collect::<Vec<&str>>();
    let out = idemq(all)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "idemq bench {args:?} failed: {}\n{stderr}",
        out.status
    );
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(doc["correct"], true, "{doc:#}");
    assert!(doc["environment"]["cores"].as_u64().unwrap() >= 1, "{doc:#}");
    assert!(doc["environment"]["fsync"].is_string(), "{doc:#}");
    doc
}

/// The one scenario of a document, with the fields every report has.
fn scenario<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["scenarios"][0];
    assert_eq!(s["scenario"], name, "{doc:#}");
    assert_eq!(s["correct"], true, "{s:#}");
    assert!(s["error"].is_null(), "{s:#}");
    let checks = s["checks"].as_array().expect("checks");
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["ok"] == true),
        "{s:#}"
    );
    assert!(s["headline"].as_str().is_some_and(|h| !h.is_empty()), "{s:#}");
    assert!(s["cpu_percent_of_core"]["machine_busy"].is_number(), "{s:#}");
    s
}

/// Every process of the fleet is in the RSS list with a real figure.
fn assert_rss(s: &Value, roles: &[&str]) {
    let rss = s["rss_mib"].as_array().expect("rss_mib");
    for role in roles {
        let p = rss
            .iter()
            .find(|p| p["role"] == *role)
            .unwrap_or_else(|| panic!("no RSS for {role}: {s:#}"));
        assert!(p["peak_rss_mib"].as_f64().unwrap() > 1.0, "{s:#}");
    }
}

fn positive(s: &Value, key: &str) -> f64 {
    let v = s["results"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("results.{key}: {s:#}"));
    assert!(v > 0.0, "results.{key} = {v}: {s:#}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_and_enqueue() {
    let doc = bench(&[
        "payments",
        "--invoices",
        "50",
        "--requests",
        "60",
        "--clients",
        "4",
        "--history",
        "500",
    ])
    .await;
    let s = scenario(&doc, "payments");
    // The fleet started on a table with a past, and the planner knew it;
    // the checks above counted the scenario's own operations only.
    assert_eq!(s["params"]["history"], 500, "{s:#}");
    assert!(
        s["params"]["history_planner_rows"].as_i64().unwrap() >= 500,
        "{s:#}"
    );
    positive(s, "operations_per_s");
    positive(s, "requests_per_s");
    // Postgres's CPU by the connections' names: the API's records and the
    // workers' job transactions had backends of their own.
    let by_connection = s["cpu_percent_of_core"]["postgres_by_connection"]
        .as_array()
        .expect("postgres_by_connection");
    for name in ["idemq-api", "idemq-worker"] {
        assert!(
            by_connection
                .iter()
                .any(|e| e[0] == name && e[1].as_f64().unwrap() > 0.0),
            "no Postgres CPU for {name}: {s:#}"
        );
    }
    assert!(
        s["results"]["request_latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{s:#}"
    );
    assert_rss(s, &["api", "worker-1", "worker-2"]);
    assert!(s["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["what"] == "operations/s"));

    let doc = bench(&[
        "enqueue",
        "--seconds",
        "1",
        "--clients",
        "2",
        "--no-notify-ceiling",
    ])
    .await;
    let s = scenario(&doc, "enqueue");
    positive(s, "requests_per_s");
    positive(s, "ceiling_commits_per_s");
    positive(s, "ratio_to_ceiling");
    assert!(s["results"]["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{s:#}");
    assert_rss(s, &["api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_latency_replay_limited_cleanup() {
    let s = bench(&["drain", "--operations", "100", "--workers", "1"]).await;
    let s = scenario(&s, "drain");
    positive(s, "jobs_per_s");
    assert_rss(s, &["worker-1"]);

    let doc = bench(&[
        "latency",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--workers",
        "1",
        "--history",
        "300",
    ])
    .await;
    let s = scenario(&doc, "latency");
    assert!(
        s["params"]["history_planner_rows"].as_i64().unwrap() >= 300,
        "{s:#}"
    );
    assert!(
        s["results"]["send_to_final_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{s:#}"
    );
    // The warm-up second (20 requests) is reported apart from the measured
    // one, and the slowest measured requests are traced through the tables.
    assert_eq!(s["results"]["warmup_send_to_final_ms"]["count"], 20, "{s:#}");
    assert_eq!(s["results"]["send_to_final_ms"]["count"], 20, "{s:#}");
    let slowest = &s["results"]["slowest_stages_ms"];
    assert!(slowest["requests"].as_i64().unwrap() >= 1, "{s:#}");
    assert!(slowest["to_answer_p50"].as_f64().unwrap() > 0.0, "{s:#}");

    let doc = bench(&["replay", "--operations", "20", "--clients", "2", "--seconds", "1"]).await;
    let s = scenario(&doc, "replay");
    positive(s, "requests_per_s");

    let doc = bench(&["limited", "--clients", "2", "--seconds", "1"]).await;
    let s = scenario(&doc, "limited");
    positive(s, "rate_limited_per_s");
    positive(s, "healthz_per_s");
    positive(s, "ratio_to_healthz");

    let doc = bench(&[
        "cleanup",
        "--rows",
        "500",
        "--clients",
        "2",
        "--baseline-seconds",
        "1",
    ])
    .await;
    let s = scenario(&doc, "cleanup");
    // The scenario really ran: `idemq cleanup` deleted what it inserted
    // while the load went on.
    assert!(s["results"]["cleanup_seconds"].is_number(), "{s:#}");
    let deleted = s["results"]["deleted"].as_str().unwrap_or_default();
    for part in ["operations 500", "apalis.jobs 500", "total 1000"] {
        assert!(deleted.split(" | ").any(|p| p == part), "no `{part}`: {s:#}");
    }
    positive(s, "deleted_rows_per_s");
    positive(s, "load_before_per_s");
    let checks: Vec<&str> = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for name in [
        "the cleanup deleted the inserted rows, no more",
        "every expired operation deleted",
        "every finished job past the retention deleted",
        "the load's requests all accepted and kept",
    ] {
        assert!(checks.contains(&name), "no check `{name}`: {s:#}");
    }
}

/// `bench chaos` at tiny sizes: kills and a Postgres restart (on the
/// scenario's own cluster) really happen, and nothing is lost, paid twice
/// or answered 5xx but while Postgres was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let doc = bench(&[
        "chaos",
        "--payments",
        "200",
        "--kill-every-ms",
        "1000",
        "--down-ms",
        "1500",
        "--lease",
        "2s",
    ])
    .await;
    let s = scenario(&doc, "chaos");
    let count = |key: &str| {
        s["results"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("results.{key}: {s:#}"))
    };
    assert_eq!(count("postgres_restarts"), 1, "{s:#}");
    assert!(count("sigkills") >= 1, "{s:#}");
    assert_eq!(count("operations_lost"), 0, "{s:#}");
    assert_eq!(count("invoices_paid_twice"), 0, "{s:#}");
    assert_eq!(count("answers_5xx_other"), 0, "{s:#}");
    assert_eq!(count("answers_5xx"), count("answers_503_while_down"), "{s:#}");
    positive(s, "postgres_down_for_s");
    assert!(s["results"]["postgres_back_to_last_final_s"].is_number(), "{s:#}");
    assert_rss(s, &["api", "worker-1", "worker-2", "worker-3", "worker-4"]);
}

/// `bench scale` at tiny sizes: every shape asked for runs on its own
/// database, pays every invoice once, and reports its cost per operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale() {
    let doc = bench(&[
        "scale",
        "--invoices",
        "30",
        "--clients",
        "4",
        "--apis",
        "1,2",
        "--workers",
        "1,2",
    ])
    .await;
    let s = scenario(&doc, "scale");
    for shape in ["1a1w", "1a2w", "2a1w", "2a2w"] {
        positive(s, &format!("ops_per_s_{shape}"));
        positive(s, &format!("commits_per_op_{shape}"));
        positive(s, &format!("wal_kib_per_op_{shape}"));
        // The test server runs on this machine: its CPU is measured.
        assert!(
            s["results"][format!("pg_cpu_ms_per_op_{shape}")].is_number(),
            "{s:#}"
        );
    }
    let checks = s["checks"].as_array().unwrap();
    assert!(
        checks.iter().filter(|c| c["name"] == "invoices paid").count() == 4,
        "{s:#}"
    );
}
