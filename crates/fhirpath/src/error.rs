//! Error types (messages in Japanese and English).

use std::fmt;

/// A syntax (or static semantic) error found while parsing an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the source text where the problem was found.
    pub position: usize,
    /// Message in Japanese.
    pub message_ja: String,
    /// Message in English.
    pub message_en: String,
}

impl ParseError {
    pub(crate) fn new(position: usize, ja: impl Into<String>, en: impl Into<String>) -> Self {
        ParseError {
            position,
            message_ja: ja.into(),
            message_en: en.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FHIRPath syntax error at {}: {} / {}",
            self.position, self.message_en, self.message_ja
        )
    }
}

impl std::error::Error for ParseError {}

/// An error raised while evaluating an expression (e.g. a singleton was expected
/// but a collection of several items was found, or operand types do not fit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// Message in Japanese.
    pub message_ja: String,
    /// Message in English.
    pub message_en: String,
}

impl EvalError {
    pub(crate) fn new(ja: impl Into<String>, en: impl Into<String>) -> Self {
        EvalError {
            message_ja: ja.into(),
            message_en: en.into(),
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FHIRPath evaluation error: {} / {}",
            self.message_en, self.message_ja
        )
    }
}

impl std::error::Error for EvalError {}
