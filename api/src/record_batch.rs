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
use std::sync::Arc;

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
}

/// The handle of the batching task; `in_flight == 0` has no task, and every
/// request records on its own.
#[derive(Clone)]
pub struct RecordBatcher {
    tx: Option<mpsc::UnboundedSender<Waiting>>,
}

impl RecordBatcher {
    /// At most `in_flight` record statements at once, each for up to
    /// `max_batch` requests.
    pub fn spawn(records: KeptPool, in_flight: usize, max_batch: usize) -> RecordBatcher {
        if in_flight == 0 {
            return RecordBatcher { tx: None };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(records, rx, in_flight, max_batch.max(1)));
        RecordBatcher { tx: Some(tx) }
    }

    /// Records `record` with whatever else is waiting. `Ok((record, None))`:
    /// not settled here, `begin_on` settles it.
    pub async fn record(&self, record: NewRecord) -> Reply {
        let Some(tx) = &self.tx else {
            return Ok((record, None));
        };
        let (reply, answer) = oneshot::channel();
        metrics::gauge!(RECORD_WAITING).increment(1.0);
        if let Err(mpsc::error::SendError(waiting)) = tx.send(Waiting { record, reply }) {
            metrics::gauge!(RECORD_WAITING).decrement(1.0);
            return Ok((waiting.record, None));
        }
        // A reply is dropped only with the runtime, at shutdown: whether the
        // batch committed is unknown, as for a lone record cut off there, and
        // a retry with the key settles it.
        answer
            .await
            .map_err(|_| ApiError::Unavailable("the API is shutting down".into()))?
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
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(waiting) => batch.push(waiting),
                Err(_) => break,
            }
        }
        metrics::gauge!(RECORD_WAITING).decrement(batch.len() as f64);
        metrics::histogram!(RECORD_BATCH_SIZE).record(batch.len() as f64);
        let records = records.clone();
        tokio::spawn(async move {
            record_together(&records, batch).await;
            drop(slot);
        });
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
