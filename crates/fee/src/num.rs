//! Small exact-number and date helpers: master amounts are decimals with 2 fraction digits,
//! quantities have up to 5 (the UKE 使用量 field), dates are `yyyymmdd` integers.

use chrono::{Datelike, NaiveDate};

/// Parse a non-negative decimal text into an integer scaled by `10^digits`.
/// Returns `None` for anything that is not `digits[.digits]` or has too many fraction digits.
pub fn parse_fixed(text: &str, digits: u32) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() as u32 > digits || int.len() > 12 {
        return None;
    }
    let mut v: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    for _ in 0..digits {
        v = v.checked_mul(10)?;
    }
    let mut f: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += i64::from(b - b'0') * 10i64.pow(digits - 1 - i as u32);
    }
    v.checked_add(f)
}

/// Format an integer scaled by `10^digits` as decimal text without trailing zeros
/// (`format_fixed(150000, 5)` = `"1.5"`).
pub fn format_fixed(v: i64, digits: u32) -> String {
    let scale = 10i64.pow(digits);
    let (int, frac) = (v / scale, v % scale);
    if frac == 0 {
        return int.to_string();
    }
    let mut f = format!("{:0width$}", frac, width = digits as usize);
    while f.ends_with('0') {
        f.pop();
    }
    format!("{int}.{f}")
}

/// `yyyymmdd` integer of a date.
pub fn date_key(d: NaiveDate) -> u32 {
    d.year() as u32 * 10000 + d.month() * 100 + d.day()
}

/// Date of a `yyyymmdd` integer (`None` for 0, 99999999 or invalid).
pub fn key_date(k: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt((k / 10000) as i32, (k / 100) % 100, k % 100)
}

/// Parse an 8-digit master date. Empty → `None`; `99999999` and `00000000` are accepted as-is.
pub fn parse_master_date(text: &str) -> Result<Option<u32>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("date {t:?} is not yyyymmdd"));
    }
    let v: u32 = t
        .parse()
        .map_err(|_| format!("date {t:?} is not yyyymmdd"))?;
    if v != 99999999 && v != 0 && key_date(v).is_none() {
        return Err(format!("date {t:?} does not exist"));
    }
    Ok(Some(v))
}

/// The day before a `yyyymmdd` key (0 stays 0).
pub fn day_before(k: u32) -> u32 {
    match key_date(k).and_then(|d| d.pred_opt()) {
        Some(d) => date_key(d),
        None => k.saturating_sub(1),
    }
}

/// Parse an ISO `YYYY-MM-DD` date.
pub fn parse_iso_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Age in completed years on `on`.
pub fn age_years(birth: NaiveDate, on: NaiveDate) -> i32 {
    let mut age = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    age
}

/// Japanese era date `GYYMMDD` (G: 1 明治, 2 大正, 3 昭和, 4 平成, 5 令和) used in UKE records.
pub fn wareki(d: NaiveDate) -> String {
    let (g, start) = era_of(d);
    format!(
        "{g}{:02}{:02}{:02}",
        d.year() - start + 1,
        d.month(),
        d.day()
    )
}

/// Japanese era month `GYYMM`.
pub fn wareki_month(d: NaiveDate) -> String {
    let (g, start) = era_of(d);
    format!("{g}{:02}{:02}", d.year() - start + 1, d.month())
}

fn era_of(d: NaiveDate) -> (u32, i32) {
    let k = date_key(d);
    if k >= 20190501 {
        (5, 2019)
    } else if k >= 19890108 {
        (4, 1989)
    } else if k >= 19261225 {
        (3, 1926)
    } else if k >= 19120730 {
        (2, 1912)
    } else {
        (1, 1868)
    }
}

/// Inverse of [`wareki`]: `GYYMMDD` → date.
pub fn parse_wareki(text: &str) -> Option<NaiveDate> {
    if text.len() != 7 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let g: u32 = text[0..1].parse().ok()?;
    let yy: i32 = text[1..3].parse().ok()?;
    let mm: u32 = text[3..5].parse().ok()?;
    let dd: u32 = text[5..7].parse().ok()?;
    let start = match g {
        1 => 1868,
        2 => 1912,
        3 => 1926,
        4 => 1989,
        5 => 2019,
        _ => return None,
    };
    NaiveDate::from_ymd_opt(start + yy - 1, mm, dd)
}

/// Inverse of [`wareki_month`]: `GYYMM` → first day of that month.
pub fn parse_wareki_month(text: &str) -> Option<NaiveDate> {
    if text.len() != 5 {
        return None;
    }
    parse_wareki(&format!("{text}01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_round_trip() {
        assert_eq!(parse_fixed("291.00", 2), Some(29100));
        assert_eq!(parse_fixed("16.5", 2), Some(1650));
        assert_eq!(parse_fixed("0.125", 5), Some(12500));
        assert_eq!(parse_fixed("1.234", 2), None);
        assert_eq!(parse_fixed("-1", 2), None);
        assert_eq!(parse_fixed("abc", 2), None);
        assert_eq!(format_fixed(150000, 5), "1.5");
        assert_eq!(format_fixed(300000, 5), "3");
    }

    #[test]
    fn dates_and_eras() {
        let d = NaiveDate::from_ymd_opt(2024, 7, 1).unwrap();
        assert_eq!(wareki(d), "5060701");
        assert_eq!(wareki_month(d), "50607");
        assert_eq!(parse_wareki("5060701"), Some(d));
        assert_eq!(parse_wareki("4010108"), NaiveDate::from_ymd_opt(1989, 1, 8));
        assert_eq!(day_before(20240601), 20240531);
        assert!(parse_master_date("20240230").is_err());
        assert_eq!(parse_master_date("99999999"), Ok(Some(99999999)));
        let b = NaiveDate::from_ymd_opt(2018, 7, 2).unwrap();
        assert_eq!(age_years(b, d), 5);
    }
}
