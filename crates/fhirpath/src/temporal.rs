//! Partial dates, date-times and times with precision, as FHIRPath needs them.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use std::cmp::Ordering;
use std::fmt;

/// Precision of a date, date-time or time value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// A FHIRPath Date or DateTime (the variant of [`crate::Item`] tells which).
/// Components below `precision` are zero/one and meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialDateTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millisecond: u16,
    /// Number of fractional-second digits as written (for output); 0 when none.
    pub fraction_digits: u8,
    pub precision: Precision,
    /// Time-zone offset in minutes, if given.
    pub offset_minutes: Option<i16>,
}

/// A FHIRPath Time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialTime {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millisecond: u16,
    pub fraction_digits: u8,
    /// Hour .. Millisecond.
    pub precision: Precision,
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `hh(:mm(:ss(.fff)?)?)?` into components; returns (h, m, s, ms, frac_digits, precision).
fn parse_time_parts(t: &str) -> Option<(u8, u8, u8, u16, u8, Precision)> {
    let mut parts = t.splitn(3, ':');
    let h = digits(parts.next()?, 2)?;
    if h > 23 {
        return None;
    }
    let Some(mi) = parts.next() else {
        return Some((h as u8, 0, 0, 0, 0, Precision::Hour));
    };
    let m = digits(mi, 2)?;
    if m > 59 {
        return None;
    }
    let Some(sec) = parts.next() else {
        return Some((h as u8, m as u8, 0, 0, 0, Precision::Minute));
    };
    let (s_txt, frac) = match sec.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (sec, None),
    };
    let s = digits(s_txt, 2)?;
    if s > 59 {
        return None;
    }
    match frac {
        None => Some((h as u8, m as u8, s as u8, 0, 0, Precision::Second)),
        Some(f) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut ms_txt = f.chars().take(3).collect::<String>();
            while ms_txt.len() < 3 {
                ms_txt.push('0');
            }
            Some((
                h as u8,
                m as u8,
                s as u8,
                ms_txt.parse().ok()?,
                f.len() as u8,
                Precision::Millisecond,
            ))
        }
    }
}

