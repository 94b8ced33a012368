//! Web sessions: opaque random ids (only their SHA-256 is stored), idle and
//! absolute timeouts, CSRF synchronizer tokens and cookie attributes.
//!
//! Session fixation: a session id is only ever created by the server at
//! successful login ([`crate::accounts::Accounts::start_session`]), and any
//! id the browser presented before is deleted at that moment.

use chrono::{DateTime, Duration, Utc};

use crate::error::{ErrorKind, Result, SecurityError};
use crate::store::SessionRecord;

/// Name of the session cookie. The `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`.
pub const SESSION_COOKIE: &str = "__Host-iryo-session";
/// Header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// Session timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Logged out after this long without a request (default 15 minutes).
    pub idle_timeout: Duration,
    /// Logged out this long after login whatever the activity (default 8 h).
    pub absolute_timeout: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_timeout: Duration::minutes(15),
            absolute_timeout: Duration::hours(8),
        }
    }
}

/// A session just created; `id` and `csrf_token` go to the browser and are
/// not stored in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: String,
    pub csrf_token: String,
    pub record: SessionRecord,
}

/// Hash under which a session id (or CSRF token) is stored.
pub fn hash_secret(secret: &str) -> String {
    crate::sha256_hex(secret.as_bytes())
}

/// Creates the material of a new session (256-bit id, 256-bit CSRF token).
pub fn new_session(
    tenant: &str,
    user_id: &str,
    source_ip: Option<&str>,
    policy: &SessionPolicy,
    now: DateTime<Utc>,
) -> NewSession {
    let id = crate::random_token(32);
    let csrf_token = crate::random_token(32);
    NewSession {
        record: SessionRecord {
            tenant: tenant.to_string(),
            session_hash: hash_secret(&id),
            user_id: user_id.to_string(),
            created_at: now,
            last_seen_at: now,
            absolute_expires_at: now + policy.absolute_timeout,
            csrf_hash: hash_secret(&csrf_token),
            source_ip: source_ip.map(str::to_string),
        },
        id,
        csrf_token,
    }
}

/// CSRF synchronizer token of a session, derived from the session id with the
/// server key (HMAC-SHA256), so pages can render it again without storing it
/// in clear; the store keeps only its hash ([`verify_csrf`]).
pub fn derive_csrf_token(key: &[u8; 32], session_id: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(b"iryo-csrf\0");
    m.update(session_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

fn expired(en: &str) -> SecurityError {
    SecurityError::new(
        ErrorKind::Expired,
        "セッションの有効期限が切れました。再度ログインしてください",
        en,
    )
}

/// Checks the timeouts of a stored session at `now`.
pub fn check_timeouts(s: &SessionRecord, policy: &SessionPolicy, now: DateTime<Utc>) -> Result<()> {
    if now >= s.absolute_expires_at {
        return Err(expired("session reached its absolute timeout"));
    }
    if now - s.last_seen_at >= policy.idle_timeout {
        return Err(expired("session idle timeout"));
    }
    Ok(())
}

/// Checks the CSRF token sent with a state-changing request.
pub fn verify_csrf(s: &SessionRecord, presented: Option<&str>) -> Result<()> {
    let ok = presented
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .is_some_and(|t| crate::ct_eq(hash_secret(t).as_bytes(), s.csrf_hash.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(SecurityError::new(
            ErrorKind::Forbidden,
            "不正なリクエストです(CSRFトークンが一致しません)",
            "CSRF token missing or wrong",
        ))
    }
}

/// `Set-Cookie` value for a session id: Secure, HttpOnly, SameSite=Strict,
/// host-only, expiring with the absolute timeout.
pub fn session_cookie(id: &str, policy: &SessionPolicy) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        policy.absolute_timeout.num_seconds()
    )
}

/// `Set-Cookie` value that removes the session cookie (logout).
pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Extracts the session id from a `Cookie` request header.
pub fn session_id_from_cookie_header(header: &str) -> Option<&str> {
    cookie_value(header, SESSION_COOKIE)
}

/// The value of cookie `name` in a `Cookie` request header (at most 4 KiB).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 4096)
}

/// How cookies are set: `secure` (HTTPS, directly or behind a TLS proxy) adds
/// `Secure` and the `__Host-` name prefix (browsers then insist on `Secure`,
/// `Path=/` and no `Domain`). `SameSite=Lax`: the cookie goes with top-level
/// GET navigations from other sites (a SMART app redirecting to the
/// authorization endpoint) but never with their POSTs; forms carry CSRF tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSettings {
    pub secure: bool,
}

impl CookieSettings {
    /// Cookie name for `base` (e.g. `iryo-session-default`).
    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }

    /// `Set-Cookie` value; `max_age` 0 removes the cookie.
    pub fn set(&self, base: &str, value: &str, max_age: Duration) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            self.name(base),
            max_age.num_seconds().max(0),
            if self.secure { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap()
    }

    #[test]
    fn ids_are_random_and_hashed() {
        let p = SessionPolicy::default();
        let a = new_session("t", "u", None, &p, t0());
        let b = new_session("t", "u", None, &p, t0());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 43);
        assert_ne!(a.record.session_hash, a.id);
        assert_eq!(a.record.session_hash, hash_secret(&a.id));
        assert_eq!(a.record.absolute_expires_at, t0() + Duration::hours(8));
    }

    #[test]
    fn timeouts() {
        let p = SessionPolicy::default();
        let mut s = new_session("t", "u", None, &p, t0()).record;
        check_timeouts(&s, &p, t0() + Duration::minutes(14)).unwrap();
        let e = check_timeouts(&s, &p, t0() + Duration::minutes(15)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Expired);
        s.last_seen_at = t0() + Duration::hours(7) + Duration::minutes(59);
        check_timeouts(&s, &p, t0() + Duration::hours(8) - Duration::seconds(1)).unwrap();
        assert!(check_timeouts(&s, &p, t0() + Duration::hours(8)).is_err());
    }

    #[test]
    fn csrf() {
        let p = SessionPolicy::default();
        let n = new_session("t", "u", None, &p, t0());
        verify_csrf(&n.record, Some(&n.csrf_token)).unwrap();
        let other = new_session("t", "u", None, &p, t0());
        assert_eq!(
            verify_csrf(&n.record, Some(&other.csrf_token))
                .unwrap_err()
                .kind,
            ErrorKind::Forbidden
        );
        assert!(verify_csrf(&n.record, None).is_err());
        assert!(verify_csrf(&n.record, Some("")).is_err());
        assert!(verify_csrf(&n.record, Some(&"x".repeat(5000))).is_err());
    }

    #[test]
    fn cookies() {
        let p = SessionPolicy::default();
        let c = session_cookie("abc", &p);
        for attr in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=28800",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(c.starts_with("__Host-iryo-session=abc;"));
        assert!(clear_session_cookie().contains("Max-Age=0"));
        assert_eq!(
            session_id_from_cookie_header("a=1; __Host-iryo-session=xyz; b=2"),
            Some("xyz")
        );
        assert_eq!(session_id_from_cookie_header("iryo-session=xyz"), None);
        assert_eq!(session_id_from_cookie_header("__Host-iryo-session="), None);
    }
}
