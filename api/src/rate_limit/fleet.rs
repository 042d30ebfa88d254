//! Fleet-wide budgets (`IDEMQ_RATE_LIMIT_SCOPE=fleet`). Each process leases
//! slices of a principal's budget from Postgres — one upsert per slice, GCRA
//! on the database clock (table `rate_limit_budgets`) — and spends them
//! locally. When the fleet's budget is spent, the lease answer says when the
//! next request is due, and until then this process answers 429 without
//! asking again: a flood costs one round trip per refill interval, not one
//! per request.
//!
//! Bounds: a slice is at most 1/20 of the burst (at least 1) and expires
//! after the time it represents, so in any window the fleet admits at most
//! one slice more than GCRA would; with the sensitive default (10/min) a
//! slice is one request and the budget is exact. Unspent slices are lost,
//! never lent back, so each process sizes its next slice by what it spent of
//! the last one (doubling while it runs out, shrinking to what it used when
//! one expires): a quiet process must not drain the fleet's budget with
//! slices it lets expire.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::config::RateSpec;
use sqlx::PgPool;
use uuid::Uuid;

use super::Class;

/// A lease slower than this counts as Postgres unreachable.
pub const LEASE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed lease, how long the per-process fallback is used before
/// Postgres is asked again (so an outage costs one attempt per second, not
/// one per request).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A slice is this fraction of the burst: the most the fleet can admit
/// beyond its budget in a window.
pub const SLICE_DIVISOR: u32 = 20;

pub enum Decision {
    Allowed {
        remaining: u32,
        full_in: Duration,
    },
    Limited {
        retry_in: Duration,
    },
    /// Postgres did not answer: the caller applies the per-process limit.
    Unavailable,
}

#[derive(Default)]
struct Slot {
    /// Leased and not yet spent, valid until `held_until`.
    held: u32,
    /// The size of the last lease, and of the next one to ask for.
    leased: u32,
    next_slice: u32,
    held_until: Option<Instant>,
    /// The fleet's budget was spent: 429 here until then.
    blocked_until: Option<Instant>,
    /// What the fleet had left after the last lease, and when it is whole.
    fleet_left: u32,
    full_at: Option<Instant>,
}

impl Slot {
    fn full_in(&self, now: Instant) -> Duration {
        self.full_at
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// One request from the slice in hand, or a 429 while the fleet's budget
    /// is spent; `None` (and nothing changed): a lease is needed.
    fn spend_locally(&mut self, spec: &RateSpec, now: Instant) -> Option<Decision> {
        if self.held > 0 && self.held_until.is_some_and(|until| now < until) {
            self.held -= 1;
            return Some(Decision::Allowed {
                remaining: (self.held + self.fleet_left).min(spec.burst),
                full_in: self.full_in(now),
            });
        }
        let until = self.blocked_until.filter(|until| now < *until)?;
        self.size_next_slice(spec);
        Some(Decision::Limited {
            retry_in: until - now,
        })
    }

    /// The last slice ran out (ask for more) or expired (ask for what was used).
    fn size_next_slice(&mut self, spec: &RateSpec) {
        let max_slice = (spec.burst / SLICE_DIVISOR).max(1);
        self.next_slice = if self.held == 0 {
            self.leased.saturating_mul(2)
        } else {
            self.leased - self.held
        }
        .clamp(1, max_slice);
        self.held = 0;
        self.leased = 0;
    }
}

type Slots = HashMap<(Uuid, Class), Arc<tokio::sync::Mutex<Slot>>>;

pub struct Fleet {
    pool: PgPool,
    /// One lock per budget: while one request leases, the others of the same
    /// principal and class wait for its answer instead of leasing too.
    slots: Mutex<Slots>,
    down_until: Mutex<Option<Instant>>,
    down: AtomicBool,
}

impl Fleet {
    pub fn new(pool: PgPool) -> Self {
        metrics::gauge!("idemq_rate_limit_fleet_fallback").set(0.0);
        Fleet {
            pool,
            slots: Mutex::default(),
            down_until: Mutex::default(),
            down: AtomicBool::new(false),
        }
    }

    /// Takes one request from `principal`'s fleet budget of `class`, if this
    /// process can tell without Postgres and without waiting: from the slice
    /// in hand, or a 429 while the fleet's budget is spent. `None`: ask
    /// [`Fleet::take`] (nothing was taken or changed).
    pub fn try_take(&self, class: Class, spec: &RateSpec, principal: Uuid) -> Option<Decision> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = slots.get(&(principal, class))?.try_lock().ok()?;
        s.spend_locally(spec, Instant::now())
    }

