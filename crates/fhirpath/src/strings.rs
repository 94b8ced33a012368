//! String helpers: encode/decode/escape/unescape and narrative `htmlChecks()`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;

/// `encode`/`decode`/`escape`/`unescape` with the given format; `None` when not applicable.
pub(crate) fn transform(func: &str, format: &str, s: &str) -> Option<String> {
    match (func, format) {
        ("encode", "base64") => Some(STANDARD.encode(s.as_bytes())),
        ("encode", "urlbase64") => Some(URL_SAFE.encode(s.as_bytes())),
        ("encode", "hex") => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        ("decode", "base64") => String::from_utf8(STANDARD.decode(s).ok()?).ok(),
        ("decode", "urlbase64") => String::from_utf8(URL_SAFE.decode(s).ok()?).ok(),
        ("decode", "hex") => {
            if !s.len().is_multiple_of(2) || !s.is_ascii() {
                return None;
            }
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        }
        ("escape", "html") => {
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '<' => o.push_str("&lt;"),
                    '>' => o.push_str("&gt;"),
                    '&' => o.push_str("&amp;"),
                    '"' => o.push_str("&quot;"),
                    '\'' => o.push_str("&#39;"),
                    c => o.push(c),
                }
            }
            Some(o)
        }
        ("unescape", "html") => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        ),
        ("escape", "json") => {
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    '\n' => o.push_str("\\n"),
                    '\r' => o.push_str("\\r"),
                    '\t' => o.push_str("\\t"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            Some(o)
        }
        ("unescape", "json") => {
            let mut o = String::with_capacity(s.len());
            let mut it = s.chars();
            while let Some(c) = it.next() {
                if c != '\\' {
                    o.push(c);
                    continue;
                }
                match it.next()? {
                    'n' => o.push('\n'),
                    'r' => o.push('\r'),
                    't' => o.push('\t'),
                    'b' => o.push('\u{8}'),
                    'f' => o.push('\u{c}'),
                    'u' => {
                        let h: String = it.by_ref().take(4).collect();
                        o.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
                    }
                    other => o.push(other),
                }
            }
            Some(o)
        }
        _ => None,
    }
}

/// Narrative safety checks as required by FHIR (txt-1/txt-2 style): the XHTML
/// must be a `div`, and must not contain scripts, forms, frames, event
/// handler attributes, `javascript:` URLs or other active content.
pub(crate) fn html_checks(html: &str) -> bool {
    let t = html.trim_start();
    if !t.starts_with("<div") {
        return false;
    }
    let lower = html.to_ascii_lowercase();
    const FORBIDDEN_TAGS: &[&str] = &[
        "<script", "<object", "<embed", "<iframe", "<frame", "<form", "<input", "<button",
        "<applet", "<base", "<link", "<meta", "<style", "<head", "<body", "<html",
    ];
    if FORBIDDEN_TAGS.iter().any(|tag| {
        lower.match_indices(tag).any(|(i, _)| {
            let next = lower.as_bytes().get(i + tag.len()).copied();
            matches!(
                next,
                Some(b' ' | b'>' | b'/' | b'\t' | b'\n' | b'\r') | None
            )
        })
    }) {
        return false;
    }
    if lower.contains("javascript:") {
        return false;
    }
    // event handler attributes: whitespace + "on" + letters + "="
    let b = lower.as_bytes();
    let mut in_tag = false;
    for i in 0..b.len() {
        match b[i] {
            b'<' => in_tag = true,
            b'>' => in_tag = false,
            c if in_tag
                && c.is_ascii_whitespace()
                && b.get(i + 1) == Some(&b'o')
                && b.get(i + 2) == Some(&b'n') =>
            {
                let mut j = i + 3;
                while j < b.len() && b[j].is_ascii_alphabetic() {
                    j += 1;
                }
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j > i + 3 && b.get(j) == Some(&b'=') {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}
