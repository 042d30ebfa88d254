//! Ops authentication: `Authorization: Bearer $IDEMQ_OPS_TOKEN`, or basic
//! auth with any user name and the token as password (so a browser can open
//! the dashboard), or the signed session cookie that a browser gets after a
//! basic-auth login. Tokens and cookies are compared in constant time.
//!
//! State-changing requests (any method but GET, HEAD, OPTIONS) must also come
//! from the ops listener's own origin (docs/ops-console.md): a browser
//! sends the cookie and remembered basic-auth credentials with a cross-site
//! form post too.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use idemq_core::problem::Problem;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::OpsState;
use crate::error::{problem_response, ApiError};

/// Who performed an ops action (for the audit log): the basic-auth user
/// name, `ops-token` (bearer), or `ops-session` (the cookie).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "idemq_ops";
/// How long a session lasts from the basic-auth login that made it: a
/// working day. A browser that remembers the password gets a new one on its
/// next page after that.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// `POST`: clears the session cookie (needs no authentication).
pub const LOGOUT: &str = "/ops/logout";

/// Signs and checks session cookies: `v1.<expiry, unix seconds>.<hex
/// HMAC-SHA-256(key, expiry)>`. The key is random per process unless given:
/// a cookie never reveals anything about the token, and every session ends
/// when the process restarts (the browser logs in again with the password it
/// remembers).
#[derive(Clone)]
pub struct Sessions {
    /// HMAC-SHA-256's block size: a key of that size is used as it is.
    key: [u8; 64],
    lifetime: Duration,
    https: bool,
}

impl Sessions {
    /// A random key, [`DEFAULT_SESSION_LIFETIME`]. `https`: the ops listener
    /// is reached over https (`IDEMQ_OPS_HTTPS`).
    pub fn new(https: bool) -> Sessions {
        Sessions::with_key(rand::random(), DEFAULT_SESSION_LIFETIME, https)
    }

