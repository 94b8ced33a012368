//! FHIR R4 → [`VisitInput`]: the resources of a clinic visit become one calculation input.
//!
//! The convention (which element carries what) is documented with a full example in
//! `docs/FEE.md` (section "FHIR mapping"). In short:
//!
//! * `Encounter` (class `AMB`): `period.start` → date; `type` coding of [`SYSTEM_VISIT_KIND`]
//!   → 初診/再診; extension [`EXT_TIME_CATEGORY`] → 時間外/休日/深夜…; `subject` → the Patient;
//!   `diagnosis[].condition` → the Conditions (rank 1 = 主病).
//! * `Patient`: `id`, `birthDate`, `gender`, `name` (kana: the `SYL` representation).
//! * `Coverage` whose `beneficiary` is the patient and whose `period` covers the date: the
//!   health insurance (保険者番号 from `payor.identifier`, 負担割合 from `costToBeneficiary`
//!   `copaypct`) and at most one 公費 (`type` code `public`).
//! * `ChargeItem` whose `context` is the encounter: 診療行為 ([`SYSTEM_PROCEDURE`], JP Core
//!   医科診療行為マスタ), 特定器材 ([`SYSTEM_MATERIAL`]) and コメント ([`SYSTEM_COMMENT`]).
//! * `ServiceRequest` whose `encounter` is the encounter: a 診療行為 order ([`SYSTEM_PROCEDURE`],
//!   count in `quantityQuantity`), unless a ChargeItem of the encounter names it in
//!   `supportingInformation`/`service` (then the ChargeItem bills it).
//! * `MedicationRequest` whose `encounter` is the encounter: 医薬品 ([`SYSTEM_DRUG`]) with the
//!   daily dose, the days and the 用法; grouped into 剤 (see [`rp_key`]).
//!
//! Every failure is a [`FeeError::InvalidInput`] naming the resource and element.

use crate::calc::model::{
    CommentInput, DiagnosisInput, DispensingMode, DrugOrder, HighCostCategory, Injection,
    Insurance, InsuranceKind, MaterialOrder, Patient, Prescription, ProcedureOrder, PublicExpense,
    Rp, RpKind, Sex, TimeCategory, TreatmentDrugs, VisitInput, VisitKind,
};
use crate::error::{FeeError, Result};
use chrono::NaiveDate;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// 医科診療行為マスタ (JP Core): 9-digit 診療行為コード of the 支払基金 S master.
pub const SYSTEM_PROCEDURE: &str =
    "http://jpfhir.jp/fhir/core/CodeSystem/JP_ProcedureCodesMedical_CS";
/// レセプト電算処理システム 医薬品コード (9 digits, Y master). JP Core has no code system for
/// it, so iryo defines this one.
pub const SYSTEM_DRUG: &str = "https://iryo.example.jp/fhir/CodeSystem/ssk-medication";
/// レセプト電算処理システム 特定器材コード (9 digits, T master), iryo-defined.
pub const SYSTEM_MATERIAL: &str = "https://iryo.example.jp/fhir/CodeSystem/ssk-material";
/// レセプト電算処理システム コメントコード (9 digits, C master), iryo-defined.
pub const SYSTEM_COMMENT: &str = "https://iryo.example.jp/fhir/CodeSystem/ssk-comment";
/// 傷病名マスター (JP Core, MHLW).
pub const SYSTEM_DISEASE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/masterB-disease";
/// 修飾語マスター (JP Core, MHLW).
pub const SYSTEM_MODIFIER: &str =
    "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/masterZ-disease-modifier";
/// 一般名処方マスタ codes (JP Core, MHLW): a coding of this system marks 一般名処方.
pub const SYSTEM_GENERIC_NAME: &str =
    "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode";
/// JP Core 一般名コード, accepted like [`SYSTEM_GENERIC_NAME`].
pub const SYSTEM_GENERIC_NAME_CORE: &str =
    "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeCommon_CS";
/// 保険者番号 identifier system (JP Core).
pub const SYSTEM_INSURER_NUMBER: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber";
/// Encounter.type: `initial` (初診), `revisit` (再診), `none` (no basic fee).
pub const SYSTEM_VISIT_KIND: &str = "https://iryo.example.jp/fhir/CodeSystem/fee-visit-kind";
/// MedicationRequest.category: `in_house` (院内処方) or `out_of_house` (院外処方).
pub const SYSTEM_DISPENSING: &str = "https://iryo.example.jp/fhir/CodeSystem/fee-dispensing";
/// MedicationRequest.category: `internal` (内服), `as_needed` (頓服), `external` (外用),
/// `injection` (注射 given at the visit) or `treatment` (used in a 処置/手術).
pub const SYSTEM_RP_KIND: &str = "https://iryo.example.jp/fhir/CodeSystem/fee-rp-kind";
/// Coverage.type: `shaho`, `kokuho`, `koki` or `public` (公費).
pub const SYSTEM_COVERAGE_KIND: &str = "https://iryo.example.jp/fhir/CodeSystem/fee-coverage-kind";
/// Coverage.costToBeneficiary.type: `monthly-cap` (月額自己負担上限額 of a 公費).
pub const SYSTEM_COPAY_EXTRA: &str = "https://iryo.example.jp/fhir/CodeSystem/fee-copay-type";
/// HL7 copay types (`copaypct`, `copay`).
pub const SYSTEM_HL7_COPAY: &str = "http://terminology.hl7.org/CodeSystem/coverage-copay-type";
/// Encounter extension, valueCode: `normal`, `overtime`, `holiday`, `late_night`,
/// `overtime_special`, `night_early`.
pub const EXT_TIME_CATEGORY: &str =
    "https://iryo.example.jp/fhir/StructureDefinition/fee-time-category";
/// Encounter extension, valueBoolean: 向精神薬多剤投与 (処方料/処方箋料 の減額区分).
pub const EXT_PSYCHOTROPIC_MULTI: &str =
    "https://iryo.example.jp/fhir/StructureDefinition/fee-psychotropic-multi";
