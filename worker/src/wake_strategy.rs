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
//!
//! A notice reaches every worker process, and each used to fetch for it:
//! with two processes, one of the two fetches found nothing. Now each notice
//! has one owner among the live worker processes of its queue ([`Fleet`]:
//! the job id's hash picks one of them, in an order they all agree on).
//! The owner fetches at once ([`Wake::Now`]); the others only back it up
//! ([`Wake::Backup`]): if none of their own fetches has started within
//! `IDEMQ_QUEUE_BACKUP_FETCH_DELAY`, they fetch then, which covers an owner
//! whose job slots are all busy, that has just stopped, or that this
//! process's view of the fleet is wrong about. Under load a process's own
//! notices come faster than that delay, and its next fetch answers the
//! notices it backs up too: one fetch per notice for the fleet instead of
//! one per process.
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::{channel::mpsc, Stream, StreamExt};
use idemq_core::notifier::JOB_INSERT_CHANNEL;
use serde::Deserialize;
use sqlx::{postgres::PgListener, PgPool};
use tokio::time::{sleep, Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// What a notice asks of one queue loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Fetch now: the job is this process's to take, or nobody can tell
    /// whose it is (a notice without a job id, a reconnected listener).
    Now,
    /// Another live worker process takes the job: fetch only if no fetch
    /// has started within the backup delay.
    Backup,
}

/// What made a fetch due (the `reason` label of `idemq_queue_fetches_total`).
/// When several did, the fetch is counted under the last in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FetchReason {
    /// The loop's start.
    Start,
    /// The poll timer.
    Timer,
    /// Another process's notice, after the backup delay.
    Backup,
    /// The last fetch returned a full batch.
    FullBatch,
    /// A notice of this process's.
    Notice,
}

impl FetchReason {
    pub const ALL: [FetchReason; 5] = [
        FetchReason::Start,
        FetchReason::Timer,
        FetchReason::Backup,
        FetchReason::FullBatch,
        FetchReason::Notice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchReason::Start => "start",
            FetchReason::Timer => "timer",
            FetchReason::Backup => "backup",
            FetchReason::FullBatch => "full_batch",
            FetchReason::Notice => "notice",
        }
    }
}

/// Why a queue's worker should fetch: pending until a fetch starts.
pub struct FetchReasons<S> {
    notices: Option<S>,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    backup_delay: Duration,
    /// Armed by the first [`Wake::Backup`] since the last fetch started.
    backup: Option<Pin<Box<Sleep>>>,
    /// A reason came and no fetch has started since.
    due: Option<FetchReason>,
}

impl<S: Stream<Item = Wake> + Unpin> FetchReasons<S> {
    /// Due at once: the first fetch finds the jobs already waiting. A
    /// [`Wake::Backup`] makes a fetch due `backup_delay` later unless one
    /// starts before (zero: at once, as a [`Wake::Now`]).
    pub fn new(notices: S, interval: Duration, backup_delay: Duration) -> Self {
        FetchReasons {
            notices: Some(notices),
            interval,
            timer: Box::pin(sleep(interval)),
            backup_delay,
            backup: None,
            due: Some(FetchReason::Start),
        }
    }

