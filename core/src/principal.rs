//! Callers and their bearer tokens. Only a token's SHA-256 is stored.
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Error;

/// An authenticated caller. Constructed only from a token lookup (or a
/// token creation), so holding one means the caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    id: Uuid,
    /// Shared: a principal is cloned for every authenticated request.
    name: std::sync::Arc<str>,
}

impl Principal {
    /// One that exists only inside a rehearsal's transaction, which is
    /// rolled back ([`crate::warmup`]).
    pub(crate) fn rehearsal(id: Uuid, name: &str) -> Principal {
        Principal {
            id,
            name: name.into(),
        }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// SHA-256 of a presented token: what is stored, and what is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The payload of a revocation notice (see [`REVOKED_CHANNEL`]).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

/// `pg_notify` channel of revocations: the payload is the hex SHA-256 of a
/// revoked token, so that every API process drops it from its cache at once.
pub const REVOKED_CHANNEL: &str = "idemq_token_revoked";

/// A token as `idemq token list` shows it: never its secret or hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: Uuid,
    pub principal: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every token, oldest first.
pub async fn list_tokens(pool: &PgPool) -> Result<Vec<TokenInfo>, Error> {
    Ok(sqlx::query_as!(
        TokenInfo,
        "SELECT t.id, p.name AS principal, t.created_at, t.revoked_at
         FROM api_tokens t JOIN principals p ON p.id = t.principal_id
         ORDER BY t.created_at, t.id",
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes the token whose id is `which`, or every live token of the
/// principal named `which`, and announces each revocation on
/// [`REVOKED_CHANNEL`] (delivered at commit). Returns the revoked ids.
pub async fn revoke(pool: &PgPool, which: &str) -> Result<Vec<Uuid>, Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        "UPDATE api_tokens t SET revoked_at = now()
         WHERE t.revoked_at IS NULL
           AND (t.id = $1 OR t.principal_id IN (SELECT id FROM principals WHERE name = $2))
         RETURNING t.id, t.token_sha256",
        which.parse::<Uuid>().ok(),
        which,
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        sqlx::query!(
            "SELECT pg_notify($1, $2)",
            REVOKED_CHANNEL,
            hex::encode(&row.token_sha256)
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// The principal owning an unrevoked token, if any.
pub async fn authenticate<'e>(
    db: impl sqlx::PgExecutor<'e>,
    hash: &TokenHash,
) -> Result<Option<Principal>, Error> {
    let row = sqlx::query!(
        "SELECT p.id, p.name FROM api_tokens t JOIN principals p ON p.id = t.principal_id
         WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL",
        &hash.0[..],
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| Principal {
        id: row.id,
        name: row.name.into(),
    }))
}

/// Creates the principal if needed and a new token for it; returns the token
/// (shown once, never stored).
pub async fn create_token(pool: &PgPool, name: &str) -> Result<(Principal, String), Error> {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("idq_{}", hex::encode(raw));
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO principals (name) VALUES ($1)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        name,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO api_tokens (token_sha256, principal_id) VALUES ($1, $2)",
        &TokenHash::of(&token).0[..],
        id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        Principal {
            id,
            name: name.into(),
        },
        token,
    ))
}
