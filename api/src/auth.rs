//! Bearer-token authentication. Lookups are cached briefly so that the
//! common path (and later a 429) needs no database round trip. A revocation
//! reaches every process at once by NOTIFY (`idemq token revoke`); the
//! cache's TTL bounds a lost notice.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        RwLock,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::Request,
    http::header,
    response::{IntoResponse, Response},
};
use idemq_core::principal::{self, Principal, TokenHash};

use crate::{error::ApiError, rate_limit, AppState};

/// How long a token stays trusted after a lookup: a revoked token whose
/// notice was lost keeps working at most this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// Cache size bound: beyond it the cache starts over.
pub const TOKEN_CACHE_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<TokenHash, (Principal, Instant)>>,
    /// Bumped by every revocation notice: a lookup that started before one
    /// must not cache what it read (it may be the token just revoked).
    epoch: AtomicU64,
}

impl TokenCache {
    /// The principal of a token looked up less than [`TOKEN_CACHE_TTL`] ago.
    pub fn get(&self, hash: &TokenHash) -> Option<Principal> {
        let entries = self.entries.read().ok()?;
        let (p, at) = entries.get(hash)?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| p.clone())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Caches a lookup that started at `epoch`, unless a revocation came since.
    fn put(&self, hash: TokenHash, p: Principal, epoch: u64) {
        if let Ok(mut entries) = self.entries.write() {
            // Checked under the lock that `forget` takes too.
            if self.epoch() != epoch {
                return;
            }
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
            entries.insert(hash, (p, Instant::now()));
        }
    }

    /// Drops one token (`Some`: a revocation notice, `crate::notices`), or
    /// all of them (notices may have been lost).
    pub(crate) fn forget(&self, hash: Option<&TokenHash>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match hash {
            Some(h) => {
                entries.remove(h);
            }
            None => entries.clear(),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
pub fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Step 1 for a request whose token the cache does not hold, or without a
/// token: the bearer token's principal, or a ready 401. A token not in the
/// cache costs a database lookup, so such a request (and one without a
/// token) is first charged to its client IP's budget
/// (`rate_limit::charge_ip`): guessing tokens is limited, and a request that
/// fails authentication is limited per IP. (The cached case is
/// `crate::guard`'s, without a future; the request is read before the
/// future starts: it is not `Sync`, so the future must not hold it.)
pub fn authenticate_uncached<'a>(
    state: &'a AppState,
    req: &Request,
    token: Option<TokenHash>,
) -> impl Future<Output = Result<Principal, Response>> + Send + 'a {
    let charge = rate_limit::charge_ip(state, req);
    async move {
        if let Some(refused) = charge.await {
            return Err(refused);
        }
        let Some(hash) = token else {
            return Err(ApiError::Unauthorized.into_response());
        };
        let epoch = state.tokens.epoch();
        match principal::authenticate(&state.pool, &hash).await {
            Ok(Some(p)) => {
                state.tokens.put(hash, p.clone(), epoch);
                Ok(p)
            }
            Ok(None) => Err(ApiError::Unauthorized.into_response()),
            Err(e) => Err(ApiError::from(e).into_response()),
        }
    }
}
