//! The maintenance service: one scheduling loop per duty, the same for every
//! duty (see the module docs for the rules).
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use idemq_core::Error;
use serde_json::Value;
use sqlx::PgPool;
use tokio::{sync::broadcast, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{claim, Duty, MaintenanceConfig, Schedule};

/// Heartbeats per takeover period: a runner is declared dead after missing
/// this many (the queue workers' ratio).
const HEARTBEATS_PER_TAKEOVER: u32 = crate::HEARTBEATS_PER_LEASE;
/// Spread of the fleet's claims, so that they do not all arrive in the same
/// millisecond.
const CLAIM_JITTER_MS: u64 = 50;
/// Signals kept for a slow receiver.
const SIGNAL_BUFFER: usize = 1024;

/// Why a tick is being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Schedule,
    CatchUp,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Schedule => "schedule",
            Why::CatchUp => "catch-up",
        }
    }
}

/// What happened to a tick in this process.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// This process won the claim and starts the run.
    Claimed,
    /// Another process holds the tick (running, or already run).
    ClaimedElsewhere,
    /// This process is still running an earlier tick of the duty: it leaves
    /// this one to the others.
    Busy,
    /// The run ended; its report as stored in `duty_ticks.result`.
    Finished(Value),
    /// The run (or its claim) failed; the next tick tries again.
    Failed(String),
    /// Catch-up at start: the latest due tick was run, or is running.
    NothingMissed,
}

/// One step of one tick of one duty, in the process `runner`.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub duty: &'static str,
    pub tick: DateTime<Utc>,
    pub why: Why,
    pub runner: String,
    pub step: Step,
}

/// The service's signals, for tests (after River's `TestSignals`): await a
/// step instead of reading logs. Sending costs nothing without a receiver.
#[derive(Debug)]
pub struct TestSignals {
    rx: broadcast::Receiver<Signal>,
    /// Everything received so far, in order.
    received: Vec<Signal>,
}

impl TestSignals {
    /// The next signal (sent after these signals were made, and not
    /// returned before) that `wanted` accepts, or `None` once `within` has
    /// passed. Every signal received on the way is kept in `received`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut wanted: impl FnMut(&Signal) -> bool,
    ) -> Option<Signal> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(signal)) => {
                    self.received.push(signal.clone());
                    if wanted(&signal) {
                        return Some(signal);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    }

    /// Every signal sent since these signals were made, without waiting.
    pub fn received(&mut self) -> &[Signal] {
        loop {
            match self.rx.try_recv() {
                Ok(signal) => self.received.push(signal),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return &self.received,
            }
        }
    }
}

type DutyLoop = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The maintenance service of one worker process.
#[derive(Debug, Clone)]
pub struct Service {
    pool: PgPool,
    /// This process's name in `duty_ticks.claimed_by`.
    runner: String,
    takeover_after: Duration,
    signals: broadcast::Sender<Signal>,
}

impl Service {
    pub fn new(pool: PgPool, runner: impl Into<String>, takeover_after: Duration) -> Self {
        Service {
            pool,
            runner: runner.into(),
            // Zero would make the heartbeat interval zero.
            takeover_after: takeover_after.max(Duration::from_millis(100)),
            signals: broadcast::channel(SIGNAL_BUFFER).0,
        }
    }

    /// Signals from now on.
    pub fn test_signals(&self) -> TestSignals {
        TestSignals {
            rx: self.signals.subscribe(),
            received: Vec::new(),
        }
    }

