//! Rate limiting (GCRA) before any database work: per principal once
//! authenticated, per client IP before (against token guessing). Two route
//! classes, each one budget per principal shared by all its routes. Under
//! `IDEMQ_RATE_LIMIT_SCOPE=fleet` a principal's budget is leased from
//! Postgres (`fleet`); client IPs are always counted per process (an
//! unauthenticated request must not make the API write to Postgres).
pub mod fleet;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::Response,
};
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
    Quota, RateLimiter,
};
use idemq_core::problem::{CONTENT_TYPE, TYPE_BASE};
use uuid::Uuid;

use crate::{config::RateSpec, AppState};

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// How often idle keys are dropped from the keyed stores (many distinct IPs
/// must not grow memory without bound).
pub const SHRINK_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Every mutating route: every request counts, replays and 400s included.
    Sensitive,
    /// GETs and polling.
    Read,
}

impl Class {
    pub fn of(method: &Method) -> Class {
        if method == Method::GET || method == Method::HEAD {
            Class::Read
        } else {
            Class::Sensitive
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Sensitive => "sensitive",
            Class::Read => "read",
        }
    }
}

/// Who a budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Principal(Uuid),
    /// Requests whose token is not (yet) known good.
    Ip(IpAddr),
}

type Keyed = RateLimiter<Subject, DefaultKeyedStateStore<Subject>, DefaultClock, StateInformationMiddleware>;

struct ClassLimiter {
    spec: RateSpec,
    limiter: Keyed,
    /// `RateLimit-Policy`, the same for every answer of the class.
    policy: HeaderValue,
    /// `idemq_rate_limited_total{class}`, looked up once.
    rejected: metrics::Counter,
    /// The last 429's varying parts: a flood's refusals share their
    /// `Retry-After` for a second, so they are written once a second.
    last_refusal: Mutex<Option<Refusal>>,
}

impl ClassLimiter {
    fn new(class: Class, spec: RateSpec) -> Self {
        let rejected = metrics::counter!("idemq_rate_limited_total", "class" => class.as_str());
        rejected.absolute(0);
        ClassLimiter {
            spec,
            limiter: RateLimiter::keyed(quota(&spec)).with_middleware(),
            policy: policy(class, &spec),
            rejected,
            last_refusal: Mutex::default(),
        }
    }

    /// The body, `Retry-After` and `RateLimit` of a 429 of this class.
    fn refusal(&self, class: Class, retry_after: u64) -> Refusal {
        let mut last = self.last_refusal.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(r) if r.retry_after == retry_after => r.clone(),
            _ => {
                let r = Refusal::new(class, retry_after);
                *last = Some(r.clone());
                r
            }
        }
    }
}

/// What a 429 says that depends on its delay (cheap to clone: shared bytes).
#[derive(Clone)]
struct Refusal {
    retry_after: u64,
    body: Bytes,
    retry_after_header: HeaderValue,
    ratelimit: HeaderValue,
}

impl Refusal {
    fn new(class: Class, retry_after: u64) -> Self {
        let name = class.as_str();
        // The problem document written directly (fixed words and numbers
        // only): this is the path a flood takes.
        let body = format!(
            "{{\"type\":\"{TYPE_BASE}rate-limited\",\"title\":\"Too many requests\",\"status\":429,\
             \"detail\":\"The {name} budget is used up; retry in {retry_after} s.\"}}"
        );
        Refusal {
            retry_after,
            body: Bytes::from(body),
            retry_after_header: HeaderValue::from(retry_after),
            ratelimit: field(&format!("\"{name}\";r=0;t={retry_after}")),
        }
    }
}

/// The answer of a check: headers for a success, or a ready 429.
pub enum Verdict {
    Allowed(HeaderValue),
    Limited(Response),
}

pub struct Limits {
    sensitive: ClassLimiter,
    read: ClassLimiter,
    clock: DefaultClock,
    /// Fleet scope: principals' budgets leased from Postgres. The
    /// per-process limiters still count what the fleet admits, so that a
    /// fallback (Postgres unreachable) starts from this process's history.
    fleet: Option<fleet::Fleet>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("sensitive", &self.sensitive.spec)
            .field("read", &self.read.spec)
            .finish()
    }
}

