//! The JP-CLINS submission rules this service enforces itself (jp-clins.md §2, §4, §5, §8),
//! before and in addition to profile validation by `iryo-validator`. Every problem carries the
//! rule key: the official invariant key where the IG has one (R0211, R2152, R9011 …), otherwise a
//! `CLINS-…` key of this service (listed in docs/CLINS.md).

use crate::ids::{self, PatientKey, UnitId};
use serde_json::{json, Value};
use std::collections::HashSet;

/// One problem, with its rule key and bilingual message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `error`, `warning` or `information`.
    pub severity: &'static str,
    /// OperationOutcome issue type code.
    pub code: &'static str,
    pub key: String,
    pub expression: String,
    pub message_ja: String,
    pub message_en: String,
}

impl Issue {
    pub fn error(key: &str, expr: &str, ja: impl Into<String>, en: impl Into<String>) -> Issue {
        Issue {
            severity: "error",
            code: if key.starts_with('R') {
                "invariant"
            } else {
                "business-rule"
            },
            key: key.to_string(),
            expression: expr.to_string(),
            message_ja: ja.into(),
            message_en: en.into(),
        }
    }
}

/// An OperationOutcome listing every issue (key in `details.coding`, Japanese text in
/// `details.text`, English in `diagnostics`).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let list: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v = json!({
                "severity": i.severity,
                "code": i.code,
                "details": {
                    "coding": [{"system": "urn:iryo:clins:rule", "code": i.key}],
                    "text": i.message_ja,
                },
                "diagnostics": i.message_en,
            });
            if !i.expression.is_empty() {
                v["expression"] = json!([i.expression]);
            }
            v
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": list})
}

/// What a submission is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Condition,
    AllergyIntolerance,
    Observation,
    Referral,
    DischargeSummary,
    Checkup,
    /// The 6情報 taken out of a document (never submitted directly): 処方 (MedicationRequest),
    /// Conditions, allergies and lab results.
    DocumentItems,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Condition => "Condition",
            Kind::AllergyIntolerance => "AllergyIntolerance",
            Kind::Observation => "Observation",
            Kind::Referral => "eReferral",
            Kind::DischargeSummary => "eDischargeSummary",
            Kind::Checkup => "eCheckupGeneral",
            Kind::DocumentItems => "DocumentItems",
        }
    }
    pub fn from_code(s: &str) -> Option<Kind> {
        [
            Kind::Condition,
            Kind::AllergyIntolerance,
            Kind::Observation,
            Kind::Referral,
            Kind::DischargeSummary,
            Kind::Checkup,
            Kind::DocumentItems,
        ]
        .into_iter()
        .find(|k| k.code() == s)
        // units stored before documents' Conditions, allergies and labs were extracted
        .or((s == "Prescription").then_some(Kind::DocumentItems))
    }
    /// Allergy and Condition units carry the institution's full list for the patient.
    pub fn full_list(self) -> bool {
        matches!(self, Kind::Condition | Kind::AllergyIntolerance)
    }
}

/// A submission that passed the service's own rules.
#[derive(Debug, Clone)]
pub struct Submission {
    pub kind: Kind,
    pub unit: UnitId,
    pub patient_key: PatientKey,
    /// 紹介先 institution of a referral.
    pub destination: Option<String>,
    /// The 6情報 items found in a document (and its attached documents): MedicationRequests,
    /// Conditions, AllergyIntolerances and lab Observations.
    pub items: Vec<Value>,
    /// The referral carries the patient's agreement (a Consent entry, status active).
    pub referral_consent: bool,
}

const BUNDLE_PROFILES: &[(&str, Kind)] = &[
    (
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS",
        Kind::Condition,
    ),
    (
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral",
        Kind::Referral,
    ),
    (
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary",
        Kind::DischargeSummary,
    ),
    (
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral",
        Kind::Checkup,
    ),
];

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// `v[key]` as a string.
pub fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `v[key]` as a slice (empty when absent or not an array).
pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The institution-number extension value of a resource, if any.
pub fn institution_of(resource: &Value) -> Option<&str> {
    arr(resource, "extension")
        .iter()
        .find(|e| s(e, "url") == Some(ids::INSTITUTION_EXT))
        .and_then(|e| e.get("valueIdentifier"))
        .and_then(|i| s(i, "value"))
}

