//! Tokenizer for FHIRPath source text.

use crate::error::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Identifier; `quoted` is true for `` `delimited` `` identifiers (never keywords).
    Ident {
        name: String,
        quoted: bool,
    },
    Str(String),
    /// Number text exactly as written (integer or decimal).
    Number(String),
    /// `@...` date, date-time or time literal text without the `@`.
    Temporal(String),
    /// `%name` environment variable.
    EnvVar(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Plus,
    Minus,
    Star,
    Slash,
    Amp,
    Pipe,
    Eq,
    NotEq,
    Equiv,
    NotEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                match src[i + 2..].find("*/") {
                    Some(end) => i = i + 2 + end + 2,
                    None => {
                        return Err(ParseError::new(
                            i,
                            "コメントが閉じられていません",
                            "unterminated comment",
                        ))
                    }
                }
                continue;
            }
            b'.' => push(&mut out, Tok::Dot, &mut i, 1, start),
            b',' => push(&mut out, Tok::Comma, &mut i, 1, start),
            b'(' => push(&mut out, Tok::LParen, &mut i, 1, start),
            b')' => push(&mut out, Tok::RParen, &mut i, 1, start),
            b'[' => push(&mut out, Tok::LBracket, &mut i, 1, start),
            b']' => push(&mut out, Tok::RBracket, &mut i, 1, start),
            b'{' => push(&mut out, Tok::LBrace, &mut i, 1, start),
            b'}' => push(&mut out, Tok::RBrace, &mut i, 1, start),
            b'+' => push(&mut out, Tok::Plus, &mut i, 1, start),
            b'-' => push(&mut out, Tok::Minus, &mut i, 1, start),
            b'*' => push(&mut out, Tok::Star, &mut i, 1, start),
            b'/' => push(&mut out, Tok::Slash, &mut i, 1, start),
            b'&' => push(&mut out, Tok::Amp, &mut i, 1, start),
            b'|' => push(&mut out, Tok::Pipe, &mut i, 1, start),
            b'=' => push(&mut out, Tok::Eq, &mut i, 1, start),
            b'~' => push(&mut out, Tok::Equiv, &mut i, 1, start),
            b'!' => match b.get(i + 1) {
                Some(b'=') => push(&mut out, Tok::NotEq, &mut i, 2, start),
                Some(b'~') => push(&mut out, Tok::NotEquiv, &mut i, 2, start),
                _ => {
                    return Err(ParseError::new(
                        i,
                        "不正な文字 '!'",
                        "unexpected character '!'",
                    ))
                }
            },
            b'<' => {
                if b.get(i + 1) == Some(&b'=') {
                    push(&mut out, Tok::Le, &mut i, 2, start)
                } else {
                    push(&mut out, Tok::Lt, &mut i, 1, start)
                }
            }
            b'>' => {
                if b.get(i + 1) == Some(&b'=') {
                    push(&mut out, Tok::Ge, &mut i, 2, start)
                } else {
                    push(&mut out, Tok::Gt, &mut i, 1, start)
                }
            }
            b'\'' => {
                let (s, n) = read_quoted(src, i, b'\'')?;
                out.push(Token {
                    tok: Tok::Str(s),
                    pos: start,
                });
                i = n;
            }
            b'`' => {
                let (s, n) = read_quoted(src, i, b'`')?;
                out.push(Token {
                    tok: Tok::Ident {
                        name: s,
                        quoted: true,
                    },
                    pos: start,
                });
                i = n;
            }
            b'%' => {
                i += 1;
                let name = match b.get(i) {
                    Some(b'`') => {
                        let (s, n) = read_quoted(src, i, b'`')?;
                        i = n;
                        s
                    }
                    Some(b'\'') => {
                        let (s, n) = read_quoted(src, i, b'\'')?;
                        i = n;
                        s
                    }
                    _ => {
                        let s = i;
                        while i < b.len() && is_ident_char(b[i]) {
                            i += 1;
                        }
                        if s == i {
                            return Err(ParseError::new(
                                start,
                                "'%' の後に変数名がありません",
                                "missing variable name after '%'",
                            ));
                        }
                        src[s..i].to_string()
                    }
                };
                out.push(Token {
                    tok: Tok::EnvVar(name),
                    pos: start,
                });
            }
            b'$' => {
                i += 1;
                let s = i;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                let name = &src[s..i];
                if !matches!(name, "this" | "index" | "total") {
                    return Err(ParseError::new(
                        start,
                        "不明な特殊変数",
                        "unknown special variable",
                    ));
                }
                out.push(Token {
                    tok: Tok::Special(name.to_string()),
                    pos: start,
                });
            }
            b'@' => {
                i += 1;
                let s = i;
                while i < b.len()
                    && (b[i].is_ascii_digit() || matches!(b[i], b'-' | b':' | b'T' | b'Z' | b'+'))
                {
                    // A '+'/'-' only belongs to the literal as part of a timezone or date separator.
                    i += 1;
                }
                // fractional seconds
                if i < b.len()
                    && b[i] == b'.'
                    && b.get(i + 1).is_some_and(|c| c.is_ascii_digit())
                    && src[s..i].contains(':')
                {
                    i += 1;
                    while i < b.len()
                        && (b[i].is_ascii_digit() || matches!(b[i], b'-' | b':' | b'Z' | b'+'))
                    {
                        i += 1;
                    }
                }
                let text = trim_temporal(&src[s..i]);
                i = s + text.len();
                if text.is_empty() {
                    return Err(ParseError::new(
                        start,
                        "不正な日付リテラル",
                        "invalid date/time literal",
                    ));
                }
                out.push(Token {
                    tok: Tok::Temporal(text.to_string()),
                    pos: start,
                });
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                out.push(Token {
                    tok: Tok::Number(src[start..i].to_string()),
                    pos: start,
                });
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident {
                        name: src[start..i].to_string(),
                        quoted: false,
                    },
                    pos: start,
                });
            }
            _ => {
                return Err(ParseError::new(
                    i,
                    "不正な文字",
                    format!(
                        "unexpected character {:?}",
                        src[i..].chars().next().unwrap_or(' ')
                    ),
                ));
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
    });
    Ok(out)
}

