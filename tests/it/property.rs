//! Property-style test of the payment path (issue 3): random interleavings of
//! requests over a few keys and invoices, some repeats, some mismatches (a
//! key reused for another invoice or another body), sent concurrently in
//! waves while workers run. Whatever the order:
//! - every invoice is paid at most once (one audit entry iff PAID);
//! - every key maps to exactly one operation, started by exactly one request;
//! - every answer is that operation (202 or its stored final response) or,
//!   for a request that differs from the key's operation, a 422;
//! - once all are final, every replay is the stored response, byte for byte.
//!
//! The seed is printed and named in every failure; set `IDEMQ_PROPERTY_SEED`
//! to replay a run.
use std::collections::{HashMap, HashSet};

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

const REQUESTS: usize = 200;
const KEYS: usize = 40;
const INVOICES: usize = 15;
const WAVES: usize = 4;
/// Share of requests that reuse a key with another request.
const MISMATCH: f64 = 0.15;
const DEFAULT_SEED: u64 = 0x1de9_0003;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Req {
    key: String,
    invoice: String,
    method: &'static str,
}

fn plan(seed: u64) -> Vec<Req> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Each key's usual request; several keys may share an invoice.
    let usual: Vec<usize> = (0..KEYS).map(|_| rng.random_range(0..INVOICES)).collect();
    (0..REQUESTS)
        .map(|_| {
            let k = rng.random_range(0..KEYS);
            let (mut invoice, mut method) = (usual[k], "card");
            if rng.random_bool(MISMATCH) {
                if rng.random_bool(0.5) {
                    invoice = (invoice + 1 + rng.random_range(0..INVOICES - 1)) % INVOICES;
                } else {
                    method = "cash";
                }
            }
            Req {
                key: format!("key-{k}"),
                invoice: format!("inv-{invoice}"),
                method,
            }
        })
        .collect()
}

async fn send(app: &TestApp, req: &Req) -> Answer {
    let r = app
        .send(
            Method::PATCH,
            &format!("/invoices/{}/mark-paid", req.invoice),
            &req.key,
            json!({ "paymentMethod": req.method }),
        )
        .await;
    Answer::read(r).await
}

/// id, status, paid_by_operation, audit entries, operations, succeeded, refused.
type InvoiceFacts = (String, String, Option<Uuid>, i64, i64, i64, i64);

/// The operation a key started, as the database has it.
#[derive(Debug)]
struct Op {
    id: String,
    owner: Req,
}

