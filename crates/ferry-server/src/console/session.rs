//! Console sessions: who is signed in, their CSRF token, and the sign-in rate limit.
//!
//! - A session is a random 256-bit token in an `HttpOnly; SameSite=Strict` cookie (`Secure`
//!   when the console is served over TLS), mapped in memory to the account and a per-session
//!   CSRF token. Sessions end on sign-out, after [`IDLE`] without a request, or when the
//!   process stops (nothing about them is stored: signing in again is the recovery).
//! - Every state-changing request carries the session's CSRF token in a form field; the sign-in
//!   form, which has no session yet, carries a token that must match a cookie set with the form
//!   (double submit).
//! - Failed sign-ins are limited per client address ([`MAX_FAILURES`] per [`FAILURE_WINDOW`]).
//! - Memory is bounded: at most [`MAX_SESSIONS`] sessions (the least recently used goes) and
//!   [`MAX_TRACKED_CLIENTS`] addresses in the limiter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::sync::lock;
use rand::RngCore as _;

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// Failed sign-ins allowed per client address per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window of the sign-in limit.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 10_000;
/// Client addresses the sign-in limiter remembers at most.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// The session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "ferry_login";

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The access key signed in with (the account).
    pub access_key: String,
    /// The token every state-changing request must carry.
    pub csrf: String,
    last_seen: Instant,
}

/// Sessions and the sign-in limiter of one console.
#[derive(Default)]
pub struct Sessions {
    // std Mutex: short sections, never held across an await.
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// A random token: 32 bytes, hex.
#[must_use]
pub fn token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Compares secrets in time independent of where they differ.
#[must_use]
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Opens a session for `access_key`; returns its cookie token.
    pub fn open(&self, access_key: &str) -> String {
        let id = token();
        let mut s = lock(&self.sessions);
        let now = Instant::now();
        s.retain(|_, v| now.duration_since(v.last_seen) < IDLE);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, v)| v.last_seen).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(id.clone(), Session { access_key: access_key.to_owned(), csrf: token(), last_seen: now });
        id
    }

    /// The session of `id`, if it is open and not idle too long (it is then kept alive).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut s = lock(&self.sessions);
        let now = Instant::now();
        match s.get_mut(id) {
            Some(v) if now.duration_since(v.last_seen) < IDLE => {
                v.last_seen = now;
                Some(v.clone())
            }
            Some(_) => {
                s.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// True when `client` may try to sign in now.
    pub fn may_try(&self, client: IpAddr) -> bool {
        let f = lock(&self.failures);
        f.get(&client).is_none_or(|(n, since)| *n < MAX_FAILURES || since.elapsed() >= FAILURE_WINDOW)
    }

    /// Records a failed sign-in from `client`.
    pub fn failed(&self, client: IpAddr) {
        let mut f = lock(&self.failures);
        if f.len() >= MAX_TRACKED_CLIENTS {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(client).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Forgets the failures of `client` (it signed in).
    pub fn succeeded(&self, client: IpAddr) {
        lock(&self.failures).remove(&client);
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
#[must_use]
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value for a console cookie (`max_age` 0 removes it).
#[must_use]
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_and_close() {
        let s = Sessions::default();
        let id = s.open("AK");
        let got = s.get(&id).expect("open");
        assert_eq!(got.access_key, "AK");
        assert_ne!(got.csrf, id, "the CSRF token is not the session id");
        assert!(s.get("forged").is_none());
        lock(&s.sessions).get_mut(&id).expect("open").last_seen -= IDLE;
        assert!(s.get(&id).is_none(), "idle too long");
        let id = s.open("AK");
        s.close(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn failed_sign_ins_are_limited_per_client() {
        let s = Sessions::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert!(s.may_try(a));
            s.failed(a);
        }
        assert!(!s.may_try(a), "limited");
        assert!(s.may_try(b), "another client is not");
        lock(&s.failures).get_mut(&a).expect("tracked").1 -= FAILURE_WINDOW;
        assert!(s.may_try(a), "the window passed");
    }

    #[test]
    fn cookies_and_secrets() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; ferry_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(set_cookie("x", "y", true, None).contains("HttpOnly; SameSite=Strict; Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
