//! The OpenAPI document (issue 3).
use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// Every route of the public listener (docs/routes-and-answers.md).
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
        let r = app.call(method.clone(), &url).response().await;
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
    let r = app.delete("/invoices/x").response().await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED);
    let r = app.get("/metrics").response().await;
    assert_problem(&r, StatusCode::NOT_FOUND);
}

/// Mutating routes: (method, path, has an `{id}`).
const MUTATING: &[(&str, &str, bool)] = &[
    ("patch", "/invoices/{id}/mark-paid", true),
    ("patch", "/applications/{id}/approve", true),
    ("patch", "/applications/{id}/reject", true),
    ("post", "/meter-readings", false),
];

/// A response of an operation, with a `$ref` to a component response resolved.
fn response<'a>(doc: &'a Value, op: &'a Value, status: &str) -> &'a Value {
    let r = &op["responses"][status];
    match r["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/responses/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            &doc["components"]["responses"][name]
        }
        None => r,
    }
}

fn parameter<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {op}"))
}

/// Asserts a problem+json response whose description names every slug.
fn assert_problem_response(doc: &Value, op: &Value, what: &str, status: &str, slugs: &[&str]) {
    let r = response(doc, op, status);
    assert!(
        r["content"]["application/problem+json"]["schema"].is_object(),
        "{what} {status}: {r}"
    );
    let description = r["description"].as_str().unwrap_or_default();
    for slug in slugs {
        assert!(
            description.contains(slug),
            "{what} {status} does not name {slug}: {description}"
        );
    }
}

#[tokio::test]
async fn mutating_routes_document_headers_bodies_and_problems() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for &(method, path, has_id) in MUTATING {
        let op = &doc["paths"][path][method];
        let what = format!("{method} {path}");
        let key = parameter(op, "Idempotency-Key");
        assert_eq!(key["in"], "header", "{what}");
        assert_eq!(key["required"], true, "{what}: the key must be declared required");
        assert!(key["schema"]["pattern"].is_string(), "{what}: {key}");
        assert_eq!(parameter(op, "Prefer")["in"], "header", "{what}");
        assert!(
            op["requestBody"]["content"]["application/json"].is_object(),
            "{what}"
        );
        let accepted = &response(&doc, op, "202")["headers"];
        for h in ["Location", "Idempotent-Replayed", "Preference-Applied"] {
            assert!(accepted[h].is_object(), "{what} 202 lacks {h}");
        }
        let done = if method == "post" { "201" } else { "200" };
        for h in ["Idempotent-Replayed", "Preference-Applied"] {
            assert!(
                response(&doc, op, done)["headers"][h].is_object(),
                "{what} {done} lacks {h}"
            );
        }
        let mut bad_request = vec![
            "idempotency-key-missing",
            "idempotency-key-empty",
            "idempotency-key-too-long",
            "idempotency-key-invalid-characters",
            "invalid-body",
        ];
        if has_id {
            bad_request.push("invalid-path");
        }
        assert_problem_response(&doc, op, &what, "400", &bad_request);
        assert_problem_response(&doc, op, &what, "401", &["unauthorized"]);
        assert_problem_response(&doc, op, &what, "413", &["payload-too-large"]);
        assert_problem_response(&doc, op, &what, "415", &["unsupported-media-type"]);
        assert_problem_response(&doc, op, &what, "422", &["idempotency-key-reused"]);
        assert_problem_response(&doc, op, &what, "429", &["rate-limited"]);
        assert_problem_response(&doc, op, &what, "500", &["internal-error", "errorId"]);
        assert_problem_response(&doc, op, &what, "503", &["service-unavailable"]);
        let limited = &response(&doc, op, "429")["headers"];
        for h in ["Retry-After", "RateLimit-Policy", "RateLimit"] {
            assert!(limited[h].is_object(), "{what} 429 lacks {h}");
        }
        assert!(
            response(&doc, op, "503")["headers"]["Retry-After"].is_object(),
            "{what} 503 lacks Retry-After"
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
        "invalid-path",
        "payload-too-large",
        "unsupported-media-type",
        "rate-limited",
        "internal-error",
        "service-unavailable",
        "invoice-already-paid",
        "application-not-pending",
        "reading-below-last",
        "operation-failed",
    ] {
        assert!(problem.contains(slug), "Problem schema does not name {slug}");
    }
    let payment_method = &doc["components"]["schemas"]["MarkPaid"]["properties"]["paymentMethod"];
    assert_eq!(payment_method["maxLength"], 100, "{payment_method}");
    assert_eq!(payment_method["minLength"], 1, "{payment_method}");
    assert!(payment_method["pattern"].is_string(), "{payment_method}");
}

