//! The maintenance service's own rules, with a duty of the test's making (one
//! that runs until the test lets it finish): a run longer than the takeover
//! period keeps its claim by refreshing it, and a process still running a
//! duty leaves the next tick to the others. Observed through the service's
//! signals; the duties themselves are in cleanup.rs and fleet.rs.
use std::{sync::Arc, time::Duration};

use chrono::Utc;
use idemq_core::Error;
use idemq_worker::maintenance::{Duty, Schedule, Service, Step, Why};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Runs until the test adds a permit; reports how many runs it made.
#[derive(Clone)]
struct Gate {
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            open: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Duty for Gate {
    const NAME: &'static str = "test-gate";
    type Report = &'static str;

    fn schedule(&self) -> Schedule {
        Schedule::Every(Duration::from_secs(3600))
    }

    async fn run_once(&self, _pool: &PgPool, _stop: &CancellationToken) -> Result<&'static str, Error> {
        self.open.acquire().await.expect("the gate stays open").forget();
        Ok("let through")
    }
}

const TAKEOVER: Duration = Duration::from_secs(1);

async fn claimed_by(pool: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as("SELECT claimed_by, finished_at IS NOT NULL FROM duty_ticks WHERE duty = 'test-gate'")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn maintenance_a_run_longer_than_the_takeover_period_keeps_its_claim() {
    let db = fresh_db().await;
    let gate = Gate::new();
    let tick = Utc::now();
    let holder_service = Service::new(db.pool.clone(), "holder", TAKEOVER);
    let mut holder_signals = holder_service.test_signals();
    let holder = holder_service.runner_for(gate.clone(), CancellationToken::new());
    let run = tokio::spawn(async move { holder.run_tick(tick, Why::Schedule).await });
    holder_signals
        .wait_for(DEADLINE, |s| s.step == Step::Claimed)
        .await
        .expect("the holder claims the tick");

    // Three takeover periods later the holder is still running: its claim,
    // refreshed every period/5, is not free.
    tokio::time::sleep(TAKEOVER * 3).await;
    let other_service = Service::new(db.pool.clone(), "other", TAKEOVER);
    let mut other_signals = other_service.test_signals();
    let other = other_service.runner_for(gate.clone(), CancellationToken::new());
    // (Had it taken the claim over, it would be waiting at the gate.)
    let outcome = tokio::time::timeout(DEADLINE / 4, other.run_tick(tick, Why::CatchUp))
        .await
        .expect("the live holder's claim was taken over");
    assert!(outcome.unwrap().is_none());
    assert_eq!(
        other_signals.received().last().map(|s| s.step.clone()),
        Some(Step::ClaimedElsewhere)
    );
    assert_eq!(claimed_by(&db.pool).await, [("holder".to_owned(), false)]);

    gate.open.add_permits(1);
    assert_eq!(run.await.unwrap().unwrap(), Some("let through"));
    let finished = holder_signals
        .wait_for(DEADLINE, |s| matches!(s.step, Step::Finished(_)))
        .await
        .expect("the holder finishes");
    assert_eq!(finished.step, Step::Finished("let through".into()));
    assert_eq!(claimed_by(&db.pool).await, [("holder".to_owned(), true)]);
}

#[tokio::test]
async fn maintenance_a_claim_no_longer_refreshed_is_taken_over_after_the_period() {
    let db = fresh_db().await;
    let gate = Gate::new();
    let tick = Utc::now();
    // A runner that claimed the tick and stopped refreshing it (died): the
    // claim is taken over once the period has passed, not before.
    sqlx::query("INSERT INTO duty_ticks (duty, tick, claimed_by) VALUES ('test-gate', $1, 'dead')")
        .bind(tick)
        .execute(&db.pool)
        .await
        .unwrap();
    let service = Service::new(db.pool.clone(), "heir", TAKEOVER);
    let heir = service.runner_for(gate.clone(), CancellationToken::new());
    assert!(heir.run_tick(tick, Why::CatchUp).await.unwrap().is_none());
    eventually("the dead runner's claim is taken over", || async {
        gate.open.add_permits(1);
        let won = heir.run_tick(tick, Why::CatchUp).await.unwrap().is_some();
        if !won {
            // Not used: take the permit back.
            gate.open.acquire().await.unwrap().forget();
        }
        won
    })
    .await;
    assert_eq!(claimed_by(&db.pool).await, [("heir".to_owned(), true)]);
}

#[tokio::test]
async fn maintenance_a_process_still_running_a_duty_leaves_the_next_tick_to_the_others() {
    let db = fresh_db().await;
    let gate = Gate::new();
    let service = Service::new(db.pool.clone(), "busy", TAKEOVER);
    let mut signals = service.test_signals();
    let runner = service.runner_for(gate.clone(), CancellationToken::new());
    let first_tick = Utc::now();
    let first = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_tick(first_tick, Why::Schedule).await })
    };
    signals
        .wait_for(DEADLINE, |s| s.step == Step::Claimed)
        .await
        .expect("the first tick runs");

    let next_tick = first_tick + chrono::Duration::hours(1);
    assert!(runner.run_tick(next_tick, Why::Schedule).await.unwrap().is_none());
    let skipped = signals.wait_for(DEADLINE, |s| s.tick == next_tick).await.unwrap();
    assert_eq!(skipped.step, Step::Busy);
    // Not claimed: another process may take it.
    assert_eq!(claimed_by(&db.pool).await.len(), 1);

    gate.open.add_permits(1);
    assert!(first.await.unwrap().unwrap().is_some());
}

#[tokio::test]
async fn maintenance_the_worker_loops_stop_with_the_process() {
    let db = fresh_db().await;
    let config = idemq_worker::maintenance::MaintenanceConfig::from_worker_config(
        &test_worker_config(),
        Duration::from_secs(86_400),
    )
    .unwrap();
    assert!(config.cleanup.is_none(), "off in the test config");
    let service = Service::new(db.pool.clone(), "whole", config.takeover_after);
    let mut signals = service.test_signals();
    let stop = CancellationToken::new();
    let loops = service.loops(config, stop.clone());
    let names: Vec<&str> = loops.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["reconciler"]);
    let handles: Vec<_> = loops.into_iter().map(|(_, l)| tokio::spawn(l)).collect();
    // The reconciler's catch-up at start: the current interval's tick.
    let ran = signals
        .wait_for(DEADLINE, |s| matches!(s.step, Step::Finished(_)))
        .await
        .expect("the reconciler runs at start");
    assert_eq!((ran.duty, ran.why), ("reconciler", Why::CatchUp));
    stop.cancel();
    for h in handles {
        tokio::time::timeout(DEADLINE, h)
            .await
            .expect("the loop stops")
            .unwrap()
            .unwrap();
    }
}
