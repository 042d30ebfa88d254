//! The queue loop's acknowledgements (docs/job-path.md, "Waking and
//! fetching" and "The job transaction").
//!
//! apalis-postgres acknowledges every job through its middleware
//! (`TaskPersistLayer`): after the handler returns, an event goes to the
//! storage, which writes the job row (`Done`/`Failed`, `done_at`,
//! `last_result`, `attempts`) in a statement of its own between batches.
//! But a job whose operation the job transaction settled is already `Done`:
//! that transaction marks its row with the effect (`idemq_core::job::finish`),
//! and a second write of the row would only cost a transaction. apalis's layer
//! cannot skip a job, so the queue loop's backend ([`crate::fetch_gate`])
//! installs this layer instead of the storage's: it lets a handler that
//! answers [`Ack::Committed`] go unacknowledged, and queues every other
//! result (a redelivery, a missing operation, an error handed back, a
//! shutdown hand-back) exactly as apalis's layer would have, for the
//! backend to send with apalis's own statement
//! (`apalis_postgres::queries::handle_results`) at the time apalis's
//! backend sent it.
use std::{
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use apalis_core::{
    backend::TaskResult,
    error::BoxDynError,
    layers::{Layer, Service},
    task::Task,
};
use futures::{future::BoxFuture, FutureExt};
pub use idemq_core::job::Ack;

/// apalis-postgres's acknowledgement: the job, its attempt, status and result.
pub type Payload = apalis_postgres::queries::ResultPayload;

/// The acknowledgements waiting to be sent, shared by the layer (which adds
/// them as jobs end) and the backend (which takes them all at once).
#[derive(Debug, Clone, Default)]
pub struct Pending(Arc<Mutex<Vec<Payload>>>);

impl Pending {
    fn push(&self, ack: Payload) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(ack);
    }

    /// Every acknowledgement waiting, in the order the jobs ended.
    pub fn take(&self) -> Vec<Payload> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Acknowledges the jobs the handler did not settle in its own transaction.
/// `enabled`: apalis-postgres's `persist_results` (on by default; off, apalis
/// acknowledges nothing, and neither does this).
#[derive(Debug, Clone)]
pub struct AckLayer {
    pending: Pending,
    enabled: bool,
}

impl AckLayer {
    pub fn new(pending: Pending, enabled: bool) -> Self {
        AckLayer { pending, enabled }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> AckService<S> {
        AckService {
            inner,
            pending: self.pending.clone(),
            enabled: self.enabled,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AckService<S> {
    inner: S,
    pending: Pending,
    enabled: bool,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>, Response = Ack> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    Args: Send + 'static,
{
    type Response = Ack;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<Ack, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        // Shared with the worker's lifecycle layer (inside this one), which
        // sets the attempt and the final status: read once the job ends, as
        // apalis's layer does.
        let ctx = task.ctx().clone();
        let future = self.inner.call(task);
        let (pending, enabled) = (self.pending.clone(), self.enabled);
        async move {
            let result = future.await.map_err(Into::into);
            if !enabled || matches!(result, Ok(Ack::Committed)) {
                return result;
            }
            match ctx.task_id() {
                Some(task_id) => pending.push(TaskResult {
                    task_id: task_id.clone(),
                    attempt: ctx.attempt(),
                    status: ctx.status(),
                    // What apalis's JSON codec makes of the handler's `()`.
                    result: result
                        .as_ref()
                        .map(|_| serde_json::Value::Null)
                        .map_err(ToString::to_string),
                }),
                // apalis-postgres gives every job an id; without one there
                // is no row to acknowledge.
                None => tracing::warn!("a job without an id: not acknowledged"),
            }
            result
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis_core::task::{status::Status, task_id::TaskId};

    /// The acknowledgement is serialised as apalis's own: the statement
    /// (`handle_result.sql`) reads `task_id`, `attempt`, `status` and
    /// `result` from it, and stores `result` as `last_result`.
    #[test]
    fn an_acknowledgement_is_what_apalis_sends() {
        let id: TaskId = "01JDQ4K8Z7V6W2Y3X4C5B6N7M8".parse().unwrap();
        let ok: Payload = TaskResult {
            task_id: id.clone(),
            attempt: 1,
            status: Status::Done,
            result: Ok(serde_json::Value::Null),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({
                "task_id": "01JDQ4K8Z7V6W2Y3X4C5B6N7M8",
                "attempt": 1,
                "status": "Done",
                "result": { "Ok": null },
            })
        );
        let failed: Payload = TaskResult {
            task_id: id,
            attempt: 2,
            status: Status::Failed,
            result: Err("worker stopping".into()),
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap()["result"],
            serde_json::json!({ "Err": "worker stopping" })
        );
    }
}
