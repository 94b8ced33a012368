//! The calculation of one outpatient visit.

use super::model::*;
use super::rules::{self, bundle_points, shikibetsu_of_tally};
use crate::error::{FeeError, Result};
use crate::master::{AgeBound, Drug, ExclusionScope, MasterStore, Procedure};
use crate::num::{format_fixed, parse_fixed};
use chrono::{Datelike, NaiveDate};
use std::sync::Arc;

/// Calculate one visit: every billed line with its reason, total points, copay, and the
/// refusals/warnings of each rule. `visit.history` carries what was billed earlier in the month.
pub fn calculate(
    store: &MasterStore,
    facility: &Facility,
    visit: &VisitInput,
) -> Result<VisitResult> {
    if visit.patient.birth_date > visit.date {
        return Err(FeeError::input(
            "patient.birth_date",
            "birth date is after the visit date / 生年月日が診療日より後です",
        ));
    }
    if visit.insurance.public_expenses.len() > 1 {
        return Err(FeeError::input(
            "insurance.public_expenses",
            "at most one 公費 is supported / 公費は1種類まで対応しています",
        ));
    }
    for (i, pe) in visit.insurance.public_expenses.iter().enumerate() {
        if pe.payer_number.len() != 8 || !pe.payer_number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FeeError::input(
                format!("insurance.public_expenses[{i}].payer_number"),
                "公費負担者番号 must be 8 digits / 公費負担者番号は8桁",
            ));
        }
        if pe.burden_percent > 100 {
            return Err(FeeError::input(
                format!("insurance.public_expenses[{i}].burden_percent"),
                "must be 0–100 / 0〜100",
            ));
        }
    }
    if let Some(p) = visit.insurance.burden_percent {
        if p > 100 || p % 10 != 0 {
            return Err(FeeError::input(
                "insurance.burden_percent",
                "must be 0, 10, 20 or 30 / 負担割合は10%単位",
            ));
        }
    }
    let mut c = Ctx {
        store,
        facility,
        visit,
        date: visit.date,
        lines: Vec::new(),
        messages: Vec::new(),
    };
    c.visit_fee()?;
    c.procedures()?;
    c.treatment_time_additions()?;
    c.bundle_labs();
    c.judgements()?;
    c.prescription()?;
    c.injections()?;
    c.treatment_drugs()?;
    c.materials()?;
    c.outpatient_management()?;
    c.addition_links()?;
    c.inclusions()?;
    c.exclusions()?;
    c.count_limits()?;
    c.prune_judgements()?;
    let comments = c.comments()?;
    let total_points: i64 = c.lines.iter().map(|l| l.total).sum();
    let burden_percent = visit
        .insurance
        .burden_percent
        .unwrap_or_else(|| default_burden(visit));
    let total_yen = total_points * 10;
    let insurance_copay_yen = copay(total_points, burden_percent);
    // 公費: the patient pays the 公費 share (10-yen rounded, capped), never more than the
    // insurance copay; the 公費 pays the rest of the insurance copay.
    let copay_yen = match visit.insurance.public_expenses.first() {
        Some(pe) => {
            let share = copay(total_points, pe.burden_percent);
            share
                .min(pe.cap_yen.unwrap_or(i64::MAX))
                .min(insurance_copay_yen)
        }
        None => insurance_copay_yen,
    };
    Ok(VisitResult {
        visit_id: visit.id.clone(),
        patient_id: visit.patient.id.clone(),
        date: visit.date,
        lines: c.lines,
        total_points,
        burden_percent,
        total_yen,
        copay_yen,
        insurance_copay_yen,
        public_expense_yen: insurance_copay_yen - copay_yen,
        messages: c.messages,
        comments,
    })
}

/// Calculate a month of visits: per patient in date order, each visit also sees (in its
/// history) the lines billed by that patient's earlier visits in the list, and a 公費
/// 月額自己負担上限 (`monthly_cap_yen`) is applied over the patient's visits. Results come back in
/// the input order.
pub fn calculate_month(
    store: &MasterStore,
    facility: &Facility,
    visits: &[VisitInput],
) -> Result<Vec<VisitResult>> {
    let mut order: Vec<usize> = (0..visits.len()).collect();
    order.sort_by(|&a, &b| {
        (&visits[a].patient.id, visits[a].date, a).cmp(&(&visits[b].patient.id, visits[b].date, b))
    });
    let mut results: Vec<Option<VisitResult>> = vec![None; visits.len()];
    let mut billed: std::collections::HashMap<&str, Vec<HistoryLine>> =
        std::collections::HashMap::new();
    let mut paid: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    // (patient, year, month) → (医療費, copay) for 高額療養費
    let mut month_cost: std::collections::HashMap<(&str, i32, u32), (i64, i64)> =
        std::collections::HashMap::new();
    for i in order {
        let v = &visits[i];
        let prior = billed.entry(v.patient.id.as_str()).or_default();
        let r = if prior.is_empty() {
            calculate(store, facility, v)?
        } else {
            let mut with_history = v.clone();
            with_history.history.extend(prior.iter().cloned());
            calculate(store, facility, &with_history)?
        };
        prior.extend(r.history_lines());
        let mut r = r;
        let so_far = paid.entry(v.patient.id.as_str()).or_default();
        if let Some(cap) = v
            .insurance
            .public_expenses
            .first()
            .and_then(|pe| pe.monthly_cap_yen)
        {
            let allowed = (cap - *so_far).max(0);
            if r.copay_yen > allowed {
                r.messages.push(Message {
                    level: Level::Info,
                    rule: "public_expense_monthly_cap".into(),
                    code: None,
                    message_ja: format!("公費の月額自己負担上限 {cap}円（既に{}円）により窓口負担を{}円から{allowed}円にしました", *so_far, r.copay_yen),
                    message_en: format!("公費 monthly cap {cap} yen ({} already paid): copay {} → {allowed} yen", *so_far, r.copay_yen),
                });
                r.copay_yen = allowed;
                r.public_expense_yen = r.insurance_copay_yen - allowed;
            }
        }
        // 高額療養費 (外来, this facility, the calendar month): the copay of the month so far is
        // capped by the 所得区分's limit of the month's 医療費 so far
        if let (Some(cat), true) = (
            v.insurance.high_cost,
            v.insurance.public_expenses.is_empty(),
        ) {
            let key = (v.patient.id.as_str(), v.date.year(), v.date.month());
            let (medical, copaid) = month_cost.entry(key).or_default();
            *medical += r.total_yen;
            let limit = high_cost_limit(cat, *medical);
            let allowed = (limit - *copaid).max(0);
            if r.copay_yen > allowed {
                r.messages.push(Message {
                    level: Level::Info,
                    rule: "high_cost_cap".into(),
                    code: None,
                    message_ja: format!(
                        "高額療養費（所得区分 {}）: 当月の医療費 {}円の自己負担限度額 {limit}円（既に{}円）により窓口負担を{}円から{allowed}円にしました",
                        high_cost_label(cat), *medical, *copaid, r.copay_yen
                    ),
                    message_en: format!(
                        "高額療養費 ({cat:?}): limit {limit} yen for {} yen of care this month ({} already paid): copay {} → {allowed} yen",
                        *medical, *copaid, r.copay_yen
                    ),
                });
                r.copay_yen = allowed;
                r.insurance_copay_yen = allowed;
            }
            *copaid += r.copay_yen;
        }
        *so_far += r.copay_yen;
        results[i] = Some(r);
    }
    Ok(results.into_iter().flatten().collect())
}

/// 高額療養費の自己負担限度額 (月額, 外来) for a month's 医療費 in yen. The 1% part is rounded
/// to the yen (四捨五入). 多数回該当 and the 世帯合算 are not applied.
pub fn high_cost_limit(cat: HighCostCategory, medical_yen: i64) -> i64 {
    let plus_one_percent =
        |base: i64, threshold: i64| base + ((medical_yen - threshold).max(0) + 50) / 100;
    match cat {
        HighCostCategory::A => plus_one_percent(252_600, 842_000),
        HighCostCategory::I => plus_one_percent(167_400, 558_000),
        HighCostCategory::U => plus_one_percent(80_100, 267_000),
        HighCostCategory::E => 57_600,
        HighCostCategory::O => 35_400,
        HighCostCategory::General70 => 18_000,
        HighCostCategory::LowIncome70 => 8_000,
    }
}

fn high_cost_label(cat: HighCostCategory) -> &'static str {
    match cat {
        HighCostCategory::A => "ア（現役並みⅢ）",
        HighCostCategory::I => "イ（現役並みⅡ）",
        HighCostCategory::U => "ウ（現役並みⅠ）",
        HighCostCategory::E => "エ",
        HighCostCategory::O => "オ",
        HighCostCategory::General70 => "一般（70歳以上）",
        HighCostCategory::LowIncome70 => "低所得（70歳以上）",
    }
}

/// 薬剤料 points of one 剤 for one day (内服), dose (頓服) or dispensing (外用), from its price in
/// units of 10⁻⁷ yen: ≤ 15円 → 1点; otherwise (円 − 15) / 10 rounded up, + 1 — the same as
/// 円 / 10 rounded 五捨五超入 (exactly .5 rounds down, anything above rounds up).
pub fn drug_points(yen_e7: i128) -> i64 {
    let scale: i128 = 10_000_000;
    if yen_e7 <= 15 * scale {
        1
    } else {
        (((yen_e7 - 15 * scale) + 10 * scale - 1) / (10 * scale) + 1) as i64
    }
}

