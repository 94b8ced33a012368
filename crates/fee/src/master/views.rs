//! Typed views of master rows: only the columns the calculation uses, named.

use super::MasterRecord;
use chrono::{Datelike, NaiveDate};

/// An age limit code of the 医科診療行為マスター (cols 41/42, 100-111): `00` none, `NN` years,
/// or the special codes of 別紙 (生後28日, 生後90日, 3/6/15/20歳到達月の翌月1日, 未就学児).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeBound {
    None,
    Years(u32),
    /// `AA` 生後28日.
    Days28,
    /// `AE` 生後90日.
    Days90,
    /// `B3`/`B6`/`BF`/`BK`: the first day of the month after the N-th birthday.
    MonthAfterBirthday(u32),
    /// `MG` 未就学児 (until the 31 March after the 6th birthday).
    Preschool,
}

impl AgeBound {
    pub fn parse(code: &str) -> AgeBound {
        match code.trim() {
            "" | "00" | "0" => AgeBound::None,
            "AA" => AgeBound::Days28,
            "AE" => AgeBound::Days90,
            "B3" => AgeBound::MonthAfterBirthday(3),
            "B6" => AgeBound::MonthAfterBirthday(6),
            "BF" => AgeBound::MonthAfterBirthday(15),
            "BK" => AgeBound::MonthAfterBirthday(20),
            "MG" => AgeBound::Preschool,
            n => n.parse().map(AgeBound::Years).unwrap_or(AgeBound::None),
        }
    }

