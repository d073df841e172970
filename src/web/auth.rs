//! Who is asking: admin bearer tokens for the JSON API, cookie sessions with CSRF tokens for the
//! dashboard, and per-order customer access tokens.
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither the comparison's timing
//! nor the tokens' lengths say anything about a configured token. No token, session id or CSRF
//! token is ever logged or shown by `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};

use super::throttle::ClientAddr;
use super::{ApiError, AppState};
use crate::config::AdminToken;
use crate::crypto::{digests_equal, random_token, token_digest, token_hash_hex};

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "provisioner_session";
/// The cookie that carries the login form's CSRF token (double submit: there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "provisioner_login_csrf";
/// How long a dashboard session lasts. Real time, whatever the engine's clock: it is about a
/// person at a browser.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Where the dashboard lives; cookies are scoped to it.
pub const DASHBOARD_PATH: &str = "/admin";
/// Sessions kept at most; the oldest are dropped beyond it, so a flood of logins cannot grow
/// memory without bound.
const MAX_SESSIONS: usize = 10_000;

/// A logged-in dashboard session.
#[derive(Clone)]
pub struct Session {
    /// The admin token's name: who acts.
    pub name: String,
    /// The token every form of this session must carry.
    pub csrf: SecretString,
    /// When it lapses.
    expires: Instant,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("csrf", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The configured admin tokens and the dashboard's sessions.
pub struct AdminAuth {
    /// (name, SHA-256 of the token): the tokens themselves are not kept.
    tokens: Vec<(String, [u8; 32])>,
    /// Sessions by the SHA-256 (hex) of their id; a std mutex, nothing is awaited under it.
    sessions: Mutex<HashMap<String, Session>>,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AdminAuth")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Auth for the given tokens (none: every admin request is refused).
    pub fn new(tokens: &[AdminToken]) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| (t.name.clone(), token_digest(t.token.expose_secret())))
                .collect(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any admin token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The name of the admin whose token this is. Every configured token is compared, whatever
    /// matches, so the time taken does not say which one did.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let digest = token_digest(presented);
        let mut found = None;
        for (name, expected) in &self.tokens {
            if digests_equal(&digest, expected) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The admin named by the request's bearer token, if it is one.
    pub fn admin_of(&self, headers: &HeaderMap) -> Option<String> {
        bearer(headers).and_then(|t| self.authenticate(t).map(str::to_string))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Every write under the lock is a single insert or remove: a poisoned map is consistent.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `name`; returns its id (for the cookie only).
    pub fn start_session(&self, name: &str) -> SecretString {
        let id = random_token();
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            token_hash_hex(id.expose_secret()),
            Session {
                name: name.to_string(),
                csrf: random_token(),
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// The live session with this id.
    pub fn session(&self, id: &str) -> Option<Session> {
        let key = token_hash_hex(id);
        let mut sessions = self.lock();
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn end_session(&self, id: &str) {
        self.lock().remove(&token_hash_hex(id));
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A cookie's value.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the dashboard: HttpOnly (no script reads it), SameSite=Strict (no
/// other site's page sends it), scoped to the dashboard's path.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path={DASHBOARD_PATH}; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// Whether a submitted CSRF token is the expected one (constant time).
pub fn csrf_ok(expected: &str, submitted: &str) -> bool {
    digests_equal(&token_digest(expected), &token_digest(submitted))
}

/// An admin authenticated by bearer token (JSON API). Rejects with 401 and
/// `WWW-Authenticate: Bearer`.
#[derive(Clone, Debug)]
pub struct Admin(pub String);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Ok(ClientAddr(client)) = ClientAddr::from_request_parts(parts, state).await;
        // Asking without a credential is not guessing one.
        let offered = bearer(&parts.headers).is_some();
        state
            .throttle
            .judge(
                client,
                || state.auth.admin_of(&parts.headers).ok_or(()),
                |()| offered,
            )?
            .map(Admin)
            .map_err(|()| unauthorized())
    }
}

/// The 401 every refused credential gets: one message, whatever was wrong with it.
pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a valid token is required: Authorization: Bearer TOKEN",
    )
}

/// A logged-in dashboard user. Without a live session the request is redirected to the login
/// page.
#[derive(Clone, Debug)]
pub struct DashboardUser {
    /// The admin's name.
    pub name: String,
    /// The session's CSRF token, for the forms of the page being rendered.
    pub csrf: SecretString,
    /// The session id, for logout.
    pub(crate) session_id: SecretString,
}

impl FromRequestParts<AppState> for DashboardUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let id = cookie(&parts.headers, SESSION_COOKIE)
            .ok_or_else(|| Redirect::to("/admin/login").into_response())?;
        let session = state
            .auth
            .session(id)
            .ok_or_else(|| Redirect::to("/admin/login").into_response())?;
        Ok(Self {
            name: session.name,
            csrf: session.csrf,
            session_id: SecretString::from(id.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> AdminAuth {
        AdminAuth::new(&[
            AdminToken {
                name: "alice".into(),
                token: SecretString::from("alice-token-0123456789"),
            },
            AdminToken {
                name: "bob".into(),
                token: SecretString::from("bob-token-0123456789ab"),
            },
        ])
    }

    #[test]
    fn tokens_authenticate_their_admin_only() {
        let a = auth();
        assert_eq!(a.authenticate("alice-token-0123456789"), Some("alice"));
        assert_eq!(a.authenticate("bob-token-0123456789ab"), Some("bob"));
        assert_eq!(a.authenticate("alice-token-012345678"), None);
        assert_eq!(a.authenticate(""), None);
        assert!(!AdminAuth::new(&[]).enabled());
        assert_eq!(AdminAuth::new(&[]).authenticate(""), None);
        let debug = format!("{a:?}");
        assert!(
            debug.contains("alice") && !debug.contains("token-0123"),
            "{debug}"
        );
    }

    #[test]
    fn bearer_and_cookies_are_parsed() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; provisioner_session=xyz"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(SESSION_COOKIE, "v", SESSION_TTL);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/admin")
        );
    }

    #[test]
    fn sessions_start_and_end() {
        let a = auth();
        let id = a.start_session("alice");
        let s = a.session(id.expose_secret()).unwrap();
        assert_eq!(s.name, "alice");
        assert!(csrf_ok(s.csrf.expose_secret(), s.csrf.expose_secret()));
        assert!(!csrf_ok(s.csrf.expose_secret(), "forged"));
        assert!(a.session("not-a-session").is_none());
        a.end_session(id.expose_secret());
        assert!(a.session(id.expose_secret()).is_none());
        assert!(!format!("{s:?}").contains(s.csrf.expose_secret()));
    }
}