    /// Takes one request from `principal`'s fleet budget of `class`.
    pub async fn take(&self, class: Class, spec: &RateSpec, principal: Uuid) -> Decision {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry((principal, class)).or_default().clone()
        };
        let mut s = slot.lock().await;
        let now = Instant::now();
        if let Some(decision) = s.spend_locally(spec, now) {
            return decision;
        }
        s.size_next_slice(spec);
        if self.in_fallback(now) {
            return Decision::Unavailable;
        }
        let interval_us = i64::try_from(spec.interval().as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let slice = s.next_slice;
        // Takes up to $3 requests (capped by the burst $4) from the budget of
        // ($1, $2) whose interval is $5 µs; returns what was granted and how
        // far ahead of now the budget's `tat` is, in µs.
        let lease = async {
            let mut conn = self.pool.acquire().await?;
            let row = sqlx::query!(
            r#"INSERT INTO rate_limit_budgets AS b (principal_id, class, tat, granted)
VALUES ($1, $2, now() + least($3::int, $4::int)::bigint * $5::bigint * interval '1 microsecond', least($3, $4))
ON CONFLICT (principal_id, class) DO UPDATE SET
    granted = least(EXCLUDED.granted, greatest(0, floor(
        ($4::bigint * $5 - extract(epoch FROM greatest(b.tat, now()) - now()) * 1000000) / $5)))::int,
    tat = greatest(b.tat, now()) + least(EXCLUDED.granted, greatest(0, floor(
        ($4::bigint * $5 - extract(epoch FROM greatest(b.tat, now()) - now()) * 1000000) / $5)))::bigint
        * $5 * interval '1 microsecond'
RETURNING granted, (extract(epoch FROM tat - now()) * 1000000)::bigint AS "ahead_us!""#,
            principal,
            class.as_str(),
            i32::try_from(slice).unwrap_or(i32::MAX),
            i32::try_from(spec.burst).unwrap_or(i32::MAX),
            interval_us,
        )
        .fetch_one(&mut *conn)
            .await?;
            // Committed before the request goes on (behind a pooler the
            // release would commit it after the answer, the row locked till then).
            idemq_core::db::commit_checkout(&self.pool, &mut conn).await?;
            Ok::<_, sqlx::Error>(row)
        };
        let (granted, ahead_us) = match tokio::time::timeout(LEASE_TIMEOUT, lease).await {
            Ok(Ok(row)) => (row.granted, row.ahead_us),
            Ok(Err(e)) => return self.failed(&e.to_string()),
            Err(_) => return self.failed("no answer within the lease timeout"),
        };
        self.answered();
        // Times on the database clock, carried over to ours from after the
        // answer: a little late, so a Retry-After is never early.
        let after = Instant::now();
        let ahead = Duration::from_micros(ahead_us.max(0) as u64);
        let interval = Duration::from_micros(interval_us as u64);
        let used = (ahead_us.max(0) + interval_us - 1) / interval_us;
        s.fleet_left = u32::try_from(i64::from(spec.burst) - used).unwrap_or(0);
        s.full_at = Some(after + ahead);
        if granted > 0 {
            s.leased = granted as u32;
            s.held = granted as u32 - 1;
            s.held_until = Some(after + interval * granted as u32);
            s.blocked_until = None;
            Decision::Allowed {
                remaining: (s.held + s.fleet_left).min(spec.burst),
                full_in: ahead,
            }
        } else {
            // One request is due when `tat` is a burst minus one interval ahead.
            let due_in = ahead.saturating_sub(interval * spec.burst.saturating_sub(1));
            let due_in = due_in.max(Duration::from_millis(1));
            s.blocked_until = Some(after + due_in);
            Decision::Limited { retry_in: due_in }
        }
    }

    fn in_fallback(&self, now: Instant) -> bool {
        let until = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|u| now < u)
    }

    fn failed(&self, error: &str) -> Decision {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + RETRY_AFTER_FAILURE);
        if !self.down.swap(true, Ordering::Relaxed) {
            metrics::gauge!("idemq_rate_limit_fleet_fallback").set(1.0);
            tracing::error!(
                error,
                "rate-limit: postgres unreachable, falling back to per-process budgets until it answers"
            );
        }
        Decision::Unavailable
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            metrics::gauge!("idemq_rate_limit_fleet_fallback").set(0.0);
            tracing::warn!("rate-limit: postgres answers again, fleet-wide budgets restored");
        }
    }

    /// Drops the budgets nobody is using (memory bound).
    pub fn shrink(&self) {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().map_or(true, |s| {
                    s.held_until.is_some_and(|t| now < t) || s.blocked_until.is_some_and(|t| now < t)
                })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `try_take` decides without Postgres, and that it changes
    /// nothing when it cannot decide (the lease then sizes the slice).
    #[test]
    fn a_slot_spends_its_slice_refuses_while_blocked_and_otherwise_leaves_it_to_the_lease() {
        let spec = RateSpec::parse("100/min").unwrap();
        let now = Instant::now();
        let mut s = Slot {
            held: 2,
            leased: 3,
            held_until: Some(now + Duration::from_secs(1)),
            fleet_left: 50,
            full_at: Some(now + Duration::from_secs(30)),
            ..Slot::default()
        };
        let Some(Decision::Allowed { remaining, full_in }) = s.spend_locally(&spec, now) else {
            panic!("the slice in hand was not spent")
        };
        assert_eq!((s.held, remaining, full_in), (1, 51, Duration::from_secs(30)));
        // Expired: a lease is needed, and the slot is as it was.
        let later = now + Duration::from_secs(2);
        assert!(s.spend_locally(&spec, later).is_none());
        assert_eq!((s.held, s.leased, s.next_slice), (1, 3, 0));
        // The fleet's budget is spent: 429 until then, the next slice resized.
        s.blocked_until = Some(later + Duration::from_secs(5));
        let Some(Decision::Limited { retry_in }) = s.spend_locally(&spec, later) else {
            panic!("not refused while blocked")
        };
        assert_eq!(retry_in, Duration::from_secs(5));
        assert_eq!((s.held, s.leased, s.next_slice), (0, 0, 2));
    }
}