    /// The first date on which a person born on `birth` has reached this bound.
    pub fn threshold(self, birth: NaiveDate) -> Option<NaiveDate> {
        let add_years = |n: u32| {
            NaiveDate::from_ymd_opt(birth.year() + n as i32, birth.month(), birth.day())
                .or_else(|| NaiveDate::from_ymd_opt(birth.year() + n as i32, 3, 1))
        };
        match self {
            AgeBound::None => None,
            AgeBound::Years(n) => add_years(n),
            AgeBound::Days28 => birth.checked_add_days(chrono::Days::new(28)),
            AgeBound::Days90 => birth.checked_add_days(chrono::Days::new(90)),
            AgeBound::MonthAfterBirthday(n) => {
                let b = add_years(n)?;
                let (y, m) = if b.month() == 12 {
                    (b.year() + 1, 1)
                } else {
                    (b.year(), b.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1)
            }
            AgeBound::Preschool => {
                let six = add_years(6)?;
                let y = if six.month() >= 4 {
                    six.year() + 1
                } else {
                    six.year()
                };
                NaiveDate::from_ymd_opt(y, 4, 1)
            }
        }
    }

    /// `lower ≤ age < upper` as the master defines it: reached `lower`, not yet reached `upper`.
    pub fn in_range(lower: AgeBound, upper: AgeBound, birth: NaiveDate, on: NaiveDate) -> bool {
        let lower_ok = lower.threshold(birth).is_none_or(|t| on >= t);
        let upper_ok = upper.threshold(birth).is_none_or(|t| on < t);
        lower_ok && upper_ok
    }
}

/// 医科診療行為マスター row, the columns used by the rules.
#[derive(Debug, Clone)]
pub struct Procedure {
    pub code: String,
    pub name: String,
    /// col 11 点数識別: 1 金額, 3 点数(+), 4 購入価格, 5 %加算, 6 %減算, 7 減点, 8 点数(−).
    pub point_kind: u8,
    /// col 12 新又は現点数, hundredths.
    pub points_x100: i64,
    /// col 13 入外適用区分: 0 both, 1 入院 only, 2 入院外 only.
    pub inout: u8,
    /// col 15 点数欄集計先識別（入院外）.
    pub tally_out: u16,
    /// col 16 包括対象検査.
    pub bundle_group: u8,
    /// col 19 病院・診療所区分: 0 both, 1 病院, 2 診療所.
    pub facility_kind: u8,
    /// col 25 傷病名関連区分: 3/4 皮膚科特定疾患指導管理料(Ⅰ/Ⅱ), 5 特定疾患療養管理料・特定疾患処方管理加算,
    /// 7 てんかん指導料, 9 難病外来指導管理料 (the 傷病名マスター col 21 value the patient's disease
    /// must have).
    pub disease_relation: u8,
    /// col 28 日数・回数 (1 初診料, 2 再診料 with col 27 = 2).
    pub visit_fee_kind: u8,
    /// cols 30-35 きざみ値.
    pub step: Option<StepRule>,
    /// col 36 上限回数 (0 = none) and col 37 its error handling (0 check, 1 clamp).
    pub max_count: u32,
    pub max_count_clamp: bool,
    /// cols 38/39 注加算コード / 通番.
    pub addition_code: String,
    pub addition_seq: String,
    /// cols 41/42 下限年齢 / 上限年齢.
    pub min_age: AgeBound,
    pub max_age: AgeBound,
    /// col 43 時間加算区分.
    pub time_kind: u8,
    /// col 50 検査等実施判断区分 (1 実施料, 2 判断料) and col 51 its group.
    pub lab_kind: u8,
    pub lab_group: u8,
    /// col 56 外来管理加算区分 (1 = excludes 外来管理加算, 2 = 外来管理加算 itself).
    pub outpatient_mgmt: u8,
    /// col 68 告示等識別区分(1): 1 基本, 3 合成, 5 準用, 7 加算, 9 通則加算.
    pub notice_kind: u8,
    /// col 69 告示等識別区分(2): 1 基本, 3 合成, 7 加算.
    pub notice_kind2: u8,
    /// cols 72-81 施設基準コード (non-zero only).
    pub standards: Vec<String>,
    /// col 85 + col 92: コード表用番号, e.g. `A000`.
    pub section: String,
    /// col 93 枝番, col 94 項番.
    pub branch: String,
    pub item_no: String,
    /// cols 100-111 年齢加算 (lower, upper, addition code).
    pub age_additions: Vec<(AgeBound, AgeBound, String)>,
}

/// きざみ値 rule (cols 30-35): 点数 = base + ceil((value − lower) / step) × step_points, capped.
#[derive(Debug, Clone, Copy)]
pub struct StepRule {
    pub lower: i64,
    pub upper: i64,
    pub step: i64,
    pub step_points_x100: i64,
    /// col 35 上下限エラー処理.
    pub error_mode: u8,
}

impl Procedure {
    pub fn from_record(r: &MasterRecord) -> Procedure {
        let standards = (72..=81)
            .map(|c| r.col(c).trim())
            .filter(|s| !s.trim_start_matches('0').is_empty())
            .map(|s| s.to_string())
            .collect();
        let mut age_additions = Vec::new();
        for i in 0..4 {
            let base = 100 + i * 3;
            let code = r.col(base + 2).trim();
            if code.len() == 9 {
                age_additions.push((
                    AgeBound::parse(r.col(base)),
                    AgeBound::parse(r.col(base + 1)),
                    code.to_string(),
                ));
            }
        }
        let step = if r.num(30) != 0 {
            Some(StepRule {
                lower: r.num(31),
                upper: r.num(32),
                step: r.num(33).max(1),
                step_points_x100: r.amount(34),
                error_mode: r.num(35) as u8,
            })
        } else {
            None
        };
        Procedure {
            code: r.code.clone(),
            name: r.col(5).to_string(),
            point_kind: r.num(11) as u8,
            points_x100: r.amount(12),
            inout: r.num(13) as u8,
            tally_out: r.num(15) as u16,
            bundle_group: r.num(16) as u8,
            facility_kind: r.num(19) as u8,
            disease_relation: r.num(25) as u8,
            visit_fee_kind: if r.num(27) == 2 { r.num(28) as u8 } else { 0 },
            step,
            max_count: r.num(36) as u32,
            max_count_clamp: r.num(37) == 1,
            addition_code: r.col(38).trim().to_string(),
            addition_seq: r.col(39).trim().to_string(),
            min_age: AgeBound::parse(r.col(41)),
            max_age: AgeBound::parse(r.col(42)),
            time_kind: r.num(43) as u8,
            lab_kind: r.num(50) as u8,
            lab_group: r.num(51) as u8,
            outpatient_mgmt: r.num(56) as u8,
            notice_kind: r.num(68) as u8,
            notice_kind2: r.num(69) as u8,
            standards,
            section: format!("{}{}", r.col(85).trim(), r.col(92).trim()),
            branch: r.col(93).trim().to_string(),
            item_no: r.col(94).trim().to_string(),
            age_additions,
        }
    }

    /// Whole points (the masters carry `.00` for every 点数 item).
    pub fn points(&self) -> i64 {
        self.points_x100 / 100
    }

