//! `Prefer: wait`: requests waiting for their operation to finish. The
//! process's LISTEN connection (`crate::notices`) receives every completion
//! (sent after the job's commit) and wakes only the requests waiting for
//! that id; a waiting request reads its operation again only if no notice
//! came for a second.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use idemq_core::{
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
    waiting: Arc<Mutex<HashMap<Uuid, Vec<oneshot::Sender<()>>>>>,
}

impl Waiters {
    /// A finished operation's notice (`crate::notices`): wakes its waiters.
    pub(crate) fn wake(&self, id: Uuid) {
        let senders = self.waiting.lock().ok().and_then(|mut w| w.remove(&id));
        for s in senders.into_iter().flatten() {
            let _ = s.send(());
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
            let _ = s.send(());
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
    /// lost, the waiter looks again every `RECHECK_EVERY`. `expected`: the
    /// operation was just recorded flagged, under that registration (no
    /// first read needed).
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        principal: &Principal,
        op: OperationId,
        wait: Duration,
        mut expected: Option<Registration<'_>>,
    ) -> Result<Option<Operation>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut flagged = expected.is_some();
        loop {
            let mut reg = match expected.take() {
                Some(reg) => reg,
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
                    reg
                }
            };
            let until = deadline.min(tokio::time::Instant::now() + RECHECK_EVERY);
            if let Some(rx) = reg.rx.as_mut() {
                // Notified, or time to look again: either way, read.
                let _ = tokio::time::timeout_at(until, rx).await;
            }
        }
    }
}

/// A waiter's place, from `Waiters::expect`.
pub struct Registration<'a> {
    waiters: &'a Waiters,
    id: Uuid,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.rx.take();
        self.waiters.forget_closed(self.id);
    }
}
