//! The API process's one LISTEN connection, for both of its channels: the
//! finished operations that `Prefer: wait` requests wait for
//! ([`Waiters`]) and the revoked tokens ([`TokenCache`]).
//!
//! One connection, not one per channel: Postgres signals every listening
//! backend of the database for every notice, whatever its channel, and each
//! backend so woken reads the notice queue in a transaction of its own. A
//! second listener per API process cost one more wake-up per notice (the
//! latency bench sends about one notice per operation).
//!
//! A notice is a hint sent after its commit. After the listener has
//! (re)connected, notices sent meanwhile may have been lost: every waiter
//! looks again, and the token cache forgets every token. While the
//! connection is down the cached tokens are kept (a 429 stays free of the
//! database during an outage) and the waiters re-check on their timer.
use std::{sync::Arc, time::Duration};

use idemq_core::{
    finish_notice::FinishNotice,
    idempotency::FINISHED_CHANNEL,
    principal::{TokenHash, REVOKED_CHANNEL},
};
use sqlx::{postgres::PgListener, PgPool};

use crate::{auth::TokenCache, waiters::Waiters};

/// After a lost connection, the pause before the next attempt.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Starts the listener task; it reconnects by itself and ends when the token
/// cache is dropped (the app is gone).
pub fn spawn(pool: PgPool, waiters: Waiters, tokens: &Arc<TokenCache>) {
    let tokens = Arc::downgrade(tokens);
    tokio::spawn(async move {
        let session = idemq_core::db::session_connection(&pool, "listener");
        loop {
            match PgListener::connect_with(&session).await {
                Ok(mut listener) => match listener.listen_all([FINISHED_CHANNEL, REVOKED_CHANNEL]).await {
                    Ok(()) => {
                        let Some(cache) = tokens.upgrade() else { return };
                        cache.forget(None);
                        drop(cache);
                        waiters.wake_all();
                        tracing::info!("notice listener connected: cached tokens forgotten, waiters woken");
                        loop {
                            let received = listener.try_recv().await;
                            let Some(cache) = tokens.upgrade() else { return };
                            match received {
                                Ok(Some(n)) => match n.channel() {
                                    FINISHED_CHANNEL => {
                                        if let Some((id, finish)) = FinishNotice::parse(n.payload()) {
                                            waiters.wake(id, finish);
                                        }
                                    }
                                    // An unreadable payload: forget every token.
                                    REVOKED_CHANNEL => {
                                        cache.forget(TokenHash::from_hex(n.payload()).as_ref())
                                    }
                                    _ => {}
                                },
                                // Connection lost: reconnect (below), and
                                // forget and wake everyone then.
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(error = %e, "notice listener failed");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for finished operations and revoked tokens")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot connect the notice listener"),
            }
            waiters.wake_all();
            if tokens.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    });
}
