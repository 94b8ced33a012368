//! The calendar of the fee rules: 休日 and 深夜 from a visit's local date and time.
//!
//! 診療報酬の「休日」: 日曜日, the holidays of 国民の祝日に関する法律 第3条 (祝日, 振替休日, 国民の休日)
//! and 1月2日・3日, 12月29日〜31日. 「深夜」: 22:00 to 6:00. 時間外 (outside the clinic's posted
//! hours) needs the clinic's hours and stays the caller's choice.
//!
//! ```
//! use chrono::NaiveDate;
//! use iryo_fee::calc::calendar::{is_fee_holiday, is_national_holiday};
//! let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
//! assert!(is_national_holiday(d(2024, 3, 20)));   // 春分の日
//! assert!(is_national_holiday(d(2024, 5, 6)));    // 振替休日 (5/5 was a Sunday)
//! assert!(is_fee_holiday(d(2024, 12, 30)));       // 年末
//! assert!(!is_fee_holiday(d(2024, 6, 1)));        // a Saturday is not a 休日
//! ```

use super::model::TimeCategory;
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike, Weekday};

/// The n-th (1-based) Monday of a month.
fn nth_monday(y: i32, m: u32, n: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(y, m, 1).map(|d| d.weekday().num_days_from_monday());
    let offset = first.map(|w| (7 - w) % 7).unwrap_or(0);
    1 + offset + 7 * (n - 1)
}

/// 春分日 and 秋分日 by the usual approximation (valid 1980–2099; the official dates are
/// announced a year ahead and have matched it throughout that range).
fn equinox_days(y: i32) -> (u32, u32) {
    let t = f64::from(y - 1980);
    let leap = ((y - 1980) / 4) as f64;
    let spring = (20.8431 + 0.242194 * t - leap).floor() as u32;
    let autumn = (23.2488 + 0.242194 * t - leap).floor() as u32;
    (spring, autumn)
}

/// A 国民の祝日 itself (without 振替休日 / 国民の休日), for 2000–2099.
fn is_named_holiday(d: NaiveDate) -> bool {
    let (y, m, day) = (d.year(), d.month(), d.day());
    let (spring, autumn) = equinox_days(y);
    match (m, day) {
        (1, 1) | (2, 11) | (4, 29) | (5, 3) | (5, 4) | (5, 5) | (11, 3) | (11, 23) => true,
        (2, 23) => y >= 2020,
        (12, 23) => (1989..=2018).contains(&y),
        (3, _) => day == spring,
        (9, _) if day == autumn => true,
        (1, _) => day == nth_monday(y, 1, 2), // 成人の日
        (7, _) => match y {
            2020 => day == 23 || day == 24, // 海の日, スポーツの日 (Olympics)
            2021 => day == 22 || day == 23,
            _ => day == nth_monday(y, 7, 3), // 海の日
        },
        (8, _) => match y {
            2020 => day == 10,
            2021 => day == 8,
            _ => y >= 2016 && day == 11, // 山の日
        },
        (9, _) => day == nth_monday(y, 9, 3), // 敬老の日
        (10, 22) if y == 2019 => true,        // 即位礼正殿の儀
        (10, _) => match y {
            2020 | 2021 => false,
            _ => day == nth_monday(y, 10, 2), // 体育の日 / スポーツの日
        },
        (4, 30) | (5, 1) | (5, 2) => y == 2019, // 即位の日 and the days around it
        _ => false,
    }
}

/// 国民の祝日に関する法律 第3条: a 祝日, a 振替休日 (the first non-holiday after a 祝日 that
/// falls on a Sunday) or a 国民の休日 (a weekday between two 祝日).
pub fn is_national_holiday(d: NaiveDate) -> bool {
    if is_named_holiday(d) {
        return true;
    }
    // 振替休日: walk back over consecutive 祝日 to a Sunday one
    let mut p = d.pred_opt();
    while let Some(x) = p {
        if !is_named_holiday(x) {
            break;
        }
        if x.weekday() == Weekday::Sun {
            return true;
        }
        p = x.pred_opt();
    }
    // 国民の休日
    d.weekday() != Weekday::Sun
        && d.pred_opt().is_some_and(is_named_holiday)
        && d.succ_opt().is_some_and(is_named_holiday)
}

/// The fee rules' 休日: Sunday, a national holiday, 1月2日・3日, 12月29日〜31日.
pub fn is_fee_holiday(d: NaiveDate) -> bool {
    d.weekday() == Weekday::Sun
        || is_national_holiday(d)
        || matches!((d.month(), d.day()), (1, 2) | (1, 3) | (12, 29..=31))
}

