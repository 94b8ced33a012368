//! Error type of the fee module. Every error carries a Japanese and an English message.

use std::path::PathBuf;

/// Errors returned by master import, lookup, calculation and UKE handling.
#[derive(Debug, thiserror::Error)]
pub enum FeeError {
    /// A master row could not be read (wrong column count, bad code, bad date, bad number).
    #[error("{file}:{line}: malformed master row: {reason}")]
    MalformedRow {
        file: String,
        line: u64,
        reason: String,
    },
    /// An I/O error on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A ZIP archive could not be read.
    #[error("{file}: unreadable ZIP archive: {reason}")]
    Zip { file: String, reason: String },
    /// The directory holds no usable master file.
    #[error("no master files found in {0}")]
    NoMasters(PathBuf),
    /// SQLite error from the master store.
    #[error("master store error: {0}")]
    Store(#[from] rusqlite::Error),
    /// Invalid calculation input (the field path and a reason).
    #[error("invalid input at {field}: {reason}")]
    InvalidInput { field: String, reason: String },
    /// A code is unknown or not valid on the service date.
    #[error("code {code} is not valid on {date}")]
    UnknownCode { code: String, date: String },
    /// A UKE file could not be parsed.
    #[error("UKE line {line}: {reason}")]
    Uke { line: usize, reason: String },
}

impl FeeError {
    /// Message for the user, in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            FeeError::MalformedRow { file, line, reason } => {
                format!("マスターファイル {file} の {line} 行目が不正です: {reason}")
            }
            FeeError::Io { path, source } => {
                format!("ファイル {} を読み書きできません: {source}", path.display())
            }
            FeeError::Zip { file, reason } => {
                format!("ZIPファイル {file} を展開できません: {reason}")
            }
            FeeError::NoMasters(p) => format!("{} にマスターファイルがありません", p.display()),
            FeeError::Store(e) => format!("マスターストアのエラー: {e}"),
            FeeError::InvalidInput { field, reason } => {
                format!("入力 {field} が不正です: {reason}")
            }
            FeeError::UnknownCode { code, date } => {
                format!("コード {code} は {date} 時点で有効なマスターに存在しません")
            }
            FeeError::Uke { line, reason } => {
                format!("UKEファイル {line} 行目が不正です: {reason}")
            }
        }
    }

    /// Message for the user, in English (same as `Display`).
    pub fn message_en(&self) -> String {
        self.to_string()
    }

    pub(crate) fn input(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FeeError::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FeeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FeeError>;