/// Encounter extension, valueBoolean: false = do not bill 外来管理加算 (default true).
pub const EXT_OUTPATIENT_MANAGEMENT: &str =
    "https://iryo.example.jp/fhir/StructureDefinition/fee-outpatient-management";
/// ChargeItem extension, valueDecimal: 数量データ of a きざみ item (minutes, cm², …).
pub const EXT_QUANTITY_DATA: &str =
    "https://iryo.example.jp/fhir/StructureDefinition/fee-quantity-data";
/// ChargeItem extension, valueInteger: 診療識別 of a material or comment.
pub const EXT_SHIKIBETSU: &str = "https://iryo.example.jp/fhir/StructureDefinition/fee-shikibetsu";
/// Coverage extension, valueCode: 高額療養費の所得区分 (`a`, `i`, `u`, `e`, `o`, `general70`,
/// `low_income70`), as on the 限度額適用認定証 or from オンライン資格確認.
pub const EXT_HIGH_COST: &str =
    "https://iryo.example.jp/fhir/StructureDefinition/fee-high-cost-category";
/// JP Core Coverage extensions: 記号 and 番号.
pub const EXT_INSURED_SYMBOL: &str =
    "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonSymbol";
pub const EXT_INSURED_NUMBER: &str =
    "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonNumber";
const EXT_NAME_REPRESENTATION: &str =
    "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const EXT_CONDITION_MODIFIER_PREFIX: &str = "JP_Condition_DiseasePrefixModifier";
const EXT_CONDITION_MODIFIER_POSTFIX: &str = "JP_Condition_DiseasePostfixModifier";

/// The resources of a collection, indexed by `Type/id` (and by `fullUrl` when a Bundle gives
/// one), so that references of any form resolve.
struct Index<'a> {
    by_key: HashMap<String, &'a Value>,
    /// fullUrl → `Type/id` key.
    aliases: HashMap<String, String>,
    of_type: BTreeMap<&'static str, Vec<&'a Value>>,
    /// (type, `Type/id` of the target) → the ChargeItems (by `context`), MedicationRequests
    /// (by `encounter`) and Coverages (by `beneficiary`) that point at it: one pass, so a month
    /// of visits maps in linear time.
    referrers: HashMap<(&'static str, String), Vec<&'a Value>>,
    /// Address of each resource → its key (resources without id are known by their fullUrl).
    own: HashMap<usize, String>,
}

/// The reference element through which each type points at its visit or patient.
const REFERRING: [(&str, &str); 4] = [
    ("ChargeItem", "context"),
    ("MedicationRequest", "encounter"),
    ("ServiceRequest", "encounter"),
    ("Coverage", "beneficiary"),
];

const TYPES: [&str; 7] = [
    "Encounter",
    "Patient",
    "Coverage",
    "ChargeItem",
    "MedicationRequest",
    "ServiceRequest",
    "Condition",
];

fn key_of(r: &Value) -> Option<String> {
    let ty = r.get("resourceType")?.as_str()?;
    let id = r.get("id")?.as_str()?;
    Some(format!("{ty}/{id}"))
}

impl<'a> Index<'a> {
    fn new(items: impl IntoIterator<Item = (Option<&'a str>, &'a Value)>) -> Result<Self> {
        let mut ix = Index {
            by_key: HashMap::new(),
            aliases: HashMap::new(),
            of_type: BTreeMap::new(),
            referrers: HashMap::new(),
            own: HashMap::new(),
        };
        for (n, (full_url, r)) in items.into_iter().enumerate() {
            let ty = r
                .get("resourceType")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    FeeError::input(format!("entry[{n}].resource"), "resourceType is missing")
                })?;
            let key = match (key_of(r), full_url) {
                (Some(k), _) => k,
                (None, Some(u)) => u.to_string(),
                (None, None) => {
                    return Err(FeeError::input(
                        format!("entry[{n}].resource"),
                        format!("{ty} has neither id nor fullUrl"),
                    ))
                }
            };
            if let Some(u) = full_url {
                ix.aliases.insert(u.to_string(), key.clone());
            }
            ix.own.insert(r as *const Value as usize, key.clone());
            ix.by_key.insert(key, r);
            if let Some(t) = TYPES.iter().find(|t| **t == ty) {
                ix.of_type.entry(t).or_default().push(r);
            }
        }
        let mut referrers: HashMap<(&'static str, String), Vec<&'a Value>> = HashMap::new();
        for (ty, field) in REFERRING {
            for r in ix.all(ty) {
                if let Some(target) = reference_of(r, field) {
                    referrers
                        .entry((ty, ix.target(target)))
                        .or_default()
                        .push(r);
                }
            }
        }
        ix.referrers = referrers;
        Ok(ix)
    }

    /// Resources of `ty` whose reference element (see [`REFERRING`]) points at `target_key`.
    fn referring(&self, ty: &'static str, target_key: &str) -> &[&'a Value] {
        self.referrers
            .get(&(ty, target_key.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The `Type/id` key a reference points to (literal, absolute or `urn:uuid:` fullUrl).
    fn target(&self, reference: &str) -> String {
        if let Some(k) = self.aliases.get(reference) {
            return k.clone();
        }
        let r = reference.split("/_history/").next().unwrap_or(reference);
        let parts: Vec<&str> = r.rsplitn(3, '/').collect();
        if parts.len() >= 2 {
            format!("{}/{}", parts[1], parts[0])
        } else {
            r.to_string()
        }
    }

    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        self.by_key.get(&self.target(reference)).copied()
    }

    fn all(&self, ty: &str) -> &[&'a Value] {
        self.of_type.get(ty).map(Vec::as_slice).unwrap_or(&[])
    }

    /// This resource's own key (as references to it resolve).
    fn own_key(&self, r: &Value) -> Option<String> {
        self.own.get(&(r as *const Value as usize)).cloned()
    }
}

fn label(r: &Value) -> String {
    key_of(r).unwrap_or_else(|| {
        r.get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("resource")
            .to_string()
    })
}

fn err(r: &Value, path: &str, reason: impl Into<String>) -> FeeError {
    FeeError::input(format!("{}.{path}", label(r)), reason)
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn reference_of<'v>(v: &'v Value, field: &str) -> Option<&'v str> {
    str_at(v, &[field, "reference"])
}

