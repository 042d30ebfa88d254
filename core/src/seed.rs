//! Demo rows for `idemq dev` and benchmarks. Idempotent: re-running adds nothing twice.
use sqlx::PgPool;

use crate::Error;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub invoices: u64,
    pub applications: u64,
    pub contracts: u64,
}

/// `invoices` unpaid invoices `inv-1…`, a few applications `app-1…` and
/// contracts `ctr-1…`, with the fixture contract's defaults.
pub async fn seed(pool: &PgPool, invoices: i64, applications: i64, contracts: i64) -> Result<Seeded, Error> {
    let mut tx = pool.begin().await?;
    let inv = sqlx::query!(
        "INSERT INTO invoices (id, amount_cents)
         SELECT 'inv-' || n, 1000 + (n % 50) * 500 FROM generate_series(1, $1::bigint) n
         ON CONFLICT (id) DO NOTHING",
        invoices,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let apps = sqlx::query!(
        "INSERT INTO applications (id, applicant, room)
         SELECT 'app-' || n, 'Applicant ' || n, 'Room ' || n FROM generate_series(1, $1::bigint) n
         ON CONFLICT (id) DO NOTHING",
        applications,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let ctrs = sqlx::query!(
        "INSERT INTO contracts (id) SELECT 'ctr-' || n FROM generate_series(1, $1::bigint) n
         ON CONFLICT (id) DO NOTHING",
        contracts,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Seeded {
        invoices: inv,
        applications: apps,
        contracts: ctrs,
    })
}
