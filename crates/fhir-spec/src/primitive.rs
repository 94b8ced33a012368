//! Lexical checks of FHIR R4 primitive values, following the regexes of the
//! R4 specification (<http://hl7.org/fhir/R4/datatypes.html>), hand-written so
//! the hot path allocates nothing. Dates are also checked against the calendar.

/// Maximum size of a `string`/`markdown` value (the spec: "SHALL NOT exceed 1MB").
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// `[A-Za-z0-9\-\.]{1,64}`
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `\s` of the spec's regexes (Java semantics): ASCII space, tab, LF, VT, FF, CR only, so
/// Japanese text with U+3000 (ideographic space) is not whitespace here.
#[inline]
fn is_regex_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// `[^\s]+(\s[^\s]+)*`
pub fn is_code(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut prev_ws = true; // no leading whitespace
    for c in s.chars() {
        let ws = c.is_ascii() && is_regex_ws(c as u8);
        if ws && prev_ws {
            return false;
        }
        prev_ws = ws;
    }
    !prev_ws
}

/// `\S*` (uri, url, canonical): no whitespace at all.
pub fn is_uri(s: &str) -> bool {
    !s.bytes().any(is_regex_ws)
}

/// `[ \r\n\t\S]+`: any text but whitespace other than space, CR, LF and tab.
pub fn is_string(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b == 0x0B || b == 0x0C)
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
pub fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    match parts.next() {
        Some("0" | "1" | "2") => {}
        _ => return false,
    }
    let mut n = 0;
    for p in parts {
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return false;
        }
        n += 1;
    }
    n >= 1
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
pub fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`
pub fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            n += 1;
        } else if !b.is_ascii_whitespace() {
            return false;
        }
    }
    n > 0 && n.is_multiple_of(4)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY(-MM(-DD)?)?` at the start; returns (bytes consumed, parts present).
