//! Warm connections, before a process takes work.
//!
//! A new server backend's first statements are parsed, planned and
//! described for sqlx's statement cache; they fill the backend's catalog
//! caches, prepare its foreign keys' checks and compile the PL/pgSQL they
//! call. One payment's statements take ≈ 7 ms on a new backend against
//! ≈ 1 ms on a warm one, and a process that opens its connections under
//! load makes its first requests wait for that: the first second after a
//! fleet started carried the latency's whole tail (README, "Issue 14",
//! sixth round). So a process opens the connections it will use at once
//! and warms them before it takes work: [`rehearse`] runs a payment's
//! statements, the request's and the job's, inside a transaction that is
//! rolled back. Nothing of it stays (sequences move, as they do for any
//! insert rolled back, and a trigger on a business table runs); it logs no
//! audit line, announces nothing and records no metric.
use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    fingerprint::Fingerprint,
    idempotency::{self, NewOperation, NextAction},
    job,
    key::IdempotencyKey,
    operation::{OperationId, OperationKind},
    principal::{self, Principal, TokenHash},
    Error,
};

/// Opens `connections` connections of `pool` at once (at most its size),
/// rehearses a payment on each, and gives them all back. Best effort: a
/// failure is logged, and the process starts anyway (its connections then
/// warm under load). Not behind a transaction-mode pooler: its server
/// connections are shared, and our statements are not cached there. `0`:
/// nothing (the setting's off).
pub async fn warm(pool: &PgPool, connections: u32) {
    if connections == 0 || crate::db::is_pooled(pool) {
        return;
    }
    let connections = connections.min(pool.options().get_max_connections());
    let started = std::time::Instant::now();
    let warmed = tokio::time::timeout(WARM_TIMEOUT, warm_all(pool, connections)).await;
    let (count, failed) = match warmed {
        Ok(done) => done,
        Err(_) => (0, Some(format!("not done within {WARM_TIMEOUT:?}"))),
    };
    match failed {
        None => tracing::info!(
            connections = count,
            ms = started.elapsed().as_millis() as u64,
            "database connections warmed"
        ),
        Some(error) => tracing::warn!(
            %error,
            warmed = count,
            of = connections,
            "database connections not all warmed; the others warm under load"
        ),
    }
}

/// The longest a process's start waits for its warm-up.
pub const WARM_TIMEOUT: Duration = Duration::from_secs(5);

/// How many were warmed, and the last failure.
async fn warm_all(pool: &PgPool, connections: u32) -> (usize, Option<String>) {
    let mut warming = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let pool = pool.clone();
        warming.spawn(async move {
            let mut conn = pool.acquire().await?;
            rehearse(&mut conn).await?;
            Ok::<_, Error>(conn)
        });
    }
    // Held until all are done: each rehearsal gets a connection of its own.
    let mut warmed = Vec::with_capacity(connections as usize);
    let mut failed = None;
    while let Some(done) = warming.join_next().await {
        match done {
            Ok(Ok(conn)) => warmed.push(conn),
            Ok(Err(e)) => failed = Some(e.to_string()),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    (warmed.len(), failed)
}

tokio::task_local! {
    static REHEARSING: ();
}

/// Inside a rehearsal: the path's metrics are not recorded.
pub(crate) fn rehearsing() -> bool {
    REHEARSING.try_with(|_| ()).is_ok()
}

/// A payment, request and job, on `conn`, rolled back: the token lookup,
/// the record (with its job), the job's lock, effect and finish, and the
/// waiting request's read-back, each the statement the real path runs.
pub async fn rehearse(conn: &mut PgConnection) -> Result<(), Error> {
    let mut tx = conn.begin().await?;
    let rehearsed = REHEARSING.scope((), payment(&mut tx)).await;
    tx.rollback().await?;
    rehearsed
}

async fn payment(conn: &mut PgConnection) -> Result<(), Error> {
    // A rehearsal that waits (a lock, a slow trigger) gives up: the process
    // starts anyway.
    sqlx::query!("SET LOCAL statement_timeout = '2s'")
        .execute(&mut *conn)
        .await?;
    let name = format!("warm-up {}", Uuid::new_v4());
    let principal_id = sqlx::query_scalar!("INSERT INTO principals (name) VALUES ($1) RETURNING id", name)
        .fetch_one(&mut *conn)
        .await?;
    let principal = Principal::rehearsal(principal_id, &name);
    principal::authenticate(&mut *conn, &TokenHash::of(&name)).await?;
    let invoice = format!("warm-up-{}", Uuid::new_v4().simple());
    sqlx::query!("INSERT INTO invoices (id) VALUES ($1)", invoice)
        .execute(&mut *conn)
        .await?;
    let body = json!({ "paymentMethod": "card" });
    let key = IdempotencyKey::parse(b"warm-up")
        .map_err(|e| Error::Corrupt(format!("rehearsal key: {}", e.detail())))?;
    let id = OperationId::new();
    let request = json!({ "params": { "id": invoice }, "body": body });
    let new = NewOperation {
        id,
        announce_finish: true,
        principal: &principal,
        key: &key,
        fingerprint: Fingerprint::compute("PATCH", "/invoices/{id}/mark-paid", &[("id", &invoice)], &body),
        kind: OperationKind::InvoiceMarkPaid,
        request: &request,
    };
    // The API's two record statements: the batch's (new keys) and the lone
    // one (what a batch leaves: here, the same key again).
    let recorded = idempotency::record_batch(&mut *conn, std::slice::from_ref(&new)).await?;
    if !matches!(recorded.as_slice(), [Some(NextAction::Started(_))]) {
        return Err(Error::Corrupt("rehearsal: the operation was not recorded".into()));
    }
    if !matches!(
        idempotency::begin_on(&mut *conn, new).await?,
        NextAction::Existing(_)
    ) {
        return Err(Error::Corrupt(
            "rehearsal: the operation was not found again".into(),
        ));
    }
    job::rehearse(&mut *conn, id, Duration::from_secs(60)).await?;
    idempotency::find(&mut *conn, &principal, id).await?;
    Ok(())
}