/// The raw patient key of a Patient (its JP_Insurance_memberID identifiers).
fn member_ids(patient: &Value) -> Vec<&str> {
    arr(patient, "identifier")
        .iter()
        .filter(|i| s(i, "system") == Some(ids::MEMBER_ID_SYSTEM))
        .filter_map(|i| s(i, "value"))
        .collect()
}

/// Check a patient key given on its own (withdraw, consent, views): R1013 when invalid.
#[allow(clippy::result_large_err)] // an Issue is the natural error; it is built once per request
pub fn patient_key(raw: &str, expr: &str) -> Result<PatientKey, Issue> {
    ids::normalize_patient_key(raw).map_err(|(ja, en)| Issue::error("R1013", expr, ja, en))
}

/// Apply the service's own rules to a submitted Bundle from `institution`.
pub fn check_submission(bundle: &Value, institution: &str) -> Result<Submission, Vec<Issue>> {
    let mut issues = vec![];
    if s(bundle, "resourceType") != Some("Bundle") {
        return Err(vec![Issue::error(
            "CLINS-NOT-BUNDLE",
            "",
            "登録できるのは Bundle だけです",
            "only a Bundle can be registered",
        )]);
    }
    let meta = bundle.get("meta").cloned().unwrap_or(Value::Null);
    let kind = arr(&meta, "profile")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|p| {
            BUNDLE_PROFILES
                .iter()
                .find(|(u, _)| *u == strip_version(p))
                .map(|(_, k)| *k)
        });
    let Some(mut kind) = kind else {
        return Err(vec![Issue::error(
            "R0213",
            "Bundle.meta.profile",
            "Bundle.meta.profile に JP_Bundle_CLINS または文書Bundle(eReferral/eDischargeSummary/eCheckupGeneral)のプロファイルが必要です",
            "Bundle.meta.profile must name JP_Bundle_CLINS or a document Bundle profile (eReferral, eDischargeSummary, eCheckupGeneral)",
        )]);
    };
    let expected_type = if kind == Kind::Condition {
        "collection"
    } else {
        "document"
    };
    if s(bundle, "type") != Some(expected_type) {
        issues.push(Issue::error(
            "CLINS-BUNDLE-TYPE",
            "Bundle.type",
            format!("Bundle.type は {expected_type} でなければなりません"),
            format!("Bundle.type must be {expected_type}"),
        ));
    }

    // Identifier (R02151, R2152) and its institution.
    let ident = bundle.get("identifier");
    let id_value = ident
        .filter(|i| s(i, "system") == Some(ids::BUNDLE_ID_SYSTEM))
        .and_then(|i| s(i, "value"));
    let unit = match (ident, id_value) {
        (Some(i), None) if s(i, "system") != Some(ids::BUNDLE_ID_SYSTEM) => {
            issues.push(Issue::error(
                "R02151",
                "Bundle.identifier.system",
                format!("Bundle.identifier.system は {} です", ids::BUNDLE_ID_SYSTEM),
                format!("Bundle.identifier.system must be {}", ids::BUNDLE_ID_SYSTEM),
            ));
            None
        }
        (_, Some(v)) => match ids::parse_unit_id(v) {
            Some(u) => Some(u),
            None => {
                issues.push(Issue::error(
                    "R2152",
                    "Bundle.identifier.value",
                    format!("Bundle.identifier.value '{v}' は「医療機関番号10桁^西暦4桁^36文字以内の英数字・ハイフン」ではありません"),
                    format!("Bundle.identifier.value '{v}' is not 'institution(10)^year(4)^id(1-36 of A-Za-z0-9-)'"),
                ));
                None
            }
        },
        _ => {
            issues.push(Issue::error(
                "R2152",
                "Bundle.identifier",
                "Bundle.identifier(報告単位の識別子)がありません",
                "Bundle.identifier (the report-unit identifier) is missing",
            ));
            None
        }
    };
    if let Some(u) = &unit {
        if u.institution != institution {
            issues.push(Issue::error(
                "CLINS-INSTITUTION-MISMATCH",
                "Bundle.identifier.value",
                format!(
                    "識別子の医療機関番号 {} が送信元 {} と一致しません",
                    u.institution, institution
                ),
                format!(
                    "identifier institution {} differs from the sender {}",
                    u.institution, institution
                ),
            ));
        }
    }

    // Entries: fullUrl present and unique, no request/response/search.
    let entries = arr(bundle, "entry");
    let mut seen = HashSet::new();
    for (n, e) in entries.iter().enumerate() {
        let expr = format!("Bundle.entry[{n}]");
        match s(e, "fullUrl") {
            None => issues.push(Issue::error(
                "CLINS-FULLURL",
                &expr,
                "entry.fullUrl がありません",
                "entry.fullUrl is missing",
            )),
            Some(u) if !seen.insert(u) => issues.push(Issue::error(
                "CLINS-DUP-FULLURL",
                &format!("{expr}.fullUrl"),
                format!("fullUrl '{u}' が重複しています"),
                format!("duplicate fullUrl '{u}'"),
            )),
            _ => {}
        }
        if ["search", "request", "response"]
            .iter()
            .any(|k| e.get(*k).is_some())
        {
            issues.push(Issue::error(
                "CLINS-ENTRY-ELEMENTS",
                &expr,
                "entry に search/request/response は使えません",
                "entry must not carry search, request or response",
            ));
        }
        if !e.get("resource").is_some_and(Value::is_object) {
            issues.push(Issue::error(
                "CLINS-ENTRY-RESOURCE",
                &expr,
                "entry.resource がありません",
                "entry.resource is missing",
            ));
        }
    }
    let res = |e: &'_ Value| -> Option<String> {
        e.get("resource")
            .and_then(|r| s(r, "resourceType"))
            .map(str::to_string)
    };

    // The Patient.
    let patient_pos = if kind == Kind::Condition {
        if entries.first().and_then(res).as_deref() != Some("Patient") {
            issues.push(Issue::error(
                "R0211",
                "Bundle.entry[0]",
                "最初のentryはPatientでなければならない",
                "the first entry must be the Patient",
            ));
            None
        } else {
            Some(0)
        }
    } else {
        if entries.first().and_then(res).as_deref() != Some("Composition") {
            issues.push(Issue::error(
                "CLINS-DOC-COMPOSITION",
                "Bundle.entry[0]",
                "文書Bundleの最初のentryはCompositionでなければなりません",
                "the first entry of a document Bundle must be the Composition",
            ));
        }
        let p = entries
            .iter()
            .position(|e| res(e).as_deref() == Some("Patient"));
        if p.is_none() {
            issues.push(Issue::error(
                "CLINS-DOC-PATIENT",
                "Bundle.entry",
                "文書BundleにPatientがありません",
                "the document Bundle has no Patient",
            ));
        }
        p
    };
    let mut key = None;
    if let Some(p) = patient_pos {
        let patient = &entries[p]["resource"];
        let expr = format!("Bundle.entry[{p}].resource.identifier");
        match member_ids(patient).as_slice() {
            [one] => match patient_key(one, &expr) {
                Ok(k) => key = Some(k),
                Err(i) => issues.push(i),
            },
            _ => issues.push(Issue::error(
                "R1012",
                &expr,
                "Patient.identifier に JP_Insurance_memberID (被保険者個人識別子) がちょうど1つ必要です",
                "the Patient needs exactly one JP_Insurance_memberID identifier",
            )),
        }
    }

    // 5情報: one resource type per Bundle, as tagged; institution number on every item.
    if kind == Kind::Condition {
        let tags: Vec<&str> = arr(&meta, "tag")
            .iter()
            .filter(|t| s(t, "system") == Some(ids::RESOURCE_TYPE_TAG))
            .filter_map(|t| s(t, "code"))
            .collect();
        let tagged = match tags.as_slice() {
            [] => {
                issues.push(Issue::error(
                    "R02141",
                    "Bundle.meta.tag",
                    "Bundle.meta.tagに、収納するresourceTypeを記述しなければならない",
                    "Bundle.meta.tag must name the resource type carried",
                ));
                None
            }
            [t] => match Kind::from_code(t) {
                Some(k @ (Kind::Condition | Kind::AllergyIntolerance | Kind::Observation)) => {
                    Some(k)
                }
                _ => {
                    issues.push(Issue::error(
                        "R02142",
                        "Bundle.meta.tag",
                        format!("resourceType タグ '{t}' は AllergyIntolerance, Observation, Condition のいずれかであること"),
                        format!("resource type tag '{t}' must be AllergyIntolerance, Observation or Condition"),
                    ));
                    None
                }
            },
            _ => {
                issues.push(Issue::error(
                    "R02142",
                    "Bundle.meta.tag",
                    "resourceType タグは1つだけです",
                    "exactly one resource type tag is allowed",
                ));
                None
            }
        };
        if let Some(t) = tagged {
            kind = t;
            let mut count = 0;
            for (n, e) in entries.iter().enumerate().skip(1) {
                let Some(ty) = res(e) else { continue };
                let expr = format!("Bundle.entry[{n}].resource");
                if ty != t.code() {
                    issues.push(Issue::error(
                        "CLINS-MIXED-TYPES",
                        &expr,
                        format!(
                            "1つのBundleに混在できないリソース種別 {ty} があります (タグは {})",
                            t.code()
                        ),
                        format!("resource type {ty} mixed into a {} Bundle", t.code()),
                    ));
                    continue;
                }
                count += 1;
                check_item(&e["resource"], t, institution, &expr, &mut issues);
            }
            if count == 0 {
                issues.push(Issue::error(
                    "R02143",
                    "Bundle.entry",
                    format!("{} リソースが1つ以上必要です", t.code()),
                    format!("at least one {} resource is required", t.code()),
                ));
            }
        }
    }

    let (destination, referral_consent) = if kind == Kind::Referral {
        let d = referral_destination(entries);
        if d.is_none() {
            issues.push(Issue::error(
                "CLINS-REFERRAL-DESTINATION",
                "Bundle.entry[0].resource.section",
                "紹介先情報(section 910)に有効な医療機関番号を持つOrganizationがありません",
                "the 紹介先 section (910) names no Organization with a valid institution number",
            ));
        }
        let consent = entries.iter().any(|e| {
            res(e).as_deref() == Some("Consent") && s(&e["resource"], "status") == Some("active")
        });
        (d, consent)
    } else {
        (None, false)
    };
    let mut items = vec![];
    match kind {
        Kind::Referral | Kind::DischargeSummary => collect_items(entries, &mut items, 0),
        Kind::Checkup => checkup_lab_items(entries, &mut items),
        _ => {}
    }

    match (issues.is_empty(), unit, key) {
        (true, Some(unit), Some(patient_key)) => Ok(Submission {
            kind,
            unit,
            patient_key,
            destination,
            items,
            referral_consent,
        }),
        _ => Err(issues),
    }
}

