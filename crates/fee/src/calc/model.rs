//! Input and output of the calculation: a visit in, billed lines with reasons out.
//! JSON shapes are documented in `docs/FEE.md` and `crates/fee/examples/*.json`.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The clinic or hospital: what it is and which 施設基準 it has notified (届出).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Facility {
    /// 医療機関コード (7 digits, UKE IR).
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub name: String,
    /// 都道府県番号 (2 digits, UKE IR).
    #[serde(default)]
    pub prefecture: String,
    #[serde(default)]
    pub phone: String,
    /// `clinic` (診療所) or `hospital` (病院).
    pub kind: FacilityKind,
    /// 許可病床数 (0 for a clinic without beds). Hospitals with ≥ 200 beds bill 外来診療料.
    #[serde(default)]
    pub beds: u32,
    /// 施設基準 codes (4 digits as in master cols 72-81, e.g. `"4035"` 医療DX推進体制整備加算).
    #[serde(default)]
    pub standards: Vec<String>,
    /// 常勤薬剤師 on staff (調剤技術基本料).
    #[serde(default)]
    pub pharmacist_on_staff: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FacilityKind {
    #[default]
    Clinic,
    Hospital,
}

/// Patient sex as in UKE (1 male, 2 female).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    #[default]
    Male,
    Female,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Patient {
    /// Stable patient id (カルテ番号).
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kana: String,
    #[serde(default)]
    pub sex: Sex,
    pub birth_date: NaiveDate,
}

/// Insurance kind: 社保 (健康保険), 国保, 後期高齢者.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InsuranceKind {
    #[default]
    Shaho,
    Kokuho,
    Koki,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Insurance {
    pub kind: InsuranceKind,
    /// 保険者番号.
    #[serde(default)]
    pub insurer_number: String,
    #[serde(default)]
    pub symbol: String,
    #[serde(default)]
    pub number: String,
    /// 被保険者 (本人) or 家族.
    #[serde(default = "yes")]
    pub is_insured_person: bool,
    /// 負担割合 in percent (10, 20, 30). When absent it is derived from age (see docs/FEE.md).
    #[serde(default)]
    pub burden_percent: Option<u8>,
    /// 公費 combined with the insurance (at most one is supported for the copay).
    #[serde(default)]
    pub public_expenses: Vec<PublicExpense>,
    /// 高額療養費 所得区分 shown by the patient (限度額適用認定証 / オンライン資格確認): the
    /// month's 外来 copay at this facility is capped (`calculate_month`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_cost: Option<HighCostCategory>,
}

/// 高額療養費の所得区分. Under 70: 区分ア〜オ; 70 and over: 現役並みⅢ/Ⅱ/Ⅰ (same limits as
/// ア/イ/ウ), 一般, 低所得Ⅱ/Ⅰ.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HighCostCategory {
    /// 区分ア / 現役並みⅢ: 252,600円 + (医療費 − 842,000円) × 1%.
    A,
    /// 区分イ / 現役並みⅡ: 167,400円 + (医療費 − 558,000円) × 1%.
    I,
    /// 区分ウ / 現役並みⅠ: 80,100円 + (医療費 − 267,000円) × 1%.
    U,
    /// 区分エ: 57,600円.
    E,
    /// 区分オ (住民税非課税): 35,400円.
    O,
    /// 70歳以上 一般: 外来 (個人) 18,000円.
    General70,
    /// 70歳以上 低所得Ⅱ・Ⅰ: 外来 (個人) 8,000円.
    LowIncome70,
}

/// A 公費負担医療 combined with the health insurance.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublicExpense {
    /// 公費負担者番号 (8 digits; the first two are the 法別番号).
    pub payer_number: String,
    /// 公費受給者番号 (7 digits; empty for some 法別).
    #[serde(default)]
    pub recipient_number: String,
    /// The patient's share under this 公費, percent of the medical cost (0 = fully covered).
    #[serde(default)]
    pub burden_percent: u8,
    /// 自己負担上限額 per visit in yen, if any.
    #[serde(default)]
    pub cap_yen: Option<i64>,
    /// 月額自己負担上限額 in yen, if any (applied across the month by `calculate_month`).
    #[serde(default)]
    pub monthly_cap_yen: Option<i64>,
}

fn yes() -> bool {
    true
}

/// 初診 / 再診 / no basic fee (e.g. a same-day second visit already billed).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum VisitKind {
    Initial,
    #[default]
    Revisit,
    None,
}

