//! Metrics, logs and alert rules as an operator sees them (issue 7): the real
//! `idemq api` process, scraped and its log read.
use std::{process::Command, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const OPS_TOKEN: &str = "ops-observability";

/// `idemq api` as an operator runs it: JSON logs; four mutating requests
/// pass, the fifth is limited.
fn spawn_api(db_url: &str) -> ApiProcess {
    spawn_api_process(
        db_url,
        &[
            ("IDEMQ_OPS_TOKEN", OPS_TOKEN),
            ("IDEMQ_RATE_LIMIT_ENABLED", "true"),
            ("IDEMQ_RATE_LIMIT_SENSITIVE", "4/h"),
            ("IDEMQ_LOG_FORMAT", "json"),
        ],
    )
}

#[tokio::test]
async fn metrics_move_with_traffic_and_logs_say_idempotent_without_tokens() {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "observer")
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (id) VALUES ('1')")
        .execute(&db.pool)
        .await
        .unwrap();
    let api = spawn_api(&db.url);
    let client = reqwest::Client::new();

    let scrape = || async {
        let r = client
            .get(format!("{}/metrics", api.ops))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    };
    let before = scrape().await;
    // Every counter is there at 0 before its first event.
    for series in [
        "idemq_idempotent_replays_total",
        "idemq_idempotency_key_reused_total",
        "idemq_idempotency_key_missing_total",
        "idemq_rate_limited_total{class=\"sensitive\"}",
        "idemq_jobs_total{kind=\"invoice.mark_paid\",outcome=\"succeeded\"}",
        "idemq_cleanup_deleted_total{table=\"operations\"}",
        "idemq_reconciler_actions_total{action=\"reenqueued\"}",
    ] {
        assert_eq!(sample(&before, series), Some(0.0), "{series} in\n{before}");
    }

    let send = |key: Option<&str>, body: Value| {
        let mut r = api
            .call(reqwest::Method::PATCH, "/invoices/1/mark-paid", &token)
            .json(&body);
        if let Some(k) = key {
            r = r.key(k);
        }
        r.builder().send()
    };
    let card = serde_json::json!({ "paymentMethod": "card" });
    assert_eq!(
        send(Some("k1"), card.clone()).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let replay = send(Some("k1"), card.clone()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let reused = send(Some("k1"), serde_json::json!({ "paymentMethod": "cash" }))
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        send(None, card.clone()).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    let limited = send(Some("k2"), card.clone()).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);

    let after = scrape().await;
    assert_eq!(
        sample(&after, "idemq_rate_limited_total{class=\"sensitive\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "idemq_rate_limited_total{class=\"read\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&after, "idemq_idempotent_replays_total"), Some(1.0));
    assert_eq!(sample(&after, "idemq_idempotency_key_reused_total"), Some(1.0));
    assert_eq!(sample(&after, "idemq_idempotency_key_missing_total"), Some(1.0));
    assert_eq!(
        sample(
            &after,
            "idemq_http_requests_total{route=\"/invoices/{id}/mark-paid\",status=\"202\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "idemq_http_request_duration_seconds_count{route=\"/invoices/{id}/mark-paid\"}"
        ),
        Some(5.0)
    );

    // The queue gauges come from a timer, not the scrape: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape().await;
        // Both gauges of one refresh (a scrape may fall between the two).
        if sample(&m, "idemq_queue_jobs{queue=\"payments\",state=\"Pending\"}") == Some(1.0)
            && sample(&m, "idemq_operations{status=\"queued\"}") == Some(1.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue gauges never showed the job:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let logs = api.stop();
    assert!(logs.contains("IDEMPOTENT"), "{logs}");
    assert!(logs.contains("rate-limit"), "{logs}");
    assert!(!logs.contains(&token), "the token leaked into the log");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    assert!(!logs.contains(&hash), "the token hash leaked into the log");
    assert!(!logs.contains("paymentMethod"), "a body leaked into the log");
    // Production logs are JSON, one object a line.
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[test]
fn alert_rules_name_only_metrics_we_export() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/alerts.yml")).unwrap();
    let exported = [
        "idemq_operations",
        "idemq_rate_limited_total",
        "idemq_lock_wait_seconds_bucket",
        "idemq_idempotency_key_missing_total",
        "idemq_http_requests_total",
        "idemq_queue_paused",
    ];
    let mut alerts = 0;
    for token in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if token.starts_with("idemq_") {
            assert!(
                exported.contains(&token),
                "alerts.yml names {token}, which we do not export"
            );
        }
    }
    alerts += rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        alerts, 5,
        "the deployment guide's four alerts and the paused queue's"
    );
}

/// promtool checks the rules' syntax and expressions properly. It is
/// required, never skipped: a missing promtool fails here rather than letting
/// a broken alerts.yml pass unseen.
#[test]
fn alert_rules_pass_promtool_check() {
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/alerts.yml"))
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("promtool could not be run ({e}); install it: apt-get install prometheus"),
    };
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("5 rules found"),
        "promtool saw other rules than the five alerts: {stdout}"
    );
}

#[tokio::test]
async fn a_worker_process_exposes_its_job_metrics_and_health() {
    let app = spawn_app().await;
    app.insert_invoice("1").await;
    app.insert_invoice("2").await;
    // Work for the background duties. An expired record, for the cleanup
    // that a worker runs at its first start (catch-up of the missed tick):
    sqlx::query(
        "INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, status,
                queue, job_id, attempts, response_status, response_content_type, response_body,
                finished_at, expires_at)
         SELECT gen_random_uuid(), id, 'expired', decode(repeat('00', 32), 'hex'), 'invoice.mark_paid',
                '{}', 'succeeded', 'payments', 'gone', 1, 200, 'application/json', '{}',
                now() - interval '2 days', now() - interval '1 day'
         FROM principals LIMIT 1",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    // … and a queued operation whose job was lost, for the reconciler.
    let lost: Value = app.mark_paid("2", "lost").await.json().await.unwrap();
    sqlx::query("DELETE FROM apalis.jobs")
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE operations SET updated_at = now() - interval '1 hour' WHERE idempotency_key = 'lost'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let port = idemq_devcluster::free_port().unwrap();
    let _worker = idemq(["worker"])
        .env("DATABASE_URL", &app.db.url)
        .env("IDEMQ_WORKER_HEALTH_ADDR", format!("127.0.0.1:{port}"))
        .env("IDEMQ_QUEUE_POLL_INTERVAL", "100ms")
        .env("IDEMQ_RECONCILE_INTERVAL", "1s")
        .spawn();

    let op: Value = app.mark_paid("1", "k").await.json().await.unwrap();
    assert_eq!(
        app.await_final(op["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    // The reconciler re-drives the lost operation, and the worker runs it.
    assert_eq!(
        app.await_final(lost["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let expected = [
        (
            "idemq_jobs_total{kind=\"invoice.mark_paid\",outcome=\"succeeded\"}",
            2.0,
        ),
        (
            "idemq_job_duration_seconds_count{kind=\"invoice.mark_paid\"}",
            2.0,
        ),
        ("idemq_lock_wait_seconds_count{kind=\"invoice.mark_paid\"}", 2.0),
        ("idemq_cleanup_deleted_total{table=\"operations\"}", 1.0),
        ("idemq_reconciler_actions_total{action=\"reenqueued\"}", 1.0),
        ("idemq_reconciler_actions_total{action=\"failed\"}", 0.0),
        // Registered at 0: one process alone backs up nobody.
        (
            "idemq_queue_fetches_total{queue=\"payments\",reason=\"backup\",found=\"jobs\"}",
            0.0,
        ),
    ];
    let fetch_series = |queue: &str, reason: &str, found: &str| {
        format!("idemq_queue_fetches_total{{queue=\"{queue}\",reason=\"{reason}\",found=\"{found}\"}}")
    };
    // The duties run on their own schedule: wait for their counts. And the
    // fetches: those that took the jobs, and the poll timer's on an idle
    // queue, which find nothing (its first tick may not have come yet).
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let m = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let off: Vec<_> = expected
            .iter()
            .filter(|(series, value)| sample(&m, series) != Some(*value))
            .collect();
        let took: f64 = idemq_core::telemetry::FETCH_REASONS
            .iter()
            .filter_map(|reason| sample(&m, &fetch_series("payments", reason, "jobs")))
            .sum();
        let idle = sample(&m, &fetch_series("approvals", "timer", "none"));
        if off.is_empty() && took >= 1.0 && idle.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{off:?}; fetches that took payments jobs: {took}; empty timer fetches on approvals: {idle:?} in\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A paused queue shows in `/metrics` (`idemq_queue_paused`, the alert's
/// input) once the gauges refresh, and goes back to 0 on resume.
#[tokio::test]
async fn a_paused_queue_is_counted_in_metrics_until_resumed() {
    let db = fresh_db().await;
    let api = spawn_api(&db.url);
    let client = reqwest::Client::new();
    let paused = |want: f64| {
        let (client, ops) = (client.clone(), api.ops.clone());
        async move {
            // The gauges refresh every 10 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(25);
            loop {
                let text = client
                    .get(format!("{ops}/metrics"))
                    .bearer_auth(OPS_TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let value = sample(&text, "idemq_queue_paused{queue=\"payments\"}");
                if value == Some(want) {
                    return text;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "idemq_queue_paused{{queue=\"payments\"}} is {value:?}, not {want}:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    paused(0.0).await;
    let cli = |verb: &str| {
        let out = idemq(["queue", verb, "payments"])
            .env("DATABASE_URL", &db.url)
            .output_blocking();
        assert!(out.status.success(), "idemq queue {verb}: {out:?}");
    };
    cli("pause");
    let text = paused(1.0).await;
    assert_eq!(
        sample(&text, "idemq_queue_paused{queue=\"approvals\"}"),
        Some(0.0),
        "only the paused queue counts:\n{text}"
    );
    cli("resume");
    paused(0.0).await;
}
