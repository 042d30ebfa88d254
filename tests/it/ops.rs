//! The ops listener (issue 7): auth, the board, the operations view, metrics.
use idemq_api::ops::auth::{Sessions, DEFAULT_SESSION_LIFETIME, SESSION_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::{
    browser::{self, Browser},
    helpers::*,
};

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
    spawn_ops_full(app, https, tokio_util::sync::CancellationToken::new()).await
}

/// Served until `shutdown` is cancelled (gracefully, as `idemq serve` does).
async fn spawn_ops_until(app: &TestApp, shutdown: tokio_util::sync::CancellationToken) -> Ops {
    spawn_ops_full(app, false, shutdown).await
}

async fn spawn_ops_full(app: &TestApp, https: bool, shutdown: tokio_util::sync::CancellationToken) -> Ops {
    let (addr, session) = spawn_ops_listener(app, OPS_TOKEN, https, shutdown).await;
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

/// The board's UI calls the system unhealthy when its log stream fails or
/// ends: the stream is served, stays open, and ends when the listener shuts
/// down (an open stream would hold a graceful shutdown).
#[tokio::test]
async fn the_board_log_stream_stays_open_until_shutdown() {
    let app = spawn_app().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ops = spawn_ops_until(&app, shutdown.clone()).await;
    let mut r = ops.get("/api/v1/events").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    // Open: nothing has ended it half a second later.
    let open = tokio::time::timeout(std::time::Duration::from_millis(500), r.chunk()).await;
    assert!(open.is_err(), "the stream ended: {open:?}");
    shutdown.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = r.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream outlived the shutdown");
}

/// apalis-postgres 1.0 sends "Oldest Pending Job" as 0 (1970) with nothing
/// pending, timestamps rounded through f32, and figures the UI labels "Total
/// Jobs": the overview we serve has none of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_overview_has_no_1970_no_future_and_no_unlabelled_figures() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    let op: Value = app.mark_paid("1", "overview").await.json().await.unwrap();
    app.start_worker().await;
    app.await_final(op["id"].as_str().unwrap()).await;
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Pending'")
            .await,
        0
    );

    let stats: Vec<Value> = ops
        .get("/api/v1/overview")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = stats.iter().map(|s| s["title"].as_str().unwrap()).collect();
    assert!(!titles.contains(&"OLDEST_PENDING_JOB"), "{stats:?}");
    for unlabelled in ["KILL_RATE", "KILLED_JOBS_TODAY"] {
        assert!(!titles.contains(&unlabelled), "{stats:?}");
    }
    let mut unique = titles.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), titles.len(), "{titles:?}");
    let total = stats.iter().find(|s| s["title"] == "TOTAL_JOBS").unwrap();
    assert_eq!(total["value"], "1");
    let recent = stats.iter().find(|s| s["title"] == "MOST_RECENT_JOB").unwrap();
    assert_eq!(recent["stat_type"], "Timestamp");
    let recent: i64 = recent["value"].as_str().unwrap().parse().unwrap();
    let run_at = app
        .count("SELECT floor(extract(epoch FROM max(run_at)))::int8 FROM apalis.jobs")
        .await;
    assert_eq!(recent, run_at);
    assert!(recent <= now());

    // A pending job: its tile appears, with its exact time.
    app.stop_workers().await;
    app.insert_invoice("2").await;
    app.mark_paid("2", "overview-2").await;
    let stats: Vec<Value> = ops
        .get("/api/v1/overview")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let oldest = stats
        .iter()
        .find(|s| s["title"] == "OLDEST_PENDING_JOB")
        .expect("a pending job");
    let oldest: i64 = oldest["value"].as_str().unwrap().parse().unwrap();
    let pending = app
        .count("SELECT floor(extract(epoch FROM run_at))::int8 FROM apalis.jobs WHERE status = 'Pending'")
        .await;
    assert_eq!(oldest, pending);
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

