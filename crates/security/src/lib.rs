//! # iryo-security
//!
//! Security building blocks for iryo, so that a medical institution running it
//! can meet MHLW's 「医療情報システムの安全管理に関するガイドライン 第6.0版」 and
//! the 令和7年度 cybersecurity checklist by default:
//!
//! * [`roles`] and [`authz`]: roles by occupation (医師, 看護師, …), the
//!   permission matrix, SMART v2 [`scopes`], tenant and patient-compartment
//!   checks, break-glass emergency access;
//! * [`password`]: argon2id hashing, the checklist password rule, history,
//!   common-password refusal, lockout and login rate limiting;
//! * [`totp`]: RFC 6238 second factor with replay refusal and recovery codes;
//! * [`token`]: short-lived HS256 access tokens and SMART Backend Services
//!   client-assertion verification (RS384/ES384);
//! * [`session`]: opaque web sessions with idle/absolute timeouts and CSRF;
//! * [`audit`]: a hash-chained access log rendered as FHIR AuditEvent (BALP);
//! * [`backup`]: AES-256-GCM encrypted, authenticated backup containers;
//! * [`store`]: persistence on SQLite ([`store::SqliteSecurityStore`]) or
//!   PostgreSQL ([`store::PgSecurityStore`]), one SQL text for both;
//! * [`accounts`]: account lifecycle and the login flow on top of the store;
//! * [`report`]: the 令和7年度 checklist evidence report.
//!
//! ```
//! use iryo_security::authz::{authorize, AccessRequest, Decision, Principal};
//! use iryo_security::roles::{Interaction, Role};
//! use iryo_security::scopes::ScopeSet;
//!
//! let nurse = Principal {
//!     tenant: "clinic-a".into(),
//!     subject: "nurse-1".into(),
//!     role: Some(Role::Nurse),
//!     is_admin: false,
//!     scopes: Some(ScopeSet::parse("user/*.cruds").unwrap()),
//!     patient: None,
//!     break_glass: None,
//! };
//! let request = AccessRequest {
//!     tenant: "clinic-a",
//!     interaction: Interaction::Create,
//!     resource_type: "MedicationRequest",
//!     patient_compartment: Some("patient-1"),
//!     now: chrono::Utc::now(),
//! };
//! // Nurses record observations but do not prescribe.
//! assert!(!authorize(&nurse, &request).is_allowed());
//! ```

pub mod accounts;
pub mod audit;
pub mod authz;
pub mod backup;
pub mod error;
pub mod oauth;
pub mod password;
pub mod report;
pub mod roles;
pub mod scopes;
pub mod secretbox;
pub mod session;
pub mod store;
pub mod token;
pub mod totp;
pub mod webauthn;

pub use error::{ErrorKind, Result, SecurityError};

use base64::Engine;
use rand::RngCore;

/// `n` random bytes from the operating system's CSPRNG, base64url without
/// padding.
pub(crate) fn random_token(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// SHA-256 of `data`, lowercase hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Finds the value of `all` whose `code` is `s` (for `FromStr` of code
/// enums); `what` names the kind in Japanese and English for the error.
pub(crate) fn parse_code<T: Copy>(
    all: &[T],
    code: impl Fn(T) -> &'static str,
    s: &str,
    what: (&str, &str),
) -> Result<T> {
    all.iter().copied().find(|v| code(*v) == s).ok_or_else(|| {
        SecurityError::invalid(
            format!("不明な{}です: {s}", what.0),
            format!("unknown {}: {s}", what.1),
        )
    })
}

/// Constant-time equality of two byte strings.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