fn date_prefix(b: &[u8]) -> Option<(usize, u8)> {
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    if b.len() == 4 || b[4] != b'-' {
        return Some((4, 1));
    }
    let month = digits(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 || b[7] != b'-' {
        return Some((7, 2));
    }
    let day = digits(b, 8, 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some((10, 3))
}

/// `hh:mm:ss(.f+)?` at the start; returns bytes consumed.
fn time_prefix(b: &[u8]) -> Option<usize> {
    let h = digits(b, 0, 2)?;
    if h > 23 || b.get(2) != Some(&b':') {
        return None;
    }
    let m = digits(b, 3, 2)?;
    if m > 59 || b.get(5) != Some(&b':') {
        return None;
    }
    let s = digits(b, 6, 2)?;
    if s > 60 {
        return None;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(i)
}

/// `Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)`, exactly the rest of the input.
fn is_timezone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [sign, ..] if (*sign == b'+' || *sign == b'-') && b.len() == 6 && b[3] == b':' => {
            match (digits(b, 1, 2), digits(b, 4, 2)) {
                (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

/// FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (a real calendar date).
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(date_prefix(b), Some((n, _)) if n == b.len())
}

/// FHIR `dateTime`: a date, or a full date with `Thh:mm:ss(.f)` and a timezone.
pub fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let Some((n, parts)) = date_prefix(b) else {
        return false;
    };
    if n == b.len() {
        return true;
    }
    if parts != 3 || b[n] != b'T' {
        return false;
    }
    match time_prefix(&b[n + 1..]) {
        Some(t) => is_timezone(&b[n + 1 + t..]),
        None => false,
    }
}

/// FHIR `instant`: full date, time and timezone.
pub fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(date_prefix(b), Some((10, 3))) && b.len() > 10 && b[10] == b'T' && {
        match time_prefix(&b[11..]) {
            Some(t) => is_timezone(&b[11 + t..]),
            None => false,
        }
    }
}

/// FHIR `time`: `hh:mm:ss(.f)`, no timezone.
pub fn is_time(s: &str) -> bool {
    matches!(time_prefix(s.as_bytes()), Some(n) if n == s.len())
}

/// Checks a JSON number's text against an integer type. Returns an English and a
/// Japanese reason on failure.
pub(crate) fn check_integer(text: &str, min: i64) -> Result<(), (&'static str, &'static str)> {
    let digits_part = text.strip_prefix('-').unwrap_or(text);
    if digits_part.is_empty()
        || !digits_part.bytes().all(|b| b.is_ascii_digit())
        || (digits_part.len() > 1 && digits_part.starts_with('0'))
    {
        return Err(("not an integer", "整数ではありません"));
    }
    match text.parse::<i64>() {
        Ok(v) if v < min => Err(if min == 1 {
            (
                "must be greater than 0",
                "0より大きい値でなければなりません",
            )
        } else {
            ("must not be negative", "負の値は許されません")
        }),
        Ok(v) if v <= i64::from(i32::MAX) && v >= i64::from(i32::MIN) => Ok(()),
        _ => Err((
            "out of the 32-bit integer range",
            "32ビット整数の範囲外です",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        for ok in ["2020", "2020-02", "2020-02-29", "0001-01-01"] {
            assert!(is_date(ok), "{ok}");
        }
        for bad in [
            "",
            "20",
            "2019-02-29",
            "2020-13",
            "2020-1-01",
            "2020-01-01T",
            "0000",
            "2020-00",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
        for ok in [
            "2015",
            "2015-02-07",
            "2015-02-07T13:28:17-05:00",
            "2017-01-01T00:00:00.000Z",
            "2017-01-01T00:00:60+14:00",
        ] {
            assert!(is_date_time(ok), "{ok}");
        }
        for bad in [
            "2015-02-07T13:28:17",
            "2015-02T13:28:17Z",
            "2015-02-07T24:00:00Z",
            "2015-02-07T13:28Z",
            "2015-02-07T13:28:17+14:30",
            "2015-02-07T13:28:17.Z",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
        assert!(is_instant("2015-02-07T13:28:17.239+02:00"));
        assert!(!is_instant("2015-02-07"));
        assert!(!is_instant("2015-02-07T13:28:17"));
        assert!(is_time("13:28:17"));
        assert!(is_time("13:28:17.5"));
        assert!(!is_time("13:28"));
        assert!(!is_time("13:28:17Z"));
    }

    #[test]
    fn lexical() {
        assert!(is_id("a-B.9"));
        assert!(!is_id("a_b"));
        assert!(!is_id(&"a".repeat(65)));
        assert!(is_code("a b"));
        assert!(is_code("東京\u{3000}都"));
        assert!(is_uri("urn:x:\u{3000}"));
        assert!(!is_code(" a"));
        assert!(!is_code("a  b"));
        assert!(!is_code("a "));
        assert!(is_oid("urn:oid:1.2.392.100495.20.3.51"));
        assert!(!is_oid("urn:oid:1.02"));
        assert!(!is_oid("urn:oid:3.1"));
        assert!(is_uuid("urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7"));
        assert!(!is_uuid("urn:uuid:53FEFA32-fcbb-4ff8-8a92-55ee120877b7"));
        assert!(is_base64("SGVsbG8="));
        assert!(!is_base64("SGVsbG8"));
        assert!(!is_base64("SGV$bG8="));
        assert!(is_uri("http://example.org/a?b=c"));
        assert!(!is_uri("http://example.org/a b"));
        assert!(is_string("山田\u{3000}太郎\n"));
        assert!(!is_string("a\u{0C}b"));
        assert!(check_integer("-5", i64::from(i32::MIN)).is_ok());
        assert!(check_integer("0", 1).is_err());
        assert!(check_integer("2147483648", 0).is_err());
        assert!(check_integer("1.0", 0).is_err());
        assert!(check_integer("1e2", 0).is_err());
    }
}