/// Every payment attempt fails (a database error in the job's transaction)
/// until `heal_payments`.
async fn break_payments(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN RAISE EXCEPTION 'card processor down'; END $f$;
         CREATE TRIGGER test_fault BEFORE UPDATE ON invoices FOR EACH ROW EXECUTE FUNCTION test_fault();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

async fn heal_payments(app: &TestApp) {
    sqlx::raw_sql("DROP TRIGGER test_fault ON invoices")
        .execute(&app.db.pool)
        .await
        .unwrap();
}

/// A worker that gives up after two attempts.
async fn start_impatient_worker(app: &mut TestApp) {
    let mut config = test_worker_config();
    config.job_max_attempts = 2;
    app.start_worker_with(config).await;
}

/// An operation whose attempts ran out (stored 500 `operation-failed`).
async fn exhausted_payment(app: &TestApp, invoice: &str, key: &str) -> String {
    app.insert_invoice(invoice).await;
    let op: Value = app.mark_paid(invoice, key).await.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_owned();
    let done = app.await_final(&id).await;
    assert_eq!(done["response"]["status"], 500, "{done}");
    assert_eq!(done["response"]["body"]["type"], problem_type("operation-failed"));
    id
}

/// An operation refused by a business rule: the invoice was already paid
/// (stored 409).
async fn refused_payment(app: &TestApp, invoice: &str) -> String {
    app.insert_invoice(invoice).await;
    let first: Value = app
        .mark_paid(invoice, &format!("{invoice}-a"))
        .await
        .json()
        .await
        .unwrap();
    app.await_final(first["id"].as_str().unwrap()).await;
    let second: Value = app
        .mark_paid(invoice, &format!("{invoice}-b"))
        .await
        .json()
        .await
        .unwrap();
    let id = second["id"].as_str().unwrap().to_owned();
    let done = app.await_final(&id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["response"]["status"], 409, "{done}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_an_exhausted_operation_runs_it_again_under_the_same_key() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    break_payments(&app).await;
    start_impatient_worker(&mut app).await;
    let id = exhausted_payment(&app, "1", "k").await;

    // Its page tells the story and offers the retry.
    let page = ops.get(&format!("/ops/operations/{id}")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    for expected in [
        "id=\"retry\"",
        "operation-failed",
        "<code>k</code>",
        "&quot;body&quot;",
        "apalis row",
    ] {
        assert!(page.contains(expected), "{expected} missing:\n{page}");
    }
    // Every attempt is on record with its worker and its error, written by
    // the job path when it happened: all failed, the last one exhausted.
    type AttemptRow = (i32, Option<String>, Option<String>, Option<String>, bool);
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt, worker, outcome, error, ended_at IS NOT NULL FROM operation_attempts
         WHERE operation_id = $1 ORDER BY id",
    )
    .bind(op_uuid(&id))
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(attempts.len() >= 2, "{attempts:?}");
    for (i, (n, worker, outcome, error, ended)) in attempts.iter().enumerate() {
        assert_eq!(*n, i as i32 + 1, "{attempts:?}");
        assert!(worker.as_deref().is_some_and(|w| !w.is_empty()), "{attempts:?}");
        assert!(ended, "{attempts:?}");
        if i + 1 < attempts.len() || outcome.as_deref() == Some("error") {
            assert_eq!(outcome.as_deref(), Some("error"), "{attempts:?}");
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains("card processor down")),
                "{attempts:?}"
            );
        } else {
            assert_eq!(outcome.as_deref(), Some("exhausted"), "{attempts:?}");
        }
    }
    assert!(page.contains("id=\"attempts\""), "{page}");
    assert!(page.contains("card processor down"), "{page}");
    let listed = ops
        .get("/ops/operations?status=failed")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains(&format!("/ops/api/operations/{id}/retry")),
        "{listed}"
    );

    heal_payments(&app).await; // the cause is fixed
                               // A person's retry: basic auth from the listener's own page.
    let r = ops
        .client
        .post(format!("{}/ops/api/operations/{id}/retry", ops.addr))
        .basic_auth("alice", Some(OPS_TOKEN))
        .header("origin", &ops.addr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let done = app.await_final(&id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["idempotencyKey"], "k");
    let replay = app.mark_paid("1", "k").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_log WHERE action = 'operation.retry' AND details->>'by' = 'alice'"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'invoice.mark_paid'")
            .await,
        1
    );
    let page = ops
        .get(&format!("/ops/operations/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("operation.retry") && page.contains("alice"),
        "{page}"
    );
    // A succeeded operation is not retried.
    let r = ops
        .post(&format!("/ops/api/operations/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_refusal_offers_no_retry_and_its_retry_is_refused() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    let id = refused_payment(&app, "paid-twice").await;
    let before = app.stored_response(&id).await;

    let page = ops
        .get(&format!("/ops/operations/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"retry\""), "{page}");
    assert!(page.contains("refused by a business rule"), "{page}");
    let listed = ops
        .get("/ops/operations?status=failed")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&id) && !listed.contains("/retry?"), "{listed}");

    let r = ops
        .post(&format!("/ops/api/operations/{id}/retry"))
        .send()
        .await
        .unwrap();
    expect_problem(r, StatusCode::CONFLICT, "operation-not-retryable").await;
    assert_eq!(app.stored_response(&id).await, before);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'operation.retry'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_shows_the_count_then_retries_only_what_can_help() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    let refused = refused_payment(&app, "paid-twice").await;
    app.stop_workers().await;
    break_payments(&app).await;
    start_impatient_worker(&mut app).await;
    let a = exhausted_payment(&app, "a", "ka").await;
    let b = exhausted_payment(&app, "b", "kb").await;
    heal_payments(&app).await;

    let confirm = ops
        .get("/ops/operations/retry-all?kind=invoice.mark_paid&principal=&olderThan=")
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::OK);
    let confirm = confirm.text().await.unwrap();
    assert!(confirm.contains("<strong>2</strong>"), "{confirm}");
    assert!(confirm.contains("name=\"expect\" value=\"2\""), "{confirm}");
    let r = ops
        .get("/ops/operations/retry-all?olderThan=soon")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = ops
        .post("/ops/api/operations/retry-all")
        .form(&[
            ("kind", "invoice.mark_paid"),
            ("principal", ""),
            ("olderThan", ""),
            ("expect", "2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["retried"], 2);
    for id in [&a, &b] {
        assert_eq!(app.await_final(id).await["status"], "succeeded");
    }
    assert_eq!(app.await_final(&refused).await["response"]["status"], 409);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'operation.retry' AND details->>'by' = 'ops-token'")
            .await,
        2
    );
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
    // A cancelled operation can be retried: it runs, under its key.
    let r = ops
        .post(&format!("/ops/api/operations/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.await_final(id).await["status"], "succeeded");
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
/// dashboard and the operations pages as a person would, and leaves
/// screenshots of each in `target/screenshots/` (browser::screenshots_dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_dashboard_and_the_operations_page() {
    let chromium = browser::chromium();
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.insert_invoice("1").await;
    let op: Value = app.mark_paid("1", "browser").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap();
    // A worker registers itself on every queue, so the board knows them all.
    app.start_worker().await;
    app.await_final(id).await;
    let host = ops.addr.trim_start_matches("http://").to_owned();

    let mut b = Browser::launch(&format!("Bearer {OPS_TOKEN}")).await;
    // The operations page, server-rendered: our operation is listed.
    b.open(&format!("{}/ops/operations", ops.addr)).await;
    b.wait_for_text(&[id, "invoice.mark_paid", "Sign out"]).await;
    b.screenshot("operations").await;
    b.open(&format!("{}/ops/operations/{id}", ops.addr)).await;
    b.wait_for_text(&["browser", "Stored response", "invoice.mark_paid", "Audit"])
        .await;
    b.screenshot("operation").await;
    // The dashboard: the board's (WebAssembly) application runs behind our
    // auth, calls its API and renders our queues; its footer, fed by the log
    // stream we serve, calls the system healthy.
    b.open(&format!("{}/", ops.addr)).await;
    let board = b
        .wait_for_text(&[
            "payments",
            "approvals",
            "meter_readings",
            "All systems are operational",
        ])
        .await;
    assert!(
        !board.contains("Unhealthy") && !board.contains("System unhealthy"),
        "{board}"
    );
    assert!(!board.contains("1970"), "{board}");
    b.screenshot("board").await;
    drop(b);

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

/// In Chromium: an exhausted operation's page shows its failure and its
/// retry button finishes it; a refused one offers no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_exhausted_operation_is_retried_and_a_refused_one_is_not() {
    let mut app = spawn_app().await;
    let ops = spawn_ops(&app).await;
    app.start_worker().await;
    let refused = refused_payment(&app, "paid-twice").await;
    app.stop_workers().await;
    break_payments(&app).await;
    start_impatient_worker(&mut app).await;
    let id = exhausted_payment(&app, "1", "k").await;

    let mut b = Browser::launch(&format!("Bearer {OPS_TOKEN}")).await;
    b.open(&format!("{}/ops/operations/{refused}", ops.addr)).await;
    let page = b.wait_for_text(&["refused by a business rule", "409"]).await;
    assert!(!page.contains("\nretry"), "{page}");

    b.open(&format!("{}/ops/operations/{id}", ops.addr)).await;
    // Its attempts and their errors, as the job path recorded them.
    b.wait_for_text(&[
        "operation-failed",
        "Gave up after 2 attempts",
        "retry",
        "Attempts",
        "card processor down",
    ])
    .await;
    b.screenshot("operation-exhausted").await;
    heal_payments(&app).await;
    b.click("#retry").await;
    // The form posts and lands back on the list.
    b.wait_for_text(&["idemq operations"]).await;
    assert_eq!(app.await_final(&id).await["status"], "succeeded");
}

/// Keyset paging through the list (newest first), with the filters kept on
/// the page's "Older" link; the key filter; and the live refresh on page one.
#[tokio::test]
async fn the_list_pages_by_keyset_and_filters_by_key() {
    let app = spawn_app().await; // no worker: the operations stay queued
    let ops = spawn_ops(&app).await;
    let mut made = Vec::new();
    for i in 0..5 {
        app.insert_invoice(&format!("p{i}")).await;
        let op: Value = app
            .mark_paid(&format!("p{i}"), &format!("page-{i}"))
            .await
            .json()
            .await
            .unwrap();
        made.push(op["id"].as_str().unwrap().to_owned());
    }
    made.reverse(); // newest first
    let mut seen = Vec::new();
    let mut before = String::new();
    for expected in [2, 2, 1] {
        let page: Value = ops
            .get(&format!(
                "/ops/api/operations?limit=2&status=queued&before={before}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<String> = page["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), expected, "{page}");
        before = ids.last().unwrap().clone();
        seen.extend(ids);
    }
    assert_eq!(seen, made);

    let html = ops
        .get("/ops/operations?limit=2&status=queued")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let next = format!(
        "href=\"/ops/operations?before={}&amp;status=queued&amp;limit=2\"",
        made[1]
    );
    assert!(html.contains(&next), "{next} missing:\n{html}");
    assert!(html.contains("setInterval"), "page one refreshes itself");
    let older = ops
        .get(&format!(
            "/ops/operations?limit=2&status=queued&before={}",
            made[1]
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(older.contains(&made[2]) && !older.contains(&made[0]), "{older}");
    assert!(!older.contains("setInterval"), "an older page holds still");

    let by_key: Value = ops
        .get("/ops/api/operations?key=page-3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_key["operations"].as_array().unwrap().len(), 1);
    assert_eq!(by_key["operations"][0]["idempotencyKey"], "page-3");
    let r = ops
        .get("/ops/api/operations?before=nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
