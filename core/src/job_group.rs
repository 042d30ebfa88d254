//! Group commit for the job transaction (docs/job-path.md, "Group
//! commit"): the first attempts of several jobs, each already counted by the
//! worker's fetch, run in **one** transaction on one connection — the
//! operations locked together in one statement, then each job's effect and
//! its finish as in [`crate::job`], then one `COMMIT`.
//!
//! Each job's effect still commits together with its stored response and
//! its queue job's `Done`: a group commits all of them or none. A group
//! that fails in any way (an error of one job's statements, a lock wait past
//! the time limit, a panic, a lost connection) has rolled back as a whole,
//! and the worker then runs each of its jobs alone on the ordinary path,
//! where a bad job fails by itself: grouping changes how many commits the
//! jobs cost, never what any of them does.
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use crate::{
    business::Actor,
    job::{execute, exhausted, finish, Ack, JobConnection, LockedRow, QueueJob},
    notifier::Notifier,
    operation::{OperationId, OperationKind, OperationStatus},
    Error,
};

/// The most jobs one group transaction takes: its row locks are held until
/// its commit, so a larger group makes its first job wait longer.
pub const MAX_GROUP: usize = 32;

/// The opening: the job transaction, its statements limited as an
/// attempt's are, and the operations locked in one statement, in the order
/// of their ids (two groups never wait for each other's operations in a
/// cycle). A simple query, so the ids are a literal (formatted `Uuid`s).
const OPEN_GROUP: &str = "BEGIN; SET LOCAL statement_timeout = {limit_ms};
SELECT id, status, kind, principal_id, request, attempts FROM operations
WHERE id = ANY ({ids}::uuid[]) ORDER BY id FOR UPDATE";

/// One job of a group: its operation, and the queue job that delivered it
/// (marked `Done` by the group's transaction, as by an attempt's).
#[derive(Debug, Clone)]
pub struct GroupMember {
    pub op: OperationId,
    pub job: Option<QueueJob>,
}

/// What the group's commit did for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The effect (or a refusal) applied and the response stored.
    Finished {
        number: i32,
        kind: OperationKind,
        status: OperationStatus,
        ack: Ack,
    },
    /// Past the attempt bound: finished `failed` without running.
    Exhausted {
        number: i32,
        kind: OperationKind,
        ack: Ack,
    },
    /// Final already (a redelivery), or queued again by an operator: nothing
    /// changed.
    AlreadyFinished,
    /// No such operation: nothing to do.
    Missing,
}

/// The job a group is running, while it runs: if the group fails then (an
/// error, a panic, the time limit), that job's counted attempt is the one
/// that failed. `None` outside a job's work (the opening, the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Its place in the group's `members`.
    pub member: usize,
    /// Its attempt: `operations.attempts` as the fetch left it.
    pub number: i32,
    pub kind: OperationKind,
    /// When its work began.
    pub since: std::time::Instant,
}

/// What bounds a group's jobs: the attempt's time limit (each statement's
/// `statement_timeout`), the stored responses' time to live, the attempt
/// bound.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub time: Duration,
    pub ttl: Duration,
    pub max_attempts: u32,
}

/// Runs `members` in one transaction on `conn` and commits; the results in
/// the order of `members`. `before_effect` is called for each job about to
/// run its effect (the worker's test-only faults). `running` tells, at any
/// moment, which job's work is under way. Any `Err`: the group rolled back
/// (or its connection is closed), nothing of it was written.
/// If a request waits for a finished operation, `notifier` announces it
/// after the commit.
pub async fn run(
    conn: &mut JobConnection,
    members: &[GroupMember],
    limits: Limits,
    notifier: &Notifier,
    before_effect: &(dyn Fn(OperationId, OperationKind, u32, &Value) + Send + Sync),
    running: &std::sync::Mutex<Option<Running>>,
) -> Result<Vec<Settled>, Error> {
    let set_running = |now: Option<Running>| {
        if let Ok(mut slot) = running.lock() {
            *slot = now;
        }
    };
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let Limits {
        time: limit,
        ttl,
        max_attempts,
    } = limits;
    let ms = limit.as_millis().clamp(1, i32::MAX as u128);
    // One array literal, so that the statement is one entry of
    // `pg_stat_statements` whatever the group's size.
    let ids = format!(
        "'{{{}}}'",
        members
            .iter()
            .map(|m| m.op.uuid().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let opening = OPEN_GROUP
        .replace("{limit_ms}", &ms.to_string())
        .replace("{ids}", &ids);
    conn.in_doubt = true;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(opening))
        .fetch_all(&mut *conn.conn)
        .await?;
    let mut locked = Vec::with_capacity(rows.len());
    for row in rows.iter().filter(|r| LockedRow::is_one(r)) {
        let id: uuid::Uuid = row.try_get("id")?;
        locked.push((OperationId::from_uuid(id), LockedRow::read(row)?));
    }
    // The effects in the order of what they lock (kind, then the entity the
    // request names), so that two groups lock business rows in one order.
    locked.sort_by_cached_key(|(op, row)| (row.lock_order(), op.uuid()));

    let mut settled = vec![Settled::Missing; members.len()];
    let mut audits = Vec::new();
    let mut announce = Vec::new();
    conn.within(async |tx| {
        for (op, row) in &locked {
            let Some(at) = members.iter().position(|m| m.op == *op) else {
                continue;
            };
            let member = &members[at];
            if !row.running {
                settled[at] = Settled::AlreadyFinished;
                continue;
            }
            let kind = row.kind()?;
            let number = u32::try_from(row.attempts).unwrap_or(u32::MAX);
            set_running(Some(Running {
                member: at,
                number: row.attempts,
                kind,
                since: std::time::Instant::now(),
            }));
            if number > max_attempts {
                let done = finish(
                    tx,
                    *op,
                    &exhausted(row.attempts - 1),
                    ttl,
                    Some("exhausted"),
                    member.job.as_ref(),
                )
                .await?;
                announce.extend(done.notice);
                settled[at] = Settled::Exhausted {
                    number: row.attempts,
                    kind,
                    ack: done.ack,
                };
                set_running(None);
                continue;
            }
            before_effect(*op, kind, number, &row.request);
            let actor = Actor {
                operation: *op,
                principal: row.principal,
            };
            let outcome = execute(tx, actor, kind, &row.request).await?;
            let done = finish(tx, *op, &outcome, ttl, None, member.job.as_ref()).await?;
            announce.extend(done.notice);
            if let Some(audit) = outcome.audit {
                audits.push(audit);
            }
            settled[at] = Settled::Finished {
                number: row.attempts,
                kind,
                status: done.status,
                ack: done.ack,
            };
            set_running(None);
        }
        Ok(())
    })
    .await?;
    for audit in &audits {
        audit.log();
    }
    for notice in &announce {
        notifier.operation_finished(notice);
    }
    Ok(settled)
}
