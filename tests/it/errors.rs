//! Truthful errors (issue 13): 400 for input the database cannot hold, 503
//! only for what passes by itself, 500 with an error id for the rest; each
//! with nothing recorded. And the one classifier on errors real Postgres
//! raises.
use idemq_core::error::{classify_db, ErrorClass};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

async fn nothing_recorded(app: &TestApp) {
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}

#[tokio::test]
async fn control_characters_in_path_ids_and_text_fields_are_400_and_nothing_is_recorded() {
    let app = spawn_app().await;
    app.insert_invoice("inv-1").await;
    let body_cases: [(Method, &str, Value); 6] = [
        (
            Method::PATCH,
            "/invoices/inv-1/mark-paid",
            json!({ "paymentMethod": "ca\u{0}rd" }),
        ),
        (
            Method::PATCH,
            "/invoices/inv-1/mark-paid",
            json!({ "paymentMethod": "card\n" }),
        ),
        (
            Method::PATCH,
            "/invoices/inv-1/mark-paid",
            json!({ "paymentMethod": "ca\u{9b}rd" }),
        ),
        (
            Method::PATCH,
            "/applications/app-1/approve",
            json!({ "note": "ok\u{7f}" }),
        ),
        (
            Method::PATCH,
            "/applications/app-1/reject",
            json!({ "reason": "no\u{1b}[2J" }),
        ),
        (
            Method::POST,
            "/meter-readings",
            json!({ "contractId": "c\u{0}", "reading": 1 }),
        ),
    ];
    for (i, (method, path, body)) in body_cases.into_iter().enumerate() {
        let r = app
            .call(method.clone(), path)
            .key(&format!("k-body-{i}"))
            .json(&body)
            .response()
            .await;
        assert_eq!(header(&r, "retry-after"), None, "{method} {path} {body}");
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("control character U+"),
            "{method} {path}: {problem}"
        );
    }
    let path_cases = [
        (Method::GET, "/invoices/%00"),
        (Method::GET, "/applications/%00"),
        (Method::GET, "/contracts/%00/meter-readings"),
        (Method::GET, "/operations/%00"),
        (Method::GET, "/invoices/inv%0A1"),
        (Method::GET, "/invoices/inv%C2%851"),
        (Method::PATCH, "/invoices/%00/mark-paid"),
        (Method::PATCH, "/applications/%00/approve"),
        (Method::PATCH, "/applications/%1F/reject"),
    ];
    for (i, (method, path)) in path_cases.into_iter().enumerate() {
        let body = match path {
            p if p.ends_with("mark-paid") => json!({ "paymentMethod": "card" }),
            p if p.ends_with("reject") => json!({ "reason": "no" }),
            _ => json!({}),
        };
        let mut request = app.request(method.clone(), path);
        if method != Method::GET {
            request = request
                .header("Idempotency-Key", format!("k-path-{i}"))
                .json(&body);
        }
        let r = request.send().await.unwrap();
        assert_eq!(header(&r, "retry-after"), None, "{method} {path}");
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, "invalid-path").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("control character U+"),
            "{method} {path}: {problem}"
        );
    }
    nothing_recorded(&app).await;
    assert_eq!(
        app.count("SELECT count(*) FROM invoices WHERE status = 'PAID'")
            .await,
        0
    );
    // The same key with a corrected body is a new request: nothing was kept.
    let r = app.mark_paid("inv-1", "k-body-0").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
}

