//! When a queue's worker looks for jobs: after a wake-up notice, after a
//! full batch, and on a timer. [`FetchReasons`] keeps the reasons;
//! [`crate::fetch_gate::FetchGate`] fetches only when one is pending.
//!
//! apalis fetches whenever its backend is polled with an empty buffer: after
//! every task it hands out and after every job that finishes (the worker's
//! task is woken, polls the backend, and the backend fetches). At a few jobs
//! in flight nearly all of those fetches came back empty. Here a fetch
//! needs a reason, and one fetch answers every reason seen before it
//! started:
//! - a notice (every pending notice is drained at once, so a burst is one
//!   fetch). A notice drained while a fetch is in flight stays pending: that
//!   fetch's snapshot may predate the job, so another fetch follows it. No
//!   wake-up is lost, and no fixed re-check is needed;
//! - a fetch that returned a full batch (more may be waiting);
//! - the timer, every `interval`: retries and delayed jobs send no notice,
//!   and a lost notice costs at most one interval;
//! - the start of the loop (jobs may be waiting already).
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{channel::mpsc, Stream, StreamExt};
use idemq_core::notifier::JOB_INSERT_CHANNEL;
use sqlx::{postgres::PgListener, PgPool};
use tokio::time::{sleep, Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// Why a queue's worker should fetch: pending until a fetch starts.
pub struct FetchReasons<S> {
    notices: Option<S>,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    /// A reason came and no fetch has started since.
    due: bool,
}

impl<S: Stream + Unpin> FetchReasons<S> {
    /// Due at once: the first fetch finds the jobs already waiting.
    pub fn new(notices: S, interval: Duration) -> Self {
        FetchReasons {
            notices: Some(notices),
            interval,
            timer: Box::pin(sleep(interval)),
            due: true,
        }
    }

    /// Drains the notices and polls the timer (registering `cx`'s waker on
    /// both, so that either wakes the worker), and says whether a fetch is
    /// due. Call it on every poll, also while a fetch is in flight: a notice
    /// drained then stays due for the next fetch.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(notices) = self.notices.as_mut() {
            loop {
                match notices.poll_next_unpin(cx) {
                    Poll::Ready(Some(_)) => self.due = true,
                    // The listener is gone: the timer alone finds jobs from
                    // now on.
                    Poll::Ready(None) => {
                        self.notices = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + self.interval;
            self.timer.as_mut().reset(next);
            // Registers the waker for the next tick.
            let _ = self.timer.as_mut().poll(cx);
            self.due = true;
        }
        self.due
    }

    /// A fetch starts now: it answers every reason seen so far.
    pub fn fetch_started(&mut self) {
        self.due = false;
    }

    /// The fetch returned a full batch: more jobs may be waiting.
    pub fn batch_was_full(&mut self) {
        self.due = true;
    }
}

/// One LISTEN connection per worker process for every queue's wake-ups.
/// Postgres signals every listening backend of the database for every
/// notice, whatever its channel: apalis's `Pubsub` listened once per queue
/// loop (three backends per worker process, each woken by every notice).
/// Here one backend per process listens and this task hands each notice to
/// the loops of its queue; after a lost connection it wakes them all (notices
/// may have been missed) and listens again.
#[derive(Debug, Clone, Default)]
pub struct JobNotices {
    subscribers: Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<()>>>>>,
}

impl JobNotices {
    /// Starts the listener task; it ends when `stop` is cancelled.
    pub fn spawn(pool: PgPool, stop: CancellationToken) -> Self {
        let me = JobNotices::default();
        let task = me.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = task.listen(pool) => {}
                () = stop.cancelled() => {}
            }
        });
        me
    }

    /// The wake-ups of `queue`, for one worker loop.
    pub fn subscribe(&self, queue: &str) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded();
        if let Ok(mut s) = self.subscribers.lock() {
            s.entry(queue.to_owned()).or_default().push(tx);
        }
        rx
    }

    fn wake(&self, queue: Option<&str>) {
        if let Ok(mut s) = self.subscribers.lock() {
            for (q, senders) in s.iter_mut() {
                if queue.is_none_or(|queue| queue == q) {
                    senders.retain(|tx| tx.unbounded_send(()).is_ok());
                }
            }
        }
    }

    async fn listen(&self, pool: PgPool) {
        loop {
            match PgListener::connect_with(&idemq_core::db::session_pool(&pool)).await {
                Ok(mut listener) => match listener.listen(JOB_INSERT_CHANNEL).await {
                    Ok(()) => {
                        self.wake(None);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) => {
                                    let queue = serde_json::from_str::<serde_json::Value>(n.payload())
                                        .ok()
                                        .and_then(|v| v["job_type"].as_str().map(str::to_owned));
                                    if let Some(queue) = queue {
                                        self.wake(Some(&queue));
                                    }
                                }
                                // Reconnected by sqlx: notices may have been lost.
                                Ok(None) => self.wake(None),
                                Err(e) => {
                                    tracing::warn!(error = %e, "job wake-up listener failed");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for job wake-ups"),
                },
                Err(e) => tracing::debug!(error = %e, "cannot connect the job wake-up listener"),
            }
            if pool.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use futures::task::ArcWake;

    use super::*;

    struct CountingWaker(AtomicUsize);
    impl ArcWake for CountingWaker {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn due(s: &mut FetchReasons<mpsc::UnboundedReceiver<u8>>, wakes: &Arc<CountingWaker>) -> bool {
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        s.poll_due(&mut cx)
    }

    /// What a fetch does to the reasons: starts when due, answers them.
    fn fetch_if_due(s: &mut FetchReasons<mpsc::UnboundedReceiver<u8>>, wakes: &Arc<CountingWaker>) -> bool {
        let due = due(s, wakes);
        if due {
            s.fetch_started();
        }
        due
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_notices_is_one_fetch_and_the_timer_goes_on() {
        let (tx, rx) = mpsc::unbounded();
        let mut s = FetchReasons::new(rx, Duration::from_millis(500));
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(fetch_if_due(&mut s, &wakes), "the first fetch at start");
        assert!(!fetch_if_due(&mut s, &wakes), "nothing since");
        for i in 0..5 {
            tx.unbounded_send(i).unwrap();
        }
        assert!(wakes.0.load(Ordering::SeqCst) > 0, "a notice wakes the worker");
        assert!(fetch_if_due(&mut s, &wakes), "the notices make a fetch due");
        assert!(
            !fetch_if_due(&mut s, &wakes),
            "all five were answered by one fetch"
        );
        // No fixed re-check after a notice: nothing until the timer.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!fetch_if_due(&mut s, &wakes));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(fetch_if_due(&mut s, &wakes), "the poll interval");
        assert!(!fetch_if_due(&mut s, &wakes));
        drop(tx);
        assert!(!fetch_if_due(&mut s, &wakes), "a closed stream is not a reason");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(fetch_if_due(&mut s, &wakes), "the timer goes on without notices");
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_during_a_fetch_makes_one_more_fetch_due() {
        let (tx, rx) = mpsc::unbounded();
        let mut s = FetchReasons::new(rx, Duration::from_secs(60));
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(fetch_if_due(&mut s, &wakes));
        // The fetch is in flight; the worker is polled again.
        tx.unbounded_send(1).unwrap();
        assert!(due(&mut s, &wakes), "drained during the fetch");
        // The fetch ends (empty); the next poll must fetch again: its
        // snapshot may have predated the job.
        assert!(fetch_if_due(&mut s, &wakes), "the notice is not lost");
        assert!(!fetch_if_due(&mut s, &wakes));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_makes_the_next_fetch_due() {
        let (_tx, rx) = mpsc::unbounded::<u8>();
        let mut s = FetchReasons::new(rx, Duration::from_secs(60));
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(fetch_if_due(&mut s, &wakes));
        s.batch_was_full();
        assert!(fetch_if_due(&mut s, &wakes), "more may be waiting");
        assert!(!fetch_if_due(&mut s, &wakes), "a short batch: nothing more");
    }
}