    pub fn with_key(key: [u8; 64], lifetime: Duration, https: bool) -> Sessions {
        Sessions { key, lifetime, https }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn mac(&self, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.key.into());
        mac.update(b"idemq-ops-session.v1.");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// A cookie value valid until `expires` (unix seconds).
    pub fn value_expiring_at(&self, expires: i64) -> String {
        format!(
            "v1.{expires}.{}",
            hex::encode(self.mac(expires).finalize().into_bytes())
        )
    }

    /// Signed by this key and not expired at `now`.
    fn is_valid(&self, value: &str, now: i64) -> bool {
        let mut parts = value.split('.');
        let (Some("v1"), Some(expires_text), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (expires_text.parse::<i64>(), hex::decode(tag)) else {
            return false;
        };
        // The canonical text only (`+5`, `05` name the same number as `5`).
        if expires.to_string() != expires_text {
            return false;
        }
        // verify_slice compares in constant time.
        self.mac(expires).verify_slice(&tag).is_ok() && now < expires
    }

    fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.https { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("idemq_ops=; Path=/; Max-Age=0"))
    }

    /// `Set-Cookie` for a new session starting at `now`.
    fn start(&self, now: i64) -> HeaderValue {
        let max_age = self.lifetime.as_secs();
        let expires = now.saturating_add(i64::try_from(max_age).unwrap_or(i64::MAX));
        self.cookie(&self.value_expiring_at(expires), max_age)
    }

    /// `Set-Cookie` that removes the session from the browser.
    pub fn clear(&self) -> HeaderValue {
        self.cookie("", 0)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How a request proved it holds the token.
enum Credentials {
    Bearer,
    Basic(String),
}

fn presented(headers: &HeaderMap) -> Option<(Credentials, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some((Credentials::Bearer, rest.trim().to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let user = if user.is_empty() { "ops-token" } else { user };
        return Some((Credentials::Basic(user.to_owned()), password.to_owned()));
    }
    None
}

/// Constant time whatever the lengths: the digests are compared, not the
/// texts (a length mismatch would otherwise answer early).
fn is_token(token: &str, secret: &str) -> bool {
    !token.is_empty()
        && bool::from(Sha256::digest(secret.as_bytes()).ct_eq(&Sha256::digest(token.as_bytes())))
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// Whether the request reached us over https: the setting, or the TLS
/// proxy's `X-Forwarded-Proto` (a cross-site page cannot set that header).
fn is_https(headers: &HeaderMap, sessions: &Sessions) -> bool {
    sessions.https
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `scheme://host[:port]` of an absolute URL.
fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&url[..scheme.len() + 3 + authority_end])
}

/// Why a state-changing request must be refused as possibly cross-site, if
/// it must: its `Origin` (or, without one, its `Referer`'s origin) is not
/// this listener's own; or it has neither and is not authenticated by a
/// bearer token (only a browser sends the cookie or remembered basic-auth
/// credentials by itself, and a browser sends `Origin` with every POST).
fn cross_site(headers: &HeaderMap, sessions: &Sessions, bearer: bool) -> Option<String> {
    let claimed = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => origin.to_str().ok().map(str::to_owned).unwrap_or_default(),
        (None, Some(referer)) => {
            let referer = referer.to_str().unwrap_or_default();
            origin_of(referer).unwrap_or(referer).to_owned()
        }
        (None, None) if bearer => return None,
        (None, None) => {
            return Some(
                "A state-changing request authenticated by the session cookie or basic auth needs an \
                 Origin or Referer header; scripts use Authorization: Bearer."
                    .into(),
            )
        }
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Some("The request has no Host header to check its origin against.".into());
    };
    let scheme = if is_https(headers, sessions) {
        "https"
    } else {
        "http"
    };
    let own = format!("{scheme}://{host}");
    if claimed.eq_ignore_ascii_case(&own) {
        None
    } else {
        Some(format!(
            "The request comes from {claimed}, not from the ops listener's own origin {own}."
        ))
    }
}

fn forbidden_cross_site(detail: String) -> Response {
    tracing::warn!(%detail, "ops: refused a state-changing request from another origin");
    problem_response(&Problem::new("cross-site-request", "Cross-site request refused", 403).detail(detail))
}

pub async fn require_ops_token(State(s): State<OpsState>, mut req: Request, next: Next) -> Response {
    let now = unix_now();
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if req.uri().path() == LOGOUT {
        // Clearing one's own cookie needs no proof of the token; a cross-site
        // page must still not log an operator out.
        if unsafe_method {
            if let Some(why) = cross_site(req.headers(), &s.session, false) {
                return forbidden_cross_site(why);
            }
        }
        return next.run(req).await;
    }

    let cookie = session_cookie(req.headers());
    let by_cookie = cookie.is_some_and(|c| s.session.is_valid(c, now));
    let stale_cookie = cookie.is_some() && !by_cookie;
    let by_header = presented(req.headers()).filter(|(_, secret)| is_token(&s.token, secret));
    let (who, bearer) = match (by_header, by_cookie) {
        (Some((Credentials::Bearer, _)), _) => ("ops-token".to_owned(), true),
        (Some((Credentials::Basic(user), _)), _) => (user, false),
        (None, true) => ("ops-session".to_owned(), false),
        (None, false) => {
            let mut r = problem_response(&ApiError::Unauthorized.problem());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"idemq ops\", charset=\"UTF-8\""),
            );
            if stale_cookie {
                r.headers_mut().append(header::SET_COOKIE, s.session.clear());
            }
            return r;
        }
    };
    if unsafe_method {
        if let Some(why) = cross_site(req.headers(), &s.session, bearer) {
            return forbidden_cross_site(why);
        }
    }
    req.extensions_mut().insert(Operator(who));
    if by_cookie || bearer {
        return next.run(req).await;
    }

    // Basic auth without a valid session: a browser's login.
    // Its first page (a navigation) sets the session and reloads the same
    // page from a URL without credentials.
    let navigate = req
        .headers()
        .get("sec-fetch-mode")
        .is_some_and(|m| m == "navigate");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let scheme = if is_https(req.headers(), &s.session) {
        "https"
    } else {
        "http"
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let mut response = match (navigate && !unsafe_method, host) {
        (true, Some(host)) => {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::SEE_OTHER;
            if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{target}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        _ => next.run(req).await,
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, s.session.start(now));
    response
}

/// `POST /ops/logout`: the browser drops the session cookie. The session
/// value itself stays valid until it expires (it is not stored anywhere),
/// and a browser that remembers the basic-auth password sends it again on
/// the next page, which starts a new session: closing the browser ends that.
pub async fn logout(State(s): State<OpsState>) -> Response {
    let mut r = axum::response::Html(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>idemq ops: signed out</title></head>\
         <body><h1>Signed out</h1><p>The session cookie is cleared. A browser that remembers the ops \
         password (basic auth) signs in again with it on the next page: close the browser to forget it.</p>\
         <p><a href=\"/ops/operations\">Sign in again</a></p></body></html>",
    )
    .into_response();
    r.headers_mut().insert(header::SET_COOKIE, s.session.clear());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::with_key([7; 64], DEFAULT_SESSION_LIFETIME, false)
    }

    #[test]
    fn a_session_value_is_valid_until_it_expires_and_only_with_its_key() {
        let s = sessions();
        let value = s.value_expiring_at(1_000);
        assert!(s.is_valid(&value, 999));
        assert!(!s.is_valid(&value, 1_000));
        let other = Sessions::with_key([8; 64], DEFAULT_SESSION_LIFETIME, false);
        assert!(!other.is_valid(&value, 999));
    }

    #[test]
    fn a_tampered_session_value_is_refused() {
        let s = sessions();
        let value = s.value_expiring_at(1_000);
        let tag = value.rsplit('.').next().unwrap();
        for forged in [
            format!("v1.2000.{tag}"),
            format!("v1.01000.{tag}"),
            format!("v1.+1000.{tag}"),
            format!("v2.1000.{tag}"),
            format!("v1.1000.{tag}.x"),
            format!("v1.1000.{}", &tag[..62]),
            value.replace(&tag[..2], if &tag[..2] == "00" { "01" } else { "00" }),
            "v1.1000.".into(),
            String::new(),
        ] {
            assert!(!s.is_valid(&forged, 999), "{forged}");
        }
    }

    #[test]
    fn basic_credentials_are_decoded_with_any_user_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        let Some((Credentials::Basic(user), password)) = presented(&headers) else {
            panic!("basic credentials")
        };
        assert_eq!((user.as_str(), password.as_str()), ("user", "pass"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic OnM="));
        let Some((Credentials::Basic(user), password)) = presented(&headers) else {
            panic!("basic credentials")
        };
        assert_eq!((user.as_str(), password.as_str()), ("ops-token", "s"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert!(presented(&headers).is_none());
    }

    #[test]
    fn the_token_comparison_needs_the_whole_token() {
        assert!(is_token("secret", "secret"));
        assert!(!is_token("secret", "secre"));
        assert!(!is_token("secret", "secret2"));
        assert!(!is_token("", ""));
    }

    #[test]
    fn the_origin_of_a_referer_is_its_scheme_and_authority() {
        assert_eq!(
            origin_of("http://h:3001/ops/operations?x=1"),
            Some("http://h:3001")
        );
        assert_eq!(origin_of("https://h"), Some("https://h"));
        assert_eq!(origin_of("https://h?q"), Some("https://h"));
        assert_eq!(origin_of("/relative"), None);
    }
}