fn codings(cc: Option<&Value>) -> impl Iterator<Item = &Value> {
    cc.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The code of the first coding of `system` in a CodeableConcept (or in a list of them).
fn code_in<'v>(cc: Option<&'v Value>, system: &str) -> Option<&'v str> {
    let list: Vec<&Value> = match cc {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    };
    list.into_iter().find_map(|c| {
        codings(Some(c))
            .find(|cd| cd.get("system").and_then(Value::as_str) == Some(system))
            .and_then(|cd| cd.get("code").and_then(Value::as_str))
    })
}

fn extension<'v>(r: &'v Value, url: &str) -> Option<&'v Value> {
    r.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

fn extensions_ending<'v>(r: &'v Value, suffix: &'v str) -> impl Iterator<Item = &'v Value> {
    r.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(suffix))
        })
}

/// A date (`YYYY-MM-DD`) or the date part of a dateTime, as written (the clinic's local date).
fn parse_date(r: &Value, path: &str, s: &str) -> Result<NaiveDate> {
    let d = s.get(..10).unwrap_or(s);
    NaiveDate::parse_from_str(d, "%Y-%m-%d")
        .map_err(|_| err(r, path, format!("'{s}' is not a full date (YYYY-MM-DD)")))
}

/// A FHIR decimal as its exact text (serde_json keeps it with arbitrary_precision).
fn decimal_text(r: &Value, path: &str, v: &Value) -> Result<String> {
    match v {
        Value::Number(n) => {
            let t = n.to_string();
            if t.starts_with('-') || t.trim_start_matches(['0', '.']).is_empty() {
                return Err(err(r, path, format!("quantity {t} must be positive")));
            }
            Ok(t)
        }
        _ => Err(err(r, path, "a decimal number is expected")),
    }
}

fn positive_u32(r: &Value, path: &str, v: &Value) -> Result<u32> {
    let t = decimal_text(r, path, v)?;
    let t = t.strip_suffix(".0").unwrap_or(&t);
    t.parse::<u32>()
        .map_err(|_| err(r, path, format!("{t} is not a whole positive number")))
}

fn status_is(r: &Value, excluded: &[&str]) -> bool {
    r.get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| excluded.contains(&s))
}

/// Build the visit inputs of every outpatient Encounter in a `searchset`/`collection`/
/// `transaction` Bundle that also holds the Patient, Coverage, ChargeItem, MedicationRequest
/// and Condition resources. Visits are returned by date, then encounter id. `OperationOutcome`
/// and other resources are ignored; cancelled and entered-in-error encounters are skipped.
pub fn visits_from_bundle(bundle: &Value) -> Result<Vec<VisitInput>> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FeeError::input("resourceType", "a Bundle is expected"));
    }
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut items = Vec::with_capacity(entries.len());
    for (n, e) in entries.iter().enumerate() {
        let Some(r) = e.get("resource") else {
            return Err(FeeError::input(
                format!("Bundle.entry[{n}]"),
                "entry without resource",
            ));
        };
        items.push((e.get("fullUrl").and_then(Value::as_str), r));
    }
    visits_from_index(&Index::new(items)?)
}

/// [`visits_from_bundle`] over a plain list of resources (e.g. the matches and includes of a
/// store search).
pub fn visits_from_resources(resources: &[Value]) -> Result<Vec<VisitInput>> {
    visits_from_index(&Index::new(resources.iter().map(|r| (None, r)))?)
}

fn visits_from_index(ix: &Index) -> Result<Vec<VisitInput>> {
    let mut out = Vec::new();
    for enc in ix.all("Encounter") {
        if status_is(enc, &["cancelled", "entered-in-error", "planned"]) {
            continue;
        }
        out.push(visit_from_encounter(ix, enc)?);
    }
    out.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
    Ok(out)
}