/// The time category the visit's local date and time give by themselves: 深夜 (22:00–6:00)
/// before 休日 (the higher addition wins), else `Normal` (時間外 needs the clinic's hours).
pub fn time_category_at(local: NaiveDateTime) -> TimeCategory {
    let h = local.hour();
    if !(6..22).contains(&h) {
        TimeCategory::LateNight
    } else if is_fee_holiday(local.date()) {
        TimeCategory::Holiday
    } else {
        TimeCategory::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    /// Every 祝日・休日 of 2024 and 2025 as published by 内閣府, and nothing else.
    #[test]
    fn national_holidays_2024_2025_match_the_cabinet_office_list() {
        let published: Vec<NaiveDate> = [
            (2024, 1, 1),
            (2024, 1, 8),
            (2024, 2, 11),
            (2024, 2, 12),
            (2024, 2, 23),
            (2024, 3, 20),
            (2024, 4, 29),
            (2024, 5, 3),
            (2024, 5, 4),
            (2024, 5, 5),
            (2024, 5, 6),
            (2024, 7, 15),
            (2024, 8, 11),
            (2024, 8, 12),
            (2024, 9, 16),
            (2024, 9, 22),
            (2024, 9, 23),
            (2024, 10, 14),
            (2024, 11, 3),
            (2024, 11, 4),
            (2024, 11, 23),
            (2025, 1, 1),
            (2025, 1, 13),
            (2025, 2, 11),
            (2025, 2, 23),
            (2025, 2, 24),
            (2025, 3, 20),
            (2025, 4, 29),
            (2025, 5, 3),
            (2025, 5, 4),
            (2025, 5, 5),
            (2025, 5, 6),
            (2025, 7, 21),
            (2025, 8, 11),
            (2025, 9, 15),
            (2025, 9, 23),
            (2025, 10, 13),
            (2025, 11, 3),
            (2025, 11, 23),
            (2025, 11, 24),
        ]
        .iter()
        .map(|&(y, m, day)| d(y, m, day))
        .collect();
        let mut day = d(2024, 1, 1);
        while day <= d(2025, 12, 31) {
            assert_eq!(is_national_holiday(day), published.contains(&day), "{day}");
            day = day.succ_opt().unwrap();
        }
    }

    #[test]
    fn kokumin_no_kyujitsu_and_special_years() {
        assert!(is_national_holiday(d(2015, 9, 22))); // between 敬老の日 and 秋分の日
        assert!(is_national_holiday(d(2019, 4, 30)));
        assert!(is_national_holiday(d(2019, 5, 1)));
        assert!(is_national_holiday(d(2019, 5, 2)));
        assert!(is_national_holiday(d(2020, 7, 24))); // スポーツの日 (moved)
        assert!(!is_national_holiday(d(2020, 10, 12)));
        assert!(!is_national_holiday(d(2018, 2, 23)));
        assert!(is_national_holiday(d(2018, 12, 24))); // 振替休日 of 天皇誕生日 (Sunday)
    }

    #[test]
    fn fee_holidays_and_time_categories() {
        assert!(is_fee_holiday(d(2024, 6, 2))); // Sunday
        assert!(!is_fee_holiday(d(2024, 6, 1))); // Saturday
        assert!(is_fee_holiday(d(2025, 1, 2)));
        assert!(is_fee_holiday(d(2024, 12, 29)));
        let at = |y, m, day, h, min| d(y, m, day).and_hms_opt(h, min, 0).unwrap();
        assert_eq!(
            time_category_at(at(2024, 6, 3, 10, 0)),
            TimeCategory::Normal
        );
        assert_eq!(
            time_category_at(at(2024, 6, 3, 22, 0)),
            TimeCategory::LateNight
        );
        assert_eq!(
            time_category_at(at(2024, 6, 3, 5, 59)),
            TimeCategory::LateNight
        );
        assert_eq!(time_category_at(at(2024, 6, 3, 6, 0)), TimeCategory::Normal);
        assert_eq!(
            time_category_at(at(2024, 6, 2, 10, 0)),
            TimeCategory::Holiday
        );
        // 深夜 on a holiday: the higher 深夜 addition
        assert_eq!(
            time_category_at(at(2024, 6, 2, 23, 0)),
            TimeCategory::LateNight
        );
    }
}
