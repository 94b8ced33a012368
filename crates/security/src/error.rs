//! Error type shared by every part of the crate.
//!
//! Every error carries a Japanese message for users (`message_ja`) and an
//! English one for operators and logs (`message_en`). Messages never echo
//! secrets (passwords, tokens, keys).

use std::fmt;

/// Machine-readable error kinds. The HTTP layer maps them to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Input is malformed (bad scope string, bad JSON, bad header).
    Invalid,
    /// Credentials are wrong (password, TOTP code, token signature).
    Unauthenticated,
    /// Authenticated but not allowed.
    Forbidden,
    /// Account locked or request rate limited; retry later.
    Throttled,
    /// Password rejected by the policy.
    WeakPassword,
    /// Token, session or grant has expired.
    Expired,
    /// A one-time value (TOTP step, JWT id, recovery code) was used again.
    Replay,
    /// The tenant of a token or object is not the expected one.
    WrongTenant,
    /// Something does not exist.
    NotFound,
    /// A uniqueness rule would be broken (user name taken, ...).
    Conflict,
    /// Data integrity failure: tampered or truncated backup, broken chain.
    Integrity,
    /// Storage or file-system failure.
    Storage,
    /// Cryptographic primitive failure (should not happen with valid input).
    Crypto,
}

/// Error returned by all fallible functions of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityError {
    pub kind: ErrorKind,
    pub message_ja: String,
    pub message_en: String,
}

impl SecurityError {
    pub fn new(kind: ErrorKind, ja: impl Into<String>, en: impl Into<String>) -> Self {
        SecurityError {
            kind,
            message_ja: ja.into(),
            message_en: en.into(),
        }
    }

    pub(crate) fn invalid(ja: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, ja, en)
    }

    pub(crate) fn storage(e: impl fmt::Display) -> Self {
        Self::new(
            ErrorKind::Storage,
            "記憶装置の処理に失敗しました",
            format!("storage error: {e}"),
        )
    }

    pub(crate) fn crypto(e: impl fmt::Display) -> Self {
        Self::new(
            ErrorKind::Crypto,
            "暗号処理に失敗しました",
            format!("cryptographic error: {e}"),
        )
    }

    pub(crate) fn integrity(ja: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, ja, en)
    }
}

impl fmt::Display for SecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} / {}", self.message_en, self.message_ja)
    }
}

impl std::error::Error for SecurityError {}

impl From<rusqlite::Error> for SecurityError {
    fn from(e: rusqlite::Error) -> Self {
        SecurityError::storage(e)
    }
}

impl From<std::io::Error> for SecurityError {
    fn from(e: std::io::Error) -> Self {
        SecurityError::storage(e)
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = SecurityError> = std::result::Result<T, E>;