fn quota(spec: &RateSpec) -> Quota {
    let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(spec.interval().max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl Limits {
    /// With a pool, principals' budgets hold for the fleet.
    pub fn new(sensitive: RateSpec, read: RateSpec, fleet_pool: Option<sqlx::PgPool>) -> Arc<Self> {
        let limits = Arc::new(Limits {
            sensitive: ClassLimiter::new(Class::Sensitive, sensitive),
            read: ClassLimiter::new(Class::Read, read),
            clock: DefaultClock::default(),
            fleet: fleet_pool.map(fleet::Fleet::new),
        });
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SHRINK_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(limits) = weak.upgrade() else { break };
                for c in [&limits.sensitive, &limits.read] {
                    c.limiter.retain_recent();
                    c.limiter.shrink_to_fit();
                }
                if let Some(fleet) = &limits.fleet {
                    fleet.shrink();
                }
            }
        });
        limits
    }

    fn class(&self, class: Class) -> &ClassLimiter {
        match class {
            Class::Sensitive => &self.sensitive,
            Class::Read => &self.read,
        }
    }

    /// Takes one request from `subject`'s budget of `class`.
    pub async fn check(&self, class: Class, subject: Subject, who: &str) -> Verdict {
        if let (Some(fleet), Subject::Principal(id)) = (&self.fleet, subject) {
            let decision = fleet.take(class, &self.class(class).spec, id).await;
            if let Some(verdict) = self.fleet_verdict(class, subject, who, decision) {
                return verdict;
            }
        }
        self.check_local(class, subject, who)
    }

    /// [`Limits::check`] when it needs neither Postgres nor a wait (the
    /// process scope, a fleet slice in hand, the fleet's budget known to be
    /// spent): the same verdict, without a future. `None`: call `check`
    /// (nothing was taken).
    pub fn check_now(&self, class: Class, subject: Subject, who: &str) -> Option<Verdict> {
        if let (Some(fleet), Subject::Principal(id)) = (&self.fleet, subject) {
            let decision = fleet.try_take(class, &self.class(class).spec, id)?;
            return self.fleet_verdict(class, subject, who, decision);
        }
        Some(self.check_local(class, subject, who))
    }

    /// `None`: Postgres did not answer, the local count decides.
    fn fleet_verdict(
        &self,
        class: Class,
        subject: Subject,
        who: &str,
        decision: fleet::Decision,
    ) -> Option<Verdict> {
        match decision {
            fleet::Decision::Allowed { remaining, full_in } => {
                // Counted here too (see `fleet`); what it says is moot.
                let _ = self.class(class).limiter.check_key(&subject);
                Some(Verdict::Allowed(field(&format!(
                    "\"{}\";r={remaining};t={}",
                    class.as_str(),
                    ceil_secs(full_in)
                ))))
            }
            fleet::Decision::Limited { retry_in } => Some(Verdict::Limited(self.limited(
                class,
                ceil_secs(retry_in).max(1),
                who,
            ))),
            fleet::Decision::Unavailable => None,
        }
    }

    /// This process's own count (`process` scope, client IPs, fallback).
    fn check_local(&self, class: Class, subject: Subject, who: &str) -> Verdict {
        let c = self.class(class);
        let name = class.as_str();
        match c.limiter.check_key(&subject) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Seconds until the whole burst is available again.
                let refill = c.spec.interval() * (c.spec.burst.saturating_sub(remaining));
                Verdict::Allowed(field(&format!(
                    "\"{name}\";r={remaining};t={}",
                    ceil_secs(refill)
                )))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict::Limited(self.limited(class, ceil_secs(wait).max(1), who))
            }
        }
    }

    fn limited(&self, class: Class, retry_after: u64, who: &str) -> Response {
        let c = self.class(class);
        c.rejected.increment(1);
        tracing::warn!(
            class = class.as_str(),
            subject = who,
            retry_after,
            "rate-limit: request rejected"
        );
        let refusal = c.refusal(class, retry_after);
        let mut response = Response::new(Body::from(refusal.body));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        h.insert(header::RETRY_AFTER, refusal.retry_after_header);
        h.insert(RATELIMIT_POLICY, c.policy.clone());
        h.insert(RATELIMIT, refusal.ratelimit);
        response
    }

    /// `"sensitive";q=10;w=60` (draft-ietf-httpapi-ratelimit-headers-11).
    pub fn policy(&self, class: Class) -> HeaderValue {
        self.class(class).policy.clone()
    }
}