fn visit_from_encounter(ix: &Index, enc: &Value) -> Result<VisitInput> {
    // outpatient only
    if let Some(class) = str_at(enc, &["class", "code"]) {
        if !matches!(class, "AMB" | "VR" | "HH") {
            return Err(err(
                enc,
                "class",
                format!("class {class}: only outpatient encounters (AMB) are calculated"),
            ));
        }
    }
    let start = str_at(enc, &["period", "start"])
        .ok_or_else(|| err(enc, "period.start", "the visit date is missing"))?;
    // with a time: the clinic's local (JST) date and time, which also give 深夜 and 休日
    let local = chrono::DateTime::parse_from_rfc3339(start).ok().map(|t| {
        t.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).expect("JST"))
            .naive_local()
    });
    let date = match local {
        Some(l) => l.date(),
        None => parse_date(enc, "period.start", start)?,
    };
    let visit_kind = match code_in(enc.get("type"), SYSTEM_VISIT_KIND) {
        None | Some("revisit") => VisitKind::Revisit,
        Some("initial") => VisitKind::Initial,
        Some("none") => VisitKind::None,
        Some(c) => return Err(err(enc, "type", format!("unknown visit kind '{c}'"))),
    };
    let time_category = match extension(enc, EXT_TIME_CATEGORY) {
        None => local
            .map(crate::calc::calendar::time_category_at)
            .unwrap_or(TimeCategory::Normal),
        Some(e) => {
            let c = e.get("valueCode").and_then(Value::as_str).unwrap_or("");
            serde_json::from_value::<TimeCategory>(Value::String(c.to_string())).map_err(|_| {
                err(
                    enc,
                    "extension(fee-time-category)",
                    format!("unknown time category '{c}'"),
                )
            })?
        }
    };
    let flag = |url: &str, default: bool| -> Result<bool> {
        match extension(enc, url) {
            None => Ok(default),
            Some(e) => e
                .get("valueBoolean")
                .and_then(Value::as_bool)
                .ok_or_else(|| err(enc, "extension", format!("{url} needs valueBoolean"))),
        }
    };
    let psychotropic_multi = flag(EXT_PSYCHOTROPIC_MULTI, false)?;
    let outpatient_management = flag(EXT_OUTPATIENT_MANAGEMENT, true)?;

    let subject = reference_of(enc, "subject")
        .ok_or_else(|| err(enc, "subject", "the patient reference is missing"))?;
    let pat = ix.resolve(subject).ok_or_else(|| {
        err(
            enc,
            "subject",
            format!("{subject} is not among the resources"),
        )
    })?;
    let patient = patient_of(pat)?;
    let patient_key = ix.own_key(pat).unwrap_or_default();
    let insurance = insurance_of(ix, pat, &patient_key, date)?;
    let enc_key = ix.own_key(enc).unwrap_or_default();

    let mut procedures = Vec::new();
    let mut materials = Vec::new();
    let mut comments = Vec::new();
    // ServiceRequests a ChargeItem of this encounter already bills (named in its
    // `supportingInformation` or `service`)
    let mut billed_orders: Vec<String> = Vec::new();
    for ci in ix.referring("ChargeItem", &enc_key) {
        if status_is(ci, &["not-billable", "aborted", "entered-in-error"]) {
            continue;
        }
        for field in ["supportingInformation", "service"] {
            for r in ci
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = r.get("reference").and_then(Value::as_str) {
                    billed_orders.push(ix.target(r));
                }
            }
        }
        charge_item(ci, &mut procedures, &mut materials, &mut comments)?;
    }
    for sr in ix.referring("ServiceRequest", &enc_key) {
        if status_is(sr, &["draft", "on-hold", "revoked", "entered-in-error"])
            || ix.own_key(sr).is_some_and(|k| billed_orders.contains(&k))
        {
            continue;
        }
        procedures.push(service_request(sr)?);
    }

    let active: Vec<&Value> = ix
        .referring("MedicationRequest", &enc_key)
        .iter()
        .copied()
        .filter(|m| !status_is(m, &["cancelled", "entered-in-error", "draft"]))
        .collect();
    let of_kind = |kind: &str| -> Vec<&Value> {
        active
            .iter()
            .copied()
            .filter(|m| code_in(m.get("category"), SYSTEM_RP_KIND) == Some(kind))
            .collect()
    };
    let meds: Vec<&Value> = active
        .iter()
        .copied()
        .filter(|m| {
            !matches!(
                code_in(m.get("category"), SYSTEM_RP_KIND),
                Some("injection" | "treatment")
            )
        })
        .collect();
    let prescription = prescription_of(&meds, psychotropic_multi)?;
    let injections = injections_of(&of_kind("injection"))?;
    let treatment_drugs = treatment_drugs_of(&of_kind("treatment"))?;
    let diagnoses = diagnoses_of(ix, enc)?;

    Ok(VisitInput {
        id: enc
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        date,
        time_category,
        patient,
        insurance,
        visit_kind,
        outpatient_management,
        procedures,
        prescription,
        injections,
        treatment_drugs,
        materials,
        diagnoses,
        history: vec![],
        comments,
    })
}

fn patient_of(p: &Value) -> Result<Patient> {
    let birth = p
        .get("birthDate")
        .and_then(Value::as_str)
        .ok_or_else(|| err(p, "birthDate", "the birth date is missing"))?;
    let birth_date = parse_date(p, "birthDate", birth)?;
    let sex = match p.get("gender").and_then(Value::as_str) {
        Some("female") => Sex::Female,
        _ => Sex::Male,
    };
    let names = p.get("name").and_then(Value::as_array);
    let name_text = |n: &Value| -> String {
        if let Some(t) = n.get("text").and_then(Value::as_str) {
            return t.to_string();
        }
        let family = n.get("family").and_then(Value::as_str).unwrap_or("");
        let given: Vec<&str> = n
            .get("given")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if given.is_empty() {
            family.to_string()
        } else {
            format!("{family}　{}", given.join("　"))
        }
    };
    let is_kana = |n: &&Value| {
        extension(n, EXT_NAME_REPRESENTATION)
            .and_then(|e| e.get("valueCode"))
            .and_then(Value::as_str)
            == Some("SYL")
    };
    let (mut name, mut kana) = (String::new(), String::new());
    for n in names.into_iter().flatten() {
        if is_kana(&n) {
            if kana.is_empty() {
                kana = name_text(n);
            }
        } else if name.is_empty() {
            name = name_text(n);
        }
    }
    Ok(Patient {
        id: p
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        name,
        kana,
        sex,
        birth_date,
    })
}

/// Is `date` within `Coverage.period` (open ends allowed)?
fn covers(c: &Value, date: NaiveDate) -> Result<bool> {
    let Some(p) = c.get("period") else {
        return Ok(true);
    };
    if let Some(s) = p.get("start").and_then(Value::as_str) {
        if parse_date(c, "period.start", s)? > date {
            return Ok(false);
        }
    }
    if let Some(s) = p.get("end").and_then(Value::as_str) {
        if parse_date(c, "period.end", s)? < date {
            return Ok(false);
        }
    }
    Ok(true)
}

fn insurer_number(ix: &Index, c: &Value) -> String {
    for payor in c
        .get("payor")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(v) = str_at(payor, &["identifier", "value"]) {
            return v.to_string();
        }
        if let Some(org) = payor
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|r| ix.resolve(r))
        {
            let ids = org.get("identifier").and_then(Value::as_array);
            let id = ids
                .into_iter()
                .flatten()
                .find(|i| i.get("system").and_then(Value::as_str) == Some(SYSTEM_INSURER_NUMBER));
            if let Some(v) = id.and_then(|i| i.get("value")).and_then(Value::as_str) {
                return v.to_string();
            }
        }
    }
    String::new()
}