    /// Is this an addition (加算) rather than a base item (告示等識別区分 7 or 9)?
    pub fn is_addition(&self) -> bool {
        matches!(self.notice_kind, 7 | 9) || self.notice_kind2 == 7
    }
}

/// 医薬品マスター row.
#[derive(Debug, Clone)]
pub struct Drug {
    pub code: String,
    pub name: String,
    pub unit_code: String,
    pub unit_name: String,
    /// col 12 薬価, hundredths of a yen per unit.
    pub price_x100: i64,
    /// col 14 麻薬・毒薬・覚醒剤原料・向精神薬 (1, 2, 3, 5).
    pub narcotic: u8,
    /// col 16 生物学的製剤 (生物学的製剤注射加算).
    pub biological: bool,
    /// col 17 後発品 (1 = generic).
    pub generic: bool,
    /// col 28 剤形: 1 内用, 3 その他, 4 注射, 6 外用, 8 歯科.
    pub form: u8,
    /// col 39 一般名処方加算対象区分 (0 none, 1 加算1, 2 加算1・2); 0 for the 40-column layout.
    pub generic_name_addition: u8,
}

impl Drug {
    pub fn from_record(r: &MasterRecord) -> Drug {
        Drug {
            code: r.code.clone(),
            name: r.col(5).to_string(),
            unit_code: r.col(8).trim().to_string(),
            unit_name: r.col(10).to_string(),
            price_x100: r.amount(12),
            narcotic: r.num(14) as u8,
            biological: r.num(16) == 1,
            generic: r.num(17) == 1,
            form: r.num(28) as u8,
            generic_name_addition: r.num(39) as u8,
        }
    }
}

/// 特定器材マスター row.
#[derive(Debug, Clone)]
pub struct Material {
    pub code: String,
    pub name: String,
    pub unit_code: String,
    pub unit_name: String,
    /// col 11 金額種別 and col 12 新又は現金額 (hundredths of a yen).
    pub amount_kind: u8,
    pub price_x100: i64,
    /// col 22 特定器材種別: 0/2 ÷10円, 3 ÷50円, 4 ÷1,000円 (四捨五入).
    pub material_kind: u8,
}

impl Material {
    pub fn from_record(r: &MasterRecord) -> Material {
        Material {
            code: r.code.clone(),
            name: r.col(5).to_string(),
            unit_code: r.col(8).trim().to_string(),
            unit_name: r.col(10).to_string(),
            amount_kind: r.num(11) as u8,
            price_x100: r.amount(12),
            material_kind: r.num(22) as u8,
        }
    }
}

/// コメントマスター row.
#[derive(Debug, Clone)]
pub struct Comment {
    pub code: String,
    /// col 4 パターン (10 free text, 20 fixed, 30 fixed+text, …).
    pub pattern: u8,
    pub text: String,
}

impl Comment {
    pub fn from_record(r: &MasterRecord) -> Comment {
        Comment {
            code: r.code.clone(),
            pattern: r.num(4) as u8,
            text: r.col(7).to_string(),
        }
    }
}

/// 傷病名マスター row.
#[derive(Debug, Clone)]
pub struct Disease {
    pub code: String,
    pub name: String,
    pub short_name: String,
    pub icd10: String,
    /// col 21 特定疾患等対象区分 (`00` none).
    pub specific_disease: u8,
}

impl Disease {
    pub fn from_record(r: &MasterRecord) -> Disease {
        Disease {
            code: r.code.clone(),
            name: r.col(6).to_string(),
            short_name: r.col(8).to_string(),
            icd10: r.col(16).trim().to_string(),
            specific_disease: r.num(21) as u8,
        }
    }
}

/// 修飾語マスター row.
#[derive(Debug, Clone)]
pub struct Modifier {
    pub code: String,
    pub name: String,
}

impl Modifier {
    pub fn from_record(r: &MasterRecord) -> Modifier {
        Modifier {
            code: r.code.clone(),
            name: r.col(7).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, dd: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, dd).unwrap()
    }

    #[test]
    fn age_bounds() {
        let birth = d(2018, 7, 2);
        // under 6 until the day before the 6th birthday
        assert!(AgeBound::in_range(
            AgeBound::None,
            AgeBound::Years(6),
            birth,
            d(2024, 7, 1)
        ));
        assert!(!AgeBound::in_range(
            AgeBound::None,
            AgeBound::Years(6),
            birth,
            d(2024, 7, 2)
        ));
        // B6: the 1st of the month after the 6th birthday = 2024-08-01
        assert_eq!(
            AgeBound::MonthAfterBirthday(6).threshold(birth),
            Some(d(2024, 8, 1))
        );
        // 未就学: 6th birthday 2024-07-02 → until 2025-03-31
        assert_eq!(AgeBound::Preschool.threshold(birth), Some(d(2025, 4, 1)));
        assert_eq!(AgeBound::Days28.threshold(birth), Some(d(2018, 7, 30)));
        assert_eq!(AgeBound::parse("MG"), AgeBound::Preschool);
    }
}