/// 一部負担金: points × 10 yen × percent, rounded to 10 yen — under 5 yen dropped, 5 yen or more
/// rounded up (健康保険法第75条, 国民健康保険法第42条の2).
pub fn copay(total_points: i64, burden_percent: u8) -> i64 {
    let yen = total_points * 10 * i64::from(burden_percent);
    // yen is ×100 here; round half up to a multiple of 10 yen (= 1000 in this scale).
    (yen + 500).div_euclid(1000) * 10
}

/// Default 負担割合 by age when the card does not say: 未就学 20%, 70-74 20% (from the month after
/// the 70th birthday), 75+ / 後期高齢者 10%, otherwise 30%.
pub fn default_burden(visit: &VisitInput) -> u8 {
    let birth = visit.patient.birth_date;
    let on = visit.date;
    if visit.insurance.kind == InsuranceKind::Koki {
        return 10;
    }
    if !AgeBound::in_range(AgeBound::None, AgeBound::Preschool, birth, on) {
        let seventy = if birth.day() == 1 {
            AgeBound::Years(70).threshold(birth)
        } else {
            AgeBound::MonthAfterBirthday(70).threshold(birth)
        };
        if AgeBound::Years(75)
            .threshold(birth)
            .is_some_and(|t| on >= t)
        {
            return 10;
        }
        if seventy.is_some_and(|t| on >= t) {
            return 20;
        }
        30
    } else {
        20
    }
}

fn time_label(t: TimeCategory) -> (&'static str, &'static str) {
    match t {
        TimeCategory::Normal => ("診療時間内", "regular hours"),
        TimeCategory::Overtime => ("時間外", "overtime"),
        TimeCategory::Holiday => ("休日", "holiday"),
        TimeCategory::LateNight => ("深夜", "late-night"),
        TimeCategory::OvertimeSpecial => (
            "時間外特例医療機関での時間外",
            "overtime (special facility)",
        ),
        TimeCategory::NightEarly => ("夜間・早朝等", "night/early-morning"),
    }
}

struct Ctx<'a> {
    store: &'a MasterStore,
    facility: &'a Facility,
    visit: &'a VisitInput,
    date: NaiveDate,
    lines: Vec<Line>,
    messages: Vec<Message>,
}

fn item_of(p: &Procedure, quantity: Option<String>) -> LineItem {
    LineItem {
        kind: ItemKind::Procedure,
        code: p.code.clone(),
        name: p.name.clone(),
        quantity,
        master_amount: format_fixed(p.points_x100, 2),
        unit: None,
        unit_code: None,
    }
}

/// Drugs priced together ([`Ctx::priced_group`]).
#[derive(Default)]
struct PricedGroup {
    /// yen × 10⁷
    amount: i128,
    parts_ja: Vec<String>,
    items: Vec<LineItem>,
    drugs: Vec<Drug>,
}

/// One drug of a 剤 or an injection: price × quantity (yen × 10⁷, exact), the arithmetic for
/// the reason (`16.5円×3`), and its line item.
fn priced_drug(drug: &Drug, q: i64) -> (i128, String, LineItem) {
    (
        i128::from(drug.price_x100) * i128::from(q),
        format!(
            "{}円×{}",
            format_fixed(drug.price_x100, 2),
            format_fixed(q, 5)
        ),
        LineItem {
            kind: ItemKind::Drug,
            code: drug.code.clone(),
            name: drug.name.clone(),
            quantity: Some(format_fixed(q, 5)),
            master_amount: format_fixed(drug.price_x100, 2),
            unit: Some(drug.unit_name.clone()),
            unit_code: Some(drug.unit_code.clone()),
        },
    )
}

/// A %加算 (点数識別 5) or %減算 (6) item applied to `base`'s points per count:
/// `round(base × percent / 100)`, 1点未満四捨五入; negative for 減算.
fn percent_of(base: &Line, p: &Procedure) -> (i64, String, String) {
    let pct = p.points_x100; // percent × 100 (`40.00` → 4000)
    let abs = (base.points.abs() * pct + 5_000) / 10_000;
    let (pts, sign) = if p.point_kind == 6 {
        (-abs, "−")
    } else {
        (abs, "+")
    };
    let base_name = base.items.last().map(|i| i.name.as_str()).unwrap_or("");
    let pct_text = format_fixed(pct, 2);
    let pct_text = pct_text.trim_end_matches('0').trim_end_matches('.');
    (
        pts,
        format!(
            "{}: {}{}点 × {}/100 = {}{}点（1点未満四捨五入）",
            p.name, base_name, base.points, pct_text, sign, abs
        ),
        format!(
            "{}: {} points × {}% = {}{} points (rounded half up)",
            p.code, base.points, pct_text, sign, abs
        ),
    )
}

/// A positive decimal quantity (5 fraction digits), or an input error naming the field.
fn positive_quantity(text: &str, field: String) -> Result<i64> {
    parse_fixed(text, 5)
        .filter(|&q| q > 0)
        .ok_or_else(|| FeeError::input(field, "not a positive decimal / 数量が不正です"))
}

fn same_month(a: NaiveDate, b: NaiveDate) -> bool {
    a.year() == b.year() && a.month() == b.month()
}

/// Sunday-to-Saturday week of a date (the 1週間 / 週 unit of the 電子点数表).
fn week_start(d: NaiveDate) -> NaiveDate {
    d.checked_sub_days(chrono::Days::new(u64::from(
        d.weekday().num_days_from_sunday(),
    )))
    .unwrap_or(NaiveDate::MIN)
}

