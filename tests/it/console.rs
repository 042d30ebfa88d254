//! The ops console's switches (issue 17): pausing a queue holds fleet-wide,
//! across worker processes and restarts, while the API keeps accepting.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::{browser::Browser, helpers::*};

const OPS_TOKEN: &str = "ops-secret";

/// A real `idemq worker` process (poll 100 ms, lease 2 s), once ready.
async fn start_worker(db_url: &str) -> Proc {
    let mut worker = idemq(["worker"])
        .env("DATABASE_URL", db_url)
        .env("IDEMQ_QUEUE_POLL_INTERVAL", "100ms")
        .env("IDEMQ_WORKER_LEASE", "2s")
        .env("IDEMQ_CLEANUP_ENABLED", "false")
        .env("IDEMQ_LOG_FORMAT", "pretty")
        .env("NO_COLOR", "1")
        .spawn();
    worker.wait_output("worker ready", Duration::from_secs(30)).await;
    worker
}

fn idemq_cli(db_url: &str, args: &[&str]) -> (bool, String) {
    let out = idemq(args)
        .env("DATABASE_URL", db_url)
        .env("USER", "oncall")
        .output_blocking();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn spawn_ops(app: &TestApp) -> String {
    spawn_ops_listener(app, OPS_TOKEN, false, tokio_util::sync::CancellationToken::new())
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_runs_on_no_worker_of_the_fleet_until_resumed() {
    let app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    let client = reqwest::Client::new();
    // One worker process before the pause, one started while paused (as
    // after a restart or a deploy).
    let _before = start_worker(&app.db.url).await;
    app.insert_invoice("warm").await;
    let warm: Value = app.mark_paid("warm", "warm").await.json().await.unwrap();
    assert_eq!(
        app.await_final(warm["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );

    let (ok, out) = idemq_cli(&app.db.url, &["queue", "pause", "payments"]);
    assert!(ok && out.contains("payments: paused"), "{out}");
    let (ok, out) = idemq_cli(&app.db.url, &["queue", "pause", "payments"]);
    assert!(ok && out.contains("already paused"), "{out}");
    let (ok, out) = idemq_cli(&app.db.url, &["queue", "pause", "payment"]);
    assert!(!ok && out.contains("there is no queue"), "{out}");
    let _after = start_worker(&app.db.url).await;

    // The API keeps accepting and recording.
    let mut ids = Vec::new();
    for i in 0..6 {
        let invoice = format!("inv-{i}");
        app.insert_invoice(&invoice).await;
        let r = app.mark_paid(&invoice, &format!("k-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let op: Value = r.json().await.unwrap();
        ids.push(op["id"].as_str().unwrap().to_owned());
    }
    // No worker takes them. Absence cannot be awaited: both workers are
    // given many fetches' time (woken by each insert's notice, and their
    // 100 ms timer) to prove they take nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'queued'")
            .await,
        6
    );
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Pending' AND lock_by IS NULL")
            .await,
        6
    );
    let (_, status) = idemq_cli(&app.db.url, &["queue", "status"]);
    assert!(
        status.contains("payments\tpaused since") && status.contains("cli:oncall"),
        "{status}"
    );
    assert!(status.contains("approvals\trunning"), "{status}");
    let page = client
        .get(format!("{ops}/ops/operations"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"resume-payments\"") && page.contains("id=\"pause-approvals\""),
        "{page}"
    );

    // Resumed from the console: every one finishes.
    let r = client
        .post(format!("{ops}/ops/api/queues/payments/resume"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["changed"], true);
    for id in &ids {
        assert_eq!(app.await_final(id).await["status"], "succeeded");
    }
    let log: Vec<(String, String)> = sqlx::query_as("SELECT action, by FROM queue_pause_log ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        log,
        [
            ("queue.pause".to_owned(), "cli:oncall".to_owned()),
            ("queue.resume".to_owned(), "ops-token".to_owned())
        ]
    );
    let r = client
        .post(format!("{ops}/ops/api/queues/nope/pause"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::NOT_FOUND);
}

/// In Chromium, from the console: pause stops `payments` jobs while the API
/// still answers 202, and resume finishes them. Screenshots of the paused
/// console at desktop and phone width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_pause_holds_payments_and_resume_finishes_them() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    let mut b = Browser::launch(&format!("Bearer {OPS_TOKEN}")).await;
    b.open(&format!("{ops}/ops/operations")).await;
    b.wait_for_text(&["Queues", "payments"]).await;
    b.click("#pause-payments").await;
    b.wait_for_text(&["paused since"]).await;
    assert_eq!(
        app.count("SELECT count(*) FROM queue_pauses WHERE queue = 'payments'")
            .await,
        1
    );

    app.insert_invoice("1").await;
    let r = app.mark_paid("1", "paused").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let id = op["id"].as_str().unwrap();
    // Absence cannot be awaited: the worker is given many fetches' time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.get_operation(id).await.json::<Value>().await.unwrap()["status"],
        "queued"
    );

    b.open(&format!("{ops}/ops/operations")).await;
    b.wait_for_text(&[id, "paused since"]).await;
    b.screenshot("operations-paused").await;
    b.phone(390, 844).await;
    b.screenshot("operations-phone").await;
    b.click("#resume-payments").await;
    assert_eq!(app.await_final(id).await["status"], "succeeded");
}

/// The real binary feeds its own log lines to the board's stream (the
/// tracing layer is installed by `idemq api`): a replay's `IDEMPOTENT` line
/// arrives in the board's `LogEntry` shape, and no token does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_log_stream_carries_the_api_processes_own_lines() {
    let app = spawn_app().await;
    app.insert_invoice("1").await;
    let token = app.token_for("streamer").await;
    let api = api_listening(
        api_command(&app.db.url)
            .env("IDEMQ_OPS_TOKEN", OPS_TOKEN)
            .env("IDEMQ_LOG_FORMAT", "json")
            .spawn(),
    );
    let ops = api.ops.clone();
    let client = reqwest::Client::new();
    let mut events = client
        .get(format!("{ops}/api/v1/events"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    for _ in 0..2 {
        let r = api
            .call(reqwest::Method::PATCH, "/invoices/1/mark-paid", &token)
            .key("streamed")
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .response()
            .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let mut seen = String::new();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let chunk = events.chunk().await.unwrap().expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(line) = seen
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find(|l| l.contains("IDEMPOTENT"))
            {
                return line.trim().to_owned();
            }
        }
    })
    .await
    .expect("the replay's log line reached the stream");
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["level"], "INFO");
    assert!(
        entry["span"]["task_id"].as_str().unwrap().starts_with("op_"),
        "{entry}"
    );
    assert!(
        entry["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("IDEMPOTENT replay"),
        "{entry}"
    );
    assert!(
        !seen.contains(&token) && !seen.contains(OPS_TOKEN),
        "a token reached the stream"
    );
    assert!(!seen.contains("paymentMethod"), "a body reached the stream");
}