    /// Drains the notices and polls the timers (registering `cx`'s waker on
    /// all of them, so that any wakes the worker), and says whether a fetch
    /// is due. Call it on every poll, also while a fetch is in flight: a
    /// notice drained then stays due for the next fetch.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(notices) = self.notices.as_mut() {
            loop {
                match notices.poll_next_unpin(cx) {
                    Poll::Ready(Some(Wake::Now)) => note(&mut self.due, FetchReason::Notice),
                    Poll::Ready(Some(Wake::Backup)) if self.backup_delay.is_zero() => {
                        note(&mut self.due, FetchReason::Notice);
                    }
                    Poll::Ready(Some(Wake::Backup)) => {
                        if self.backup.is_none() {
                            self.backup = Some(Box::pin(sleep(self.backup_delay)));
                        }
                    }
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
        if let Some(backup) = self.backup.as_mut() {
            if backup.as_mut().poll(cx).is_ready() {
                self.backup = None;
                note(&mut self.due, FetchReason::Backup);
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + self.interval;
            self.timer.as_mut().reset(next);
            // Registers the waker for the next tick.
            let _ = self.timer.as_mut().poll(cx);
            note(&mut self.due, FetchReason::Timer);
        }
        self.due.is_some()
    }

    /// A fetch starts now: it answers every reason seen so far, the
    /// notices it backs up included (their jobs committed before it).
    /// What made it due.
    pub fn fetch_started(&mut self) -> Option<FetchReason> {
        self.backup = None;
        self.due.take()
    }

    /// The fetch returned a full batch: more jobs may be waiting.
    pub fn batch_was_full(&mut self) {
        note(&mut self.due, FetchReason::FullBatch);
    }
}

/// `reason` is due too; the fetch counts under the higher of the two.
fn note(due: &mut Option<FetchReason>, reason: FetchReason) {
    *due = (*due).max(Some(reason));
}

/// This process's view of the worker processes that take each queue: whose
/// a notice is. Refreshed from apalis's registrations (`apalis.workers`,
/// whose `last_seen` each queue loop's heartbeat keeps fresh): a process is
/// live while its heartbeat is younger than the lease, as apalis's orphan
/// sweep counts it. Every process sorts the same names and hashes the same
/// job id, so with the same view they pick the same owner; views that
/// differ for a moment (a process starting or stopping) give a notice two
/// owners (one fetch too many) or none (the backup fetch takes it).
#[derive(Debug)]
pub struct Fleet {
    /// This process (`instance_name`: the part of its workers' names after
    /// the `@`).
    me: String,
    /// Live processes per queue, sorted; empty until first read.
    queues: HashMap<String, Vec<String>>,
}

impl Fleet {
    pub fn new(me: impl Into<String>) -> Self {
        Fleet {
            me: me.into(),
            queues: HashMap::new(),
        }
    }

    /// Replaces the view with these registrations: (queue, apalis worker
    /// id) of the live workers. This process counts whether or not its
    /// registration is among them yet.
    pub fn update<'a>(&mut self, live: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut queues: HashMap<String, Vec<String>> = HashMap::new();
        for (queue, worker) in live {
            if let Some(instance) = instance_of(worker) {
                queues
                    .entry(queue.to_owned())
                    .or_default()
                    .push(instance.to_owned());
            }
        }
        for members in queues.values_mut() {
            members.push(self.me.clone());
            members.sort_unstable();
            members.dedup();
        }
        self.queues = queues;
    }

    /// What a notice of a job `job_id` on `queue` asks of this process.
    pub fn wake_for(&self, queue: &str, job_id: Option<&str>) -> Wake {
        let (Some(members), Some(job_id)) = (self.queues.get(queue), job_id) else {
            return Wake::Now;
        };
        let Ok(count) = u64::try_from(members.len()) else {
            return Wake::Now;
        };
        if count == 0 {
            return Wake::Now;
        }
        let owner = usize::try_from(fnv1a(job_id.as_bytes()) % count).unwrap_or(0);
        if members.get(owner) == Some(&self.me) {
            Wake::Now
        } else {
            Wake::Backup
        }
    }
}

/// At a clean stop (every queue loop ended, so no heartbeat follows): this
/// process's registrations are dated one `lease` back, so that the other
/// processes' next view of the fleet ([`Fleet`], once per heartbeat
/// interval) leaves it out, instead of handing it a share of the notices
/// (answered only by their backup fetch) until its lease runs out. The
/// same age lets apalis's orphan sweep take at once whatever job it still
/// held, as it would after the lease. Returns how many were dated back.
pub async fn leave_fleet(pool: &PgPool, instance: &str, lease: Duration) -> Result<u64, sqlx::Error> {
    let ids = sqlx::query_scalar!("SELECT id FROM apalis.workers WHERE id LIKE '%@%'")
        .fetch_all(pool)
        .await?
        .into_iter()
        .filter(|id| instance_of(id) == Some(instance))
        .collect::<Vec<_>>();
    let left = sqlx::query!(
        "UPDATE apalis.workers SET last_seen = least(last_seen, now() - make_interval(secs => $2))
         WHERE id = ANY($1)",
        &ids,
        lease.as_secs_f64(),
    )
    .execute(pool)
    .await?;
    Ok(left.rows_affected())
}

/// The process of an apalis worker id `queue@instance`, or
/// `queue@instance.n` for a queue loop restarted after a database outage
/// (`supervise::queue_loop`).
fn instance_of(worker: &str) -> Option<&str> {
    let (_, instance) = worker.split_once('@')?;
    Some(match instance.rsplit_once('.') {
        Some((name, generation))
            if !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => instance,
    })
}

/// A hash every process computes alike (the standard library's may change
/// between builds, and two builds may run side by side in a rolling
/// deploy).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A job notice's payload (`idemq_core::notifier`: `{"job_type", "id"}`).
#[derive(Deserialize)]
struct JobNotice {
    job_type: String,
    id: Option<String>,
}

/// One LISTEN connection per worker process for every queue's wake-ups.
/// Postgres signals every listening backend of the database for every
/// notice, whatever its channel: apalis's `Pubsub` listened once per queue
/// loop (three backends per worker process, each woken by every notice).
/// Here one backend per process listens and this task hands each notice to
/// the loops of its queue, as [`Wake::Now`] or [`Wake::Backup`] ([`Fleet`]);
/// after a lost connection it wakes them all (notices may have been missed)
/// and listens again.
#[derive(Debug, Clone)]
pub struct JobNotices {
    subscribers: Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Wake>>>>>,
    fleet: Arc<Mutex<Fleet>>,
}

impl JobNotices {
    /// Starts the task that listens and reads the fleet (every `refresh`:
    /// processes whose heartbeat is younger than `lease` are live); it ends
    /// when `stop` is cancelled. `me` is this process's
    /// instance name.
    pub fn spawn(
        pool: PgPool,
        me: &str,
        refresh: Duration,
        lease: Duration,
        stop: CancellationToken,
    ) -> Self {
        let notices = JobNotices {
            subscribers: Arc::default(),
            fleet: Arc::new(Mutex::new(Fleet::new(me))),
        };
        let task = notices.clone();
        tokio::spawn(async move {
            let both =
                futures::future::join(task.listen(pool.clone()), task.read_fleet(pool, refresh, lease));
            tokio::select! {
                _ = both => {}
                () = stop.cancelled() => {}
            }
        });
        notices
    }

