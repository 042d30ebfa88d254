//! Ops authentication: `Authorization: Bearer $IDEMQ_OPS_TOKEN`, or basic
//! auth with any user name and the token as password (so a browser can open
//! the dashboard). Compared in constant time.
use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::Response,
};
use subtle::ConstantTimeEq;

use crate::error::{problem_response, ApiError};

/// Who performed an ops action (for the audit log): the basic-auth user
/// name, or `ops-token`.
#[derive(Debug, Clone)]
pub struct Operator(pub String);

fn presented(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(("ops-token".into(), rest.trim().to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest.trim())?;
        let (user, password) = decoded.split_once(':')?;
        let user = if user.is_empty() { "ops-token" } else { user };
        return Some((user.to_owned(), password.to_owned()));
    }
    None
}

/// Session cookie set after a basic-auth login, so that a browser page
/// opened as `http://user:token@host/` (whose scripts may not `fetch` with
/// credentials in the URL) can call the board's API. Its value is the
/// SHA-256 of the token, never the token.
pub const SESSION_COOKIE: &str = "idemq_ops";

fn session_value(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(SESSION_COOKIE)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

pub async fn require_ops_token(State(token): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    let session = session_value(&token);
    let by_cookie = cookie(&req).is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.as_bytes())));
    let by_header = match presented(&req) {
        Some((who, secret)) if !token.is_empty() && bool::from(secret.as_bytes().ct_eq(token.as_bytes())) => {
            Some(who)
        }
        _ => None,
    };
    match (by_header, by_cookie) {
        (Some(who), had_cookie) => {
            let navigate = req
                .headers()
                .get("sec-fetch-mode")
                .is_some_and(|m| m == "navigate");
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned);
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into());
            let scheme = match req
                .headers()
                .get("x-forwarded-proto")
                .and_then(|p| p.to_str().ok())
            {
                Some("https") => "https",
                _ => "http",
            };
            req.extensions_mut().insert(Operator(who));
            let mut response = match (had_cookie, navigate, host) {
                // A browser's first page: set the session and reload the same
                // page from a URL without credentials.
                (false, true, Some(host)) => {
                    let mut r = Response::new(axum::body::Body::empty());
                    *r.status_mut() = axum::http::StatusCode::SEE_OTHER;
                    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{target}")) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
                _ => next.run(req).await,
            };
            if !had_cookie {
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"
                )) {
                    response.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            response
        }
        (None, true) => {
            req.extensions_mut().insert(Operator("ops-session".into()));
            next.run(req).await
        }
        (None, false) => {
            let mut r = problem_response(&ApiError::Unauthorized.problem());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"idemq ops\", charset=\"UTF-8\""),
            );
            r
        }
    }
}

/// Standard base64 (RFC 4648), for the basic-auth header only.
fn base64_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64_decode("dXNlcjpwYXNz").as_deref(), Some("user:pass"));
        assert_eq!(super::base64_decode("OnM=").as_deref(), Some(":s"));
        assert_eq!(super::base64_decode("!!"), None);
    }
}
