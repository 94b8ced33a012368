//! FHIR date, dateTime and instant values as ranges of milliseconds since the Unix epoch (UTC).
//!
//! FHIR search compares dates as ranges given by their precision: `2024` is all of 2024,
//! `2024-03-05T10:00` is that minute. A range here is `[lo, hi]`, both inclusive, in ms.
//! Values without a time zone are taken as UTC (the spec leaves it to the server).

/// An inclusive range of epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

/// The smallest and largest instants we index (year 0001 .. 9999).
pub const MIN_MS: i64 = -62_135_596_800_000;
pub const MAX_MS: i64 = 253_402_300_799_999;

/// Days from 1970-01-01 to the given proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

const DAY_MS: i64 = 86_400_000;

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse a FHIR `date`, `dateTime` or `instant` (or a search value of that form) into its range.
/// Returns `None` for anything malformed (including impossible dates like `2023-02-30`).
pub fn parse_range(s: &str) -> Option<DateRange> {
    let s = s.trim();
    let (date_part, time_part) = match s.find('T') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut it = date_part.split('-');
    let y = digits(it.next()?, 4)? as i64;
    let m = match it.next() {
        Some(p) => Some(digits(p, 2)?),
        None => None,
    };
    let d = match it.next() {
        Some(p) => Some(digits(p, 2)?),
        None => None,
    };
    if it.next().is_some() {
        return None;
    }
    if let Some(m) = m {
        if !(1..=12).contains(&m) {
            return None;
        }
        if let Some(d) = d {
            if d < 1 || d > days_in_month(y, m) {
                return None;
            }
        }
    }
    match (m, d, time_part) {
        (None, None, None) => {
            let lo = days_from_civil(y, 1, 1) * DAY_MS;
            let hi = days_from_civil(y + 1, 1, 1) * DAY_MS - 1;
            Some(DateRange { lo, hi })
        }
        (Some(m), None, None) => {
            let lo = days_from_civil(y, m, 1) * DAY_MS;
            let hi = lo + days_in_month(y, m) as i64 * DAY_MS - 1;
            Some(DateRange { lo, hi })
        }
        (Some(m), Some(d), None) => {
            let lo = days_from_civil(y, m, d) * DAY_MS;
            Some(DateRange {
                lo,
                hi: lo + DAY_MS - 1,
            })
        }
        (Some(m), Some(d), Some(t)) => {
            let day = days_from_civil(y, m, d) * DAY_MS;
            let (clock, offset_ms) = split_zone(t)?;
            let (ms_in_day, width) = parse_clock(clock)?;
            let lo = day + ms_in_day - offset_ms;
            Some(DateRange {
                lo,
                hi: lo + width - 1,
            })
        }
        _ => None,
    }
}

/// Split `10:00:00+09:00` into the clock and the zone offset in ms (UTC when no zone).
fn split_zone(t: &str) -> Option<(&str, i64)> {
    if let Some(c) = t.strip_suffix('Z') {
        return Some((c, 0));
    }
    if let Some(i) = t.rfind(['+', '-']) {
        let (c, z) = (&t[..i], &t[i..]);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = &z[1..];
        let (hh, mm) = z.split_once(':')?;
        let (hh, mm) = (digits(hh, 2)?, digits(mm, 2)?);
        if hh > 14 || mm > 59 {
            return None;
        }
        return Some((c, sign * (hh as i64 * 3_600_000 + mm as i64 * 60_000)));
    }
    Some((t, 0))
}

/// Parse `hh:mm`, `hh:mm:ss` or `hh:mm:ss.fff…`; returns (ms since midnight, width of the precision in ms).
fn parse_clock(c: &str) -> Option<(i64, i64)> {
    let mut parts = c.split(':');
    let hh = digits(parts.next()?, 2)? as i64;
    let mm = digits(parts.next()?, 2)? as i64;
    let sec = parts.next();
    if parts.next().is_some() || hh > 24 || mm > 59 || (hh == 24 && mm != 0) {
        return None;
    }
    let base = hh * 3_600_000 + mm * 60_000;
    match sec {
        None => Some((base, 60_000)),
        Some(s) => {
            let (whole, frac) = match s.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (s, None),
            };
            let ss = digits(whole, 2)? as i64;
            if ss > 60 {
                return None;
            }
            match frac {
                None => Some((base + ss * 1000, 1000)),
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    let mut ms = 0i64;
                    for (i, b) in f.bytes().take(3).enumerate() {
                        ms += (b - b'0') as i64 * [100, 10, 1][i];
                    }
                    Some((base + ss * 1000 + ms, 1))
                }
                _ => None,
            }
        }
    }
}

/// Format epoch ms as an instant `YYYY-MM-DDThh:mm:ss.sssZ`.
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_ranges() {
        let y = parse_range("2024").unwrap();
        assert_eq!(format_instant(y.lo), "2024-01-01T00:00:00.000Z");
        assert_eq!(format_instant(y.hi), "2024-12-31T23:59:59.999Z");
        let m = parse_range("2024-02").unwrap();
        assert_eq!(format_instant(m.hi), "2024-02-29T23:59:59.999Z");
        let d = parse_range("2023-03-05").unwrap();
        assert_eq!(d.hi - d.lo, DAY_MS - 1);
        let t = parse_range("2023-03-05T10:00:00+09:00").unwrap();
        assert_eq!(format_instant(t.lo), "2023-03-05T01:00:00.000Z");
        assert_eq!(t.hi - t.lo, 999);
        let ms = parse_range("2023-03-05T10:00:00.12Z").unwrap();
        assert_eq!(format_instant(ms.lo), "2023-03-05T10:00:00.120Z");
        assert_eq!(ms.lo, ms.hi);
        let minute = parse_range("2023-03-05T10:00Z").unwrap();
        assert_eq!(minute.hi - minute.lo, 59_999);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "20",
            "2023-13",
            "2023-02-30",
            "2023-2-01",
            "2023-01-01T25:00",
            "abcd",
            "2023-01-01T10",
            "2023-01-01T10:00:00.Z",
            "2023-01-01T10:00+9",
            "2023-01-01-01",
            "２０２３",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn civil_roundtrip() {
        for days in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
