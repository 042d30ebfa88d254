//! Group commit for the job transaction: the first attempts of jobs that
//! become ready while every group transaction of this process is busy run
//! together in the next one, with one `BEGIN`, one locking statement and one
//! `COMMIT` (`idemq_core::job_group`; docs/job-path.md, "Group commit").
//!
//! Nothing waits for a group to fill. A job that finds one of the
//! `IDEMQ_WORKER_JOB_GROUPS` slots free runs at once, alone, as without
//! grouping. Only while every slot runs a transaction do jobs queue, and the
//! next free slot takes all of them (up to `job_group::MAX_GROUP`). A light
//! load pays one channel hop; a heavy one shares its commits, WAL flushes and
//! round trips.
//!
//! Only attempts the fetch counted come here (`Start::Counted`); retries run
//! alone. A group that fails in any way — an error in any job's statements,
//! the time limit, a panic — has rolled back as a whole, and each of its jobs
//! is handed back to run alone on the ordinary path, its counted attempt
//! still unused: a bad job then fails by itself, exactly as without groups.
use std::{sync::Arc, time::Duration};

use idemq_core::{
    job::{JobConnections, QueueJob},
    job_group::{self, GroupMember, Running, Settled},
    notifier::Notifier,
    operation::OperationId,
    telemetry::JOB_GROUP_SIZE,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::faults::Faults;

/// What a group answers a job; `None`: not settled, not failed, run it
/// alone (its counted attempt unspent).
type Reply = Option<GroupReply>;

#[derive(Debug)]
pub enum GroupReply {
    /// What the group's commit did for it.
    Settled(Settled),
    /// Its work was under way when the group failed: its counted attempt
    /// failed, as it would have alone.
    Failed { running: Running, failure: Failure },
}

/// Why a group failed.
#[derive(Debug)]
pub enum Failure {
    Error(idemq_core::Error),
    Panicked(String),
    TimedOut(Duration),
}

struct Waiting {
    member: GroupMember,
    reply: oneshot::Sender<Reply>,
}

/// What a group transaction needs; the job runner's own parts.
#[derive(Clone, Debug)]
pub struct GroupContext {
    pub connections: JobConnections,
    pub notifier: Notifier,
    pub ttl: Duration,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub faults: Faults,
}

/// The handle of the grouping task.
#[derive(Clone, Debug)]
pub struct JobGroups {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl JobGroups {
    /// At most `in_flight` group transactions at once; `None` for 0 (every
    /// job alone).
    pub fn spawn(context: GroupContext, in_flight: usize) -> Option<JobGroups> {
        if in_flight == 0 {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(context, rx, in_flight));
        Some(JobGroups { tx })
    }

    /// Runs the counted first attempt of `op` with whatever else is waiting.
    /// `None`: neither settled nor failed by a group (another job's failure
    /// rolled the group back, or the process is stopping): run it alone.
    pub async fn run(&self, op: OperationId, job: Option<QueueJob>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            member: GroupMember { op, job },
            reply,
        };
        self.tx.send(waiting).ok()?;
        answer.await.ok().flatten()
    }
}

async fn run(context: GroupContext, mut rx: mpsc::UnboundedReceiver<Waiting>, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A free slot first, then everything waiting: while the slots are
        // all busy, jobs gather in the channel for the next group.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < job_group::MAX_GROUP {
            match rx.try_recv() {
                Ok(waiting) => group.push(waiting),
                Err(_) => break,
            }
        }
        metrics::histogram!(JOB_GROUP_SIZE).record(group.len() as f64);
        let context = context.clone();
        tokio::spawn(async move {
            run_group(&context, group).await;
            drop(slot);
        });
    }
}

/// One group transaction, in a task of its own (a panic is an error here,
/// not a dead worker) under the attempt's time limit (the transaction is
/// then abandoned: its connection closed, the server rolls back).
async fn run_group(context: &GroupContext, group: Vec<Waiting>) {
    let members: Vec<GroupMember> = group.iter().map(|w| w.member.clone()).collect();
    let size = members.len();
    let running = Arc::new(std::sync::Mutex::new(None));
    let ctx = context.clone();
    let in_task = running.clone();
    let span = tracing::info_span!("job group", size);
    let task = tokio::spawn(
        async move {
            let mut conn = ctx.connections.acquire().await?;
            let faults = ctx.faults.clone();
            let before_effect = move |op, kind, attempt, request: &serde_json::Value| {
                faults.before_attempt(op, kind, attempt, request)
            };
            let settled = job_group::run(
                &mut conn,
                &members,
                job_group::Limits {
                    time: ctx.timeout,
                    ttl: ctx.ttl,
                    max_attempts: ctx.max_attempts,
                },
                &ctx.notifier,
                &before_effect,
                &in_task,
            )
            .await;
            if settled.is_ok() {
                ctx.connections.keep(conn);
            }
            settled
        }
        .instrument(span),
    );
    let abort = task.abort_handle();
    let failure = match tokio::time::timeout(context.timeout, task).await {
        Ok(Ok(Ok(settled))) => {
            for (waiting, settled) in group.into_iter().zip(settled) {
                let _ = waiting.reply.send(Some(GroupReply::Settled(settled)));
            }
            return;
        }
        Ok(Ok(Err(e))) => Failure::Error(e),
        Ok(Err(join)) => Failure::Panicked(join.to_string()),
        Err(_) => {
            abort.abort();
            Failure::TimedOut(context.timeout)
        }
    };
    // Rolled back as a whole. The job whose work was under way failed its
    // attempt; the others run alone, where nothing of another job touches
    // them.
    let culprit = running.lock().ok().and_then(|r| *r).filter(|job| match failure {
        // The group's time limit passed: the job then under way is the
        // slow one only if it took most of it itself; else the group's jobs
        // together were too slow, and none of them has failed.
        Failure::TimedOut(limit) => job.since.elapsed() >= limit / 2,
        _ => true,
    });
    tracing::warn!(
        size,
        failure = ?failure,
        job_failed = culprit.is_some(),
        "job group rolled back; its other jobs run one by one"
    );
    let mut failure = Some(failure);
    for (at, waiting) in group.into_iter().enumerate() {
        let reply = match culprit {
            Some(running) if running.member == at => failure
                .take()
                .map(|failure| GroupReply::Failed { running, failure }),
            _ => None,
        };
        let _ = waiting.reply.send(reply);
    }
}