fn copay_entries(c: &Value) -> impl Iterator<Item = (&str, &Value)> {
    c.get("costToBeneficiary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let code = code_in(e.get("type"), SYSTEM_HL7_COPAY)
                .or_else(|| code_in(e.get("type"), SYSTEM_COPAY_EXTRA))?;
            Some((code, e))
        })
}

fn percent_of(c: &Value, e: &Value) -> Result<u8> {
    let v = e
        .get("valueQuantity")
        .and_then(|q| q.get("value"))
        .and_then(Value::as_u64)
        .filter(|v| *v <= 100)
        .ok_or_else(|| {
            err(
                c,
                "costToBeneficiary",
                "copaypct needs valueQuantity.value, a whole percent 0–100",
            )
        })?;
    Ok(v as u8)
}

fn yen_of(c: &Value, e: &Value) -> Result<i64> {
    e.get("valueMoney")
        .and_then(|m| m.get("value"))
        .and_then(Value::as_i64)
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            err(
                c,
                "costToBeneficiary",
                "copay needs valueMoney.value, whole yen ≥ 0",
            )
        })
}

fn ext_string(c: &Value, url: &str) -> String {
    extension(c, url)
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn insurance_of(ix: &Index, pat: &Value, patient_key: &str, date: NaiveDate) -> Result<Insurance> {
    let mut main: Option<(&Value, InsuranceKind)> = None;
    let mut publics = Vec::new();
    for c in ix.referring("Coverage", patient_key) {
        if status_is(c, &["cancelled", "entered-in-error", "draft"]) || !covers(c, date)? {
            continue;
        }
        let number = insurer_number(ix, c);
        let kind = match code_in(c.get("type"), SYSTEM_COVERAGE_KIND) {
            Some("public") => {
                publics.push((c, number));
                continue;
            }
            Some("shaho") => InsuranceKind::Shaho,
            Some("kokuho") => InsuranceKind::Kokuho,
            Some("koki") => InsuranceKind::Koki,
            Some(other) => {
                return Err(err(c, "type", format!("unknown coverage kind '{other}'")));
            }
            // 保険者番号: 6 digits 国保, 8 digits starting 39 後期高齢者, other 8 digits 社保
            None => match (number.len(), number.starts_with("39")) {
                (6, _) => InsuranceKind::Kokuho,
                (8, true) => InsuranceKind::Koki,
                (8, false) => InsuranceKind::Shaho,
                _ => {
                    return Err(err(
                        c,
                        "payor",
                        format!(
                            "保険者番号 '{number}' must have 6 or 8 digits (or set Coverage.type)"
                        ),
                    ))
                }
            },
        };
        if main.is_some() {
            return Err(err(
                c,
                "beneficiary",
                format!("{patient_key} has more than one health insurance on {date}"),
            ));
        }
        main = Some((c, kind));
    }
    let (c, kind) = main.ok_or_else(|| {
        err(
            pat,
            "Coverage",
            format!("no active health insurance Coverage on {date}"),
        )
    })?;
    if publics.len() > 1 {
        return Err(err(
            publics[1].0,
            "type",
            "only one 公費 per visit is supported",
        ));
    }
    let mut burden_percent = None;
    for (code, e) in copay_entries(c) {
        if code == "copaypct" {
            burden_percent = Some(percent_of(c, e)?);
        }
    }
    let mut public_expenses = Vec::new();
    for (p, number) in publics {
        if number.len() != 8 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                p,
                "payor",
                format!("公費負担者番号 '{number}' must have 8 digits"),
            ));
        }
        let mut pe = PublicExpense {
            payer_number: number,
            recipient_number: p
                .get("subscriberId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ..Default::default()
        };
        for (code, e) in copay_entries(p) {
            match code {
                "copaypct" => pe.burden_percent = percent_of(p, e)?,
                "copay" => pe.cap_yen = Some(yen_of(p, e)?),
                "monthly-cap" => pe.monthly_cap_yen = Some(yen_of(p, e)?),
                _ => {}
            }
        }
        public_expenses.push(pe);
    }
    let mut number = ext_string(c, EXT_INSURED_NUMBER);
    if number.is_empty() {
        number = c
            .get("subscriberId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    Ok(Insurance {
        kind,
        insurer_number: insurer_number(ix, c),
        symbol: ext_string(c, EXT_INSURED_SYMBOL),
        number,
        // 本人 unless Coverage.relationship says otherwise
        is_insured_person: codings(c.get("relationship"))
            .find_map(|cd| cd.get("code").and_then(Value::as_str))
            .is_none_or(|code| code == "self"),
        burden_percent,
        public_expenses,
        high_cost: match extension(c, EXT_HIGH_COST) {
            None => None,
            Some(e) => {
                let code = e.get("valueCode").and_then(Value::as_str).unwrap_or("");
                Some(
                    serde_json::from_value::<HighCostCategory>(Value::String(code.to_string()))
                        .map_err(|_| {
                            err(
                                c,
                                "extension(fee-high-cost-category)",
                                format!("unknown 所得区分 '{code}' (a, i, u, e, o, general70, low_income70)"),
                            )
                        })?,
                )
            }
        },
    })
}

fn shikibetsu_ext(ci: &Value) -> Result<Option<u8>> {
    match extension(ci, EXT_SHIKIBETSU) {
        None => Ok(None),
        Some(e) => e
            .get("valueInteger")
            .and_then(Value::as_u64)
            .filter(|v| (11..=99).contains(v))
            .map(|v| Some(v as u8))
            .ok_or_else(|| {
                err(
                    ci,
                    "extension(fee-shikibetsu)",
                    "valueInteger 11–99 expected",
                )
            }),
    }
}

