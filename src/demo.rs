//! The back-office demo page (issue 12), served by `idemq dev` only, at
//! `/demo/`. Its files are the committed build of `clients/typescript`
//! (`page/index.html`, `dist/demo.js`, `dist/index.js`), compiled into the
//! binary so `cargo run -- dev` needs no Node. `idemq api` never mounts it.
use axum::{
    http::{header, HeaderValue},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

const INDEX_HTML: &str = include_str!("../clients/typescript/page/index.html");
const DEMO_JS: &str = include_str!("../clients/typescript/dist/demo.js");
const CLIENT_JS: &str = include_str!("../clients/typescript/dist/index.js");

/// Where the page's HTML takes the token (`<meta name="idemq-token" content="">`).
const TOKEN_SLOT: &str = r#"<meta name="idemq-token" content="">"#;

/// The page with `token` injected: a local dev page calls the API as the dev
/// principal without asking for a token.
pub fn router(token: &str) -> Router {
    let html = INDEX_HTML.replacen(
        TOKEN_SLOT,
        &format!(r#"<meta name="idemq-token" content="{}">"#, html_attr(token)),
        1,
    );
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(move || async move { Html(html) }))
        .route("/demo/demo.js", get(|| async { javascript(DEMO_JS) }))
        .route("/demo/index.js", get(|| async { javascript(CLIENT_JS) }))
}

fn javascript(body: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_has_a_slot_for_the_token() {
        assert!(super::INDEX_HTML.contains(super::TOKEN_SLOT));
    }
}