/// Time category of the visit (時間外等加算).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeCategory {
    #[default]
    Normal,
    /// 時間外.
    Overtime,
    /// 休日.
    Holiday,
    /// 深夜 (22:00–6:00).
    LateNight,
    /// 時間外特例医療機関.
    OvertimeSpecial,
    /// 夜間・早朝等 (診療所, within its hours).
    NightEarly,
}

/// A 診療行為 ordered by code.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcedureOrder {
    pub code: String,
    #[serde(default = "one")]
    pub count: u32,
    /// 数量データ for きざみ items (e.g. minutes, cm²), decimal text.
    #[serde(default)]
    pub quantity: Option<String>,
}

fn one() -> u32 {
    1
}

/// How a prescription is dispensed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DispensingMode {
    /// 院内処方: 処方料 + 調剤料 + 薬剤料 (+ 調剤技術基本料).
    #[default]
    InHouse,
    /// 院外処方: 処方箋料 only.
    OutOfHouse,
}

/// Kind of a 剤.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RpKind {
    /// 内服: price per 1 day, × days.
    Internal,
    /// 頓服: price per dose, × doses.
    AsNeeded,
    /// 外用: price of the whole quantity, once.
    External,
}

/// One drug of a 剤 with its quantity (per day for 内服, per dose for 頓服, total for 外用).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrugOrder {
    pub code: String,
    pub quantity: String,
    /// Prescribed by 一般名 (一般名処方加算, 院外 only).
    #[serde(default)]
    pub by_generic_name: bool,
}

/// A 剤 (Rp): drugs taken together, with days (内服) or doses (頓服).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rp {
    pub kind: RpKind,
    /// 内服: days; 頓服: doses; 外用: 1.
    #[serde(default = "one")]
    pub days: u32,
    pub drugs: Vec<DrugOrder>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Prescription {
    #[serde(default)]
    pub mode: DispensingMode,
    /// リフィル処方箋.
    #[serde(default)]
    pub refill: bool,
    /// 3種類以上の抗不安薬等 (向精神薬多剤投与): 処方料/処方箋料 の減額区分.
    #[serde(default)]
    pub psychotropic_multi: bool,
    pub rps: Vec<Rp>,
}

/// An injection (注射) given at the visit: the 手技 (実施料) and the drugs of one 回, given
/// `count` times.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// 手技料 code (G000 皮内・皮下・筋肉内 130000510, G001 静脈内 130003510, G004 点滴
    /// 130009310 …). `None` bills the drugs only (e.g. a 点滴 whose 手技 is included).
    #[serde(default)]
    pub procedure: Option<String>,
    /// How many times it was given (回数).
    #[serde(default = "one")]
    pub count: u32,
    /// The drugs of one 回, quantities in the master unit.
    pub drugs: Vec<DrugOrder>,
}

/// Drugs used in a 処置 or 手術 (J300/K940 薬剤): priced together; 15円 or less is not billed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TreatmentDrugs {
    /// 診療識別 (default 40 処置; 50 手術).
    #[serde(default)]
    pub shikibetsu: Option<u8>,
    pub drugs: Vec<DrugOrder>,
}

/// A 特定保険医療材料 with its quantity.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaterialOrder {
    pub code: String,
    pub quantity: String,
    /// 診療識別 the material belongs to (default 40 処置).
    #[serde(default)]
    pub shikibetsu: Option<u8>,
}

/// A diagnosis (傷病名) for the receipt and the 特定疾患 rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosisInput {
    pub code: String,
    #[serde(default)]
    pub modifiers: Vec<String>,
    /// Free name, only for 未コード化傷病名 `0000999`.
    #[serde(default)]
    pub name: Option<String>,
    pub start_date: NaiveDate,
    /// 転帰: 1 継続, 2 治ゆ, 3 死亡, 4 中止.
    #[serde(default = "one_u8")]
    pub outcome: u8,
    #[serde(default)]
    pub main: bool,
}

fn one_u8() -> u8 {
    1
}

/// A receipt comment: a コメントマスター code and, for patterns that take data, its text
/// (free text, a number, a date…).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommentInput {
    pub code: String,
    #[serde(default)]
    pub text: String,
    /// 診療識別 the comment belongs to (default 80 その他).
    #[serde(default)]
    pub shikibetsu: Option<u8>,
}

/// A checked receipt comment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommentLine {
    pub shikibetsu: u8,
    pub code: String,
    /// The comment's fixed text from the master.
    pub name: String,
    /// The data given with it (empty for fixed comments, pattern 20).
    pub text: String,
}

/// A line billed before this visit (same month or within the check windows).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryLine {
    pub date: NaiveDate,
    pub code: String,
    #[serde(default = "one")]
    pub count: u32,
}

