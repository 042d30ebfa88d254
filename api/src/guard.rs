//! Steps 1 and 2 of the request path (docs/request-path.md) as one layer of
//! every authenticated route: authenticate (`auth`: the bearer token's
//! principal, or 401), then rate limit (`rate_limit`: one request from the
//! principal's budget of the route's class, or 429), before any handler
//! touches the database. Adds `RateLimit` to the answer and hands the
//! principal to the handlers in the request's extensions.
//!
//! A tower service rather than two `middleware::from_fn` layers: when the
//! token is cached and the limiter can answer without Postgres or a wait —
//! a flood's steady state — a 429 is answered within `call`, with no boxed
//! future, no clone of the route behind it, and no principal in the
//! extensions (`idemq bench limited` measures this path against
//! `/healthz`). Everything else takes the same steps in a future.
use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    pin::Pin,
    task::{Context, Poll},
};

use axum::{extract::Request, http::HeaderValue, response::Response};
use futures::future::Either;
use idemq_core::principal::{Principal, TokenHash};
use tower::{Layer, Service};

use crate::{
    auth,
    rate_limit::{Class, Subject, Verdict, RATELIMIT},
    AppState,
};

/// The layer: `route_layer(GuardLayer(state))`.
#[derive(Clone)]
pub struct GuardLayer(pub AppState);

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            state: self.0.clone(),
            inner,
        }
    }
}

/// See the module.
#[derive(Clone)]
pub struct Guard<S> {
    state: AppState,
    inner: S,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // 1. Authenticate: the cached principal, or (below) the lookup.
        let token = auth::bearer(&req).map(TokenHash::of);
        let Some(principal) = token.as_ref().and_then(|hash| self.state.tokens.get(hash)) else {
            let (state, inner) = (self.state.clone(), self.take_inner());
            return Either::Right(Box::pin(async move {
                let authenticated = auth::authenticate_uncached(&state, &req, token);
                match authenticated.await {
                    Ok(principal) => Ok(limit(state, inner, req, principal).await),
                    Err(refused) => Ok(refused),
                }
            }));
        };
        // 2. Rate limit, decided here when no database or wait is needed.
        let ratelimit = match self.state.limits.as_deref() {
            None => None,
            Some(limits) => {
                let subject = Subject::Principal(principal.id());
                match limits.check_now(Class::of(req.method()), subject, principal.name()) {
                    // The `rate-limit` line names the principal itself: the
                    // refusal skips recording the span's field (a re-serialisation).
                    Some(Verdict::Limited(refused)) => return Either::Left(ready(Ok(refused))),
                    Some(Verdict::Allowed(h)) => Some(h),
                    None => {
                        let (state, inner) = (self.state.clone(), self.take_inner());
                        return Either::Right(Box::pin(async move {
                            Ok(limit(state, inner, req, principal).await)
                        }));
                    }
                }
            }
        };
        let answer = admit(&mut self.inner, req, principal, ratelimit);
        Either::Right(Box::pin(answer))
    }
}

impl<S: Clone> Guard<S> {
    /// The inner service made ready by `poll_ready`, for a future to call
    /// (a clone stays here for the next request).
    fn take_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// Step 2 in a future (a lease from Postgres, or a wait for another request
/// leasing the same budget), then the handler.
async fn limit<S>(state: AppState, mut inner: S, req: Request, principal: Principal) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    let ratelimit = match state.limits.as_deref() {
        None => None,
        Some(limits) => {
            let subject = Subject::Principal(principal.id());
            let class = Class::of(req.method());
            match limits.check(class, subject, principal.name()).await {
                Verdict::Limited(refused) => return refused,
                Verdict::Allowed(h) => Some(h),
            }
        }
    };
    match admit(&mut inner, req, principal, ratelimit).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An admitted request: the principal on the request span and in the
/// extensions, the handler's answer with `RateLimit`. `inner` must be ready.
fn admit<S>(
    inner: &mut S,
    mut req: Request,
    principal: Principal,
    ratelimit: Option<HeaderValue>,
) -> impl Future<Output = Result<Response, Infallible>> + Send + 'static
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    tracing::Span::current().record("principal", principal.name());
    req.extensions_mut().insert(principal);
    let answer = inner.call(req);
    async move {
        let mut response = match answer.await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if let Some(h) = ratelimit {
            response.headers_mut().insert(RATELIMIT, h);
        }
        Ok(response)
    }
}