/// A trigger on `operations` that raises `sqlstate` on every insert.
async fn fail_operation_inserts(app: &TestApp, sqlstate: &str) {
    let sql = format!(
        "CREATE OR REPLACE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN RAISE EXCEPTION 'injected fault' USING ERRCODE = '{sqlstate}'; END $f$;
         DROP TRIGGER IF EXISTS test_refuse ON operations;
         CREATE TRIGGER test_refuse BEFORE INSERT ON operations
            FOR EACH ROW EXECUTE FUNCTION test_refuse();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&app.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_database_refusal_gets_the_answer_of_its_class_and_records_nothing() {
    let app = spawn_app().await;
    app.insert_invoice("inv-1").await;

    // Permanent, not the client's input: 500 with an error id, no retry advice.
    for sqlstate in ["P0001", "42501", "23505"] {
        fail_operation_inserts(&app, sqlstate).await;
        let r = app.mark_paid("inv-1", "k-1").await;
        assert_eq!(header(&r, "retry-after"), None, "{sqlstate}");
        let problem = expect_problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal-error").await;
        let error_id = problem["errorId"].as_str().unwrap_or_else(|| panic!("{problem}"));
        assert!(uuid::Uuid::parse_str(error_id).is_ok(), "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.to_lowercase().contains("retry"), "{problem}");
        nothing_recorded(&app).await;
    }
    // Two 500s, two ids.
    let first = app.mark_paid("inv-1", "k-1").await.json::<Value>().await.unwrap();
    let second = app.mark_paid("inv-1", "k-1").await.json::<Value>().await.unwrap();
    assert_ne!(first["errorId"], second["errorId"]);

    // A value the database refuses (data exception): 400, the client's to fix.
    for sqlstate in ["22021", "22P05"] {
        fail_operation_inserts(&app, sqlstate).await;
        let r = app.mark_paid("inv-1", "k-1").await;
        assert_eq!(header(&r, "retry-after"), None, "{sqlstate}");
        expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
        nothing_recorded(&app).await;
    }

    // A refusal that passes (serialization failure, deadlock): 503 + Retry-After.
    for sqlstate in ["40001", "40P01", "57014"] {
        fail_operation_inserts(&app, sqlstate).await;
        let r = app.mark_paid("inv-1", "k-1").await;
        assert_eq!(header(&r, "retry-after"), Some("1"), "{sqlstate}");
        expect_problem(r, StatusCode::SERVICE_UNAVAILABLE, "service-unavailable").await;
        nothing_recorded(&app).await;
    }

    // The fault gone, the same key starts the operation: nothing was kept.
    sqlx::query("DROP TRIGGER test_refuse ON operations")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let r = app.mark_paid("inv-1", "k-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
}

#[tokio::test]
async fn a_closed_pool_is_503_with_retry_after_and_nothing_recorded() {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "tester")
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ('inv-1', 5000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let api_pool = idemq_core::db::connect(&db.url, 4).await.unwrap();
    let config = test_api_config();
    let state = idemq_api::AppState::new(api_pool.clone(), &config);
    let listener = tokio::net::TcpListener::bind(config.api_addr).await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(idemq_api::serve(listener, state, shutdown));
    let client = reqwest::Client::new();
    // A first read caches the token, so that authentication needs no database.
    let r = Call::to(&client, &addr, Method::GET, "/invoices/inv-1")
        .token(&token)
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Closing waits for connections held by listeners: do not wait for it.
    let closing = api_pool.clone();
    tokio::spawn(async move { closing.close().await });
    eventually("the API pool is closed", || {
        let pool = api_pool.clone();
        async move { pool.is_closed() }
    })
    .await;

    let r = Call::to(&client, &addr, Method::PATCH, "/invoices/inv-1/mark-paid")
        .token(&token)
        .key("k-1")
        .json(&json!({ "paymentMethod": "card" }))
        .response()
        .await;
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let problem = expect_problem(r, StatusCode::SERVICE_UNAVAILABLE, "service-unavailable").await;
    assert_eq!(problem.get("errorId"), None, "{problem}");
    let r = Call::to(&client, &addr, Method::GET, "/invoices/inv-1")
        .token(&token)
        .response()
        .await;
    assert_eq!(header(&r, "retry-after"), Some("1"));
    expect_problem(r, StatusCode::SERVICE_UNAVAILABLE, "service-unavailable").await;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn a_job_whose_value_the_database_refuses_fails_at_once_an_unexplained_fault_is_retried() {
    let mut app = spawn_app().await;
    app.insert_invoice("inv-data").await;
    app.insert_invoice("inv-fault").await;
    // Faults raised by the job's update of the invoice, counted across the
    // rollbacks by a sequence per invoice.
    sqlx::raw_sql(
        "CREATE SEQUENCE runs_data; CREATE SEQUENCE runs_fault;
         CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
            IF NEW.id = 'inv-data' THEN
                PERFORM nextval('runs_data');
                RAISE EXCEPTION 'injected data fault' USING ERRCODE = '22021';
            END IF;
            PERFORM nextval('runs_fault');
            IF currval('runs_fault') < 3 THEN
                RAISE EXCEPTION 'injected fault' USING ERRCODE = 'P0001';
            END IF;
            RETURN NEW;
         END $f$;
         CREATE TRIGGER test_fault BEFORE UPDATE ON invoices
            FOR EACH ROW EXECUTE FUNCTION test_fault();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    app.start_worker().await;

    let data: Value = app.mark_paid("inv-data", "k-data").await.json().await.unwrap();
    let fault: Value = app.mark_paid("inv-fault", "k-fault").await.json().await.unwrap();
    let data = app.await_final(data["id"].as_str().unwrap()).await;
    let fault = app.await_final(fault["id"].as_str().unwrap()).await;

    // The data exception: one attempt, then the stored 500.
    assert_eq!(data["status"], "failed", "{data}");
    assert_eq!(data["response"]["status"], 500, "{data}");
    assert_eq!(app.count("SELECT last_value FROM runs_data").await, 1);
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM operations WHERE idempotency_key = 'k-data'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    // The unexplained fault passed on the third attempt.
    assert_eq!(fault["status"], "succeeded", "{fault}");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM operations WHERE idempotency_key = 'k-fault'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
}

/// The classifier on errors a real Postgres raises.
#[tokio::test]
async fn the_classifier_on_real_postgres_errors() {
    let db = fresh_db().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    async fn class_of(conn: &mut PgConnection, sql: &str) -> (ErrorClass, Option<String>) {
        let e = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *conn)
            .await
            .expect_err(sql);
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        (classify_db(&e), code)
    }
    // A NUL in text, bound the way the request path binds.
    let nul = sqlx::query("SELECT $1::text")
        .bind("ca\0rd")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        nul.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("22021")
    );
    assert_eq!(classify_db(&nul), ErrorClass::InvalidInput);
    let cases = [
        (
            r#"SELECT '{"a":"\u0000"}'::jsonb"#,
            "22P05",
            ErrorClass::InvalidInput,
        ),
        ("SELECT 1/0", "22012", ErrorClass::InvalidInput),
        ("SELECT 'x'::integer", "22P02", ErrorClass::InvalidInput),
        (
            "SET statement_timeout = '10ms'; SELECT pg_sleep(1)",
            "57014",
            ErrorClass::Transient,
        ),
        (
            "RESET statement_timeout; SELECT * FROM no_such_table",
            "42P01",
            ErrorClass::Internal,
        ),
        (
            "INSERT INTO invoices (id, amount_cents) VALUES ('i', 1), ('i', 1)",
            "23505",
            ErrorClass::Internal,
        ),
        (
            "DO $$ BEGIN RAISE EXCEPTION 'x'; END $$",
            "P0001",
            ErrorClass::Internal,
        ),
    ];
    for (sql, code, class) in cases {
        assert_eq!(
            class_of(&mut conn, sql).await,
            (class, Some(code.to_owned())),
            "{sql}"
        );
    }

    // A serialization failure: two serializable transactions, each reading
    // what the other writes.
    sqlx::raw_sql("CREATE TABLE ssi (k int PRIMARY KEY, v int); INSERT INTO ssi VALUES (1, 0), (2, 0);")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    for c in [&mut conn, &mut other] {
        sqlx::raw_sql("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM ssi;")
            .execute(&mut *c)
            .await
            .unwrap();
    }
    // The failure may come at the second update or at a commit: whichever.
    let steps = [
        (0, "UPDATE ssi SET v = 1 WHERE k = 1"),
        (1, "UPDATE ssi SET v = 1 WHERE k = 2"),
        (0, "COMMIT"),
        (1, "COMMIT"),
    ];
    let mut failure = None;
    for (which, sql) in steps {
        let c = if which == 0 { &mut conn } else { &mut other };
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.expect("one of two write-skewed serializable transactions fails");
    assert_eq!(
        failure.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("40001"),
        "{failure}"
    );
    assert_eq!(classify_db(&failure), ErrorClass::Transient);
    for c in [&mut conn, &mut other] {
        sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.unwrap();
    }

    // A backend terminated by an administrator (as in a restart).
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut conn)
        .await
        .unwrap();
    let gone = sqlx::query("SELECT 1").execute(&mut other).await.unwrap_err();
    assert_eq!(classify_db(&gone), ErrorClass::Transient, "{gone:?}");

    // Outside a session, 55000 (e.g. currval before nextval) is no passing fault.
    assert_eq!(
        class_of(&mut conn, "CREATE SEQUENCE s; SELECT currval('s')").await,
        (ErrorClass::Internal, Some("55000".to_owned()))
    );

    // A database that refuses connections for a while (FATAL 55000), and
    // one that does not exist (FATAL 3D000: the operator's to fix).
    let mut admin = PgConnection::connect(&db.url.replace(&db.name, "postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let refused = PgConnection::connect(&db.url).await.unwrap_err();
    assert_eq!(
        refused.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("55000")
    );
    assert_eq!(classify_db(&refused), ErrorClass::Transient, "{refused}");
    let missing_db = db.url.replace(&db.name, "no_such_database");
    let missing = PgConnection::connect(&missing_db).await.unwrap_err();
    assert_eq!(
        missing.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("3D000")
    );
    assert_eq!(classify_db(&missing), ErrorClass::Internal, "{missing}");

    // Nothing listening: connection refused.
    let unreachable = PgConnection::connect("postgres://nobody@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert_eq!(
        classify_db(&unreachable),
        ErrorClass::Transient,
        "{unreachable:?}"
    );
}

/// A duration setting too large for what the process does with it is
/// refused at start, naming the variable: never a panic later.
#[test]
fn an_overflowing_duration_setting_is_refused_at_start_by_name() {
    let vars = [
        "IDEMQ_WORKER_LEASE",
        "IDEMQ_RECONCILE_INTERVAL",
        "IDEMQ_SHUTDOWN_GRACE",
        "IDEMQ_DB_LOST_GRACE",
        "IDEMQ_JOB_TIMEOUT",
        "IDEMQ_QUEUE_POLL_INTERVAL",
        "IDEMQ_QUEUE_RETENTION",
        "IDEMQ_IDEMPOTENCY_TTL",
    ];
    for var in vars {
        // The first is representable (and would overflow downstream), the
        // second is not even representable.
        for value in ["600000000years", "600000000000years"] {
            let out = idemq(["worker"])
                .env_clear()
                .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
                .env(var, value)
                .output_blocking();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{var}={value}: {stderr}");
            assert!(stderr.contains(var), "{var}={value}: {stderr}");
            assert!(!stderr.contains("panicked"), "{var}={value}: {stderr}");
            assert!(
                !stderr.contains("connecting"),
                "{var}={value}: refused only after start: {stderr}"
            );
        }
    }
}

// ------------------------------------------------------------ contract edges

/// `POST /meter-readings` with a raw body, so that the number is spelled as given.
async fn record_raw(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.post("/meter-readings")
        .key(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .response()
        .await
}

#[tokio::test]
async fn one_number_spelled_three_ways_is_one_request() {
    let app = spawn_app().await;
    app.insert_contract("c1").await;
    let first = record_raw(&app, "k-10", r#"{"contractId":"c1","reading":10}"#).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let op: Value = first.json().await.unwrap();
    for same in ["10.0", "1e1", "1.0E+1", "100e-1"] {
        let r = record_raw(
            &app,
            "k-10",
            &format!(r#"{{ "reading": {same}, "contractId": "c1" }}"#),
        )
        .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{same}");
        assert_eq!(header(&r, "idempotent-replayed"), Some("true"), "{same}");
        let replay: Value = r.json().await.unwrap();
        assert_eq!(replay["id"], op["id"], "{same}");
    }
    let other = record_raw(&app, "k-10", r#"{"contractId":"c1","reading":10.5}"#).await;
    expect_problem(other, StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused").await;
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
}

#[tokio::test]
async fn a_quoted_key_is_an_sf_string_with_its_escapes() {
    let app = spawn_app().await;
    app.insert_invoice("inv-1").await;
    let send = |key: &'static str| {
        app.request(Method::PATCH, "/invoices/inv-1/mark-paid")
            .header("Idempotency-Key", key)
            .json(&json!({ "paymentMethod": "card" }))
            .send()
    };
    // `"a\"b\\c"` is the key a"b\c: the bare spelling is the same key.
    let quoted = send(r#""a\"b\\c""#).await.unwrap();
    assert_eq!(quoted.status(), StatusCode::ACCEPTED);
    let op: Value = quoted.json().await.unwrap();
    assert_eq!(op["idempotencyKey"], r#"a"b\c"#);
    let bare = send(r#"a"b\c"#).await.unwrap();
    assert_eq!(header(&bare, "idempotent-replayed"), Some("true"));
    assert_eq!(bare.json::<Value>().await.unwrap()["id"], op["id"]);
    for bad in [r#""a\b""#, r#""abc"#, r#""ab"c""#] {
        let r = send(bad).await.unwrap();
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, "idempotency-key-invalid-characters").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("RFC 8941"),
            "{bad}: {problem}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
}