fn nine_digits(r: &Value, path: &str, code: &str) -> Result<String> {
    if code.len() == 9 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code.to_string())
    } else {
        Err(err(r, path, format!("code '{code}' must have 9 digits")))
    }
}

fn charge_item(
    ci: &Value,
    procedures: &mut Vec<ProcedureOrder>,
    materials: &mut Vec<MaterialOrder>,
    comments: &mut Vec<CommentInput>,
) -> Result<()> {
    let code_cc = ci.get("code");
    let qty = ci.get("quantity").and_then(|q| q.get("value"));
    if let Some(code) = code_in(code_cc, SYSTEM_PROCEDURE) {
        let code = nine_digits(ci, "code", code)?;
        let count = match qty {
            Some(v) => positive_u32(ci, "quantity.value", v)?,
            None => 1,
        };
        procedures.push(ProcedureOrder {
            code,
            count,
            quantity: quantity_data(ci)?,
        });
    } else if let Some(code) = code_in(code_cc, SYSTEM_MATERIAL) {
        let code = nine_digits(ci, "code", code)?;
        let q = qty.ok_or_else(|| err(ci, "quantity.value", "a material needs its quantity"))?;
        materials.push(MaterialOrder {
            code,
            quantity: decimal_text(ci, "quantity.value", q)?,
            shikibetsu: shikibetsu_ext(ci)?,
        });
    } else if let Some(code) = code_in(code_cc, SYSTEM_COMMENT) {
        let code = nine_digits(ci, "code", code)?;
        let text = ci
            .get("note")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|n| n.get("text"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        comments.push(CommentInput {
            code,
            text,
            shikibetsu: shikibetsu_ext(ci)?,
        });
    } else {
        return Err(err(
            ci,
            "code",
            format!("no coding of {SYSTEM_PROCEDURE}, {SYSTEM_MATERIAL} or {SYSTEM_COMMENT}"),
        ));
    }
    Ok(())
}

/// A ServiceRequest ordering a 診療行為 (検査, 処置, 画像 …): `code` in the 診療行為 system,
/// `quantityQuantity.value` the count (default 1), extension [`EXT_QUANTITY_DATA`] the きざみ 数量.
fn service_request(sr: &Value) -> Result<ProcedureOrder> {
    let code = code_in(sr.get("code"), SYSTEM_PROCEDURE)
        .ok_or_else(|| err(sr, "code", format!("no coding of {SYSTEM_PROCEDURE}")))?;
    let code = nine_digits(sr, "code", code)?;
    let count = match sr.get("quantityQuantity").and_then(|q| q.get("value")) {
        Some(v) => positive_u32(sr, "quantityQuantity.value", v)?,
        None => 1,
    };
    Ok(ProcedureOrder {
        code,
        count,
        quantity: quantity_data(sr)?,
    })
}

/// The きざみ 数量 of extension [`EXT_QUANTITY_DATA`], if present.
fn quantity_data(r: &Value) -> Result<Option<String>> {
    match extension(r, EXT_QUANTITY_DATA) {
        Some(e) => Ok(Some(decimal_text(
            r,
            "extension(fee-quantity-data)",
            e.get("valueDecimal").unwrap_or(&Value::Null),
        )?)),
        None => Ok(None),
    }
}

/// What puts MedicationRequests into one 剤: `groupIdentifier` when given (the order's Rp
/// number), else the same 剤 kind, days and 用法 (`dosageInstruction[0].timing.code` coding,
/// or its text, or `dosageInstruction[0].text`).
pub fn rp_key(m: &Value) -> String {
    if let Some(g) = m.get("groupIdentifier") {
        let sys = g.get("system").and_then(Value::as_str).unwrap_or("");
        let val = g.get("value").and_then(Value::as_str).unwrap_or("");
        if !val.is_empty() {
            return format!("group|{sys}|{val}");
        }
    }
    let di = m
        .get("dosageInstruction")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let usage = di
        .and_then(|d| d.get("timing"))
        .and_then(|t| t.get("code"))
        .map(|c| {
            codings(Some(c))
                .filter_map(|cd| {
                    Some(format!(
                        "{}|{}",
                        cd.get("system").and_then(Value::as_str).unwrap_or(""),
                        cd.get("code").and_then(Value::as_str)?
                    ))
                })
                .next()
                .or_else(|| c.get("text").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default()
        })
        .or_else(|| {
            di.and_then(|d| d.get("text"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    format!("usage|{usage}")
}

struct MedLine {
    key: String,
    kind: RpKind,
    days: u32,
    drug: DrugOrder,
}

fn duration_value(m: &Value, units: &[&str]) -> Option<Value> {
    let d = m.get("dispenseRequest")?.get("expectedSupplyDuration")?;
    let unit = d
        .get("code")
        .or_else(|| d.get("unit"))
        .and_then(Value::as_str)
        .unwrap_or("d");
    units.contains(&unit).then(|| d.get("value").cloned())?
}

/// The 医薬品コード of a MedicationRequest and whether it is prescribed by 一般名.
fn drug_code(m: &Value) -> Result<(String, bool)> {
    let cc = m.get("medicationCodeableConcept").ok_or_else(|| {
        err(
            m,
            "medicationCodeableConcept",
            "the drug must be given as medicationCodeableConcept",
        )
    })?;
    let code = code_in(Some(cc), SYSTEM_DRUG).ok_or_else(|| {
        err(
            m,
            "medicationCodeableConcept",
            format!("no coding of {SYSTEM_DRUG}"),
        )
    })?;
    let code = nine_digits(m, "medicationCodeableConcept", code)?;
    let by_generic_name = code_in(Some(cc), SYSTEM_GENERIC_NAME).is_some()
        || code_in(Some(cc), SYSTEM_GENERIC_NAME_CORE).is_some();
    Ok((code, by_generic_name))
}

/// The quantity per 回 of an injection or a treatment drug:
/// `dosageInstruction[0].doseAndRate[0].doseQuantity.value`.
fn dose_per_time(m: &Value, what: &str) -> Result<String> {
    let dose = m
        .get("dosageInstruction")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|d| d.get("doseAndRate"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|d| d.get("doseQuantity"))
        .and_then(|q| q.get("value"))
        .ok_or_else(|| {
            err(
                m,
                "dosageInstruction[0].doseAndRate[0].doseQuantity",
                format!("{what} needs the quantity used"),
            )
        })?;
    decimal_text(
        m,
        "dosageInstruction[0].doseAndRate[0].doseQuantity.value",
        dose,
    )
}

/// Drugs used in 処置/手術 (`category` fee-rp-kind `treatment`): grouped by `groupIdentifier`
/// (else one group per 診療識別 of extension `fee-shikibetsu`, default 40), the quantity in
/// `doseQuantity`.
fn treatment_drugs_of(meds: &[&Value]) -> Result<Vec<TreatmentDrugs>> {
    let mut out: Vec<(String, TreatmentDrugs)> = Vec::new();
    for m in meds {
        let (code, by_generic_name) = drug_code(m)?;
        let quantity = dose_per_time(m, "a treatment drug")?;
        let shikibetsu = shikibetsu_ext(m)?;
        let key = match m
            .get("groupIdentifier")
            .and_then(|g| g.get("value"))
            .and_then(Value::as_str)
        {
            Some(g) => format!("group|{g}"),
            None => format!("shikibetsu|{}", shikibetsu.unwrap_or(40)),
        };
        let drug = DrugOrder {
            code,
            quantity,
            by_generic_name,
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.drugs.push(drug),
            None => out.push((
                key,
                TreatmentDrugs {
                    shikibetsu,
                    drugs: vec![drug],
                },
            )),
        }
    }
    Ok(out.into_iter().map(|(_, g)| g).collect())
}

/// The injections of an encounter: MedicationRequests with the same `groupIdentifier` (or,
/// without one, the same 手技 and 回数) are one injection. Per MedicationRequest:
/// `dosageInstruction[0].doseAndRate[0].doseQuantity.value` the quantity per 回,
/// `dosageInstruction[0].timing.repeat.count` the 回数 (default 1), and a coding of the
/// 診療行為 system in `dosageInstruction[0].method` the 手技 (実施料).
fn injections_of(meds: &[&Value]) -> Result<Vec<Injection>> {
    let mut out: Vec<(String, Injection)> = Vec::new();
    for m in meds {
        let (code, by_generic_name) = drug_code(m)?;
        let di = m
            .get("dosageInstruction")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let quantity = dose_per_time(m, "an injection")?;
        let count = match di
            .and_then(|d| d.get("timing"))
            .and_then(|t| t.get("repeat"))
            .and_then(|r| r.get("count"))
        {
            Some(v) => positive_u32(m, "dosageInstruction[0].timing.repeat.count", v)?,
            None => 1,
        };
        let procedure = match di.and_then(|d| d.get("method")) {
            None => None,
            Some(cc) => Some(nine_digits(
                m,
                "dosageInstruction[0].method",
                code_in(Some(cc), SYSTEM_PROCEDURE).ok_or_else(|| {
                    err(
                        m,
                        "dosageInstruction[0].method",
                        format!("the 手技 needs a coding of {SYSTEM_PROCEDURE}"),
                    )
                })?,
            )?),
        };
        let group = m
            .get("groupIdentifier")
            .and_then(|g| g.get("value"))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty());
        let key = match group {
            Some(g) => format!("group|{g}"),
            None => format!("usage|{}|{count}", procedure.as_deref().unwrap_or("")),
        };
        let drug = DrugOrder {
            code,
            quantity,
            by_generic_name,
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, inj)) => {
                if inj.procedure != procedure || inj.count != count {
                    return Err(err(
                        m,
                        "groupIdentifier",
                        "one injection mixes 手技 or 回数",
                    ));
                }
                inj.drugs.push(drug);
            }
            None => out.push((
                key,
                Injection {
                    procedure,
                    count,
                    drugs: vec![drug],
                },
            )),
        }
    }
    Ok(out.into_iter().map(|(_, i)| i).collect())
}

fn med_line(m: &Value) -> Result<(MedLine, DispensingMode)> {
    let (code, by_generic_name) = drug_code(m)?;
    let cat = m.get("category");
    let mode = match code_in(cat, SYSTEM_DISPENSING) {
        None | Some("in_house") => DispensingMode::InHouse,
        Some("out_of_house") => DispensingMode::OutOfHouse,
        Some(c) => return Err(err(m, "category", format!("unknown dispensing '{c}'"))),
    };
    let di = m
        .get("dosageInstruction")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let as_needed = di
        .and_then(|d| d.get("asNeededBoolean"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let kind = match code_in(cat, SYSTEM_RP_KIND) {
        Some("internal") => RpKind::Internal,
        Some("as_needed") => RpKind::AsNeeded,
        Some("external") => RpKind::External,
        Some(c) => return Err(err(m, "category", format!("unknown 剤 kind '{c}'"))),
        None if as_needed => RpKind::AsNeeded,
        None => RpKind::Internal,
    };
    let dr = di
        .and_then(|d| d.get("doseAndRate"))
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let dose = dr
        .and_then(|d| d.get("doseQuantity"))
        .and_then(|q| q.get("value"));
    let daily = dr
        .and_then(|d| d.get("rateRatio"))
        .and_then(|r| r.get("numerator"))
        .and_then(|q| q.get("value"));
    let total = m
        .get("dispenseRequest")
        .and_then(|d| d.get("quantity"))
        .and_then(|q| q.get("value"));
    let (quantity, days) = match kind {
        RpKind::Internal => {
            let q = daily.ok_or_else(|| {
                err(
                    m,
                    "dosageInstruction[0].doseAndRate[0].rateRatio",
                    "内服 needs the daily dose as rateRatio.numerator (per 1 d)",
                )
            })?;
            let d = duration_value(m, &["d", "日"]).ok_or_else(|| {
                err(
                    m,
                    "dispenseRequest.expectedSupplyDuration",
                    "内服 needs the days (unit d)",
                )
            })?;
            (
                decimal_text(m, "doseAndRate[0].rateRatio.numerator.value", q)?,
                positive_u32(m, "dispenseRequest.expectedSupplyDuration.value", &d)?,
            )
        }
        RpKind::AsNeeded => {
            let q = dose.ok_or_else(|| {
                err(
                    m,
                    "dosageInstruction[0].doseAndRate[0].doseQuantity",
                    "頓服 needs the dose per use",
                )
            })?;
            let n = duration_value(m, &["{times}", "回"])
                .or_else(|| {
                    di.and_then(|d| d.get("timing"))
                        .and_then(|t| t.get("repeat"))
                        .and_then(|r| r.get("count"))
                        .cloned()
                })
                .ok_or_else(|| {
                    err(
                        m,
                        "dispenseRequest.expectedSupplyDuration",
                        "頓服 needs the number of doses (unit {times}, or timing.repeat.count)",
                    )
                })?;
            (
                decimal_text(m, "doseAndRate[0].doseQuantity.value", q)?,
                positive_u32(m, "dispenseRequest.expectedSupplyDuration.value", &n)?,
            )
        }
        RpKind::External => {
            let q = total.or(dose).ok_or_else(|| {
                err(
                    m,
                    "dispenseRequest.quantity",
                    "外用 needs the total quantity",
                )
            })?;
            (decimal_text(m, "dispenseRequest.quantity.value", q)?, 1)
        }
    };
    Ok((
        MedLine {
            key: rp_key(m),
            kind,
            days,
            drug: DrugOrder {
                code,
                quantity,
                by_generic_name,
            },
        },
        mode,
    ))
}

fn prescription_of(meds: &[&Value], psychotropic_multi: bool) -> Result<Option<Prescription>> {
    if meds.is_empty() {
        return Ok(None);
    }
    let mut mode = None;
    let mut refill = false;
    // key → index in rps, in order of first appearance
    let mut rps: Vec<(String, Rp)> = Vec::new();
    for m in meds {
        let (line, this_mode) = med_line(m)?;
        match mode {
            None => mode = Some(this_mode),
            Some(x) if x != this_mode => {
                return Err(err(
                    m,
                    "category",
                    "院内処方 and 院外処方 are mixed in one encounter",
                ))
            }
            _ => {}
        }
        refill |= m
            .get("dispenseRequest")
            .and_then(|d| d.get("numberOfRepeatsAllowed"))
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0);
        let key = format!("{:?}|{}|{}", line.kind, line.days, line.key);
        match rps.iter_mut().find(|(k, _)| *k == key) {
            Some((_, rp)) => rp.drugs.push(line.drug),
            None => {
                if line.key.starts_with("group|") {
                    if let Some((_, other)) = rps
                        .iter()
                        .find(|(k, _)| k.ends_with(&format!("|{}", line.key)))
                    {
                        return Err(err(
                            m,
                            "groupIdentifier",
                            format!(
                                "one 剤 mixes kinds or days ({:?} {} vs {:?} {})",
                                other.kind, other.days, line.kind, line.days
                            ),
                        ));
                    }
                }
                rps.push((
                    key,
                    Rp {
                        kind: line.kind,
                        days: line.days,
                        drugs: vec![line.drug],
                    },
                ))
            }
        }
    }
    Ok(Some(Prescription {
        mode: mode.unwrap_or_default(),
        refill,
        psychotropic_multi,
        rps: rps.into_iter().map(|(_, rp)| rp).collect(),
    }))
}

fn diagnoses_of(ix: &Index, enc: &Value) -> Result<Vec<DiagnosisInput>> {
    let mut out = Vec::new();
    for d in enc
        .get("diagnosis")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(r) = reference_of(d, "condition") else {
            continue;
        };
        let cond = ix
            .resolve(r)
            .ok_or_else(|| err(enc, "diagnosis", format!("{r} is not among the resources")))?;
        if codings(cond.get("verificationStatus"))
            .any(|c| c.get("code").and_then(Value::as_str) == Some("entered-in-error"))
        {
            continue;
        }
        let code = code_in(cond.get("code"), SYSTEM_DISEASE)
            .ok_or_else(|| err(cond, "code", format!("no coding of {SYSTEM_DISEASE}")))?;
        let mut modifiers = Vec::new();
        for suffix in [
            EXT_CONDITION_MODIFIER_PREFIX,
            EXT_CONDITION_MODIFIER_POSTFIX,
        ] {
            for e in extensions_ending(cond, suffix) {
                if let Some(m) = code_in(e.get("valueCodeableConcept"), SYSTEM_MODIFIER) {
                    modifiers.push(m.to_string());
                }
            }
        }
        let start = cond
            .get("onsetDateTime")
            .or_else(|| cond.get("recordedDate"))
            .and_then(Value::as_str)
            .ok_or_else(|| err(cond, "onsetDateTime", "the start date is missing"))?;
        let start_date = parse_date(cond, "onsetDateTime", start)?;
        // 転帰: 1 継続, 2 治ゆ, 3 死亡, 4 中止
        let outcome = match codings(cond.get("clinicalStatus"))
            .find_map(|c| c.get("code").and_then(Value::as_str))
        {
            Some("resolved" | "remission") => 2,
            Some("inactive") => 4,
            _ => 1,
        };
        let name = (code == "0000999")
            .then(|| str_at(cond, &["code", "text"]).map(str::to_string))
            .flatten();
        out.push(DiagnosisInput {
            code: code.to_string(),
            modifiers,
            name,
            start_date,
            outcome,
            main: d.get("rank").and_then(Value::as_u64) == Some(1),
        });
    }
    Ok(out)
}