    /// The wake-ups of `queue`, for one worker loop.
    pub fn subscribe(&self, queue: &str) -> mpsc::UnboundedReceiver<Wake> {
        let (tx, rx) = mpsc::unbounded();
        if let Ok(mut s) = self.subscribers.lock() {
            s.entry(queue.to_owned()).or_default().push(tx);
        }
        rx
    }

    /// `None`: every queue, [`Wake::Now`].
    fn wake(&self, notice: Option<&JobNotice>) {
        let wake = match notice {
            None => Wake::Now,
            Some(n) => match self.fleet.lock() {
                Ok(fleet) => fleet.wake_for(&n.job_type, n.id.as_deref()),
                Err(_) => Wake::Now,
            },
        };
        if let Ok(mut s) = self.subscribers.lock() {
            for (q, senders) in s.iter_mut() {
                if notice.is_none_or(|n| n.job_type == *q) {
                    senders.retain(|tx| tx.unbounded_send(wake).is_ok());
                }
            }
        }
    }

    async fn listen(&self, pool: PgPool) {
        let session = idemq_core::db::session_connection(&pool, "listener");
        loop {
            match PgListener::connect_with(&session).await {
                Ok(mut listener) => match listener.listen(JOB_INSERT_CHANNEL).await {
                    Ok(()) => {
                        self.wake(None);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) => {
                                    if let Ok(notice) = serde_json::from_str::<JobNotice>(n.payload()) {
                                        self.wake(Some(&notice));
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

    /// Reads the live registrations every `refresh`. A failed read keeps
    /// the last view (the backup fetch covers what it gets wrong).
    async fn read_fleet(&self, pool: PgPool, refresh: Duration, lease: Duration) {
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live = sqlx::query!(
                r#"SELECT worker_type AS "queue!", id AS "worker!"
                   FROM apalis.workers
                   WHERE last_seen > now() - make_interval(secs => $1)"#,
                lease.as_secs_f64(),
            )
            .fetch_all(&pool)
            .await;
            match live {
                Ok(rows) => {
                    if let Ok(mut fleet) = self.fleet.lock() {
                        fleet.update(rows.iter().map(|r| (r.queue.as_str(), r.worker.as_str())));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the live worker processes"),
            }
            if pool.is_closed() {
                return;
            }
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

    const BACKUP: Duration = Duration::from_millis(20);

    struct CountingWaker(AtomicUsize);
    impl ArcWake for CountingWaker {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A loop's reasons, the sender of its notices, and a waker that
    /// counts its wake-ups.
    fn reasons(
        interval: Duration,
        backup: Duration,
    ) -> (
        mpsc::UnboundedSender<Wake>,
        FetchReasons<mpsc::UnboundedReceiver<Wake>>,
        Arc<CountingWaker>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        (
            tx,
            FetchReasons::new(rx, interval, backup),
            Arc::new(CountingWaker(AtomicUsize::new(0))),
        )
    }

    fn due(s: &mut FetchReasons<mpsc::UnboundedReceiver<Wake>>, wakes: &Arc<CountingWaker>) -> bool {
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        s.poll_due(&mut cx)
    }

    /// What a fetch does to the reasons: starts when due, answers them.
    fn fetch_if_due(s: &mut FetchReasons<mpsc::UnboundedReceiver<Wake>>, wakes: &Arc<CountingWaker>) -> bool {
        let due = due(s, wakes);
        if due {
            s.fetch_started();
        }
        due
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_notices_is_one_fetch_and_the_timer_goes_on() {
        let (tx, mut s, wakes) = reasons(Duration::from_millis(500), BACKUP);
        assert!(fetch_if_due(&mut s, &wakes), "the first fetch at start");
        assert!(!fetch_if_due(&mut s, &wakes), "nothing since");
        for _ in 0..5 {
            tx.unbounded_send(Wake::Now).unwrap();
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
        let (tx, mut s, wakes) = reasons(Duration::from_secs(60), BACKUP);
        assert!(fetch_if_due(&mut s, &wakes));
        // The fetch is in flight; the worker is polled again.
        tx.unbounded_send(Wake::Now).unwrap();
        assert!(due(&mut s, &wakes), "drained during the fetch");
        // The fetch ends (empty); the next poll must fetch again: its
        // snapshot may have predated the job.
        assert!(fetch_if_due(&mut s, &wakes), "the notice is not lost");
        assert!(!fetch_if_due(&mut s, &wakes));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_makes_the_next_fetch_due() {
        let (_tx, mut s, wakes) = reasons(Duration::from_secs(60), BACKUP);
        assert!(fetch_if_due(&mut s, &wakes));
        s.batch_was_full();
        assert!(fetch_if_due(&mut s, &wakes), "more may be waiting");
        assert!(!fetch_if_due(&mut s, &wakes), "a short batch: nothing more");
    }

    #[tokio::test(start_paused = true)]
    async fn another_process_s_notice_is_fetched_for_only_if_no_fetch_starts_within_the_backup_delay() {
        let (tx, mut s, wakes) = reasons(Duration::from_secs(60), BACKUP);
        assert!(fetch_if_due(&mut s, &wakes));

        // The owner is busy or gone: the backup fetch, once, after the delay.
        tx.unbounded_send(Wake::Backup).unwrap();
        tx.unbounded_send(Wake::Backup).unwrap();
        assert!(!fetch_if_due(&mut s, &wakes), "not at once");
        tokio::time::advance(BACKUP - Duration::from_millis(1)).await;
        assert!(!fetch_if_due(&mut s, &wakes));
        let before = wakes.0.load(Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            wakes.0.load(Ordering::SeqCst) > before,
            "the delay wakes the worker"
        );
        assert!(fetch_if_due(&mut s, &wakes), "the backup fetch");
        assert!(!fetch_if_due(&mut s, &wakes), "both notices answered");
        tokio::time::advance(BACKUP * 10).await;
        assert!(!fetch_if_due(&mut s, &wakes), "and nothing more");

        // A fetch of this process's own starts first: it answers both.
        tx.unbounded_send(Wake::Backup).unwrap();
        assert!(!fetch_if_due(&mut s, &wakes));
        tx.unbounded_send(Wake::Now).unwrap();
        assert!(fetch_if_due(&mut s, &wakes), "its own notice: at once");
        tokio::time::advance(BACKUP * 10).await;
        assert!(!fetch_if_due(&mut s, &wakes), "no backup fetch after it");

        // One that arrives while a fetch is in flight outlives that fetch.
        tx.unbounded_send(Wake::Now).unwrap();
        assert!(fetch_if_due(&mut s, &wakes));
        tx.unbounded_send(Wake::Backup).unwrap();
        assert!(!due(&mut s, &wakes), "drained during the fetch, not due yet");
        tokio::time::advance(BACKUP).await;
        assert!(fetch_if_due(&mut s, &wakes), "its backup fetch still comes");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_backup_delay_every_notice_is_fetched_for_at_once() {
        let (tx, mut s, wakes) = reasons(Duration::from_secs(60), Duration::ZERO);
        assert!(fetch_if_due(&mut s, &wakes));
        tx.unbounded_send(Wake::Backup).unwrap();
        assert!(fetch_if_due(&mut s, &wakes));
        assert!(!fetch_if_due(&mut s, &wakes));
    }

    fn fleet_of(me: &str, live: &[(&str, &str)]) -> Fleet {
        let mut fleet = Fleet::new(me);
        fleet.update(live.iter().copied());
        fleet
    }

    #[test]
    fn each_notice_has_one_owner_among_the_live_processes() {
        // Three processes, one of them restarted its payments loop (`.1`).
        let live = [
            ("payments", "payments@a"),
            ("payments", "payments@b.1"),
            ("payments", "payments@b"),
            ("payments", "payments@c"),
            ("approvals", "approvals@a"),
        ];
        let fleets = ["a", "b", "c"].map(|me| fleet_of(me, &live));
        let mut owned_by = [0; 3];
        for i in 0..3000 {
            let id = ulid::Ulid::from_parts(1_700_000_000_000 + i, u128::from(i) * 7919).to_string();
            let owners = fleets
                .iter()
                .map(|f| f.wake_for("payments", Some(&id)))
                .collect::<Vec<_>>();
            let now = owners.iter().filter(|w| **w == Wake::Now).count();
            assert_eq!(now, 1, "one owner for {id}: {owners:?}");
            if let Some(owner) = owners.iter().position(|w| *w == Wake::Now) {
                owned_by[owner] += 1;
            }
        }
        assert!(
            owned_by.iter().all(|n| *n > 800),
            "the notices are shared about evenly: {owned_by:?}"
        );
        // Only `a` takes approvals so far; `b` and `c` are not registered
        // there yet, but count themselves: two owners, never none.
        let approvals = fleets
            .iter()
            .filter(|f| f.wake_for("approvals", Some("01HZX")) == Wake::Now)
            .count();
        assert!((1..=2).contains(&approvals), "{approvals}");
    }

    #[test]
    fn a_notice_nobody_can_place_is_fetched_for_at_once() {
        let fleet = fleet_of("a", &[("payments", "payments@a"), ("payments", "payments@b")]);
        assert_eq!(fleet.wake_for("payments", None), Wake::Now, "no job id");
        assert_eq!(
            fleet.wake_for("meter_readings", Some("x")),
            Wake::Now,
            "a queue with no live worker read yet"
        );
        assert_eq!(
            Fleet::new("a").wake_for("payments", Some("x")),
            Wake::Now,
            "before the first read"
        );
        let alone = fleet_of("a", &[("payments", "payments@a")]);
        for id in ["1", "2", "3", "4"] {
            assert_eq!(
                alone.wake_for("payments", Some(id)),
                Wake::Now,
                "alone, every notice"
            );
        }
    }

    #[test]
    fn a_worker_id_names_its_process() {
        assert_eq!(instance_of("payments@host-1-01ABC"), Some("host-1-01ABC"));
        assert_eq!(instance_of("payments@host-1-01ABC.2"), Some("host-1-01ABC"));
        assert_eq!(
            instance_of("payments@web.example-1-01ABC"),
            Some("web.example-1-01ABC")
        );
        assert_eq!(
            instance_of("payments@web.example-1-01ABC.12"),
            Some("web.example-1-01ABC")
        );
        assert_eq!(instance_of("not-ours"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_fetch_knows_what_made_it_due() {
        let (tx, mut s, wakes) = reasons(Duration::from_millis(500), BACKUP);
        let next = |s: &mut FetchReasons<_>| {
            let due = due(s, &wakes);
            let reason = s.fetch_started();
            assert_eq!(due, reason.is_some());
            reason
        };
        assert_eq!(next(&mut s), Some(FetchReason::Start));
        assert_eq!(next(&mut s), None);
        tx.unbounded_send(Wake::Backup).unwrap();
        assert!(!due(&mut s, &wakes), "drained: the backup delay starts");
        tokio::time::advance(BACKUP).await;
        assert_eq!(next(&mut s), Some(FetchReason::Backup));
        tx.unbounded_send(Wake::Backup).unwrap();
        tx.unbounded_send(Wake::Now).unwrap();
        assert_eq!(next(&mut s), Some(FetchReason::Notice), "its own notice outranks");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(next(&mut s), Some(FetchReason::Timer));
        s.batch_was_full();
        assert_eq!(next(&mut s), Some(FetchReason::FullBatch));
    }

    #[test]
    fn every_reason_is_registered_in_the_metric() {
        assert_eq!(
            FetchReason::ALL.map(FetchReason::as_str),
            idemq_core::telemetry::FETCH_REASONS
        );
    }
}
