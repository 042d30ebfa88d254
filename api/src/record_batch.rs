//! Group commit for step 6 of the request path: the new operations of
//! requests that arrive while every record statement is busy are recorded
//! together, in one statement and one commit
//! (`idemq_core::idempotency::record_batch`).
//!
//! Nothing waits for a batch to fill. A request that finds one of the
//! `IDEMQ_API_RECORD_BATCHES` slots free is recorded at once, alone, as
//! without batching. Only while every slot runs a statement do requests
//! queue, and the next free slot takes all of them (up to
//! `IDEMQ_API_RECORD_BATCH_MAX`). A light load pays one channel hop; a
//! heavy one shares its commits, WAL flushes and round trips (README,
//! Performance, seventh round).
//!
//! What a batch does not settle goes one by one through
//! `idempotency::begin_on`, as before: a key under an expired record, a key
//! taken by a request not yet committed, a key twice in one batch, and every
//! request of a batch the database refused, so that one request's bad value
//! fails that request alone. A batch that fails for a reason that passes by
//! itself (the database unreachable) answers each of its requests 503, as a
//! lone record would.
//!
//! A request waits for a statement at most as long as it would wait for a
//! pool connection (the pool's acquire timeout, 5 s): if no slot has taken
//! it by then (every statement held up, e.g. by a lock on `operations`), it
//! is answered 503 and never recorded. Whoever moves first, the request
//! giving up or a slot taking it, decides, so a 503 here means nothing was
//! written.
use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use idemq_core::{
    db::KeptPool,
    error::ErrorClass,
    fingerprint::Fingerprint,
    idempotency::{self, NewOperation, NextAction},
    key::IdempotencyKey,
    operation::{OperationId, OperationKind},
    principal::Principal,
    telemetry::{RECORD_BATCH_SIZE, RECORD_WAITING},
    Error,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;

/// A request's new operation, owned, on its way to a batch.
pub struct NewRecord {
    pub id: OperationId,
    pub announce_finish: bool,
    pub principal: Principal,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub kind: OperationKind,
    pub request: Value,
}

impl NewRecord {
    pub fn as_new(&self) -> NewOperation<'_> {
        NewOperation {
            id: self.id,
            announce_finish: self.announce_finish,
            principal: &self.principal,
            key: &self.key,
            fingerprint: self.fingerprint,
            kind: self.kind,
            request: &self.request,
        }
    }
}

/// What a batch answers a request: what happened to its record, if the
/// batch settled it (else `None`, and the record back for `begin_on`).
type Reply = Result<(NewRecord, Option<NextAction>), ApiError>;

struct Waiting {
    record: NewRecord,
    reply: oneshot::Sender<Reply>,
    /// `WAITING` until a slot takes it (`TAKEN`) or the request gives up
    /// (`ABANDONED`); the first to move wins.
    state: Arc<AtomicU8>,
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Waiting {
    /// Claims it for a batch, unless its request gave up or went away.
    fn take(&self) -> bool {
        !self.reply.is_closed()
            && self
                .state
                .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// The handle of the batching task; `in_flight == 0` has no task, and every
/// request records on its own.
#[derive(Clone)]
pub struct RecordBatcher {
    tx: Option<mpsc::UnboundedSender<Waiting>>,
    /// How long a request waits for a slot to take it.
    max_wait: Duration,
}

impl RecordBatcher {
    /// At most `in_flight` record statements at once, each for up to
    /// `max_batch` requests; a request waits at most `max_wait` for one.
    pub fn spawn(records: KeptPool, in_flight: usize, max_batch: usize, max_wait: Duration) -> RecordBatcher {
        if in_flight == 0 {
            return RecordBatcher { tx: None, max_wait };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(records, rx, in_flight, max_batch.max(1)));
        RecordBatcher {
            tx: Some(tx),
            max_wait,
        }
    }

    /// Records `record` with whatever else is waiting. `Ok((record, None))`:
    /// not settled here, `begin_on` settles it.
    pub async fn record(&self, record: NewRecord) -> Reply {
        let Some(tx) = &self.tx else {
            return Ok((record, None));
        };
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        metrics::gauge!(RECORD_WAITING).increment(1.0);
        let waiting = Waiting {
            record,
            reply,
            state: state.clone(),
        };
        if let Err(mpsc::error::SendError(waiting)) = tx.send(waiting) {
            metrics::gauge!(RECORD_WAITING).decrement(1.0);
            return Ok((waiting.record, None));
        }
        // A reply is dropped only with the runtime, at shutdown: whether the
        // batch committed is unknown, as for a lone record cut off there, and
        // a retry with the key settles it.
        let shutting_down = |_| ApiError::Unavailable("the API is shutting down".into());
        match tokio::time::timeout(self.max_wait, &mut answer).await {
            Ok(reply) => reply.map_err(shutting_down)?,
            Err(_) => {
                if state
                    .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // No slot took it: nothing of it was or will be written.
                    metrics::gauge!(RECORD_WAITING).decrement(1.0);
                    return Err(ApiError::Unavailable(format!(
                        "no record statement free within {:?}",
                        self.max_wait
                    )));
                }
                // A slot took it just now: its answer is on the way.
                answer.await.map_err(shutting_down)?
            }
        }
    }
}

async fn run(
    records: KeptPool,
    mut rx: mpsc::UnboundedReceiver<Waiting>,
    in_flight: usize,
    max_batch: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A free slot first, then everything waiting: while the slots are
        // all busy, requests gather in the channel for the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        while batch.is_empty() {
            let Some(first) = rx.recv().await else {
                return;
            };
            take_into(&mut batch, first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(waiting) => take_into(&mut batch, waiting),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!(RECORD_BATCH_SIZE).record(batch.len() as f64);
        let records = records.clone();
        tokio::spawn(async move {
            record_together(&records, batch).await;
            drop(slot);
        });
    }
}

/// Adds `waiting` to the batch if its request still waits; one that gave up
/// was taken off the gauge by its request, one that went away is here.
fn take_into(batch: &mut Vec<Waiting>, waiting: Waiting) {
    if waiting.take() {
        metrics::gauge!(RECORD_WAITING).decrement(1.0);
        batch.push(waiting);
    } else if waiting.state.load(Ordering::Acquire) == WAITING {
        metrics::gauge!(RECORD_WAITING).decrement(1.0);
    }
}

async fn record_together(records: &KeptPool, batch: Vec<Waiting>) {
    match insert(records, &batch).await {
        Ok(settled) => {
            for (waiting, next) in batch.into_iter().zip(settled) {
                let _ = waiting.reply.send(Ok((waiting.record, next)));
            }
        }
        Err(e) if e.class() == ErrorClass::Transient => {
            tracing::warn!(error = %e, requests = batch.len(), "record batch failed");
            let message = e.to_string();
            for waiting in batch {
                let _ = waiting.reply.send(Err(ApiError::Unavailable(message.clone())));
            }
        }
        Err(e) => {
            tracing::info!(error = %e, requests = batch.len(), "record batch refused: recording one by one");
            for waiting in batch {
                let _ = waiting.reply.send(Ok((waiting.record, None)));
            }
        }
    }
}

async fn insert(records: &KeptPool, batch: &[Waiting]) -> Result<Vec<Option<NextAction>>, Error> {
    let new: Vec<NewOperation<'_>> = batch.iter().map(|w| w.record.as_new()).collect();
    let mut conn = records.acquire().await?;
    let settled = idempotency::record_batch(&mut conn, &new).await?;
    // Committed before any request is answered (behind a pooler, here).
    records.done(conn).await?;
    Ok(settled)
}
