//! The rules of an operations row hold in the database itself, whatever
//! writes it (docs/tables.md): one CHECK, `operations_row_valid`, refuses a
//! row that breaks any of them, on insert and on update.
use sqlx::PgPool;

use crate::helpers::*;

/// Inserts one operation row from the given column values (SQL expressions).
async fn insert(
    pool: &PgPool,
    fingerprint: &str,
    kind: &str,
    status: &str,
    finished: &str,
    response: &str,
) -> Result<(), String> {
    let sql = format!(
        "INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, status,
                                 queue, job_id, finished_at, response_status)
         VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid()::text, {fingerprint}, {kind}, '{{}}',
                 {status}, 'payments', 'job', {finished}, {response})"
    );
    refused_by(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await)
}

/// `Ok` if the statement succeeded, else the violated constraint's name
/// (any other error fails the test).
fn refused_by(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Result<(), String> {
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
            Err(e.constraint().unwrap_or("(none)").to_owned())
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const FP: &str = "sha256('x')";
const KIND: &str = "'invoice.mark_paid'";

#[tokio::test]
async fn an_operations_row_that_breaks_a_rule_is_refused_on_insert_and_on_update() {
    let db = fresh_db().await;
    let pool = &db.pool;
    let valid = [
        (FP, KIND, "'queued'", "NULL", "NULL"),
        (FP, "'application.approve'", "'running'", "NULL", "NULL"),
        (FP, "'meter_reading.record'", "'succeeded'", "now()", "200"),
        (FP, "'application.reject'", "'failed'", "now()", "409"),
    ];
    for (fp, kind, status, finished, response) in valid {
        assert_eq!(
            insert(pool, fp, kind, status, finished, response).await,
            Ok(()),
            "{kind} {status}"
        );
    }
    let broken = [
        (
            "a fingerprint that is not 32 bytes",
            "'\\x00'::bytea",
            KIND,
            "'queued'",
            "NULL",
            "NULL",
        ),
        (
            "an unknown kind",
            FP,
            "'invoice.refund'",
            "'queued'",
            "NULL",
            "NULL",
        ),
        ("an unknown status", FP, KIND, "'paused'", "NULL", "NULL"),
        (
            "finished without a finish time",
            FP,
            KIND,
            "'succeeded'",
            "NULL",
            "200",
        ),
        (
            "finished without a response",
            FP,
            KIND,
            "'failed'",
            "now()",
            "NULL",
        ),
        (
            "unfinished with a finish time",
            FP,
            KIND,
            "'running'",
            "now()",
            "NULL",
        ),
        ("unfinished with a response", FP, KIND, "'queued'", "NULL", "202"),
    ];
    for (what, fp, kind, status, finished, response) in broken {
        let refused = insert(pool, fp, kind, status, finished, response).await;
        assert_eq!(refused, Err("operations_row_valid".to_owned()), "{what}");
    }

    // An update is held to the same rules: finishing without a response.
    let update = sqlx::query(
        "UPDATE operations SET status = 'succeeded', finished_at = now() WHERE status = 'queued'",
    )
    .execute(pool)
    .await;
    assert_eq!(refused_by(update), Err("operations_row_valid".to_owned()));
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(counted, valid.len() as i64, "only the valid rows were written");
}