#[tokio::test]
async fn every_route_with_an_id_documents_and_answers_invalid_path() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let with_id: Vec<_> = operations(&doc)
        .into_iter()
        .filter(|(_, path)| path.contains("{id}"))
        .collect();
    assert_eq!(with_id.len(), 7, "{with_id:?}");
    for (method, path) in &with_id {
        let op = &doc["paths"][path][method];
        let what = format!("{method} {path}");
        let id = parameter(op, "id");
        assert_eq!(id["in"], "path", "{what}");
        assert_eq!(id["required"], true, "{what}");
        assert_eq!(id["schema"]["minLength"], 1, "{what}: {id}");
        assert_eq!(id["schema"]["maxLength"], 200, "{what}: {id}");
        assert!(id["schema"]["pattern"].is_string(), "{what}: {id}");
        assert_problem_response(&doc, op, &what, "400", &["invalid-path"]);

        // The server agrees: 201 characters, or a control character, are
        // refused before anything else; 200 characters of 2 bytes each are
        // not (maxLength counts characters).
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let send = |id: String| {
            app.request(method.clone(), &path.replace("{id}", &id))
                .header("Idempotency-Key", format!("k-{}", uuid::Uuid::new_v4().simple()))
                .json(&serde_json::json!({}))
                .send()
        };
        for bad in ["x".repeat(201), "a\u{1}b".into(), "a\u{85}b".into()] {
            let r = send(bad.clone()).await.unwrap();
            let p = expect_problem(r, StatusCode::BAD_REQUEST, "invalid-path").await;
            assert!(p["detail"].is_string(), "{what} {bad:?}: {p}");
        }
        let r = send("é".repeat(200)).await.unwrap();
        let answer = Answer::read(r).await;
        assert!(
            !answer.text().contains("invalid-path"),
            "{what}: 200 characters refused: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_body_not_declared_json_is_refused_with_415() {
    let app = spawn_app().await;
    let r = app
        .patch("/invoices/1/mark-paid")
        .key("key-415")
        .header("Content-Type", "text/plain")
        .body(r#"{"paymentMethod":"card"}"#)
        .response()
        .await;
    expect_problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    // A JSON media type with parameters, or a `+json` one, is JSON.
    for (n, content_type) in ["application/json; charset=utf-8", "application/merge-patch+json"]
        .into_iter()
        .enumerate()
    {
        let r = app
            .patch("/invoices/1/mark-paid")
            .key(&format!("key-json-{n}"))
            .header("Content-Type", content_type)
            .body(r#"{"paymentMethod":"card"}"#)
            .response()
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{content_type}");
    }
    // No body at all needs no content type (approve takes `{}` or nothing).
    let r = app
        .patch("/applications/a1/approve")
        .key("key-empty")
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn operation_ids_are_unique_and_links_name_existing_operations() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut ids = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let id = doc["paths"][&path][&method]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
            .to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} twice");
    }
    let mut links = 0;
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        for (_, r) in op["responses"].as_object().unwrap() {
            for (name, link) in r["links"].as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap();
                assert!(ids.contains(target), "{method} {path} link {name} → {target}");
                links += 1;
            }
        }
    }
    // GET → PATCH with the read id (3), and 202 → the operation (4).
    assert_eq!(links, 7);
}
