//! The read models for the frontend (issue 3): `GET /invoices/{id}`,
//! `GET /applications/{id}`, `GET /contracts/{id}/meter-readings`.
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.get(path).response().await
}

#[tokio::test]
async fn invoices_applications_and_readings_are_readable_and_unknown_ids_are_404() {
    let app = spawn_app().await;
    app.insert_invoice("inv-1").await;
    app.insert_application("app-1").await;
    app.insert_contract("c1").await;

    let r = get(&app, "/invoices/inv-1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let invoice: Value = r.json().await.unwrap();
    assert_eq!(invoice["invoice"]["id"], "inv-1");
    assert_eq!(invoice["invoice"]["status"], "UNPAID");
    assert_eq!(invoice["invoice"]["amountCents"], 5000);
    assert_eq!(invoice["invoice"]["paidAt"], Value::Null);

    let r = get(&app, "/applications/app-1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let application: Value = r.json().await.unwrap();
    assert_eq!(application["application"]["id"], "app-1");
    assert_eq!(application["application"]["status"], "PENDING");
    assert_eq!(application["application"]["version"], 1);
    assert_eq!(application["contract"], Value::Null);

    let r = get(&app, "/contracts/c1/meter-readings").await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["contractId"], "c1");
    assert_eq!(list["meterReadings"], Value::Array(vec![]));

    for path in [
        "/invoices/nope",
        "/applications/nope",
        "/contracts/nope/meter-readings",
        "/operations/nope",
        "/operations/op_0190a7c4f3e07d3a9b2c1d4e5f607182",
    ] {
        let problem = expect_problem(get(&app, path).await, StatusCode::NOT_FOUND, "not-found").await;
        assert!(problem["detail"].is_string(), "{path}: {problem}");
    }
    // Reads need a token like everything else.
    let r = app
        .client
        .get(format!("{}/invoices/inv-1", app.addr))
        .send()
        .await
        .unwrap();
    expect_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