impl Ctx<'_> {
    fn msg(&mut self, level: Level, rule: &str, code: Option<&str>, ja: String, en: String) {
        self.messages.push(Message {
            level,
            rule: rule.to_string(),
            code: code.map(str::to_string),
            message_ja: ja,
            message_en: en,
        });
    }

    fn unknown_code(&mut self, what_ja: &str, what_en: &str, code: &str) {
        let (ja, en) = (
            format!(
                "{what_ja}コード {code} は {} に有効なマスターにありません",
                self.date
            ),
            format!("{what_en} code {code} is not valid on {}", self.date),
        );
        self.msg(Level::Error, "unknown_code", Some(code), ja, en);
    }

    fn procedure(&self, code: &str) -> Result<Option<Arc<Procedure>>> {
        self.store.procedure(code, self.date)
    }

    fn age_years(&self) -> i32 {
        crate::num::age_years(self.visit.patient.birth_date, self.date)
    }

    /// Why `p` cannot be billed for this visit (入外, 病院/診療所, age, 施設基準), or `None`.
    fn inapplicable(&self, p: &Procedure) -> Option<(String, String)> {
        if p.inout == 1 {
            return Some((
                "入院のみ算定可能な項目です".into(),
                "inpatient-only item".into(),
            ));
        }
        let hospital = self.facility.kind == FacilityKind::Hospital;
        if p.facility_kind == 1 && !hospital {
            return Some(("病院のみ算定可能な項目です".into(), "hospitals only".into()));
        }
        if p.facility_kind == 2 && hospital {
            return Some(("診療所のみ算定可能な項目です".into(), "clinics only".into()));
        }
        let birth = self.visit.patient.birth_date;
        if !AgeBound::in_range(p.min_age, p.max_age, birth, self.date) {
            return Some((
                format!(
                    "年齢制限（下限 {:?}・上限 {:?}）の対象外です（{}歳）",
                    p.min_age,
                    p.max_age,
                    self.age_years()
                ),
                format!(
                    "age limits (lower {:?}, upper {:?}) not met: age {}",
                    p.min_age,
                    p.max_age,
                    self.age_years()
                ),
            ));
        }
        if !p.standards.is_empty()
            && !p.standards.iter().any(|s| {
                self.facility
                    .standards
                    .iter()
                    .any(|f| f.trim_start_matches('0') == s.trim_start_matches('0'))
            })
        {
            return Some((
                format!("施設基準（{}）の届出がありません", p.standards.join("・")),
                format!("facility standard {} not notified", p.standards.join("/")),
            ));
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn push_proc(
        &mut self,
        p: &Procedure,
        points: i64,
        count: u32,
        quantity: Option<String>,
        rule: &str,
        ja: String,
        en: String,
    ) {
        self.lines.push(Line {
            shikibetsu: shikibetsu_of_tally(p.tally_out),
            items: vec![item_of(p, quantity)],
            points,
            count,
            total: points * i64::from(count),
            rule: rule.to_string(),
            reason_ja: ja,
            reason_en: en,
        });
    }

    /// Add an automatic addition if it applies; record a refusal otherwise.
    fn add_auto(&mut self, code: &str, rule: &str, ja: &str, en: &str) -> Result<bool> {
        let Some(p) = self.procedure(code)? else {
            self.msg(
                Level::Warning,
                rule,
                Some(code),
                format!(
                    "{ja}: コード {code} が {} に有効なマスターにありません",
                    self.date
                ),
                format!("{en}: code {code} not in the master on {}", self.date),
            );
            return Ok(false);
        };
        if let Some((rja, ren)) = self.inapplicable(&p) {
            self.msg(
                Level::Info,
                rule,
                Some(code),
                format!("{}（{}）を算定しません: {rja}", p.name, ja),
                format!("{} ({en}) not billed: {ren}", p.name),
            );
            return Ok(false);
        }
        let pts = p.points();
        self.push_proc(
            &p,
            pts,
            1,
            None,
            rule,
            format!("{ja}: {} {}点", p.name, pts),
            format!("{en}: {} {pts} points", p.code),
        );
        Ok(true)
    }

    fn billed_codes(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .flat_map(|l| l.items.iter())
            .filter(|i| i.kind == ItemKind::Procedure)
            .map(|i| i.code.as_str())
    }

    fn billed_this_month(&self, code: &str) -> bool {
        self.visit
            .history
            .iter()
            .any(|h| h.code == code && same_month(h.date, self.date) && h.date <= self.date)
            || self.billed_codes().any(|c| c == code)
    }

    // ---- 初診料 / 再診料 / 外来診療料 with 時間外等・乳幼児加算 --------------------------------
    fn visit_fee(&mut self) -> Result<()> {
        let code = match self.visit.visit_kind {
            VisitKind::None => return Ok(()),
            VisitKind::Initial => rules::SHOSHIN,
            VisitKind::Revisit => {
                if self.facility.kind == FacilityKind::Hospital && self.facility.beds >= 200 {
                    rules::GAIRAI_SHINRYO
                } else {
                    rules::SAISHIN
                }
            }
        };
        let Some(base) = self.procedure(code)? else {
            return Err(FeeError::UnknownCode {
                code: code.into(),
                date: self.date.to_string(),
            });
        };
        if let Some((ja, en)) = self.inapplicable(&base) {
            self.msg(
                Level::Error,
                "visit_fee",
                Some(code),
                format!("{}を算定できません: {ja}", base.name),
                format!("{} cannot be billed: {en}", base.name),
            );
            return Ok(());
        }
        let pts = base.points();
        let why = if code == rules::GAIRAI_SHINRYO {
            "許可病床200床以上の病院の再診は外来診療料"
        } else {
            ""
        };
        self.push_proc(
            &base,
            pts,
            1,
            None,
            "visit_fee",
            format!(
                "{} {}点{}",
                base.name,
                pts,
                if why.is_empty() {
                    String::new()
                } else {
                    format!("（{why}）")
                }
            ),
            format!("{} {} points", base.code, pts),
        );

        // 時間外等加算: additions of the same 区分 whose 時間加算区分 (col 43) matches the category.
        let mut time_added = false;
        let kinds: &[u8] = match self.visit.time_category {
            TimeCategory::Normal => &[],
            TimeCategory::Overtime => &[1],
            TimeCategory::Holiday => &[2, 3],
            TimeCategory::LateNight => &[4],
            TimeCategory::OvertimeSpecial => &[5],
            TimeCategory::NightEarly => &[6],
        };
        if !kinds.is_empty() {
            if base.time_kind != 1 {
                self.msg(
                    Level::Info,
                    "time_addition",
                    Some(code),
                    format!("{}は時間外等加算の対象外です", base.name),
                    format!("{} takes no time-of-day addition", base.code),
                );
            } else {
                let mut cands: Vec<Arc<Procedure>> = self
                    .store
                    .section_procedures(&base.section, self.date)?
                    .into_iter()
                    .filter(|p| {
                        p.code != base.code
                            && p.is_addition()
                            && kinds.contains(&p.time_kind)
                            && p.inout != 1
                    })
                    .collect();
                cands.retain(|p| self.inapplicable(p).is_none());
                // Prefer the age-specific (乳幼児) variant, then the lowest 項番 (the general 注).
                cands.sort_by_key(|p| {
                    (
                        p.min_age == AgeBound::None && p.max_age == AgeBound::None,
                        p.item_no.clone(),
                        p.code.clone(),
                    )
                });
                match cands.first() {
                    Some(p) => {
                        let pts = p.points();
                        let p = p.clone();
                        self.push_proc(
                            &p,
                            pts,
                            1,
                            None,
                            "time_addition",
                            format!(
                                "{}の受診: {} {}点（時間加算区分{}）",
                                time_label(self.visit.time_category).0,
                                p.name,
                                pts,
                                p.time_kind
                            ),
                            format!(
                                "{} visit: {} {} points",
                                time_label(self.visit.time_category).1,
                                p.code,
                                pts
                            ),
                        );
                        time_added = !matches!(self.visit.time_category, TimeCategory::NightEarly);
                    }
                    None => self.msg(
                        Level::Warning,
                        "time_addition",
                        Some(code),
                        "該当する時間外等加算がありません（施設区分・年齢を確認）".into(),
                        "no time addition applies (check facility kind and age)".into(),
                    ),
                }
            }
        }
        // 乳幼児加算 from the 年齢加算 columns (100-111); not with 時間外・休日・深夜加算 (A000注6, A001注4).
        for (lo, hi, add) in base.age_additions.clone() {
            if !AgeBound::in_range(lo, hi, self.visit.patient.birth_date, self.date) {
                continue;
            }
            if time_added {
                self.msg(Level::Info, "infant_addition", Some(&add), "時間外等加算（乳幼児の点数）を算定したため乳幼児加算は算定しません".into(), "infant addition not billed: the time addition already includes the infant rate".into());
                continue;
            }
            self.add_auto(
                &add,
                "infant_addition",
                "乳幼児加算（年齢加算）",
                "age addition",
            )?;
        }
        Ok(())
    }

    // ---- ordered 診療行為 -------------------------------------------------------------------
    fn procedures(&mut self) -> Result<()> {
        let mut last_ordered: Option<usize> = None;
        for (i, o) in self.visit.procedures.iter().enumerate() {
            let field = format!("procedures[{i}]");
            if o.count == 0 {
                return Err(FeeError::input(field, "count must be ≥ 1 / 回数は1以上"));
            }
            let Some(p) = self.procedure(&o.code)? else {
                self.unknown_code("診療行為", "procedure", &o.code);
                continue;
            };
            if p.visit_fee_kind != 0 && self.visit.visit_kind != VisitKind::None {
                self.msg(Level::Error, "visit_fee", Some(&o.code), format!("{}は visit_kind で指定してください（二重算定を防ぐため無視しました）", p.name), format!("{} is a basic visit fee: set it through visit_kind (ignored to avoid double billing)", p.code));
                continue;
            }
            if let Some((ja, en)) = self.inapplicable(&p) {
                self.msg(
                    Level::Error,
                    "applicability",
                    Some(&o.code),
                    format!("{}を算定できません: {ja}", p.name),
                    format!("{} cannot be billed: {en}", p.code),
                );
                continue;
            }
            if let Some((ja, en)) = self.disease_requirement(&p)? {
                self.msg(Level::Error, "disease_relation", Some(&o.code), ja, en);
                continue;
            }
            let quantity = match &o.quantity {
                Some(q) => Some(parse_fixed(q, 5).ok_or_else(|| {
                    FeeError::input(
                        format!("{field}.quantity"),
                        "not a decimal / 数量が数値ではありません",
                    )
                })?),
                None => None,
            };
            let (points, ja, en) = match p.point_kind {
                3 | 8 => {
                    let sign = if p.point_kind == 8 { -1 } else { 1 };
                    let mut pts = p.points();
                    let mut ja = format!("{} {}点", p.name, pts);
                    let mut en = format!("{} {} points", p.code, pts);
                    if let Some(step) = p.step {
                        let Some(q) = quantity else {
                            self.msg(
                                Level::Error,
                                "step_value",
                                Some(&o.code),
                                format!("{}はきざみ計算のため数量が必要です", p.name),
                                format!("{} needs a quantity (step pricing)", p.code),
                            );
                            continue;
                        };
                        let v = q / 100_000;
                        if v < step.lower {
                            self.msg(
                                Level::Error,
                                "step_value",
                                Some(&o.code),
                                format!("{}の数量 {} は下限 {} 未満です", p.name, v, step.lower),
                                format!(
                                    "{} quantity {} below the lower limit {}",
                                    p.code, v, step.lower
                                ),
                            );
                            continue;
                        }
                        let capped = v.min(step.upper);
                        if capped < v {
                            self.msg(
                                Level::Warning,
                                "step_value",
                                Some(&o.code),
                                format!("{}の数量を上限 {} に丸めました", p.name, step.upper),
                                format!("{} quantity capped at {}", p.code, step.upper),
                            );
                        }
                        let steps = (capped - step.lower + step.step - 1) / step.step;
                        // fractional step points (e.g. 42.50 for the 2nd film on) are summed
                        // exactly and the total rounded half up (1点未満四捨五入)
                        let add = (p.points_x100 + steps * step.step_points_x100 + 50) / 100 - pts;
                        let step_pts = format_fixed(step.step_points_x100, 2);
                        let step_pts = step_pts.trim_end_matches('0').trim_end_matches('.');
                        ja = format!(
                            "{} 基本{}点 + きざみ ceil(({}−{})/{})={}×{}点 = {}点（1点未満四捨五入）",
                            p.name,
                            pts,
                            capped,
                            step.lower,
                            step.step,
                            steps,
                            step_pts,
                            pts + add
                        );
                        en = format!(
                            "{} base {} + ceil(({}−{})/{})={} steps × {} = {} points (rounded half up)",
                            p.code,
                            pts,
                            capped,
                            step.lower,
                            step.step,
                            steps,
                            step_pts,
                            pts + add
                        );
                        pts += add;
                    }
                    (sign * pts, ja, en)
                }
                1 => {
                    // 金額: yen → points, 10 yen per point, rounded half up.
                    let pts = (p.points_x100 + 500) / 1000;
                    (
                        pts,
                        format!(
                            "{} {}円 → {}点",
                            p.name,
                            format_fixed(p.points_x100, 2),
                            pts
                        ),
                        format!(
                            "{} {} yen → {} points",
                            p.code,
                            format_fixed(p.points_x100, 2),
                            pts
                        ),
                    )
                }
                5 | 6 => {
                    // %加算/%減算: a percentage of the 所定点数 of the ordered item right before
                    // it, as in a UKE 剤 (the base and its additions are recorded together)
                    let Some(bi) = last_ordered.filter(|&i| i < self.lines.len()) else {
                        self.msg(
                            Level::Error,
                            "percent_addition",
                            Some(&o.code),
                            format!("{}（%加算・減算）の前に対象の診療行為がありません", p.name),
                            format!(
                                "{} (percentage item) must follow the item it applies to",
                                p.code
                            ),
                        );
                        continue;
                    };
                    let base = self.lines[bi].clone();
                    let (pts, ja, en) = percent_of(&base, &p);
                    self.push_proc(&p, pts, base.count, None, "percent_addition", ja, en);
                    continue;
                }
                k => {
                    self.msg(
                        Level::Error,
                        "point_kind",
                        Some(&o.code),
                        format!(
                            "{}は点数識別 {} （購入価格等）のため自動計算に未対応です",
                            p.name, k
                        ),
                        format!(
                            "{} has 点数識別 {k} (purchase price …), not supported",
                            p.code
                        ),
                    );
                    continue;
                }
            };
            let mut count = o.count;
            if p.max_count > 0 && count > p.max_count {
                if p.max_count_clamp {
                    self.msg(
                        Level::Warning,
                        "max_count",
                        Some(&o.code),
                        format!(
                            "{}の回数 {} を上限回数 {} に補正しました",
                            p.name, count, p.max_count
                        ),
                        format!(
                            "{} count {} clamped to the limit {}",
                            p.code, count, p.max_count
                        ),
                    );
                    count = p.max_count;
                } else {
                    self.msg(
                        Level::Error,
                        "max_count",
                        Some(&o.code),
                        format!(
                            "{}の回数 {} が上限回数 {} を超えています",
                            p.name, count, p.max_count
                        ),
                        format!(
                            "{} count {} exceeds the limit {}",
                            p.code, count, p.max_count
                        ),
                    );
                    continue;
                }
            }
            let qtext = o.quantity.clone();
            self.push_proc(&p, points, count, qtext, "ordered", ja, en);
            last_ordered = Some(self.lines.len() - 1);
            if !p.is_addition() {
                self.age_additions(self.lines.len() - 1, &p)?;
            }
        }
        Ok(())
    }

    /// 傷病名関連区分 (col 25): a 管理料 that needs a disease of the 傷病名マスター's 特定疾患等対象区分
    /// (col 21) of the same value: the 主病 (rank 1) for 特定疾患療養管理料 (5), any diagnosis of the
    /// visit for 皮膚科特定疾患指導管理料 (3/4) and てんかん指導料 (7). `Some(reason)` when missing.
    /// 難病外来指導管理料 (9) is not checked (the 傷病名マスター has no such 区分).
    fn disease_requirement(&self, p: &Procedure) -> Result<Option<(String, String)>> {
        let rel = p.disease_relation;
        if !matches!(rel, 3 | 4 | 5 | 7) {
            return Ok(None);
        }
        let main_only = rel == rules::SPECIFIC_DISEASE;
        for d in &self.visit.diagnoses {
            if main_only && !d.main {
                continue;
            }
            if self
                .store
                .disease(&d.code, self.date)?
                .is_some_and(|x| x.specific_disease == rel)
            {
                return Ok(None);
            }
        }
        let whose = if main_only { "主病" } else { "傷病名" };
        Ok(Some((
            format!(
                "{}の算定には対象疾患（傷病名マスター 特定疾患等対象区分 {rel:02}）の{whose}が必要です",
                p.name
            ),
            format!(
                "{} needs a {} of 特定疾患等対象区分 {rel:02} among the diagnoses",
                p.code,
                if main_only { "main disease" } else { "disease" }
            ),
        )))
    }

    /// 年齢加算 of an ordered item (master cols 100-111: 新生児・乳幼児・幼児加算 of 撮影,
    /// 乳幼児加算 of 静脈内注射 …): a fixed-point addition, or a percentage of the item's
    /// points. Not added when the addition was ordered explicitly.
    fn age_additions(&mut self, base_idx: usize, base: &Procedure) -> Result<()> {
        let birth = self.visit.patient.birth_date;
        for (lo, hi, code) in base.age_additions.clone() {
            if !AgeBound::in_range(lo, hi, birth, self.date)
                || self.visit.procedures.iter().any(|o| o.code == code)
            {
                continue;
            }
            let Some(a) = self.procedure(&code)? else {
                continue;
            };
            if let Some((ja, en)) = self.inapplicable(&a) {
                self.msg(
                    Level::Info,
                    "age_addition",
                    Some(&code),
                    format!("{}を算定しません: {ja}", a.name),
                    format!("{} not billed: {en}", a.code),
                );
                continue;
            }
            let line = self.lines[base_idx].clone();
            let (pts, ja, en) = match a.point_kind {
                5 | 6 => percent_of(&line, &a),
                _ => (
                    a.points(),
                    format!("{}の年齢加算: {} {}点", base.name, a.name, a.points()),
                    format!(
                        "age addition of {}: {} {} points",
                        base.code,
                        a.code,
                        a.points()
                    ),
                ),
            };
            self.push_proc(&a, pts, line.count, None, "age_addition", ja, en);
        }
        Ok(())
    }

    // ---- 処置・手術・内視鏡検査の時間外・休日・深夜加算 (J通則5, K通則12, D 第3節) ------------------
    fn treatment_time_additions(&mut self) -> Result<()> {
        let cat = self.visit.time_category;
        let table: Vec<_> = rules::TREATMENT_TIME_ADDITIONS
            .iter()
            .filter(|(_, c, _, _)| *c == cat)
            .collect();
        if table.is_empty() {
            return Ok(());
        }
        // ordered by hand: the caller chose the addition, nothing is added automatically
        if self.visit.procedures.iter().any(|o| {
            rules::TREATMENT_TIME_ADDITIONS
                .iter()
                .any(|(_, _, a1, a2)| o.code == *a1 || o.code == *a2)
        }) {
            return Ok(());
        }
        let n = self.lines.len();
        for i in 0..n {
            let l = &self.lines[i];
            if l.rule != "ordered" || l.items.len() != 1 {
                continue;
            }
            let Some(base) = self.procedure(&l.items[0].code)? else {
                continue;
            };
            let Some((_, _, add1, add2)) = table
                .iter()
                .find(|(part, _, _, _)| base.section.starts_with(*part))
            else {
                continue;
            };
            if base.time_kind != 1 || base.is_addition() {
                continue;
            }
            let base_line = self.lines[i].clone();
            let mut chosen = None;
            for (code, one) in [(add1, true), (add2, false)] {
                if code.is_empty() {
                    continue;
                }
                let Some(a) = self.procedure(code)? else {
                    continue;
                };
                if one
                    && base.section.starts_with('J')
                    && base_line.points < rules::TREATMENT_ADDITION1_MIN_POINTS
                {
                    continue;
                }
                if self.inapplicable(&a).is_none() {
                    chosen = Some(a);
                    break;
                }
            }
            let Some(a) = chosen else {
                continue;
            };
            let (pts, ja, en) = percent_of(&base_line, &a);
            self.push_proc(
                &a,
                pts,
                base_line.count,
                None,
                "time_addition",
                format!("{}の受診で緊急に実施: {ja}", time_label(cat).0),
                format!("{} visit, urgent: {en}", time_label(cat).1),
            );
        }
        Ok(())
    }

    // ---- 注射: 手技料 + 薬剤料 per 回 (+ 麻薬・生物学的製剤注射加算) ---------------------------
    fn injections(&mut self) -> Result<()> {
        for (ii, inj) in self.visit.injections.iter().enumerate() {
            let field = format!("injections[{ii}]");
            if inj.count == 0 {
                return Err(FeeError::input(
                    format!("{field}.count"),
                    "count must be ≥ 1 / 回数は1以上",
                ));
            }
            if inj.drugs.is_empty() && inj.procedure.is_none() {
                return Err(FeeError::input(
                    field,
                    "an injection needs a 手技 or drugs / 手技も薬剤もありません",
                ));
            }
            // 手技 (実施料), its 年齢加算 (乳幼児加算)
            let mut shiki = 33;
            let mut section = String::new();
            if let Some(code) = &inj.procedure {
                let Some(p) = self.procedure(code)? else {
                    self.unknown_code("診療行為", "procedure", code);
                    continue;
                };
                if !p.section.starts_with('G') {
                    self.msg(
                        Level::Error,
                        "injection",
                        Some(code),
                        format!(
                            "{}は注射の手技料ではありません（区分 {}）",
                            p.name, p.section
                        ),
                        format!(
                            "{} is not an injection 手技 (section {})",
                            p.code, p.section
                        ),
                    );
                    continue;
                }
                if let Some((ja, en)) = self.inapplicable(&p) {
                    self.msg(
                        Level::Error,
                        "applicability",
                        Some(code),
                        format!("{}を算定できません: {ja}", p.name),
                        format!("{} cannot be billed: {en}", p.code),
                    );
                    continue;
                }
                shiki = shikibetsu_of_tally(p.tally_out);
                section = p.section.clone();
                let pts = p.points();
                self.push_proc(
                    &p,
                    pts,
                    inj.count,
                    None,
                    "injection",
                    format!("注射の手技料: {} {}点 × {}回", p.name, pts, inj.count),
                    format!("injection 手技: {} {} points × {}", p.code, pts, inj.count),
                );
                let idx = self.lines.len() - 1;
                self.age_additions(idx, &p)?;
            }
            if inj.drugs.is_empty() {
                continue;
            }
            // 薬剤料: the drugs of one 回 priced together, ≤ 15円 → 1点, × 回数
            let Some(g) = self.priced_group(&field, &inj.drugs)? else {
                continue;
            };
            let (amount, items, parts_ja) = (g.amount, g.items, g.parts_ja);
            let mut narcotic = false;
            let mut biological = false;
            for drug in &g.drugs {
                if drug.form != 4 {
                    self.msg(
                        Level::Warning,
                        "drug_form",
                        Some(&drug.code),
                        format!("{}は注射薬（剤形区分4）ではありません", drug.name),
                        format!("{} is not an injectable (form {})", drug.code, drug.form),
                    );
                }
                narcotic |= drug.narcotic == 1;
                biological |= drug.biological;
            }
            let points = drug_points(amount);
            let yen = format_fixed((amount / 100_000) as i64, 2);
            self.lines.push(Line {
                shikibetsu: shiki,
                items,
                points,
                count: inj.count,
                total: points * i64::from(inj.count),
                rule: "injection_drug".into(),
                reason_ja: format!(
                    "注射の薬剤料: {} = {}円 → {}点 × {}回",
                    parts_ja.join(" + "),
                    yen,
                    points,
                    inj.count
                ),
                reason_en: format!(
                    "injection drugs {} yen per 回 → {} points × {}",
                    yen, points, inj.count
                ),
            });
            let mut extra: Vec<(&str, &str, &str)> = Vec::new();
            if narcotic {
                extra.push((rules::NARCOTIC_INJECTION, "麻薬を注射", "narcotic injected"));
            }
            if biological && rules::BIOLOGICAL_INJECTION_SECTIONS.contains(&section.as_str()) {
                extra.push((
                    rules::BIOLOGICAL_INJECTION,
                    "生物学的製剤を注射",
                    "biological injected",
                ));
            }
            for (code, why_ja, why_en) in extra {
                let Some(a) = self.procedure(code)? else {
                    continue;
                };
                let pts = a.points();
                self.lines.push(Line {
                    shikibetsu: shiki,
                    items: vec![item_of(&a, None)],
                    points: pts,
                    count: inj.count,
                    total: pts * i64::from(inj.count),
                    rule: "injection_addition".into(),
                    reason_ja: format!("{why_ja}: {} {}点 × {}回", a.name, pts, inj.count),
                    reason_en: format!("{why_en}: {} {} points × {}", a.code, pts, inj.count),
                });
            }
        }
        Ok(())
    }

    /// The drugs of one 回 (注射) or one group (処置の薬剤) priced together; `None` when a code is
    /// unknown on the date (an error message is recorded).
    fn priced_group(&mut self, field: &str, drugs: &[DrugOrder]) -> Result<Option<PricedGroup>> {
        let mut g = PricedGroup::default();
        let mut ok = true;
        for (di, d) in drugs.iter().enumerate() {
            let q = positive_quantity(&d.quantity, format!("{field}.drugs[{di}].quantity"))?;
            let Some(drug) = self.store.drug(&d.code, self.date)? else {
                self.unknown_code("医薬品", "drug", &d.code);
                ok = false;
                continue;
            };
            let (yen, part, item) = priced_drug(&drug, q);
            g.amount += yen;
            g.parts_ja.push(part);
            g.items.push(item);
            g.drugs.push(drug);
        }
        Ok(ok.then_some(g))
    }

    // ---- 処置・手術の薬剤 (J300, K940): ≤ 15円 not billed, otherwise the 薬剤料 formula ------------
    fn treatment_drugs(&mut self) -> Result<()> {
        for (gi, g) in self.visit.treatment_drugs.iter().enumerate() {
            let field = format!("treatment_drugs[{gi}]");
            if g.drugs.is_empty() {
                return Err(FeeError::input(
                    format!("{field}.drugs"),
                    "no drugs / 薬剤がありません",
                ));
            }
            let shiki = g.shikibetsu.unwrap_or(40);
            let Some(priced) = self.priced_group(&field, &g.drugs)? else {
                continue;
            };
            let (amount, items, parts_ja) = (priced.amount, priced.items, priced.parts_ja);
            let yen = format_fixed((amount / 100_000) as i64, 2);
            if amount <= 15 * 10_000_000 {
                self.msg(
                    Level::Info,
                    "treatment_drug",
                    items.first().map(|i| i.code.as_str()),
                    format!(
                        "処置・手術の薬剤 {} = {yen}円は15円以下のため算定しません",
                        parts_ja.join(" + ")
                    ),
                    format!("treatment drugs {yen} yen: 15 yen or less is not billed"),
                );
                continue;
            }
            let points = drug_points(amount);
            self.lines.push(Line {
                shikibetsu: shiki,
                items,
                points,
                count: 1,
                total: points,
                rule: "treatment_drug".into(),
                reason_ja: format!(
                    "処置・手術の薬剤料: {} = {yen}円 → {points}点",
                    parts_ja.join(" + ")
                ),
                reason_en: format!("treatment drugs {yen} yen → {points} points"),
            });
        }
        Ok(())
    }

    // ---- 検体検査 item-count bundling (包括対象検査) ------------------------------------------
    fn bundle_labs(&mut self) {
        let mut groups: Vec<u8> = Vec::new();
        let group_of = |l: &Line, store: &MasterStore, date: NaiveDate| -> Option<u8> {
            if l.items.len() != 1 || l.items[0].kind != ItemKind::Procedure || l.rule != "ordered" {
                return None;
            }
            store
                .procedure(&l.items[0].code, date)
                .ok()
                .flatten()
                .map(|p| p.bundle_group)
                .filter(|&g| g != 0)
        };
        for l in &self.lines {
            if let Some(g) = group_of(l, self.store, self.date) {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        for g in groups {
            let idx: Vec<usize> = (0..self.lines.len())
                .filter(|&i| group_of(&self.lines[i], self.store, self.date) == Some(g))
                .collect();
            let Some((b, min, pts)) = bundle_points(g, idx.len()) else {
                continue;
            };
            let (y, m, dd) = rules::BUNDLES_VALID_FROM;
            if NaiveDate::from_ymd_opt(y, m, dd).is_some_and(|from| self.date < from) {
                self.msg(
                    Level::Warning,
                    "lab_bundle",
                    None,
                    format!(
                        "{}の包括点数は令和6年度（{y}-{m:02}-{dd:02}〜）の値を適用しました",
                        b.name
                    ),
                    format!("bundle steps of group {g} are the R6 values ({y}-{m:02}-{dd:02} on)"),
                );
            }
            let sum: i64 = idx.iter().map(|&i| self.lines[i].total).sum();
            let items: Vec<LineItem> = idx
                .iter()
                .map(|&i| self.lines[i].items[0].clone())
                .collect();
            let shikibetsu = self.lines[idx[0]].shikibetsu;
            for &i in idx.iter().rev() {
                self.lines.remove(i);
            }
            let n = items.len();
            self.lines.push(Line {
                shikibetsu,
                items,
                points: pts,
                count: 1,
                total: pts,
                rule: "lab_bundle".into(),
                reason_ja: format!("{}{}項目（{}項目以上の区分）: 個別合計{}点にかかわらず包括{}点", b.name, n, min, sum, pts),
                reason_en: format!("{} items of bundle group {g} (step ≥ {min}): {pts} points instead of the item sum {sum}", n),
            });
        }
    }

    // ---- 検査判断料: once a month per 検査等実施判断グループ -----------------------------------
    fn judgements(&mut self) -> Result<()> {
        let mut groups: Vec<u8> = Vec::new();
        let codes: Vec<String> = self.billed_codes().map(str::to_string).collect();
        for c in &codes {
            if let Some(p) = self.procedure(c)? {
                if p.lab_kind == 1 && p.lab_group != 0 && !groups.contains(&p.lab_group) {
                    groups.push(p.lab_group);
                }
            }
        }
        for g in groups {
            let cands: Vec<Arc<Procedure>> = self
                .store
                .judgement_procedures(g, self.date)?
                .into_iter()
                .filter(|p| !p.is_addition() && self.inapplicable(p).is_none())
                .collect();
            let Some(j) = cands.first().cloned() else {
                continue;
            };
            if self.billed_this_month(&j.code) {
                self.msg(
                    Level::Info,
                    "judgement_monthly",
                    Some(&j.code),
                    format!("{}は当月算定済みのため算定しません（月1回）", j.name),
                    format!("{} already billed this month (once a month)", j.code),
                );
                continue;
            }
            let pts = j.points();
            self.push_proc(
                &j,
                pts,
                1,
                None,
                "judgement",
                format!(
                    "検査等実施判断グループ{}の実施料を算定したため {} {}点（月1回）",
                    g, j.name, pts
                ),
                format!(
                    "tests of judgement group {g} billed: {} {} points (once a month)",
                    j.code, pts
                ),
            );
        }
        Ok(())
    }

    // ---- 投薬: 薬剤料 per 剤, 調剤料, 処方料 / 処方箋料 and their additions ------------------
    fn prescription(&mut self) -> Result<()> {
        let Some(rx) = &self.visit.prescription else {
            return Ok(());
        };
        if rx.rps.is_empty() {
            return Ok(());
        }
        let in_house = rx.mode == DispensingMode::InHouse;
        let mut narcotic = false;
        let mut internal_kinds: Vec<String> = Vec::new();
        let mut has_internal = false;
        let mut has_external = false;
        let mut long_internal = false;
        let mut generic_eligible = 0usize;
        let mut generic_named = 0usize;
        for (ri, rp) in rx.rps.iter().enumerate() {
            if rp.drugs.is_empty() {
                return Err(FeeError::input(
                    format!("prescription.rps[{ri}].drugs"),
                    "empty 剤 / 薬剤がありません",
                ));
            }
            if rp.days == 0 {
                return Err(FeeError::input(
                    format!("prescription.rps[{ri}].days"),
                    "days must be ≥ 1 / 日数は1以上",
                ));
            }
            let mut amount = 0i128; // yen × 10^7
            let mut items = Vec::new();
            let mut parts_ja = Vec::new();
            let mut ok = true;
            for (di, d) in rp.drugs.iter().enumerate() {
                let field = format!("prescription.rps[{ri}].drugs[{di}]");
                let q = positive_quantity(&d.quantity, format!("{field}.quantity"))?;
                let Some(drug) = self.store.drug(&d.code, self.date)? else {
                    self.unknown_code("医薬品", "drug", &d.code);
                    ok = false;
                    continue;
                };
                let expected = match rp.kind {
                    RpKind::Internal | RpKind::AsNeeded => 1,
                    RpKind::External => 6,
                };
                if drug.form != expected {
                    self.msg(
                        Level::Warning,
                        "drug_form",
                        Some(&d.code),
                        format!(
                            "{}の剤形区分 {} が剤の種類と合いません",
                            drug.name, drug.form
                        ),
                        format!(
                            "{} form {} does not match the 剤 kind",
                            drug.code, drug.form
                        ),
                    );
                }
                if matches!(drug.narcotic, 1 | 2 | 3 | 5) {
                    narcotic = true;
                }
                if rp.kind == RpKind::Internal {
                    has_internal = true;
                    if !internal_kinds.contains(&drug.code) {
                        internal_kinds.push(drug.code.clone());
                    }
                    if rp.days >= rules::LONG_PRESCRIPTION_DAYS {
                        long_internal = true;
                    }
                } else if rp.kind == RpKind::AsNeeded {
                    has_internal = true;
                } else {
                    has_external = true;
                }
                if drug.generic_name_addition != 0 {
                    generic_eligible += 1;
                    if d.by_generic_name {
                        generic_named += 1;
                    }
                }
                let (yen, part, item) = priced_drug(&drug, q);
                amount += yen;
                parts_ja.push(part);
                items.push(item);
            }
            if !ok || !in_house {
                continue;
            }
            // 薬剤料: ≤ 15円 → 1点; otherwise (円 − 15) / 10 rounded up, + 1 (= 五捨五超入 of 円/10).
            let points = drug_points(amount);
            let yen = format_fixed((amount / 100_000) as i64, 2);
            let (shiki, unit_ja, unit_en) = match rp.kind {
                RpKind::Internal => (21, "日分", "days"),
                RpKind::AsNeeded => (22, "回分", "doses"),
                RpKind::External => (23, "調剤", "dispensing"),
            };
            let count = if rp.kind == RpKind::External {
                1
            } else {
                rp.days
            };
            self.lines.push(Line {
                shikibetsu: shiki,
                items,
                points,
                count,
                total: points * i64::from(count),
                rule: "drug".into(),
                reason_ja: format!(
                    "薬剤料: {} = {}円 → {}点 × {}{}",
                    parts_ja.join(" + "),
                    yen,
                    points,
                    count,
                    unit_ja
                ),
                reason_en: format!(
                    "drug price {} yen per unit → {} points × {} {}",
                    yen, points, count, unit_en
                ),
            });
        }
        if in_house {
            if has_internal {
                self.add_auto(
                    rules::CHOZAI_NAIFUKU,
                    "dispensing",
                    "調剤料（内服・屯服、1処方につき）",
                    "dispensing fee, internal",
                )?;
            }
            if has_external {
                self.add_auto(
                    rules::CHOZAI_GAIYO,
                    "dispensing",
                    "調剤料（外用、1処方につき）",
                    "dispensing fee, external",
                )?;
            }
            if narcotic {
                self.add_auto(
                    rules::MAYAKU_CHOZAI,
                    "narcotic",
                    "麻薬等加算（調剤料）",
                    "narcotic addition (dispensing)",
                )?;
            }
        }
        let (code, why_ja) = if in_house {
            if rx.psychotropic_multi {
                (rules::SHOHO_PSY, "向精神薬多剤投与")
            } else if internal_kinds.len() >= rules::SEVEN_KINDS {
                (rules::SHOHO_7, "7種類以上の内服薬")
            } else {
                (rules::SHOHO_OTHER, "その他")
            }
        } else if rx.psychotropic_multi {
            (
                if rx.refill {
                    rules::SHOHOSEN_REFILL_PSY
                } else {
                    rules::SHOHOSEN_PSY
                },
                "向精神薬多剤投与",
            )
        } else if internal_kinds.len() >= rules::SEVEN_KINDS {
            (
                if rx.refill {
                    rules::SHOHOSEN_REFILL_7
                } else {
                    rules::SHOHOSEN_7
                },
                "7種類以上の内服薬",
            )
        } else {
            (
                if rx.refill {
                    rules::SHOHOSEN_REFILL_OTHER
                } else {
                    rules::SHOHOSEN_OTHER
                },
                "その他",
            )
        };
        let what = if in_house {
            "院内処方のため処方料"
        } else {
            "院外処方のため処方箋料"
        };
        let Some(base) = self.procedure(code)? else {
            return Err(FeeError::UnknownCode {
                code: code.into(),
                date: self.date.to_string(),
            });
        };
        let pts = base.points();
        self.push_proc(
            &base,
            pts,
            1,
            None,
            "prescribing",
            format!(
                "{what}（{why_ja}、内服薬{}種類）: {} {}点",
                internal_kinds.len(),
                base.name,
                pts
            ),
            format!(
                "{} ({} internal drug kinds): {} {} points",
                if in_house {
                    "in-house dispensing"
                } else {
                    "prescription slip"
                },
                internal_kinds.len(),
                base.code,
                pts
            ),
        );
        for (lo, hi, add) in base.age_additions.clone() {
            if AgeBound::in_range(lo, hi, self.visit.patient.birth_date, self.date) {
                self.add_auto(
                    &add,
                    "infant_addition",
                    "乳幼児加算（処方）",
                    "infant addition (prescribing)",
                )?;
            }
        }
        if in_house && narcotic {
            self.add_auto(
                rules::MAYAKU_SHOHO,
                "narcotic",
                "麻薬等加算（処方料）",
                "narcotic addition (prescribing)",
            )?;
        }
        if !in_house && generic_named > 0 {
            let all = generic_named == generic_eligible && generic_eligible >= 2;
            let (c, ja) = if all {
                (rules::IPPANMEI_1, "一般名処方加算１（対象薬すべて一般名）")
            } else {
                (rules::IPPANMEI_2, "一般名処方加算２（一般名処方を含む）")
            };
            self.add_auto(c, "generic_name", ja, "generic-name prescription addition")?;
        }
        // 特定疾患処方管理加算: main disease is a 特定疾患 and an 内服 剤 of ≥ 28 days; once a month.
        let specific = self
            .visit
            .diagnoses
            .iter()
            .filter(|d| d.main)
            .any(|d| matches!(self.store.disease(&d.code, self.date), Ok(Some(x)) if x.specific_disease == rules::SPECIFIC_DISEASE));
        if specific && long_internal {
            let c = if in_house {
                rules::TOKUTEI_SHOHO
            } else {
                rules::TOKUTEI_SHOHOSEN
            };
            if self.billed_this_month(rules::TOKUTEI_SHOHO)
                || self.billed_this_month(rules::TOKUTEI_SHOHOSEN)
            {
                self.msg(
                    Level::Info,
                    "specific_disease",
                    Some(c),
                    "特定疾患処方管理加算は当月算定済みです（月1回）".into(),
                    "specific-disease prescribing addition already billed this month".into(),
                );
            } else {
                self.add_auto(
                    c,
                    "specific_disease",
                    "特定疾患処方管理加算（主病が特定疾患・28日以上処方）",
                    "specific-disease prescribing addition",
                )?;
            }
        }
        if in_house && self.facility.pharmacist_on_staff {
            if self.billed_this_month(rules::CHOKI) {
                self.msg(
                    Level::Info,
                    "dispensing_basic",
                    Some(rules::CHOKI),
                    "調剤技術基本料は当月算定済みです（月1回）".into(),
                    "dispensing technical fee already billed this month".into(),
                );
            } else {
                self.add_auto(
                    rules::CHOKI,
                    "dispensing_basic",
                    "調剤技術基本料（常勤薬剤師、月1回）",
                    "dispensing technical fee",
                )?;
            }
        }
        Ok(())
    }

    // ---- 特定保険医療材料 -------------------------------------------------------------------
    fn materials(&mut self) -> Result<()> {
        for (i, m) in self.visit.materials.iter().enumerate() {
            let q = positive_quantity(&m.quantity, format!("materials[{i}].quantity"))?;
            let Some(t) = self.store.material(&m.code, self.date)? else {
                self.unknown_code("特定器材", "material", &m.code);
                continue;
            };
            let divisor: i128 = match t.material_kind {
                3 => 50,
                4 => 1000,
                _ => 10,
            };
            // yen × 10^7 → points, 四捨五入.
            let amount = i128::from(t.price_x100) * i128::from(q);
            let unit = divisor * 10_000_000;
            let points = ((amount + unit / 2) / unit) as i64;
            let yen = format_fixed((amount / 100_000) as i64, 2);
            self.lines.push(Line {
                shikibetsu: m.shikibetsu.unwrap_or(40),
                items: vec![LineItem {
                    kind: ItemKind::Material,
                    code: t.code.clone(),
                    name: t.name.clone(),
                    quantity: Some(format_fixed(q, 5)),
                    master_amount: format_fixed(t.price_x100, 2),
                    unit: Some(t.unit_name.clone()),
                    unit_code: Some(t.unit_code.clone()),
                }],
                points,
                count: 1,
                total: points,
                rule: "material".into(),
                reason_ja: format!(
                    "材料価格 {}円×{} = {}円 ÷{}円 四捨五入 → {}点",
                    format_fixed(t.price_x100, 2),
                    format_fixed(q, 5),
                    yen,
                    divisor,
                    points
                ),
                reason_en: format!(
                    "material {} yen × {} = {} yen / {} rounded → {} points",
                    format_fixed(t.price_x100, 2),
                    format_fixed(q, 5),
                    yen,
                    divisor,
                    points
                ),
            });
        }
        Ok(())
    }

    // ---- 外来管理加算 -----------------------------------------------------------------------
    fn outpatient_management(&mut self) -> Result<()> {
        let base_code = self
            .lines
            .iter()
            .find(|l| l.rule == "visit_fee")
            .map(|l| l.items[0].code.clone());
        let Some(base_code) = base_code else {
            return Ok(());
        };
        let Some(base) = self.procedure(&base_code)? else {
            return Ok(());
        };
        if base.section != "A001" {
            if self.visit.outpatient_management && base.section == "A002" {
                self.msg(
                    Level::Info,
                    "outpatient_management",
                    Some(rules::GAIRAI_KANRI),
                    "外来診療料には外来管理加算を算定できません".into(),
                    "外来管理加算 cannot be billed with 外来診療料".into(),
                );
            }
            return Ok(());
        }
        if !self.visit.outpatient_management {
            return Ok(());
        }
        if base.outpatient_mgmt == 1 {
            self.msg(
                Level::Info,
                "outpatient_management",
                Some(rules::GAIRAI_KANRI),
                format!("{}には外来管理加算を算定できません", base.name),
                format!("{} excludes 外来管理加算", base.code),
            );
            return Ok(());
        }
        let codes: Vec<String> = self.billed_codes().map(str::to_string).collect();
        for c in codes {
            if let Some(p) = self.procedure(&c)? {
                if p.outpatient_mgmt == 1 {
                    self.msg(
                        Level::Info,
                        "outpatient_management",
                        Some(rules::GAIRAI_KANRI),
                        format!(
                            "{}（外来管理加算区分1）を算定したため外来管理加算は算定しません",
                            p.name
                        ),
                        format!("{} is billed (外来管理加算区分 1): no 外来管理加算", p.code),
                    );
                    return Ok(());
                }
            }
        }
        self.add_auto(
            rules::GAIRAI_KANRI,
            "outpatient_management",
            "再診料に外来管理加算（除外項目なし）",
            "outpatient management addition",
        )?;
        Ok(())
    }

    // ---- コメント: code valid on the date, data given when its pattern takes data -------------
    fn comments(&mut self) -> Result<Vec<CommentLine>> {
        let mut out = Vec::new();
        for ci in &self.visit.comments {
            let Some(c) = self.store.comment(&ci.code, self.date)? else {
                self.unknown_code("コメント", "comment", &ci.code);
                continue;
            };
            // Pattern 20 is a fixed text; every other pattern (10 free text, 30/31 text or code,
            // 40/42 digits or a number, 50-53 dates and times, 80, 90) carries data.
            let wants_data = c.pattern != 20;
            if wants_data && ci.text.trim().is_empty() {
                self.msg(
                    Level::Error,
                    "comment",
                    Some(&c.code),
                    format!(
                        "コメント {}（パターン{}）には記載データが必要です",
                        c.code, c.pattern
                    ),
                    format!("comment {} (pattern {}) needs its data", c.code, c.pattern),
                );
                continue;
            }
            if !wants_data && !ci.text.is_empty() {
                self.msg(
                    Level::Warning,
                    "comment",
                    Some(&c.code),
                    format!("コメント {} は定型文のため記載データを無視しました", c.code),
                    format!("comment {} is fixed text: data ignored", c.code),
                );
            }
            out.push(CommentLine {
                shikibetsu: ci.shikibetsu.unwrap_or(80),
                code: c.code.clone(),
                name: c.text.clone(),
                text: if wants_data {
                    ci.text.clone()
                } else {
                    String::new()
                },
            });
        }
        Ok(out)
    }

    // ---- 注加算 (cols 38/39): an ordered addition needs its base item; one per 通番 ------------
    fn addition_links(&mut self) -> Result<()> {
        let mut bases: Vec<String> = Vec::new();
        for l in &self.lines {
            for it in l.items.iter().filter(|i| i.kind == ItemKind::Procedure) {
                if let Some(p) = self.procedure(&it.code)? {
                    if !p.is_addition() && !p.addition_code.is_empty() && p.addition_code != "0" {
                        bases.push(p.addition_code.clone());
                    }
                }
            }
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut i = 0;
        while i < self.lines.len() {
            let l = &self.lines[i];
            let p = if l.rule == "ordered" && l.items.len() == 1 {
                self.procedure(&l.items[0].code)?
            } else {
                None
            };
            let Some(p) = p.filter(|p| {
                p.is_addition() && !p.addition_code.is_empty() && p.addition_code != "0"
            }) else {
                i += 1;
                continue;
            };
            if !bases.contains(&p.addition_code) {
                self.msg(
                    Level::Error,
                    "addition_base",
                    Some(&p.code),
                    format!(
                        "{}の算定に必要な基本項目（注加算コード{}）がありません",
                        p.name, p.addition_code
                    ),
                    format!(
                        "{} needs its base item (注加算コード {}) on the same visit",
                        p.code, p.addition_code
                    ),
                );
                self.lines.remove(i);
                continue;
            }
            let key = (p.addition_code.clone(), p.addition_seq.clone());
            if seen.contains(&key) {
                self.msg(
                    Level::Warning,
                    "addition_sequence",
                    Some(&p.code),
                    format!(
                        "{}は同じ注加算通番{}の加算と併算定できないため算定しません",
                        p.name, p.addition_seq
                    ),
                    format!(
                        "{} not billed: another addition with 通番 {} is already billed",
                        p.code, p.addition_seq
                    ),
                );
                self.lines.remove(i);
                continue;
            }
            seen.push(key);
            i += 1;
        }
        Ok(())
    }

    /// A 判断料 whose 実施料 were all refused by a later rule is dropped again.
    fn prune_judgements(&mut self) -> Result<()> {
        let mut groups: Vec<u8> = Vec::new();
        for c in self.billed_codes().map(str::to_string).collect::<Vec<_>>() {
            if let Some(p) = self.procedure(&c)? {
                if p.lab_kind == 1 && p.lab_group != 0 {
                    groups.push(p.lab_group);
                }
            }
        }
        let mut i = 0;
        while i < self.lines.len() {
            if self.lines[i].rule == "judgement" {
                if let Some(p) = self.procedure(&self.lines[i].items[0].code)? {
                    if !groups.contains(&p.lab_group) {
                        self.msg(
                            Level::Info,
                            "judgement",
                            Some(&p.code),
                            format!("対象の検査が算定されないため{}を算定しません", p.name),
                            format!("{} dropped: none of its tests is billed", p.code),
                        );
                        self.lines.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    // ---- 包括 (電子点数表 01 補助 + 02 包括): a parent includes its group's children ---------
    fn inclusions(&mut self) -> Result<()> {
        let parents: Vec<String> = self.billed_codes().map(str::to_string).collect();
        for parent in parents {
            // The parent itself may have been removed as someone else's child.
            let Some(pi) = self.lines.iter().position(|l| {
                l.items
                    .iter()
                    .any(|it| it.kind == ItemKind::Procedure && it.code == parent)
            }) else {
                continue;
            };
            let parent_name = self.lines[pi]
                .items
                .iter()
                .find(|it| it.code == parent)
                .map(|it| it.name.clone())
                .unwrap_or_default();
            for g in self.store.inclusion_groups(&parent, self.date)? {
                let unit_ja = match g.unit {
                    1 => "同一日",
                    2 => "同一月内",
                    3 => "同時",
                    // 手術前1週間 / 1手術につき: surgery windows are not modelled for outpatients.
                    _ => continue,
                };
                for child in self.store.inclusion_children(&g.group, self.date)? {
                    if child.code == parent {
                        continue;
                    }
                    let in_history = g.unit != 3
                        && self.visit.history.iter().any(|h| {
                            h.code == child.code
                                && h.date <= self.date
                                && if g.unit == 1 {
                                    h.date == self.date
                                } else {
                                    same_month(h.date, self.date)
                                }
                        });
                    let ci = self.lines.iter().position(|l| {
                        l.items.len() == 1
                            && l.items[0].kind == ItemKind::Procedure
                            && l.items[0].code == child.code
                    });
                    if ci.is_none() && !in_history {
                        continue;
                    }
                    if child.special {
                        self.msg(Level::Warning, "inclusion", Some(&child.code), format!("{}は{parent_name}に{unit_ja}包括される場合があります（特例条件あり）: 算定要件を確認してください", child.code), format!("{} may be included in {parent} ({unit_ja}, special condition): check the requirements", child.code));
                        continue;
                    }
                    match ci {
                        Some(j) => {
                            let name = self.lines[j].items[0].name.clone();
                            self.msg(Level::Warning, "inclusion", Some(&child.code), format!("{name}は{parent_name}に{unit_ja}包括されるため算定しません"), format!("{} not billed: included in {parent} ({unit_ja})", child.code));
                            self.lines.remove(j);
                        }
                        None => self.msg(Level::Warning, "inclusion", Some(&child.code), format!("既に算定した{}は{parent_name}に{unit_ja}包括されます: 既算定分の取消が必要です", child.code), format!("{} billed earlier is included in {parent} ({unit_ja}): the earlier line must be cancelled", child.code)),
                    }
                }
            }
        }
        Ok(())
    }

    // ---- 背反 (電子点数表 03): same day, same month, same time, same week ----------------------
    fn exclusions(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.lines.len() {
            let mut drop_line = false;
            if self.lines[i]
                .items
                .iter()
                .all(|it| it.kind != ItemKind::Procedure)
            {
                i += 1;
                continue;
            }
            let codes: Vec<String> = self.lines[i]
                .items
                .iter()
                .filter(|it| it.kind == ItemKind::Procedure)
                .map(|it| it.code.clone())
                .collect();
            'codes: for code in &codes {
                for ex in self.store.exclusions(code, self.date)? {
                    let in_history = self.visit.history.iter().any(|h| {
                        h.code == ex.other
                            && h.date <= self.date
                            && match ex.scope {
                                ExclusionScope::SameDay => h.date == self.date,
                                ExclusionScope::SameMonth => same_month(h.date, self.date),
                                ExclusionScope::SameTime => false,
                                ExclusionScope::SameWeek => {
                                    week_start(h.date) == week_start(self.date)
                                }
                            }
                    });
                    let other_idx = self.lines.iter().position(|l| {
                        l.items
                            .iter()
                            .any(|it| it.kind == ItemKind::Procedure && it.code == ex.other)
                    });
                    let other_idx = other_idx.filter(|&j| j != i);
                    if !in_history && other_idx.is_none() {
                        continue;
                    }
                    let scope_ja = match ex.scope {
                        ExclusionScope::SameDay => "同一日",
                        ExclusionScope::SameMonth => "同一月",
                        ExclusionScope::SameTime => "同時",
                        ExclusionScope::SameWeek => "同一週",
                    };
                    let name = self.lines[i]
                        .items
                        .iter()
                        .find(|it| &it.code == code)
                        .map(|it| it.name.clone())
                        .unwrap_or_default();
                    if ex.special {
                        self.msg(Level::Warning, "exclusion", Some(code), format!("{name}と{}は{scope_ja}背反（特例条件あり）: 算定要件を確認してください", ex.other), format!("{code} and {} are exclusive ({:?}) with a special condition: check the requirements", ex.other, ex.scope));
                        continue;
                    }
                    // 背反区分: 1 keep this, 2 keep the other, 3 either (keep the earlier one;
                    // a line billed on an earlier visit is earlier).
                    let drop_this = match ex.keep {
                        1 => false,
                        2 => true,
                        _ => in_history || other_idx.is_some_and(|j| j < i),
                    };
                    if drop_this {
                        self.msg(
                            Level::Warning,
                            "exclusion",
                            Some(code),
                            format!(
                                "{name}は{}と{scope_ja}に併算定できないため算定しません",
                                ex.other
                            ),
                            format!(
                                "{code} not billed: mutually exclusive with {} ({:?})",
                                ex.other, ex.scope
                            ),
                        );
                        drop_line = true;
                        break 'codes;
                    }
                    if let Some(j) = other_idx {
                        let other_name = self.lines[j]
                            .items
                            .iter()
                            .find(|it| it.code == ex.other)
                            .map(|it| it.name.clone())
                            .unwrap_or_default();
                        self.msg(
                            Level::Warning,
                            "exclusion",
                            Some(&ex.other),
                            format!(
                                "{other_name}は{name}と{scope_ja}に併算定できないため算定しません"
                            ),
                            format!(
                                "{} not billed: mutually exclusive with {code} ({:?})",
                                ex.other, ex.scope
                            ),
                        );
                        self.lines.remove(j);
                        if j < i {
                            i -= 1;
                        }
                    } else {
                        self.msg(Level::Warning, "exclusion", Some(&ex.other), format!("{name}は既に算定した{}と{scope_ja}背反で、{name}が優先されます: 既算定分の取消が必要です", ex.other), format!("{code} takes precedence over {} billed earlier ({:?}): the earlier line must be cancelled", ex.other, ex.scope));
                    }
                }
            }
            if drop_line {
                self.lines.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    // ---- 算定回数 (電子点数表 05): per day / month / week ------------------------------------
    fn count_limits(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.lines.len() {
            if self.lines[i].items.len() != 1 || self.lines[i].items[0].kind != ItemKind::Procedure
            {
                i += 1;
                continue;
            }
            let code = self.lines[i].items[0].code.clone();
            let name = self.lines[i].items[0].name.clone();
            let mut remove = false;
            for lim in self.store.count_limits(&code, self.date)? {
                let in_window = |d: NaiveDate| -> Option<bool> {
                    Some(match lim.unit {
                        121 => d == self.date,
                        131 => same_month(d, self.date),
                        138 => week_start(d) == week_start(self.date),
                        _ => return None,
                    })
                };
                if in_window(self.date).is_none() {
                    continue;
                }
                let prior: u32 = self
                    .visit
                    .history
                    .iter()
                    .filter(|h| {
                        h.code == code && h.date <= self.date && in_window(h.date) == Some(true)
                    })
                    .map(|h| h.count)
                    .sum::<u32>()
                    + self.lines[..i]
                        .iter()
                        .filter(|l| l.items.iter().any(|it| it.code == code))
                        .map(|l| l.count)
                        .sum::<u32>();
                let count = self.lines[i].count;
                if prior + count <= lim.max {
                    continue;
                }
                if lim.special {
                    self.msg(Level::Warning, "count_limit", Some(&code), format!("{name}は{}{}回まで（特例条件あり）: 既{}回＋今回{}回", lim.unit_name, lim.max, prior, count), format!("{code}: at most {} per {} (special condition): {prior} before + {count}", lim.max, lim.unit_name));
                    continue;
                }
                let allowed = lim.max.saturating_sub(prior);
                if allowed == 0 {
                    self.msg(
                        Level::Warning,
                        "count_limit",
                        Some(&code),
                        format!(
                            "{name}は{}{}回までのため算定しません（既に{}回算定）",
                            lim.unit_name, lim.max, prior
                        ),
                        format!(
                            "{code} not billed: at most {} per {} ({prior} already)",
                            lim.max, lim.unit_name
                        ),
                    );
                    remove = true;
                    break;
                }
                self.msg(
                    Level::Warning,
                    "count_limit",
                    Some(&code),
                    format!(
                        "{name}の回数を{}回に減らしました（{}{}回まで）",
                        allowed, lim.unit_name, lim.max
                    ),
                    format!(
                        "{code} count reduced to {allowed} (at most {} per {})",
                        lim.max, lim.unit_name
                    ),
                );
                let l = &mut self.lines[i];
                l.count = allowed;
                l.total = l.points * i64::from(allowed);
            }
            if remove {
                self.lines.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copay_rounds_half_up_to_ten_yen() {
        // 366 points × 10 yen × 30% = 1,098 yen → 1,100 yen (8 ≥ 5 rounds up)
        assert_eq!(copay(366, 30), 1100);
        // 361 points → 1,083 yen → 1,080 yen (3 < 5 dropped)
        assert_eq!(copay(361, 30), 1080);
        // 75 points × 10 × 10% = 75 yen → 80 yen (exactly 5 rounds up)
        assert_eq!(copay(75, 10), 80);
        // 74 points × 10 × 10% = 74 yen → 70 yen
        assert_eq!(copay(74, 10), 70);
        assert_eq!(copay(0, 30), 0);
    }

    #[test]
    fn drug_points_five_rounds_down_above_rounds_up() {
        let yen = |y: f64| (y * 10_000_000.0).round() as i128;
        assert_eq!(drug_points(yen(6.4)), 1); // ≤ 15円 → 1点
        assert_eq!(drug_points(yen(15.0)), 1);
        assert_eq!(drug_points(yen(15.01)), 2); // ceil(0.001) + 1
        assert_eq!(drug_points(yen(25.0)), 2); // 2.5 → 2 (五捨)
        assert_eq!(drug_points(yen(25.01)), 3); // 2.501 → 3 (五超入)
        assert_eq!(drug_points(yen(207.0)), 21); // topaz-dent example: ceil(19.2) + 1
    }

    #[test]
    fn week_starts_on_sunday() {
        let d = NaiveDate::from_ymd_opt(2024, 7, 3).unwrap(); // Wednesday
        assert_eq!(week_start(d), NaiveDate::from_ymd_opt(2024, 6, 30).unwrap());
    }
}
