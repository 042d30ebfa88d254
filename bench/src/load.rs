//! Load generation: closed loops of C clients, each sending its next request
//! as soon as the previous one is answered.
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::stats::Samples;

/// One answer, as the scenario judges it.
pub struct Reply {
    /// HTTP status; 0 for a transport error.
    pub status: u16,
    /// The answer is what the scenario expects.
    pub ok: bool,
    /// Why not, for the report (first one kept).
    pub note: Option<String>,
}

impl Reply {
    pub fn expect(status: u16, ok: bool, what: impl FnOnce() -> String) -> Reply {
        Reply {
            status,
            ok,
            note: (!ok).then(what),
        }
    }

    pub fn transport(e: reqwest::Error) -> Reply {
        Reply {
            status: 0,
            ok: false,
            note: Some(format!("transport error: {e}")),
        }
    }
}

#[derive(Default)]
pub struct LoadResult {
    pub elapsed: Duration,
    pub statuses: BTreeMap<u16, u64>,
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    /// (completed at, latency), both in µs; completed at is from the start.
    pub events: Vec<(u64, u32)>,
}

impl LoadResult {
    pub fn count(&self) -> u64 {
        self.events.len() as u64
    }

    /// Answers per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.count() as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }

    pub fn samples(&self) -> Samples {
        let mut s = Samples::default();
        for &(_, lat) in &self.events {
            s.record(Duration::from_micros(u64::from(lat)));
        }
        s
    }

    /// Answers completed in `[from, to)` (offsets from the start): their
    /// count per second and their latencies.
    pub fn window(&self, from: Duration, to: Duration) -> (f64, Samples) {
        let (a, b) = (from.as_micros() as u64, to.as_micros() as u64);
        let mut s = Samples::default();
        for &(at, lat) in &self.events {
            if at >= a && at < b {
                s.record(Duration::from_micros(u64::from(lat)));
            }
        }
        let secs = to.saturating_sub(from).as_secs_f64().max(1e-6);
        (s.len() as f64 / secs, s)
    }

    pub fn statuses_text(&self) -> String {
        self.statuses
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("error×{n}")
                } else {
                    format!("{s}×{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Adds a later run of the same load (its time included). Event times
    /// stay relative to their own run: `window` does not apply to the sum.
    pub fn append(&mut self, other: LoadResult) {
        self.elapsed += other.elapsed;
        self.merge(other);
    }

    fn merge(&mut self, other: LoadResult) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.unexpected += other.unexpected;
        if self.first_unexpected.is_none() {
            self.first_unexpected = other.first_unexpected;
        }
        self.events.extend(other.events);
    }
}

/// `clients` closed loops until `stop` is set; `send(client, n)` sends the
/// client's n-th request. Requests in flight when `stop` is set finish.
pub async fn closed_loop<F, Fut>(clients: usize, stop: Arc<AtomicBool>, send: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let send = Arc::new(send);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let send = send.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut r = LoadResult::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let reply = send(c, n).await;
                let done = Instant::now();
                n += 1;
                r.events.push((
                    done.duration_since(started).as_micros() as u64,
                    u32::try_from(done.duration_since(t).as_micros()).unwrap_or(u32::MAX),
                ));
                *r.statuses.entry(reply.status).or_default() += 1;
                if !reply.ok {
                    r.unexpected += 1;
                    if r.first_unexpected.is_none() {
                        r.first_unexpected = reply.note;
                    }
                }
            }
            r
        });
    }
    let mut total = LoadResult::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            total.merge(r);
        }
    }
    total.elapsed = total
        .events
        .iter()
        .map(|&(at, _)| Duration::from_micros(at))
        .max()
        .unwrap_or_default();
    total
}

/// `closed_loop` for a fixed duration.
pub async fn closed_loop_for<F, Fut>(clients: usize, duration: Duration, send: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let r = closed_loop(clients, stop, send).await;
    timer.abort();
    r
}

/// An HTTP client for C concurrent clients against one host.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}
