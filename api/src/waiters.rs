//! `Prefer: wait`: requests waiting for their operation to finish. The
//! process's LISTEN connection (`crate::notices`) receives every completion
//! (sent after the job's commit) and wakes only the requests waiting for
//! that id. A notice from the job path carries the finish as committed
//! (`idemq_core::finish_notice`): the request answers from it without
//! reading its operation again. A waiting request reads its operation only
//! for a bare-id notice, or if no notice came for a second.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use idemq_core::{
    finish_notice::FinishNotice,
    idempotency,
    operation::{Operation, OperationId},
    principal::Principal,
};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::ApiError;

/// The longest wait honoured; a larger `wait=N` is treated as this.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// A waiting request reads its operation again this often, in case its
/// completion notice was lost.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone)]
pub struct Waiters {
    waiting: Arc<Mutex<HashMap<Uuid, Vec<oneshot::Sender<Woken>>>>>,
}

/// Why a waiter was woken: its operation's finish (a notice that carries
/// it), or a reason to read the operation again (`None`: a bare-id notice,
/// a reconnected listener).
type Woken = Option<Arc<FinishNotice>>;

impl Waiters {
    /// A finished operation's notice (`crate::notices`): wakes its waiters,
    /// handing them the finish if the notice carries it.
    pub(crate) fn wake(&self, id: Uuid, finish: Option<FinishNotice>) {
        let senders = self.waiting.lock().ok().and_then(|mut w| w.remove(&id));
        let finish = finish.map(Arc::new);
        for s in senders.into_iter().flatten() {
            let _ = s.send(finish.clone());
        }
    }

    /// Notices may have been lost: every waiter looks again.
    pub(crate) fn wake_all(&self) {
        let all = self
            .waiting
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for s in all.into_values().flatten() {
            let _ = s.send(None);
        }
    }

    fn register(&self, id: Uuid) -> Registration<'_> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.entry(id).or_default().push(tx);
        }
        Registration {
            waiters: self,
            id,
            rx: Some(rx),
        }
    }

    fn forget_closed(&self, id: Uuid) {
        if let Ok(mut w) = self.waiting.lock() {
            if let Some(list) = w.get_mut(&id) {
                list.retain(|s| !s.is_closed());
                if list.is_empty() {
                    w.remove(&id);
                }
            }
        }
    }

    /// For a new request that waits: listen for `id` before the operation is
    /// recorded (flagged, see `NewOperation::announce_finish`), so that its
    /// completion notice cannot come first. Hand it to `wait_for`.
    pub fn expect(&self, id: OperationId) -> Registration<'_> {
        self.register(id.uuid())
    }

    /// Waits until the operation is final or `wait` has passed, then returns
    /// its current state (None: it no longer exists). The completion notice
    /// is a hint sent after the commit (`idemq_core::notifier`): if it is
    /// lost, the waiter looks again every `RECHECK_EVERY`; if it carries the
    /// finish, the operation as last read (or recorded) with the finish
    /// applied is the answer, without another read. `expected`: the
    /// operation was just recorded flagged, under that registration, as
    /// given (no first read needed).
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        principal: &Principal,
        op: OperationId,
        wait: Duration,
        mut expected: Option<(Registration<'_>, Operation)>,
    ) -> Result<Option<Operation>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut flagged = expected.is_some();
        // The operation as this principal last saw it, not final.
        let mut known: Option<Operation>;
        loop {
            let mut reg = match expected.take() {
                Some((reg, recorded)) => {
                    known = Some(recorded);
                    reg
                }
                None => {
                    // Register before reading, so a completion between the
                    // read and the wait is not missed.
                    let reg = self.register(op.uuid());
                    // The first read also asks for the completion notice
                    // (only waited-for operations are announced).
                    let current = if flagged {
                        idempotency::find(pool, principal, op).await?
                    } else {
                        flagged = true;
                        idempotency::watch(pool, principal, op).await?
                    };
                    if current.as_ref().is_none_or(|o| o.status.is_final())
                        || tokio::time::Instant::now() >= deadline
                    {
                        return Ok(current);
                    }
                    known = current;
                    reg
                }
            };
            let until = deadline.min(tokio::time::Instant::now() + RECHECK_EVERY);
            if let Some(rx) = reg.rx.as_mut() {
                // Told the finish: that is the answer. Told to look again,
                // or time to: read.
                if let Ok(Ok(Some(finish))) = tokio::time::timeout_at(until, rx).await {
                    if let Some(done) = known.take().and_then(|op| finish.apply(op)) {
                        return Ok(Some(done));
                    }
                }
            }
        }
    }
}

/// A waiter's place, from `Waiters::expect`.
pub struct Registration<'a> {
    waiters: &'a Waiters,
    id: Uuid,
    rx: Option<oneshot::Receiver<Woken>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.rx.take();
        self.waiters.forget_closed(self.id);
    }
}
