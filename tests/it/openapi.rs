//! The OpenAPI document (issue 3).
use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// Every route of DESIGN.md's public listener.
const DESIGN_ROUTES: &[(&str, &str)] = &[
    ("patch", "/invoices/{id}/mark-paid"),
    ("patch", "/applications/{id}/approve"),
    ("patch", "/applications/{id}/reject"),
    ("post", "/meter-readings"),
    ("get", "/invoices/{id}"),
    ("get", "/applications/{id}"),
    ("get", "/contracts/{id}/meter-readings"),
    ("get", "/operations/{id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
];

async fn document(app: &TestApp) -> Value {
    let r = app
        .client
        .get(format!("{}/openapi.json", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    r.json().await.unwrap()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_served_routes() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented = operations(&doc);
    let expected: BTreeSet<_> = DESIGN_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    // Every documented operation is served (not the router's fallback 404/405).
    for (method, path) in &documented {
        let url = path.replace("{id}", "x");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = app.request(method.clone(), &url).send().await.unwrap();
        assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
        if r.status() == StatusCode::NOT_FOUND {
            let p: Value = r.json().await.unwrap();
            assert_ne!(
                p["detail"], "There is no such route.",
                "{method} {url} is not served"
            );
        }
    }
    // And what is not documented is not served.
    let r = app.request(Method::DELETE, "/invoices/x").send().await.unwrap();
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED);
    let r = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_problem(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn mutating_routes_document_headers_bodies_and_problems() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for (method, path) in [
        ("patch", "/invoices/{id}/mark-paid"),
        ("patch", "/applications/{id}/approve"),
        ("patch", "/applications/{id}/reject"),
        ("post", "/meter-readings"),
    ] {
        let op = &doc["paths"][path][method];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(params.contains(&"Idempotency-Key"), "{path}: {params:?}");
        assert!(params.contains(&"Prefer"), "{path}: {params:?}");
        assert!(
            op["requestBody"]["content"]["application/json"].is_object(),
            "{path}"
        );
        for status in ["202", "400", "401", "413", "422", "429", "503"] {
            assert!(op["responses"][status].is_object(), "{path} lacks {status}");
        }
        assert!(
            op["responses"]["202"]["headers"]["Location"].is_object(),
            "{path}"
        );
        assert!(
            op["responses"]["400"]["content"]["application/problem+json"].is_object(),
            "{path}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let problem = doc["components"]["schemas"]["Problem"]["description"]
        .as_str()
        .unwrap();
    for slug in [
        "idempotency-key-missing",
        "idempotency-key-reused",
        "invalid-body",
        "payload-too-large",
        "rate-limited",
        "invoice-already-paid",
        "application-not-pending",
        "reading-below-last",
        "operation-failed",
    ] {
        assert!(problem.contains(slug), "Problem schema does not name {slug}");
    }
    assert!(doc["components"]["schemas"]["MarkPaid"]["properties"]["paymentMethod"].is_object());
}