/// Rules on one 5情報 item (R9011, R9012, R9013C, R6021, R6081).
fn check_item(r: &Value, kind: Kind, institution: &str, expr: &str, issues: &mut Vec<Issue>) {
    match institution_of(r) {
        None => issues.push(Issue::error(
            "R9011",
            expr,
            "Patient以外のリソースには医療機関番号拡張(JP_eCS_InstitutionNumber)が必須です",
            "every non-Patient resource needs the JP_eCS_InstitutionNumber extension",
        )),
        Some(n) if !ids::is_institution_number(n) => issues.push(Issue::error(
            "R9012",
            expr,
            format!("医療機関番号 '{n}' は10桁の保険医療機関番号ではありません"),
            format!("institution number '{n}' is not a valid 10-digit number"),
        )),
        Some(n) if n != institution => issues.push(Issue::error(
            "CLINS-INSTITUTION-MISMATCH",
            expr,
            format!("医療機関番号 {n} が送信元 {institution} と一致しません"),
            format!("institution number {n} differs from the sender {institution}"),
        )),
        _ => {}
    }
    match kind {
        Kind::Condition if r.get("onsetDateTime").is_none() => issues.push(Issue::error(
            "R9013C",
            expr,
            "Conditionには onsetDateTime が必須です",
            "every Condition needs onsetDateTime",
        )),
        Kind::Observation => {
            let local = r
                .pointer("/code/coding")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        s(c, "system")
                            == Some("http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_LocalCode_CS")
                    })
                });
            if !local {
                issues.push(Issue::error(
                    "R6021",
                    expr,
                    "observation.code.codingには、ローカルコード記述が必須である",
                    "Observation.code.coding needs the local lab code",
                ));
            }
            if r.get("hasMember").is_some() {
                issues.push(Issue::error(
                    "R6081",
                    expr,
                    "hasMember要素は5情報として送信される場合は使用できない",
                    "hasMember is not allowed in 5情報",
                ));
            }
        }
        _ => {}
    }
}

