//! Bearer-token authentication. Lookups are cached briefly so that the
//! common path (and later a 429) needs no database round trip.
use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use idemq_core::principal::{self, Principal, TokenHash};

use crate::{error::ApiError, AppState};

/// How long a token stays trusted after a lookup: a revoked token keeps
/// working at most this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// Cache size bound: beyond it the cache starts over.
pub const TOKEN_CACHE_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<TokenHash, (Principal, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &TokenHash) -> Option<Principal> {
        let entries = self.entries.read().ok()?;
        let (p, at) = entries.get(hash)?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| p.clone())
    }

    fn put(&self, hash: TokenHash, p: Principal) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
            entries.insert(hash, (p, Instant::now()));
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: resolves the principal or answers 401.
pub async fn require_principal(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&req).ok_or(ApiError::Unauthorized)?;
    let hash = TokenHash::of(token);
    let principal = match state.tokens.get(&hash) {
        Some(p) => p,
        None => {
            let p = principal::authenticate(&state.pool, &hash)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            state.tokens.put(hash, p.clone());
            p
        }
    };
    tracing::Span::current().record("principal", principal.name());
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