/// The greedy scan of a temporal literal may swallow a following binary `-`/`+`
/// (e.g. `@2014-01-01 - 1 day` is written with spaces, but `@T10:30-x` is not valid anyway).
/// Trim trailing separators that cannot end a literal.
fn trim_temporal(s: &str) -> &str {
    let mut t = s;
    while let Some(last) = t.as_bytes().last() {
        if matches!(last, b'-' | b'+' | b':') {
            t = &t[..t.len() - 1];
        } else {
            break;
        }
    }
    t
}

fn push(out: &mut Vec<Token>, tok: Tok, i: &mut usize, n: usize, pos: usize) {
    out.push(Token { tok, pos });
    *i += n;
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Reads a quoted string starting at `start` (which holds the quote), handling escapes.
fn read_quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let b = src.as_bytes();
    let mut i = start + 1;
    let mut out = String::new();
    let mut seg = i;
    while i < b.len() {
        let c = b[i];
        if c == quote {
            out.push_str(&src[seg..i]);
            return Ok((out, i + 1));
        }
        if c == b'\\' {
            out.push_str(&src[seg..i]);
            let e = *b.get(i + 1).ok_or_else(|| {
                ParseError::new(i, "文字列が閉じられていません", "unterminated string")
            })?;
            i += 2;
            match e {
                b'n' => out.push('\n'),
                b't' => out.push('\t'),
                b'r' => out.push('\r'),
                b'f' => out.push('\u{c}'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'\'' => out.push('\''),
                b'"' => out.push('"'),
                b'`' => out.push('`'),
                b'u' => {
                    let hex = src.get(i..i + 4).ok_or_else(|| {
                        ParseError::new(i, "不正な \\u エスケープ", "invalid \\u escape")
                    })?;
                    let code = u32::from_str_radix(hex, 16).map_err(|_| {
                        ParseError::new(i, "不正な \\u エスケープ", "invalid \\u escape")
                    })?;
                    i += 4;
                    let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                    out.push(ch);
                }
                _ => {
                    return Err(ParseError::new(
                        i - 2,
                        "不正なエスケープシーケンス",
                        "invalid escape sequence",
                    ))
                }
            }
            seg = i;
            continue;
        }
        i += 1;
    }
    Err(ParseError::new(
        start,
        "文字列が閉じられていません",
        "unterminated string or identifier",
    ))
}
