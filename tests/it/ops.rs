//! The ops listener (issue 7): auth, the board, the operations view, metrics.
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

const OPS_TOKEN: &str = "ops-secret";

struct Ops {
    addr: String,
    client: reqwest::Client,
}

impl Ops {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.addr))
            .bearer_auth(OPS_TOKEN)
    }
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.addr))
            .bearer_auth(OPS_TOKEN)
    }
}

/// The ops router in-process on port 0, on the app's database.
async fn spawn_ops(app: &TestApp) -> Ops {
    let state = idemq_api::ops::OpsState {
        pool: idemq_core::db::connect(&app.db.url, 4).await.unwrap(),
        token: OPS_TOKEN.into(),
        metrics: None,
        idempotency_ttl: std::time::Duration::from_secs(3600),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, idemq_api::ops::router(state)).await });
    Ops {
        addr,
        client: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn every_ops_route_requires_the_ops_token() {
    let app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    for path in [
        "/",
        "/api/v1/queues",
        "/ops/operations",
        "/ops/api/operations",
        "/metrics",
    ] {
        let url = format!("{}{path}", ops.addr);
        let none = ops.client.get(&url).send().await.unwrap();
        assert_problem(&none, StatusCode::UNAUTHORIZED);
        assert!(
            header(&none, "www-authenticate").unwrap().starts_with("Basic"),
            "{path}"
        );
        let wrong = ops.client.get(&url).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        let api_token = ops.client.get(&url).bearer_auth(&app.token).send().await.unwrap();
        assert_eq!(api_token.status(), StatusCode::UNAUTHORIZED, "{path}");
        let bearer = ops.client.get(&url).bearer_auth(OPS_TOKEN).send().await.unwrap();
        assert_eq!(bearer.status(), StatusCode::OK, "{path}");
        let basic = ops
            .client
            .get(&url)
            .basic_auth("alice", Some(OPS_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn the_board_lists_our_queues_and_refuses_pushes() {
    let app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    app.mark_paid("1", "k").await;

    let queues: Value = ops
        .get("/api/v1/queues")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = queues.to_string();
    assert!(text.contains("payments"), "{text}");

    let r = ops
        .client
        .put(format!("{}/api/v1/queues/payments/tasks", ops.addr))
        .bearer_auth(OPS_TOKEN)
        .json(&serde_json::json!({ "operationId": "00000000-0000-0000-0000-000000000000" }))
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::FORBIDDEN);
    let r = ops
        .client
        .put(format!("{}/api/v1/tasks", ops.addr))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
}

#[tokio::test]
async fn the_operations_view_filters_by_status_kind_principal_and_age() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    app.insert_invoice("1").await;
    let paid: Value = app.mark_paid("1", "a").await.json().await.unwrap();
    app.await_final(paid["id"].as_str().unwrap()).await;
    let missing: Value = app.mark_paid("none", "b").await.json().await.unwrap();
    app.await_final(missing["id"].as_str().unwrap()).await;

    let list = |q: &'static str| {
        let req = ops.get(&format!("/ops/api/operations{q}"));
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("").await.len(), 2);
    assert_eq!(
        list("?status=failed").await,
        vec![missing["id"].as_str().unwrap()]
    );
    assert_eq!(
        list("?status=succeeded").await,
        vec![paid["id"].as_str().unwrap()]
    );
    assert_eq!(list("?kind=invoice.mark_paid&principal=tester").await.len(), 2);
    assert!(list("?principal=someone-else").await.is_empty());
    assert!(list("?olderThan=3600").await.is_empty());

    // apalis acknowledges the job just after the operation commits.
    let show = format!("/ops/api/operations/{}", missing["id"].as_str().unwrap());
    eventually("the job is acknowledged", || {
        let req = ops.get(&show);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap()["job"]["status"] == "Done" }
    })
    .await;
    let one: Value = ops.get(&show).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["operation"]["idempotencyKey"], "b");
    assert_eq!(one["operation"]["responseStatus"], 404);
    assert_eq!(one["operation"]["fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(one["job"]["status"], "Done");

    let page = ops.get("/ops/operations?status=failed").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(missing["id"].as_str().unwrap()));
    assert!(!html.contains(paid["id"].as_str().unwrap()));
}

#[tokio::test]
async fn retry_of_a_failed_operation_runs_it_again_under_the_same_key() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    let first: Value = app.mark_paid("late", "k").await.json().await.unwrap();
    let id = first["id"].as_str().unwrap();
    assert_eq!(app.await_final(id).await["response"]["status"], 404);
    app.insert_invoice("late").await; // the cause is fixed

    let r = ops
        .post(&format!("/ops/api/operations/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let done = app.await_final(id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["idempotencyKey"], "k");
    let replay = app.mark_paid("late", "k").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'operation.retry'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'invoice.mark_paid'")
            .await,
        1
    );
    // Only failed operations can be retried.
    let r = ops
        .post(&format!("/ops/api/operations/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::CONFLICT);
}

#[tokio::test]
async fn cancel_of_a_queued_operation_stores_409_and_its_job_changes_nothing() {
    let mut app = spawn_app().await; // no worker yet: the operation stays queued
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    let op: Value = app.mark_paid("1", "k").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap();

    let r = ops
        .client
        .post(format!("{}/ops/api/operations/{id}/cancel", ops.addr))
        .basic_auth("bob", Some(OPS_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let replay = app.mark_paid("1", "k").await;
    assert_problem(&replay, StatusCode::CONFLICT);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["type"], "https://idemq.dev/problems/operation-cancelled");
    let who: Value = sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'operation.cancel'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(who["by"], "bob");

    // The job still runs, finds the operation finished, and pays nothing.
    app.start_worker().await;
    let pool = app.db.pool.clone();
    eventually("the cancelled operation's job is done", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = '1'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "UNPAID");
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'invoice.mark_paid'")
            .await,
        0
    );
    assert_eq!(
        app.get_operation(id).await.json::<Value>().await.unwrap()["status"],
        "failed"
    );
    let _ = Method::GET;
}

/// Headless Chromium (Debian's `chromium`; `.ci/run` installs it) opens the
/// dashboard and the operations page with credentials, as a person would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_dashboard_and_the_operations_page() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("SKIPPED: no chromium on this machine (.ci/run installs it)");
        return;
    };
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    let op: Value = app.mark_paid("1", "browser").await.json().await.unwrap();
    // A worker registers itself on every queue, so the board knows them all.
    app.start_worker().await;
    app.await_final(op["id"].as_str().unwrap()).await;
    let host = ops.addr.trim_start_matches("http://").to_owned();

    let dump = |path: &'static str, wait: &'static str| {
        let url = format!("http://operator:{OPS_TOKEN}@{host}{path}");
        let chromium = chromium.to_owned();
        tokio::task::spawn_blocking(move || {
            let profile =
                std::env::temp_dir().join(format!("idemq-chromium-{}", uuid::Uuid::new_v4().simple()));
            let out = std::process::Command::new("timeout")
                .arg("60")
                .arg(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    wait,
                    "--dump-dom",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url)
                .output()
                .unwrap();
            let _ = std::fs::remove_dir_all(profile);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    // The operations page, server-rendered: our operation is listed.
    let page = dump("/ops/operations", "--timeout=5000").await.unwrap();
    assert!(page.contains(op["id"].as_str().unwrap()), "{page}");
    assert!(page.contains("invoice.mark_paid"), "{page}");
    // The dashboard: the board's (WebAssembly) application runs behind our
    // auth, calls its API and renders our queues.
    let board = dump("/", "--virtual-time-budget=10000").await.unwrap();
    assert!(board.contains("Apalis Board"), "{board}");
    for queue in ["payments", "approvals", "meter_readings"] {
        assert!(board.contains(queue), "{queue} not rendered:\n{board}");
    }
    // Without credentials the browser gets nothing of it.
    let url = format!("http://{host}/ops/operations");
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--timeout=3000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            std::env::temp_dir()
                .join(format!("idemq-chromium-{}", uuid::Uuid::new_v4().simple()))
                .display()
        ))
        .arg(url)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(op["id"].as_str().unwrap()));
}
