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

pub async fn require_ops_token(State(token): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    match presented(&req) {
        Some((who, secret)) if bool::from(secret.as_bytes().ct_eq(token.as_bytes())) && !token.is_empty() => {
            req.extensions_mut().insert(Operator(who));
            next.run(req).await
        }
        _ => {
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