/// The 紹介先 institution: Organization referenced from Composition section 910.
fn referral_destination(entries: &[Value]) -> Option<String> {
    let comp = entries.first()?.get("resource")?;
    let refs: Vec<&str> = arr(comp, "section")
        .iter()
        .filter(|sec| sec.pointer("/code/coding/0/code").and_then(Value::as_str) == Some("910"))
        .flat_map(|sec| arr(sec, "entry"))
        .filter_map(|e| s(e, "reference"))
        .collect();
    entries
        .iter()
        .filter(|e| s(e, "fullUrl").is_some_and(|u| refs.contains(&u)))
        .map(|e| &e["resource"])
        .filter(|r| s(r, "resourceType") == Some("Organization"))
        .flat_map(|r| arr(r, "identifier"))
        .find(|i| s(i, "system") == Some(ids::INSTITUTION_SYSTEM))
        .and_then(|i| s(i, "value"))
        .filter(|v| ids::is_institution_number(v))
        .map(str::to_string)
}

/// True for an Observation that is a lab result (category `laboratory` or a LabResult profile).
fn is_lab_observation(r: &Value) -> bool {
    let category = arr(r, "category")
        .iter()
        .flat_map(|c| arr(c, "coding"))
        .any(|c| s(c, "code") == Some("laboratory"));
    let profile = r
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .any(|p| p.contains("LabResult"))
        });
    category || profile
}