/// One outpatient visit to calculate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisitInput {
    #[serde(default)]
    pub id: String,
    pub date: NaiveDate,
    #[serde(default)]
    pub time_category: TimeCategory,
    pub patient: Patient,
    pub insurance: Insurance,
    #[serde(default)]
    pub visit_kind: VisitKind,
    /// Bill 外来管理加算 when allowed (default true).
    #[serde(default = "yes")]
    pub outpatient_management: bool,
    #[serde(default)]
    pub procedures: Vec<ProcedureOrder>,
    #[serde(default)]
    pub prescription: Option<Prescription>,
    /// 注射.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub injections: Vec<Injection>,
    /// 処置・手術の薬剤.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub treatment_drugs: Vec<TreatmentDrugs>,
    #[serde(default)]
    pub materials: Vec<MaterialOrder>,
    #[serde(default)]
    pub diagnoses: Vec<DiagnosisInput>,
    /// Lines billed earlier this month (and the 7 days before, for 1週間 rules).
    #[serde(default)]
    pub history: Vec<HistoryLine>,
    /// Receipt comments (コメントマスター codes), written as UKE CO records.
    #[serde(default)]
    pub comments: Vec<CommentInput>,
}

/// The whole `iryo fee calc` input file: the facility and one visit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalcRequest {
    pub facility: Facility,
    pub visit: VisitInput,
}

/// Which master an item comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ItemKind {
    /// 診療行為 (UKE SI).
    #[serde(rename = "S")]
    Procedure,
    /// 医薬品 (UKE IY).
    #[serde(rename = "Y")]
    Drug,
    /// 特定器材 (UKE TO).
    #[serde(rename = "T")]
    Material,
}

/// One coded item of a billed line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineItem {
    pub kind: ItemKind,
    pub code: String,
    pub name: String,
    /// 数量 / 使用量 as decimal text (drugs, materials, きざみ items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    /// Master points of a 診療行為 or yen of a drug/material, for display.
    pub master_amount: String,
    /// 単位 of drugs and materials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// 単位コード (別紙4-1) of drugs and materials, for the UKE TO record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_code: Option<String>,
}

/// A billed line: one 診療行為, or one 剤, or one bundle, with its points and count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// 診療識別 (11 初診, 12 再診, 13 医学管理, 21 内服, 22 屯服, 23 外用, 25 処方, 26 麻毒,
    /// 27 調基, 40 処置, 60 検査・病理, 80 その他, …).
    pub shikibetsu: u8,
    pub items: Vec<LineItem>,
    /// Points per count.
    pub points: i64,
    pub count: u32,
    /// points × count.
    pub total: i64,
    /// Rule that produced this line and why.
    pub rule: String,
    pub reason_ja: String,
    pub reason_en: String,
}

/// Severity of a message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// A refusal, a warning or an error, with the rule and the code concerned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub level: Level,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message_ja: String,
    pub message_en: String,
}

/// Result of one visit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisitResult {
    pub visit_id: String,
    pub patient_id: String,
    pub date: NaiveDate,
    pub lines: Vec<Line>,
    pub total_points: i64,
    /// 負担割合 applied, percent.
    pub burden_percent: u8,
    /// 医療費 in yen (total_points × 10).
    pub total_yen: i64,
    /// What the patient pays (窓口負担), rounded to 10 yen (四捨五入, 健康保険法第75条).
    /// With a 公費 this is the share under the 公費, else the insurance 一部負担金.
    pub copay_yen: i64,
    /// 医療保険の一部負担金 before any 公費.
    #[serde(default)]
    pub insurance_copay_yen: i64,
    /// Paid by the 公費 (insurance copay − patient's share).
    #[serde(default)]
    pub public_expense_yen: i64,
    /// Refusals (not billed, with reason), warnings and errors.
    pub messages: Vec<Message>,
    /// Receipt comments, checked against the コメントマスター.
    #[serde(default)]
    pub comments: Vec<CommentLine>,
}

impl VisitResult {
    /// True when no message has level `Error`.
    pub fn is_ok(&self) -> bool {
        !self.messages.iter().any(|m| m.level == Level::Error)
    }

    /// Every billed code with its count, for the history of later visits.
    pub fn history_lines(&self) -> Vec<HistoryLine> {
        let mut out = Vec::new();
        for l in &self.lines {
            for it in &l.items {
                if it.kind == ItemKind::Procedure {
                    out.push(HistoryLine {
                        date: self.date,
                        code: it.code.clone(),
                        count: l.count,
                    });
                }
            }
        }
        out
    }
}