    /// The scheduling loop of each configured duty, named, to run until
    /// `stop` is cancelled. A loop ends with an error only if it cannot
    /// schedule at all; a failed run is logged and retried at the next tick.
    pub fn loops(&self, config: MaintenanceConfig, stop: CancellationToken) -> Vec<(&'static str, DutyLoop)> {
        let mut loops: Vec<(&'static str, DutyLoop)> = Vec::new();
        loops.push(self.runner_for(config.reconciler, stop.clone()).named_loop());
        match config.cleanup {
            Some(cleanup) => loops.push(self.runner_for(cleanup, stop).named_loop()),
            None => tracing::info!("cleanup disabled in this process (IDEMQ_CLEANUP_ENABLED=false)"),
        }
        loops
    }

    /// `duty` under this service's rules; runs stop at their next safe point
    /// once `stop` is cancelled.
    pub fn runner_for<D: Duty>(&self, duty: D, stop: CancellationToken) -> DutyRunner<D> {
        DutyRunner {
            service: self.clone(),
            duty: Arc::new(duty),
            running: Arc::new(tokio::sync::Mutex::new(())),
            stop,
        }
    }

    fn signal(&self, duty: &'static str, tick: DateTime<Utc>, why: Why, step: Step) {
        // No receiver (production): nothing is kept.
        let _ = self.signals.send(Signal {
            duty,
            tick,
            why,
            runner: self.runner.clone(),
            step,
        });
    }
}

/// Logs at info, or at debug for a quiet duty.
macro_rules! routine {
    ($quiet:expr, $($arg:tt)+) => {
        if $quiet {
            tracing::debug!($($arg)+)
        } else {
            tracing::info!($($arg)+)
        }
    };
}

/// One duty in one process: claims its ticks and runs those it wins, one at
/// a time.
#[derive(Debug)]
pub struct DutyRunner<D: Duty> {
    service: Service,
    duty: Arc<D>,
    /// Held for the length of a run: a tick that comes while a run is still
    /// going here is left to the others (or to nobody: the run in progress
    /// does the work).
    running: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
}

impl<D: Duty> Clone for DutyRunner<D> {
    fn clone(&self) -> Self {
        DutyRunner {
            service: self.service.clone(),
            duty: self.duty.clone(),
            running: self.running.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<D: Duty> DutyRunner<D> {
    /// Runs `tick` if this process wins its claim. `Ok(None)`: another
    /// process has it, or this one is still busy with an earlier tick.
    pub async fn run_tick(&self, tick: DateTime<Utc>, why: Why) -> Result<Option<D::Report>, Error> {
        let result = self.try_run_tick(tick, why).await;
        if let Err(e) = &result {
            self.service
                .signal(D::NAME, tick, why, Step::Failed(e.to_string()));
        }
        result
    }

    async fn try_run_tick(&self, tick: DateTime<Utc>, why: Why) -> Result<Option<D::Report>, Error> {
        let name = D::NAME;
        let service = &self.service;
        let why_str = why.as_str();
        let Ok(_running) = self.running.try_lock() else {
            routine!(D::QUIET, %tick, why = why_str, "{name} tick skipped: an earlier {name} is still running here");
            service.signal(name, tick, why, Step::Busy);
            return Ok(None);
        };
        let Some(claim) =
            claim::claim(&service.pool, name, tick, &service.runner, service.takeover_after).await?
        else {
            tracing::debug!(%tick, why = why_str, "{name} tick claimed by another worker");
            service.signal(name, tick, why, Step::ClaimedElsewhere);
            return Ok(None);
        };
        routine!(D::QUIET, %tick, why = why_str, "{name} tick claimed: running");
        service.signal(name, tick, why, Step::Claimed);
        let report = tokio::select! {
            report = self.duty.run_once(&service.pool, &self.stop) => report?,
            never = self.heartbeat(&claim) => match never {},
        };
        let result = serde_json::to_value(&report).map_err(|e| Error::Corrupt(e.to_string()))?;
        claim::finish(&service.pool, &claim, &result).await?;
        service.signal(name, tick, why, Step::Finished(result));
        Ok(Some(report))
    }

    /// Refreshes the claim until dropped (the run ended). A failed refresh
    /// is only logged: the run goes on, and at worst a takeover runs the
    /// tick a second time.
    async fn heartbeat(&self, claim: &claim::Claim) -> std::convert::Infallible {
        let every = self.service.takeover_after / HEARTBEATS_PER_TAKEOVER;
        let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            beats.tick().await;
            match claim::refresh(&self.service.pool, claim).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(tick = %claim.tick, "{} tick taken over by another worker while running here", D::NAME)
                }
                Err(e) => {
                    tracing::warn!(tick = %claim.tick, error = %e, "{} tick: refreshing the claim failed", D::NAME)
                }
            }
        }
    }

    /// At start: if the latest tick due by `now` was never run (no worker was
    /// up, or its runner died), run it, once.
    pub async fn catch_up(&self, now: DateTime<Utc>) -> Result<Option<D::Report>, Error> {
        let name = D::NAME;
        let Some(due) = self.duty.schedule().latest_due(now) else {
            return Ok(None);
        };
        let ran = match claim::last_tick(&self.service.pool, name).await? {
            Some(last) if last > due => None,
            // Claimed before: the claim only succeeds if that run never
            // finished and its runner stopped refreshing it.
            _ => self.run_tick(due, Why::CatchUp).await?,
        };
        if ran.is_none() {
            routine!(D::QUIET, %due, "{name} catch-up: nothing missed (the last due tick was run, or is running)");
            self.service.signal(name, due, Why::CatchUp, Step::NothingMissed);
        }
        Ok(ran)
    }

    fn named_loop(self) -> (&'static str, DutyLoop) {
        (D::NAME, Box::pin(self.run()))
    }

    /// The duty's loop: catches up a missed tick, then runs the schedule
    /// until `stop` is cancelled; waits for a run in progress (which stops
    /// at its next safe point).
    pub async fn run(self) -> anyhow::Result<()> {
        let name = D::NAME;
        let schedule = self.duty.schedule();
        match &schedule {
            Schedule::Cron(_) => tracing::info!(schedule = %schedule, "{name} scheduled (UTC)"),
            Schedule::Every(_) => tracing::info!(schedule = %schedule, "{name} scheduled"),
        }
        // Taken before the first wait, so that every tick after it is the
        // loop's and none falls between the two.
        let now = Utc::now();
        let mut runs = JoinSet::new();
        let catch_up = self.clone();
        runs.spawn(async move {
            if let Err(e) = catch_up.catch_up(now).await {
                tracing::error!(error = %e, "{name} catch-up failed; the next tick runs it");
            }
        });
        let mut after = now;
        loop {
            while runs.try_join_next().is_some() {}
            // Never a tick twice, never a burst of ticks missed while this
            // process was not scheduled: the first tick after both.
            let Some(next) = schedule.next_after(after.max(Utc::now())) else {
                tracing::warn!(schedule = %schedule, "{name} schedule has no more ticks");
                self.stop.cancelled().await;
                break;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default()
                + Duration::from_millis(rand::random_range(0..=CLAIM_JITTER_MS));
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let runner = self.clone();
            runs.spawn(async move {
                if let Err(e) = runner.run_tick(next, Why::Schedule).await {
                    tracing::error!(tick = %next, error = %e, "{name} tick failed; the next tick tries again");
                }
            });
            after = next;
        }
        while runs.join_next().await.is_some() {}
        Ok(())
    }
}