/// The 6情報 items of a referral or discharge summary (jp-clins.md §1: 処方 is extracted from
/// the documents; CC core6spec.md: 2文書 contents matching 5情報 use the same profiles because
/// CLINS extracts them): MedicationRequests, Conditions, AllergyIntolerances and lab
/// Observations, including those of documents attached as Bundle entries.
fn collect_items(entries: &[Value], out: &mut Vec<Value>, depth: usize) {
    for e in entries {
        let r = &e["resource"];
        match s(r, "resourceType") {
            Some("MedicationRequest" | "Condition" | "AllergyIntolerance") => out.push(r.clone()),
            Some("Observation") if is_lab_observation(r) => out.push(r.clone()),
            Some("Bundle") if depth < 2 => collect_items(arr(r, "entry"), out, depth + 1),
            _ => {}
        }
    }
}

/// Section codes of the 検査 (test result) sections of a 健診結果報告書 (jp-clins.md §4.3):
/// 特定健診, 広域連合, 事業者健診, 学校職員, その他, 保険者実施その他, 汎用.
const CHECKUP_LAB_SECTIONS: &[&str] = &[
    "01011", "01021", "01031", "01041", "01071", "01081", "01910",
];

/// The lab results of a checkup report: Observations referenced from its 検査 sections
/// (問診 answers are not lab results), except those without a result (`cancelled`).
fn checkup_lab_items(entries: &[Value], out: &mut Vec<Value>) {
    fn walk<'a>(secs: &'a [Value], refs: &mut Vec<&'a str>) {
        for sec in secs {
            let code = sec.pointer("/code/coding/0/code").and_then(Value::as_str);
            if code.is_some_and(|c| CHECKUP_LAB_SECTIONS.contains(&c)) {
                refs.extend(arr(sec, "entry").iter().filter_map(|e| s(e, "reference")));
            }
            walk(arr(sec, "section"), refs);
        }
    }
    let Some(comp) = entries.first().map(|e| &e["resource"]) else {
        return;
    };
    let mut refs = vec![];
    walk(arr(comp, "section"), &mut refs);
    out.extend(
        entries
            .iter()
            .filter(|e| s(e, "fullUrl").is_some_and(|u| refs.contains(&u)))
            .map(|e| &e["resource"])
            .filter(|r| s(r, "resourceType") == Some("Observation"))
            .filter(|r| s(r, "status") != Some("cancelled"))
            .cloned(),
    );
}