fn days_in_month(y: i32, m: u8) -> u8 {
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

impl PartialDateTime {
    /// Parses a FHIR `date`/`dateTime`/`instant` string (also used for FHIRPath
    /// literals without the `@`). Returns the value and whether a `T` was present.
    pub fn parse_literal(s: &str) -> Option<(PartialDateTime, bool)> {
        let (date, time) = match s.split_once('T') {
            Some((d, t)) => (d, Some(t)),
            None => (s, None),
        };
        let mut dp = date.splitn(3, '-');
        let year = digits(dp.next()?, 4)? as i32;
        let mut v = PartialDateTime {
            year,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millisecond: 0,
            fraction_digits: 0,
            precision: Precision::Year,
            offset_minutes: None,
        };
        if let Some(m) = dp.next() {
            let m = digits(m, 2)?;
            if !(1..=12).contains(&m) {
                return None;
            }
            v.month = m as u8;
            v.precision = Precision::Month;
            if let Some(d) = dp.next() {
                let d = digits(d, 2)?;
                if d < 1 || d > days_in_month(year, v.month) as u32 {
                    return None;
                }
                v.day = d as u8;
                v.precision = Precision::Day;
            }
        }
        let Some(time) = time else {
            return Some((v, false));
        };
        if time.is_empty() {
            return Some((v, true));
        }
        if v.precision != Precision::Day {
            return None;
        }
        // split off the timezone
        let (tpart, tz) = if let Some(t) = time.strip_suffix('Z') {
            (t, Some(0i16))
        } else if let Some(idx) = time.rfind(['+', '-']) {
            let tz = &time[idx..];
            let sign: i16 = if tz.starts_with('-') { -1 } else { 1 };
            let (hh, mm) = tz[1..].split_once(':')?;
            let hh = digits(hh, 2)? as i16;
            let mm = digits(mm, 2)? as i16;
            if hh > 14 || mm > 59 {
                return None;
            }
            (&time[..idx], Some(sign * (hh * 60 + mm)))
        } else {
            (time, None)
        };
        let (h, mi, se, ms, fd, p) = parse_time_parts(tpart)?;
        v.hour = h;
        v.minute = mi;
        v.second = se;
        v.millisecond = ms;
        v.fraction_digits = fd;
        v.precision = p;
        v.offset_minutes = tz;
        Some((v, true))
    }

    /// Parses a FHIR `date` value (no time part allowed).
    pub fn parse_date(s: &str) -> Option<PartialDateTime> {
        match Self::parse_literal(s)? {
            (v, false) => Some(v),
            _ => None,
        }
    }

    /// Parses a FHIR `dateTime`/`instant` value.
    pub fn parse_datetime(s: &str) -> Option<PartialDateTime> {
        Self::parse_literal(s).map(|(v, _)| v)
    }

    pub(crate) fn naive(&self) -> Option<NaiveDateTime> {
        let d = NaiveDate::from_ymd_opt(self.year, self.month as u32, self.day as u32)?;
        let t = NaiveTime::from_hms_milli_opt(
            self.hour as u32,
            self.minute as u32,
            self.second as u32,
            self.millisecond as u32,
        )?;
        Some(NaiveDateTime::new(d, t))
    }

    fn set_naive(&mut self, n: NaiveDateTime) {
        self.year = n.year();
        self.month = n.month() as u8;
        self.day = n.day() as u8;
        self.hour = n.hour() as u8;
        self.minute = n.minute() as u8;
        self.second = n.second() as u8;
        self.millisecond = (n.nanosecond() / 1_000_000).min(999) as u16;
    }

    /// Value shifted to UTC (when it has an offset and a time part).
    fn to_utc(self) -> PartialDateTime {
        let mut v = self;
        if let Some(off) = self.offset_minutes {
            if self.precision >= Precision::Hour {
                if let Some(n) = self.naive() {
                    v.set_naive(n - Duration::minutes(off as i64));
                    v.offset_minutes = Some(0);
                }
            }
        }
        v
    }

    /// Component-wise comparison; `None` when the result is uncertain
    /// (different precisions and equal up to the common precision, or one
    /// value has a time-zone and the other not).
    pub fn compare(&self, other: &PartialDateTime) -> Option<Ordering> {
        let both_time = self.precision >= Precision::Hour && other.precision >= Precision::Hour;
        if both_time && self.offset_minutes.is_some() != other.offset_minutes.is_some() {
            return None;
        }
        let a = self.to_utc();
        let b = other.to_utc();
        let pa = norm_prec(a.precision);
        let pb = norm_prec(b.precision);
        let common = pa.min(pb);
        let comps = [
            (Precision::Year, (a.year as i64).cmp(&(b.year as i64))),
            (Precision::Month, a.month.cmp(&b.month)),
            (Precision::Day, a.day.cmp(&b.day)),
            (Precision::Hour, a.hour.cmp(&b.hour)),
            (Precision::Minute, a.minute.cmp(&b.minute)),
            (
                Precision::Second,
                (a.second as u32 * 1000 + a.millisecond as u32)
                    .cmp(&(b.second as u32 * 1000 + b.millisecond as u32)),
            ),
        ];
        for (p, o) in comps {
            if p > common {
                break;
            }
            if o != Ordering::Equal {
                return Some(o);
            }
        }
        if pa == pb {
            Some(Ordering::Equal)
        } else {
            None
        }
    }

    /// Adds an amount of a calendar unit; the result keeps the precision.
    pub(crate) fn add(&self, amount: i64, unit: CalUnit) -> Option<PartialDateTime> {
        let mut v = *self;
        match unit {
            CalUnit::Year => {
                v.year = i32::try_from((v.year as i64).checked_add(amount)?).ok()?;
                v.day = v.day.min(days_in_month(v.year, v.month));
            }
            CalUnit::Month => {
                if v.precision < Precision::Month {
                    // Year precision: whole years only.
                    v.year = i32::try_from((v.year as i64).checked_add(amount / 12)?).ok()?;
                } else {
                    let total = (v.year as i64 * 12 + (v.month as i64 - 1)).checked_add(amount)?;
                    v.year = i32::try_from(total.div_euclid(12)).ok()?;
                    v.month = (total.rem_euclid(12) + 1) as u8;
                    v.day = v.day.min(days_in_month(v.year, v.month));
                }
            }
            _ => {
                let ms = unit.millis()?.checked_mul(amount)?;
                let step_ms: i64 = match norm_prec(v.precision) {
                    Precision::Year | Precision::Month => {
                        // Finer units than the precision: convert to whole days then months is undefined;
                        // follow the spec and ignore amounts smaller than the precision.
                        return Some(v);
                    }
                    Precision::Day => 86_400_000,
                    Precision::Hour => 3_600_000,
                    Precision::Minute => 60_000,
                    _ => 1,
                };
                let ms = ms / step_ms * step_ms;
                let n = v
                    .naive()?
                    .checked_add_signed(Duration::try_milliseconds(ms)?)?;
                if !(1..=9999).contains(&n.year()) {
                    return None;
                }
                v.set_naive(n);
            }
        }
        if !(1..=9999).contains(&v.year) {
            return None;
        }
        Some(v)
    }

    /// Number of digits of precision as used by `precision()`.
    pub fn precision_digits(&self) -> i64 {
        match self.precision {
            Precision::Year => 4,
            Precision::Month => 6,
            Precision::Day => 8,
            Precision::Hour => 10,
            Precision::Minute => 12,
            Precision::Second => 14,
            Precision::Millisecond => 17,
        }
    }

    /// `lowBoundary`/`highBoundary` for dates (`is_date`) and date-times.
    pub(crate) fn boundary(
        &self,
        digits: Option<i64>,
        high: bool,
        is_date: bool,
    ) -> Option<PartialDateTime> {
        let target = match digits.unwrap_or(if is_date { 8 } else { 17 }) {
            4 => Precision::Year,
            6 => Precision::Month,
            8 => Precision::Day,
            10 if !is_date => Precision::Hour,
            12 if !is_date => Precision::Minute,
            14 if !is_date => Precision::Second,
            17 if !is_date => Precision::Millisecond,
            _ => return None,
        };
        let mut v = *self;
        let p = self.precision;
        if p < Precision::Month {
            v.month = if high { 12 } else { 1 };
        }
        if p < Precision::Day {
            v.day = if high {
                days_in_month(v.year, v.month)
            } else {
                1
            };
        }
        if p < Precision::Hour {
            v.hour = if high { 23 } else { 0 };
        }
        if p < Precision::Minute {
            v.minute = if high { 59 } else { 0 };
        }
        if p < Precision::Second {
            v.second = if high { 59 } else { 0 };
        }
        if p < Precision::Millisecond {
            v.millisecond = if high { 999 } else { 0 };
        }
        if target >= Precision::Hour && v.offset_minutes.is_none() {
            v.offset_minutes = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        if target < Precision::Hour {
            v.offset_minutes = None;
        }
        v.precision = target;
        v.fraction_digits = if target == Precision::Millisecond {
            3
        } else {
            0
        };
        Some(v)
    }

    /// Writes the value in FHIR/ISO form (without `@`).
    pub fn fmt_iso(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        if self.precision >= Precision::Hour {
            f.write_str("T")?;
            write_time(f, self)?;
            match self.offset_minutes {
                Some(0) => f.write_str("Z")?,
                Some(o) => {
                    let sign = if o < 0 { '-' } else { '+' };
                    let o = o.abs();
                    write!(f, "{sign}{:02}:{:02}", o / 60, o % 60)?
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Writes `hh(:mm(:ss(.fff)))` of `v` up to its precision.
fn write_time(f: &mut impl fmt::Write, v: &PartialDateTime) -> fmt::Result {
    write!(f, "{:02}", v.hour)?;
    if v.precision >= Precision::Minute {
        write!(f, ":{:02}", v.minute)?;
    }
    if v.precision >= Precision::Second {
        write!(f, ":{:02}", v.second)?;
    }
    if v.precision >= Precision::Millisecond {
        write_fraction(f, v.millisecond, v.fraction_digits)?;
    }
    Ok(())
}

fn write_fraction(f: &mut impl fmt::Write, ms: u16, digits: u8) -> fmt::Result {
    let d = digits.max(1) as usize;
    let s = format!("{ms:03}");
    if d <= 3 {
        write!(f, ".{}", &s[..d])
    } else {
        write!(f, ".{}{}", s, "0".repeat(d - 3))
    }
}

/// Seconds and milliseconds are a single precision for comparison.
fn norm_prec(p: Precision) -> Precision {
    if p == Precision::Millisecond {
        Precision::Second
    } else {
        p
    }
}

impl PartialTime {
    /// Parses `hh(:mm(:ss(.fff)?)?)?` (no time-zone).
    pub fn parse(s: &str) -> Option<PartialTime> {
        let (h, m, sec, ms, fd, p) = parse_time_parts(s)?;
        Some(PartialTime {
            hour: h,
            minute: m,
            second: sec,
            millisecond: ms,
            fraction_digits: fd,
            precision: p,
        })
    }

    /// The time on an arbitrary fixed day, to share the date-time logic.
    fn as_datetime(&self) -> PartialDateTime {
        PartialDateTime {
            year: 2000,
            month: 1,
            day: 1,
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            millisecond: self.millisecond,
            fraction_digits: self.fraction_digits,
            precision: self.precision,
            offset_minutes: None,
        }
    }

    fn from_datetime(d: PartialDateTime) -> PartialTime {
        PartialTime {
            hour: d.hour,
            minute: d.minute,
            second: d.second,
            millisecond: d.millisecond,
            fraction_digits: d.fraction_digits,
            precision: d.precision,
        }
    }

    pub fn compare(&self, other: &PartialTime) -> Option<Ordering> {
        self.as_datetime().compare(&other.as_datetime())
    }

    pub(crate) fn add(&self, amount: i64, unit: CalUnit) -> Option<PartialTime> {
        let ms = match unit {
            CalUnit::Hour | CalUnit::Minute | CalUnit::Second | CalUnit::Millisecond => {
                unit.millis()?.checked_mul(amount)?
            }
            _ => return None,
        };
        let day = 86_400_000i64;
        let cur = self.hour as i64 * 3_600_000
            + self.minute as i64 * 60_000
            + self.second as i64 * 1000
            + self.millisecond as i64;
        let n = (cur + ms % day).rem_euclid(day);
        let mut v = *self;
        v.hour = (n / 3_600_000) as u8;
        v.minute = (n / 60_000 % 60) as u8;
        v.second = (n / 1000 % 60) as u8;
        v.millisecond = (n % 1000) as u16;
        Some(v)
    }

    pub fn precision_digits(&self) -> i64 {
        match self.precision {
            Precision::Hour => 2,
            Precision::Minute => 4,
            Precision::Second => 6,
            _ => 9,
        }
    }

    pub(crate) fn boundary(&self, digits: Option<i64>, high: bool) -> Option<PartialTime> {
        let dt_digits = match digits.unwrap_or(9) {
            2 => 10,
            4 => 12,
            6 => 14,
            9 => 17,
            _ => return None,
        };
        self.as_datetime()
            .boundary(Some(dt_digits), high, false)
            .map(PartialTime::from_datetime)
    }

    pub fn fmt_iso(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write_time(f, &self.as_datetime())
    }
}

/// Calendar duration units usable in date/time arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl CalUnit {
    /// From a FHIRPath calendar keyword or a UCUM definite-duration code.
    /// UCUM `a` and `mo` are not calendar durations and are rejected.
    pub(crate) fn from_unit(u: &str) -> Option<CalUnit> {
        Some(match u {
            "year" | "years" => CalUnit::Year,
            "month" | "months" => CalUnit::Month,
            "week" | "weeks" | "wk" => CalUnit::Week,
            "day" | "days" | "d" => CalUnit::Day,
            "hour" | "hours" | "h" => CalUnit::Hour,
            "minute" | "minutes" | "min" => CalUnit::Minute,
            "second" | "seconds" | "s" => CalUnit::Second,
            "millisecond" | "milliseconds" | "ms" => CalUnit::Millisecond,
            _ => return None,
        })
    }
    fn millis(self) -> Option<i64> {
        Some(match self {
            CalUnit::Week => 7 * 86_400_000,
            CalUnit::Day => 86_400_000,
            CalUnit::Hour => 3_600_000,
            CalUnit::Minute => 60_000,
            CalUnit::Second => 1000,
            CalUnit::Millisecond => 1,
            _ => return None,
        })
    }
}
