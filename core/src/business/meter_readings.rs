//! `POST /meter-readings`: under the contract's row lock; a reading equal to
//! the last one is allowed, below it is refused (422).
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Number};
use sqlx::{PgConnection, PgExecutor};

use super::{Actor, Audit, Outcome};
use crate::{problem::Problem, text::Text, Error};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordReading {
    pub contract_id: Text,
    /// A JSON number ≥ 0; equal to the last reading is allowed, below it is refused (422).
    pub reading: Number,
}

impl RecordReading {
    /// A reading is a finite JSON number ≥ 0.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self.reading.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 && !self.reading.to_string().starts_with('-') => Ok(()),
            _ => Err("reading must be a number greater than or equal to 0"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterReading {
    pub id: String,
    pub contract_id: String,
    pub reading: Number,
    pub recorded_at: DateTime<Utc>,
}

type ReadingRow = (i64, String, String, DateTime<Utc>);

fn to_reading((id, contract_id, reading, recorded_at): ReadingRow) -> Result<MeterReading, Error> {
    Ok(MeterReading {
        id: id.to_string(),
        contract_id,
        reading: reading
            .parse()
            .map_err(|_| Error::Corrupt(format!("meter reading {id} is not a number")))?,
        recorded_at,
    })
}

pub async fn record(conn: &mut PgConnection, actor: Actor, req: &RecordReading) -> Result<Outcome, Error> {
    let lock_started = std::time::Instant::now();
    let contract = sqlx::query_scalar!(
        "SELECT id FROM contracts WHERE id = $1 FOR UPDATE",
        req.contract_id.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    super::record_lock_wait("meter_reading.record", lock_started);
    if contract.is_none() {
        return Ok(Outcome::refused(
            Problem::new("contract-not-found", "Contract not found", 404)
                .detail(format!("There is no contract {}.", req.contract_id)),
        ));
    }
    let reading = req.reading.to_string();
    // $2 is text cast to numeric: the reading's exact digits, no float.
    let last = sqlx::query!(
        r#"SELECT reading::text AS "last!", $2::text::numeric < reading AS "below!"
         FROM meter_readings WHERE contract_id = $1 ORDER BY id DESC LIMIT 1"#,
        req.contract_id.as_str(),
        reading,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| (row.last, row.below));
    if let Some((last, true)) = last {
        return Ok(Outcome::refused(
            Problem::new("reading-below-last", "Reading is below the last one", 422).detail(format!(
                "The last reading of contract {} is {last}.",
                req.contract_id
            )),
        ));
    }
    let row = sqlx::query!(
        r#"INSERT INTO meter_readings (contract_id, reading, operation_id) VALUES ($1, $2::text::numeric, $3)
         RETURNING id, contract_id, reading::text AS "reading!", recorded_at"#,
        req.contract_id.as_str(),
        reading,
        actor.operation.uuid(),
    )
    .fetch_one(&mut *conn)
    .await
    .map(|r| (r.id, r.contract_id, r.reading, r.recorded_at))?;
    let saved = to_reading(row)?;
    let audit = Audit::new(
        actor,
        "meter_reading.record",
        "contract",
        &req.contract_id,
        json!({ "meterReadingId": saved.id, "reading": saved.reading }),
    );
    Ok(Outcome::success(201, &json!({ "meterReading": saved }))?.audited(audit))
}

/// Read model for `GET /contracts/{id}/meter-readings` (None: no such contract).
pub async fn list(conn: &mut PgConnection, contract_id: &str) -> Result<Option<Vec<MeterReading>>, Error> {
    let exists = sqlx::query_scalar!("SELECT id FROM contracts WHERE id = $1", contract_id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows: Vec<ReadingRow> = list_rows(&mut *conn, contract_id).await?;
    rows.into_iter()
        .map(to_reading)
        .collect::<Result<_, _>>()
        .map(Some)
}

async fn list_rows<'e>(db: impl PgExecutor<'e>, contract_id: &str) -> Result<Vec<ReadingRow>, Error> {
    Ok(sqlx::query!(
        r#"SELECT id, contract_id, reading::text AS "reading!", recorded_at FROM meter_readings
         WHERE contract_id = $1 ORDER BY id"#,
        contract_id,
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| (r.id, r.contract_id, r.reading, r.recorded_at))
    .collect())
}
