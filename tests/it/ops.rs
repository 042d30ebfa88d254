//! The ops listener (issue 7): auth, the board, the operations view, metrics.
use idemq_api::ops::auth::{Sessions, DEFAULT_SESSION_LIFETIME, SESSION_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

const OPS_TOKEN: &str = "ops-secret";

struct Ops {
    addr: String,
    client: reqwest::Client,
    /// The listener's session signer (a key the test knows).
    session: Sessions,
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
    spawn_ops_with(app, false).await
}

/// `https`: as `IDEMQ_OPS_HTTPS=true`.
async fn spawn_ops_with(app: &TestApp, https: bool) -> Ops {
    let session = Sessions::with_key(rand::random(), DEFAULT_SESSION_LIFETIME, https);
    let state = idemq_api::ops::OpsState {
        pool: idemq_core::db::connect(&app.db.url, 4).await.unwrap(),
        token: OPS_TOKEN.into(),
        metrics: None,
        idempotency_ttl: std::time::Duration::from_secs(3600),
        session: session.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, idemq_api::ops::router(state)).await });
    Ops {
        addr,
        // Redirects are part of what is tested: never followed.
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        session,
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
        .header("origin", &ops.addr) // as the page's form sends it
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `Set-Cookie` of the session: its value and its attributes, sorted.
fn session_set_cookie(r: &reqwest::Response) -> (String, Vec<String>) {
    let all: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    let mut parts = all[0].split(';').map(|p| p.trim().to_owned());
    let value = parts
        .next()
        .unwrap()
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .expect("the session cookie")
        .to_owned();
    let mut attributes: Vec<String> = parts.collect();
    attributes.sort();
    (value, attributes)
}

fn with_session(req: reqwest::RequestBuilder, value: &str) -> reqwest::RequestBuilder {
    req.header("cookie", format!("{SESSION_COOKIE}={value}"))
}

#[tokio::test]
async fn a_browser_login_gets_a_signed_session_cookie_that_expires() {
    let app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    let page = format!("{}/ops/operations", ops.addr);

    let login = ops
        .client
        .get(&page)
        .basic_auth("alice", Some(OPS_TOKEN))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&login, "location"), Some(page.as_str()));
    let (value, attributes) = session_set_cookie(&login);
    assert_eq!(
        attributes,
        ["HttpOnly", "Max-Age=43200", "Path=/", "SameSite=Strict"],
        "12 h, no Secure over http"
    );
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 3, "{value}");
    assert_eq!(parts[0], "v1");
    let expires: i64 = parts[1].parse().unwrap();
    assert!((expires - (now() + 43200)).abs() <= 5, "{value}");
    assert_eq!(parts[2].len(), 64);
    assert!(!value.contains(OPS_TOKEN));

    // The cookie alone opens the page, and starts no other session.
    let r = with_session(ops.client.get(&page), &value).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "set-cookie").is_none());
    let fresh = ops.session.value_expiring_at(now() + 60);
    let r = with_session(ops.client.get(&page), &fresh).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Signed by the listener's key, but expired: 401, and the browser is
    // told to drop it.
    let expired = ops.session.value_expiring_at(now() - 1);
    let r = with_session(ops.client.get(&page), &expired)
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::UNAUTHORIZED);
    assert!(header(&r, "www-authenticate").unwrap().starts_with("Basic"));
    let (cleared, attributes) = session_set_cookie(&r);
    assert_eq!(cleared, "");
    assert!(attributes.contains(&"Max-Age=0".to_owned()), "{attributes:?}");

    // Forged: a later expiry under the same MAC, a changed MAC, another
    // key's signature, the old cookie (the token's SHA-256), garbage.
    let tag = parts[2];
    let flipped = format!(
        "v1.{expires}.{}{}",
        &tag[..63],
        if tag.ends_with('0') { '1' } else { '0' }
    );
    let old_style = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(OPS_TOKEN.as_bytes()))
    };
    let other_key =
        Sessions::with_key(rand::random(), DEFAULT_SESSION_LIFETIME, false).value_expiring_at(now() + 60);
    for forged in [
        format!("v1.{}.{tag}", expires + 365 * 86400),
        flipped,
        other_key,
        old_style,
        "v1.99999999999.".into(),
        OPS_TOKEN.into(),
    ] {
        let r = with_session(ops.client.get(&page), &forged).send().await.unwrap();
        assert_problem(&r, StatusCode::UNAUTHORIZED);
        let r = with_session(ops.client.get(format!("{}/api/v1/queues", ops.addr)), &forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{forged}");
    }
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_ops_listener_is_served_over_https() {
    let app = spawn_app().await;
    let ops = spawn_ops_with(&app, true).await;
    let login = ops
        .client
        .get(format!("{}/ops/operations", ops.addr))
        .basic_auth("alice", Some(OPS_TOKEN))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let host = ops.addr.trim_start_matches("http://");
    assert_eq!(
        header(&login, "location"),
        Some(format!("https://{host}/ops/operations").as_str())
    );
    let (_, attributes) = session_set_cookie(&login);
    assert_eq!(
        attributes,
        ["HttpOnly", "Max-Age=43200", "Path=/", "SameSite=Strict", "Secure"]
    );
}

/// A page on another site can make the operator's browser post to the ops
/// listener, with the session cookie (SameSite aside) or the basic-auth
/// password the browser remembers. The listener's own origin is checked.
#[tokio::test]
async fn a_cross_site_retry_or_cancel_is_refused_and_changes_nothing() {
    let app = spawn_app().await; // no worker: the operation stays queued
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    let op: Value = app.mark_paid("1", "k").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_owned();
    let session = ops.session.value_expiring_at(now() + 600);
    let snapshot = || async {
        let pool = &app.db.pool;
        let operation: String = sqlx::query_scalar("SELECT row_to_json(o)::text FROM operations o")
            .fetch_one(pool)
            .await
            .unwrap();
        (
            operation,
            app.count("SELECT count(*) FROM audit_log").await,
            app.count("SELECT count(*) FROM apalis.jobs").await,
        )
    };
    let host = ops.addr.trim_start_matches("http://").to_owned();
    let refused = |action: &'static str| {
        let url = format!("{}/ops/api/operations/{id}/{action}", ops.addr);
        let post = || ops.client.post(&url);
        let cookie = |r: reqwest::RequestBuilder| with_session(r, &session);
        vec![
            (
                "cookie, Origin of another site",
                cookie(post()).header("origin", "http://evil.example"),
            ),
            (
                "cookie, Referer of another site",
                cookie(post()).header("referer", "http://evil.example/page"),
            ),
            ("cookie, Origin null", cookie(post()).header("origin", "null")),
            (
                "cookie, same host over another scheme",
                cookie(post()).header("origin", format!("https://{host}")),
            ),
            ("cookie, no Origin nor Referer", cookie(post())),
            (
                "remembered basic auth, Origin of another site",
                post()
                    .basic_auth("alice", Some(OPS_TOKEN))
                    .header("origin", "http://evil.example"),
            ),
            (
                "basic auth, no Origin nor Referer",
                post().basic_auth("alice", Some(OPS_TOKEN)),
            ),
            (
                "bearer, Origin of another site",
                post()
                    .bearer_auth(OPS_TOKEN)
                    .header("origin", "http://evil.example"),
            ),
        ]
    };

    let before = snapshot().await;
    for (what, req) in refused("cancel") {
        let r = req.send().await.unwrap();
        expect_problem(r, StatusCode::FORBIDDEN, "cross-site-request").await;
        assert_eq!(snapshot().await, before, "cancel: {what}");
    }
    // From the listener's own page (Origin), the cancel goes through.
    let r = with_session(
        ops.client
            .post(format!("{}/ops/api/operations/{id}/cancel", ops.addr)),
        &session,
    )
    .header("origin", &ops.addr)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.get_operation(&id).await.json::<Value>().await.unwrap()["status"],
        "failed"
    );

    // A failed operation: a cross-site retry would re-queue it.
    let before = snapshot().await;
    for (what, req) in refused("retry") {
        let r = req.send().await.unwrap();
        expect_problem(r, StatusCode::FORBIDDEN, "cross-site-request").await;
        assert_eq!(snapshot().await, before, "retry: {what}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'operation.retry'")
            .await,
        0
    );
    // From the listener's own page (Referer only), the retry goes through;
    // so does a script's bearer token without either header.
    let r = with_session(
        ops.client
            .post(format!("{}/ops/api/operations/{id}/retry", ops.addr)),
        &session,
    )
    .header("referer", format!("{}/ops/operations?status=failed", ops.addr))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.get_operation(&id).await.json::<Value>().await.unwrap()["status"],
        "queued"
    );
    let r = ops
        .post(&format!("/ops/api/operations/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let by: Vec<String> = sqlx::query_scalar(
        "SELECT details->>'by' FROM audit_log WHERE action IN ('operation.cancel', 'operation.retry') ORDER BY id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(by, ["ops-session", "ops-session", "ops-token"]);
}

#[tokio::test]
async fn logout_clears_the_session_cookie_and_only_from_the_ops_page() {
    let app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    let session = ops.session.value_expiring_at(now() + 600);
    let page = with_session(ops.client.get(format!("{}/ops/operations", ops.addr)), &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<form method=\"post\" action=\"/ops/logout\">"),
        "{page}"
    );

    let logout = format!("{}/ops/logout", ops.addr);
    let r = with_session(ops.client.post(&logout), &session)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    expect_problem(r, StatusCode::FORBIDDEN, "cross-site-request").await;

    let r = with_session(ops.client.post(&logout), &session)
        .header("origin", &ops.addr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (value, attributes) = session_set_cookie(&r);
    assert_eq!(value, "");
    assert_eq!(attributes, ["HttpOnly", "Max-Age=0", "Path=/", "SameSite=Strict"]);
    assert!(r.text().await.unwrap().contains("Signed out"));
    // Logging out needs no credentials (an expired session can log out).
    let r = ops
        .client
        .post(&logout)
        .header("origin", &ops.addr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(session_set_cookie(&r).0, "");
}

/// Headless Chromium (Debian's `chromium`; `.ci/run` installs it) opens the
/// dashboard and the operations page with credentials, as a person would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_dashboard_and_the_operations_page() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("this test needs Chromium: apt-get install chromium (.ci/run installs it)");
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
    assert!(page.contains("Sign out"), "{page}");
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
