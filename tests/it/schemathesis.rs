//! The OpenAPI document against the live server (issue 13): the pinned
//! schemathesis (tests/schemathesis/requirements.txt) runs its coverage,
//! fuzzing and stateful phases with every check against `idemq dev` (API and
//! workers, demo rows seeded) on a fresh database, and must find nothing:
//! no failure, no error, no warning (rate limits, missing test data, …).
//! Configuration: tests/schemathesis/schemathesis.toml.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// The run is bounded by `max-examples` in the configuration; this is only
/// the point past which a hung run fails (2 busy cores, other tests too).
const RUN_DEADLINE: Duration = Duration::from_secs(900);

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis")
}

/// `schemathesis==X.Y.Z` from requirements.txt.
fn pinned_version() -> String {
    let requirements = std::fs::read_to_string(config_dir().join("requirements.txt")).unwrap();
    requirements
        .lines()
        .find_map(|l| l.trim().strip_prefix("schemathesis=="))
        .expect("requirements.txt pins schemathesis==X.Y.Z")
        .trim()
        .to_owned()
}

fn python() -> String {
    std::env::var("IDEMQ_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails (never skips) when the pinned schemathesis is not installed.
fn require_schemathesis() {
    let version = pinned_version();
    let install = format!(
        "install it with: {} -m pip install -r tests/schemathesis/requirements.txt",
        python()
    );
    let out = Command::new(python())
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {install}", python()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim_end().ends_with(&format!("version {version}")),
        "schemathesis {version} is required (found: {} {}); {install}",
        text.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `idemq dev` on an existing database: it migrates, seeds the demo rows
/// and runs the API and the workers in one process.
struct Dev {
    _proc: Proc,
    url: String,
    token: String,
}

fn spawn_dev(db_url: &str) -> Dev {
    let mut dev = idemq(["dev"])
        .env("DATABASE_URL", db_url)
        .env("IDEMQ_API_ADDR", "127.0.0.1:0")
        .env("IDEMQ_OPS_ADDR", "127.0.0.1:0")
        // Rate limits are per principal, and the fuzzer is one principal
        // sending thousands of requests: limited, it would mostly see 429s.
        .env("IDEMQ_RATE_LIMIT_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .spawn();
    let (url, token) = dev.wait_for_blocking("up", Duration::from_secs(60), |p| {
        let token = p
            .stdout()
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("token ").map(|t| t.trim().to_owned()));
        Some((p.stdout_after("api listening on ")?, token?))
    });
    Dev {
        _proc: dev,
        url,
        token,
    }
}

/// A few operations of the fuzzer's principal, so that `GET
/// /operations/{id}` is exercised with ids that exist.
async fn create_operations(dev: &Dev) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 1..=3 {
        let r = Call::to(
            &client,
            &dev.url,
            Method::PATCH,
            &format!("/invoices/inv-{n}/mark-paid"),
        )
        .token(&dev.token)
        .key(&format!("schemathesis-seed-{n}"))
        .json(&serde_json::json!({ "paymentMethod": "card" }))
        .send()
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let op: Value = r.json();
        ids.push(op["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn schemathesis_finds_no_failure_and_no_warning_against_the_live_server() {
    require_schemathesis();
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("idemq-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = spawn_dev(&db.url);

    // The run directory: the committed configuration and hooks, and the
    // operation ids of this run as a dictionary file (operations.dict).
    for file in ["schemathesis.toml", "hooks.py"] {
        std::fs::copy(config_dir().join(file), dir.join(file)).unwrap();
    }
    let operations: String = create_operations(&dev)
        .await
        .iter()
        .map(|id| format!("\"{id}\"\n"))
        .collect();
    std::fs::write(dir.join("operations.dict"), operations).unwrap();

    let mut command = tokio::process::Command::new(python());
    command
        .args([
            "-m",
            "schemathesis.cli",
            "--config-file",
            "schemathesis.toml",
            "run",
        ])
        .arg(format!("{}/openapi.json", dev.url))
        .args(["--checks", "all", "--no-color"])
        .current_dir(&dir)
        .env("IDEMQ_URL", &dev.url)
        .env("IDEMQ_TOKEN", &dev.token)
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis still running after {RUN_DEADLINE:?}"))
        .expect("run schemathesis");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary is at the end; keep failures readable in the test output.
    let tail: String = {
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(400)..].join("\n")
    };
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{tail}",
        out.status
    );
    for sign in ["Warnings:", "WARNINGS", "Errors:", "failures"] {
        assert!(!output.contains(sign), "schemathesis reported {sign:?}:\n{tail}");
    }
    for phase in ["✅ Coverage", "✅ Fuzzing", "✅ Stateful"] {
        assert!(
            output.contains(phase),
            "phase not run and passed: {phase}\n{tail}"
        );
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether each sample matches `pattern` as a JSON Schema pattern (ECMA-262:
/// unanchored search, `$` only at the very end), asked of Python's `re`, the
/// engine schemathesis generates from.
fn python_matches(pattern: &str, samples: &[String]) -> Vec<bool> {
    let script = r#"
import json, re, sys
job = json.load(sys.stdin)
pattern = job["pattern"]
if pattern.endswith("$"):
    pattern = pattern[:-1] + r"\Z"
compiled = re.compile(pattern)
json.dump([compiled.search(s) is not None for s in job["samples"]], sys.stdout)
"#;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let job = serde_json::json!({ "pattern": pattern, "samples": samples });
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), job.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed on {pattern}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_pattern_agrees(what: &str, pattern: &str, samples: &[String], server: impl Fn(&str) -> bool) {
    let matches = python_matches(pattern, samples);
    let disagreements: Vec<_> = samples
        .iter()
        .zip(matches)
        .filter(|(s, matched)| server(s) != *matched)
        .map(|(s, matched)| {
            format!(
                "{s:?}: document says {}",
                if matched { "valid" } else { "invalid" }
            )
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "{what}: the pattern {pattern} disagrees with the server on {} samples, e.g. {:#?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(10)]
    );
}

/// The fuzzer finds only what it happens to generate; this holds the
/// document's patterns to the server's own parsers on every character up to
/// U+30FF (and a few beyond) and on the edges of the key grammar.
#[tokio::test]
async fn the_documented_patterns_are_the_servers_rules() {
    require_schemathesis();
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/invoices/{id}/mark-paid"]["patch"];
    let param = |name: &str| {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let property = |schema: &str, name: &str| {
        doc["components"]["schemas"][schema]["properties"][name]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{schema}.{name} has no pattern"))
            .to_owned()
    };

    // Text: each character alone, doubled and between letters.
    let chars: Vec<char> = (0u32..0x3100)
        .chain([0xFEFF, 0xFFFD, 0x1F600])
        .filter_map(char::from_u32)
        .collect();
    let texts: Vec<String> = chars
        .iter()
        .flat_map(|c| [c.to_string(), format!("a{c}b"), format!("{c}{c}")])
        .chain([String::new(), " a ".into(), "\u{a0}\u{3000}".into()])
        .collect();
    let no_controls = |s: &str| idemq_core::text::Text::parse(s.to_owned()).is_ok();
    assert_pattern_agrees("path id", &param("id"), &texts, no_controls);
    assert_pattern_agrees("Approve.note", &property("Approve", "note"), &texts, no_controls);
    for (schema, field) in [
        ("MarkPaid", "paymentMethod"),
        ("Reject", "reason"),
        ("RecordReading", "contractId"),
    ] {
        assert_pattern_agrees(
            &format!("{schema}.{field}"),
            &property(schema, field),
            &texts,
            |s| no_controls(s) && idemq_api::routes::require_text(field, s, usize::MAX).is_ok(),
        );
    }

    // Keys. Leading and trailing blanks are left out: HTTP drops them
    // before the server sees the value.
    let mut keys: Vec<String> = Vec::new();
    for a in (0x20u8..=0x7e).map(char::from) {
        keys.extend([
            a.to_string(),
            format!("\"{a}\""),
            format!("\"\\{a}\""),
            format!("k{a}k"),
            format!("\"k{a}k\""),
        ]);
    }
    keys.extend(
        [
            "\"\"",
            "\"",
            "\"abc",
            "abc\"",
            "a\"b",
            "\"a\"b\"",
            "\"a\\\"b\"",
            "\"a\\\\b\"",
            "\"a\\\"",
            "é",
            "\"é\"",
        ]
        .map(String::from),
    );
    for n in [254, 255, 256] {
        keys.push("k".repeat(n));
        keys.push(format!("\"{}\"", "k".repeat(n)));
        keys.push(format!("\"{}\"", "\\\"".repeat(n)));
    }
    keys.retain(|k| !k.starts_with([' ', '\t']) && !k.ends_with([' ', '\t']));
    assert_pattern_agrees("Idempotency-Key", &param("Idempotency-Key"), &keys, |k| {
        idemq_core::key::IdempotencyKey::parse(k.as_bytes()).is_ok()
    });
}