#[tokio::test]
async fn random_interleavings_pay_each_invoice_once_and_replay_verbatim() {
    let seed = std::env::var("IDEMQ_PROPERTY_SEED")
        .ok()
        .map(|s| s.parse().expect("IDEMQ_PROPERTY_SEED is a u64"))
        .unwrap_or(DEFAULT_SEED);
    eprintln!("property seed: {seed} (IDEMQ_PROPERTY_SEED={seed} to replay)");
    let ctx = format!("[seed {seed}]");
    let requests = plan(seed);

    let mut app = spawn_app().await;
    for j in 0..INVOICES {
        app.insert_invoice(&format!("inv-{j}")).await;
    }
    app.start_worker().await;
    app.start_worker().await;

    // Waves of concurrent requests; the workers run meanwhile.
    let mut answers: Vec<Answer> = Vec::with_capacity(REQUESTS);
    for wave in requests.chunks(REQUESTS.div_ceil(WAVES)) {
        answers.extend(futures::future::join_all(wave.iter().map(|r| send(&app, r))).await);
    }

    // Every key that was sent maps to exactly one operation.
    let rows: Vec<(String, Uuid, String, String)> = sqlx::query_as(
        "SELECT idempotency_key, id, request->'params'->>'id', request->'body'->>'paymentMethod'
         FROM operations",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let keys_sent: HashSet<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(rows.len(), keys_sent.len(), "{ctx} one operation per key");
    let ops: HashMap<String, Op> = rows
        .into_iter()
        .map(|(key, id, invoice, method)| {
            let method = if method == "card" { "card" } else { "cash" };
            let op = Op {
                id: format!("op_{}", id.simple()),
                owner: Req {
                    key: key.clone(),
                    invoice,
                    method,
                },
            };
            (key, op)
        })
        .collect();
    assert!(
        keys_sent.iter().all(|k| ops.contains_key(*k)),
        "{ctx} a key without an operation"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'payments'")
            .await,
        ops.len() as i64,
        "{ctx} one job per operation"
    );

    // Every answer is the key's operation, or a 422 for another request.
    let mut originals: HashMap<&str, usize> = HashMap::new();
    for (req, answer) in requests.iter().zip(&answers) {
        let op = &ops[&req.key];
        let what = format!("{ctx} {req:?} (operation {op:?}) answered {answer:?}");
        if *req != op.owner {
            assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
            assert_eq!(answer.replayed, None, "{what}");
            assert_eq!(
                answer.json()["type"],
                problem_type("idempotency-key-reused"),
                "{what}"
            );
            continue;
        }
        match answer.status {
            StatusCode::ACCEPTED => {
                assert_eq!(answer.json()["id"], op.id.as_str(), "{what}");
                assert_eq!(
                    answer.location.as_deref(),
                    Some(format!("/operations/{}", op.id).as_str()),
                    "{what}"
                );
            }
            // Finished before this repeat arrived: the stored response.
            StatusCode::OK | StatusCode::CONFLICT => {
                assert_eq!(answer.replayed.as_deref(), Some("true"), "{what}")
            }
            _ => panic!("unexpected answer: {what}"),
        }
        if answer.replayed.is_none() {
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{what}");
            *originals.entry(req.key.as_str()).or_default() += 1;
        }
    }
    for key in &keys_sent {
        assert_eq!(
            originals.get(key),
            Some(&1),
            "{ctx} {key}: exactly one request started its operation"
        );
    }

    // Once every operation is final, replays are the stored response.
    let finals = futures::future::join_all(ops.values().map(|op| app.await_final(&op.id))).await;
    for done in &finals {
        assert!(
            done["status"] == "succeeded" || done["status"] == "failed",
            "{ctx} {done}"
        );
    }
    for op in ops.values() {
        let (status, content_type, body) = app.stored_response(&op.id).await;
        let stored = (StatusCode::from_u16(status as u16).unwrap(), content_type, body);
        let what = format!("{ctx} {op:?} stored {stored:?}");
        assert!(
            stored.0 == StatusCode::OK || stored.0 == StatusCode::CONFLICT,
            "{what}"
        );
        // Final answers received during the waves were these bytes already.
        for (req, answer) in requests.iter().zip(&answers) {
            if *req == op.owner && answer.status != StatusCode::ACCEPTED {
                assert_eq!(answer.status, stored.0, "{what}");
                assert_eq!(answer.content_type.as_deref(), Some(stored.1.as_str()), "{what}");
                assert_eq!(answer.body, stored.2.as_bytes(), "{what}");
            }
        }
        for _ in 0..2 {
            let replay = send(&app, &op.owner).await;
            assert_eq!(replay.status, stored.0, "{what}");
            assert_eq!(replay.replayed.as_deref(), Some("true"), "{what}");
            assert_eq!(replay.content_type.as_deref(), Some(stored.1.as_str()), "{what}");
            assert_eq!(replay.body, stored.2.as_bytes(), "{what}: {}", replay.text());
        }
    }

    // Every invoice is paid at most once: by the one succeeded operation.
    let invoices: Vec<InvoiceFacts> = sqlx::query_as(
        "SELECT i.id, i.status, i.paid_by_operation,
                (SELECT count(*) FROM audit_log a WHERE a.entity_id = i.id),
                (SELECT count(*) FROM operations o WHERE o.request->'params'->>'id' = i.id),
                (SELECT count(*) FROM operations o
                  WHERE o.request->'params'->>'id' = i.id AND o.status = 'succeeded'),
                (SELECT count(*) FROM operations o
                  WHERE o.request->'params'->>'id' = i.id AND o.status = 'failed'
                    AND o.response_status = 409)
         FROM invoices i ORDER BY i.id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(invoices.len(), INVOICES);
    for (id, status, paid_by, audits, ops_for, succeeded, refused) in invoices {
        let what = format!(
            "{ctx} invoice {id}: {status}, paid by {paid_by:?}, {audits} audit entries, \
             {ops_for} operations ({succeeded} succeeded, {refused} refused with 409)"
        );
        assert!(audits <= 1, "{what}");
        assert_eq!(audits == 1, status == "PAID", "{what}");
        assert_eq!(status == "PAID", ops_for > 0, "{what}");
        assert_eq!(succeeded, audits, "{what}");
        assert_eq!(succeeded + refused, ops_for, "{what}");
        if let Some(paid_by) = paid_by {
            let winner: String = sqlx::query_scalar(
                "SELECT status FROM operations WHERE id = $1 AND request->'params'->>'id' = $2",
            )
            .bind(paid_by)
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            assert_eq!(winner, "succeeded", "{what}");
        }
    }
    // No operation ended with anything but its business answer.
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE response_status >= 500")
            .await,
        0,
        "{ctx}"
    );
}
