//! Wake-up notices sent after commit, outside the durable transactions.
//!
//! A transaction that calls `pg_notify` takes Postgres's cluster-wide notify
//! lock in pre-commit and holds it through its commit record's WAL flush:
//! notifying commits run one at a time and never share a flush (the bench
//! measured exactly 1.00 flush per notifying commit against 0.32 for plain
//! ones). So the hot paths do not notify in their own transaction: a new job
//! (apalis's per-row trigger is dropped by our migration) and a finished
//! operation that a request waits for hand their notice to this task. It
//! sends whatever is pending in one statement, on its own connection with
//! `synchronous_commit = off` (the lock is then held for microseconds, not a
//! disk flush); notices that arrive while one is in flight go out together
//! with the next, and wake-ups of the same queue collapse into one.
//!
//! A notice is a hint sent after its data committed, never the data itself.
//! A lost one (connection down, process killed) costs a job one poll
//! interval (workers also poll) and a waiting request one re-check
//! (`RECHECK_EVERY` in the API's waiters).
use std::{collections::BTreeMap, time::Duration};

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{finish_notice::FinishNotice, idempotency::FINISHED_CHANNEL};

/// apalis-postgres's workers LISTEN here (payload: `{"job_type", "id"}`; the
/// id must be a ULID but only wakes the queue's fetch).
pub const JOB_INSERT_CHANNEL: &str = "apalis::job::insert";

/// After a failed send, the pause before the next connection attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// A send that takes longer is abandoned (the notices are hints).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Notice {
    JobPushed { queue: &'static str, job_id: String },
    Finished { id: Uuid, payload: String },
}

/// The handle; cheap to clone. The sending task ends when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    /// Starts the sending task on its own connection from `pool` (taken when
    /// the first notice arrives, and again after a failure).
    pub fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(pool, rx));
        Notifier { tx }
    }

    /// A job was committed on `queue`: wake the workers that take it.
    pub fn job_pushed(&self, queue: &'static str, job_id: &str) {
        let _ = self.tx.send(Notice::JobPushed {
            queue,
            job_id: job_id.to_owned(),
        });
    }

    /// An operation that a request waits for was committed final: its
    /// finish as committed, which the waiting request answers from.
    pub fn operation_finished(&self, finish: &FinishNotice) {
        let _ = self.tx.send(Notice::Finished {
            id: finish.id,
            payload: finish.payload(),
        });
    }
}

/// What one statement sends: one wake-up per queue, every finished
/// operation once.
#[derive(Debug, Default, PartialEq)]
struct Batch {
    jobs: BTreeMap<&'static str, String>,
    finished: Vec<(Uuid, String)>,
}

impl Batch {
    fn add(&mut self, notice: Notice) {
        match notice {
            Notice::JobPushed { queue, job_id } => {
                self.jobs.insert(queue, job_id);
            }
            Notice::Finished { id, payload } => {
                if !self.finished.iter().any(|(f, _)| *f == id) {
                    self.finished.push((id, payload));
                }
            }
        }
    }

    /// `(channel, payload)` pairs.
    fn into_notices(self) -> (Vec<String>, Vec<String>) {
        let mut channels = Vec::with_capacity(self.jobs.len() + self.finished.len());
        let mut payloads = Vec::with_capacity(channels.capacity());
        for (queue, id) in self.jobs {
            channels.push(JOB_INSERT_CHANNEL.to_owned());
            payloads.push(json!({ "job_type": queue, "id": id }).to_string());
        }
        for (_, payload) in self.finished {
            channels.push(FINISHED_CHANNEL.to_owned());
            payloads.push(payload);
        }
        (channels, payloads)
    }
}

async fn send_loop(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Notice>) {
    let session = crate::db::session_connection(&pool, "notifier");
    let mut conn: Option<PgConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.add(first);
        while let Ok(more) = rx.try_recv() {
            batch.add(more);
        }
        let (channels, payloads) = batch.into_notices();
        let sent = tokio::time::timeout(SEND_TIMEOUT, async {
            if conn.is_none() {
                conn = Some(connect(&session).await?);
            }
            let Some(c) = conn.as_mut() else {
                return Err(sqlx::Error::PoolClosed);
            };
            sqlx::query!(
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)",
                &channels,
                &payloads,
            )
            .execute(&mut *c)
            .await
        })
        .await;
        match sent {
            Ok(Ok(_)) => {}
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {SEND_TIMEOUT:?}"),
                };
                tracing::warn!(
                    %error,
                    lost = channels.len(),
                    "wake-up notices not sent; workers poll and waiters re-check"
                );
                conn = None;
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// The task's own connection (`session`: [`crate::db::session_connection`],
/// straight to Postgres when the pool is pooled), its commits asynchronous:
/// a notice is worthless after a server crash anyway.
async fn connect(session: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = session.acquire().await?.detach();
    sqlx::query!("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_wakes_each_queue_once_and_names_each_finished_operation_once() {
        let mut batch = Batch::default();
        let a = Uuid::now_v7();
        for (queue, id) in [("payments", "1"), ("approvals", "2"), ("payments", "3")] {
            batch.add(Notice::JobPushed {
                queue,
                job_id: id.into(),
            });
        }
        for _ in 0..2 {
            batch.add(Notice::Finished {
                id: a,
                payload: a.to_string(),
            });
        }
        let (channels, payloads) = batch.into_notices();
        assert_eq!(
            channels,
            [JOB_INSERT_CHANNEL, JOB_INSERT_CHANNEL, FINISHED_CHANNEL]
        );
        assert_eq!(
            payloads,
            [
                r#"{"id":"2","job_type":"approvals"}"#.to_owned(),
                r#"{"id":"3","job_type":"payments"}"#.to_owned(),
                a.to_string(),
            ]
        );
    }
}