fn policy(class: Class, spec: &RateSpec) -> HeaderValue {
    let window = spec.interval() * spec.burst;
    field(&format!(
        "\"{}\";q={};w={}",
        class.as_str(),
        spec.burst,
        ceil_secs(window)
    ))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

fn field(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Charges the client IP of a request whose token is not known good,
/// before authentication looks it up (see `guard`). Client
/// IPs are counted per process. `Some`: the 429 to answer.
/// (The request is read before the future starts: it is not `Sync`, so the
/// future must not hold it.)
pub fn charge_ip<'a>(
    state: &'a AppState,
    req: &Request,
) -> impl Future<Output = Option<Response>> + Send + 'a {
    let class = Class::of(req.method());
    let ip = client_ip(req, state.trust_proxy);
    async move {
        let limits = state.limits.as_deref()?;
        match limits.check(class, Subject::Ip(ip), &ip.to_string()).await {
            Verdict::Limited(refused) => Some(refused),
            Verdict::Allowed(_) => None,
        }
    }
}

/// The client IP: the socket's peer, or with `trust_proxy` the last address
/// of `X-Forwarded-For` (the one our own proxy appended; earlier entries are
/// the client's word and can be forged).
pub fn client_ip(req: &Request, trust_proxy: bool) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if trust_proxy {
        if let Some(ip) = forwarded_for(req.headers()) {
            return ip;
        }
    }
    peer
}

fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    // The last hop of the last header line; an unparsable one is ignored
    // (the socket address is used) rather than trusting an earlier hop.
    let last_line = headers.get_all("x-forwarded-for").iter().next_back()?;
    last_line.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_then_429_with_headers() {
        let limits = Limits::new(
            RateSpec::parse("10/min").unwrap(),
            RateSpec::parse("1200/min").unwrap(),
            None,
        );
        let who = Subject::Principal(Uuid::nil());
        for i in 0..10 {
            match limits.check(Class::Sensitive, who, "t").await {
                Verdict::Allowed(h) => {
                    assert!(h
                        .to_str()
                        .unwrap()
                        .starts_with(&format!("\"sensitive\";r={};", 9 - i)))
                }
                Verdict::Limited(_) => panic!("request {i} limited"),
            }
        }
        let Verdict::Limited(r) = limits.check(Class::Sensitive, who, "t").await else {
            panic!("11th allowed")
        };
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["ratelimit-policy"], "\"sensitive\";q=10;w=60");
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=6).contains(&retry), "{retry}");
        assert_eq!(
            r.headers()["ratelimit"],
            format!("\"sensitive\";r=0;t={retry}").as_str()
        );
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        // Written by hand on this path: the same document `Problem` makes.
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let expected = idemq_core::problem::Problem::new("rate-limited", "Too many requests", 429)
            .detail(format!("The sensitive budget is used up; retry in {retry} s."))
            .to_json();
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        // Without a future (`guard`'s path): the same refusal, its parts
        // shared with the last one of the same delay.
        let Some(Verdict::Limited(again)) = limits.check_now(Class::Sensitive, who, "t") else {
            panic!("check_now allowed the 12th")
        };
        let again_retry: u64 = again.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=retry).contains(&again_retry), "{again_retry}");
        assert_eq!(
            again.headers()["ratelimit"],
            format!("\"sensitive\";r=0;t={again_retry}").as_str()
        );
        assert_eq!(again.headers()["ratelimit-policy"], "\"sensitive\";q=10;w=60");
        assert_eq!(again.headers()["content-type"], "application/problem+json");
        let body = axum::body::to_bytes(again.into_body(), 4096).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            idemq_core::problem::Problem::new("rate-limited", "Too many requests", 429)
                .detail(format!(
                    "The sensitive budget is used up; retry in {again_retry} s."
                ))
                .to_json()
        );
        // Other subjects and the other class are untouched.
        assert!(matches!(
            limits
                .check(Class::Sensitive, Subject::Principal(Uuid::max()), "u")
                .await,
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            limits.check(Class::Read, who, "t").await,
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn forwarded_for_takes_the_last_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, 10.0.0.2"));
        assert_eq!(forwarded_for(&h), Some("10.0.0.2".parse().unwrap()));
    }
}
