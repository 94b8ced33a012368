//! Building JP_Bundle_CLINS report units (jp-clins.md §2, §3, §5) from a clinic tenant's own
//! records: the Patient first (with its 被保険者個人識別子 and 施設内患者ID), then the items of
//! one type, each with the institution number, the department, a resource-instance identifier
//! and its Encounter / Practitioner / Specimen / order `contained` (only the Patient is
//! referenced across entries, by its `urn:uuid` fullUrl).

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Utc};
use iryo_clins::checks::{arr, s};
use iryo_clins::ids;
use iryo_db::{SearchRequest, Store};
use iryo_rest_api::FhirError;
use iryo_search::query::{parse_query, Handling};
use serde_json::{json, Map, Value};

const BUNDLE_PROFILE: &str =
    "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS|1.10.0";
const PATIENT_PROFILE: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS";
const DEPARTMENT_EXT: &str =
    "http://jpfhir.jp/fhir/eCS/Extension/StructureDefinition/JP_eCS_Department";
const DEPARTMENT_SYSTEM: &str = "http://jami.jp/SS-MIX2/CodeSystem/ClinicalDepartment";
const INSTANCE_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier";
const LOCAL_PATIENT_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.1";
const LAB_CATEGORY_SYSTEM: &str =
    "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS";
const COVERAGE_EXT: &str = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_";
const INSURER_SYSTEM: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber";
/// Conditions and allergies ended more than this long ago are not in the list (§2).
const FIVE_YEARS_DAYS: i64 = 5 * 365 + 1;

/// The three 5情報 resource types a JP_Bundle_CLINS may carry (R02142).
pub const TYPES: [&str; 3] = ["Condition", "AllergyIntolerance", "Observation"];

fn profile_of(ty: &str) -> &'static str {
    match ty {
        "Condition" => "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Condition_eCS",
        "AllergyIntolerance" => {
            "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_AllergyIntolerance_eCS"
        }
        _ => "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_LabResult_eCS",
    }
}

/// One report unit ready to register.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Condition, AllergyIntolerance or Observation.
    pub kind: &'static str,
    /// `医療機関番号^年^ID`.
    pub identifier: String,
    pub bundle: Value,
    pub items: usize,
}

/// What a submission sends.
#[derive(Debug, Clone)]
pub struct Built {
    pub institution: String,
    pub patient_key: String,
    pub units: Vec<Unit>,
}

/// A 422 refusal with the rule key in the message.
pub fn refuse(key: &str, ja: impl Into<String>, en: impl Into<String>) -> FhirError {
    FhirError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "business-rule",
        format!("[{key}] {}", ja.into()),
        format!("[{key}] {}", en.into()),
    )
}

fn jst(t: DateTime<Utc>) -> DateTime<FixedOffset> {
    t.with_timezone(&FixedOffset::east_opt(9 * 3600).expect("JST"))
}

/// The tenant's records.
pub struct Records<'a> {
    pub store: &'a Store,
    pub tenant: i64,
}

impl Records<'_> {
    pub async fn read(&self, ty: &str, id: &str) -> Result<Option<Value>, FhirError> {
        let r = self.store.read(self.tenant, ty, id).await?;
        Ok(r.filter(|r| !r.deleted)
            .and_then(|r| serde_json::from_slice(r.json.as_deref()?).ok()))
    }

    /// The Patient `pid` (404 when the tenant has none).
    pub async fn patient(&self, pid: &str) -> Result<Value, FhirError> {
        self.read("Patient", pid)
            .await?
            .ok_or_else(|| FhirError::not_found("Patient", pid))
    }

    /// Every match of a search (all pages).
    pub async fn search(&self, ty: &str, qs: &str) -> Result<Vec<Value>, FhirError> {
        let query = parse_query(iryo_search::model(), Some(ty), qs, Handling::Strict)?;
        let mut req = SearchRequest {
            query,
            page_token: None,
            base_url: "urn:iryo:clins-submit".into(),
        };
        let mut out = vec![];
        loop {
            let page = self.store.search(self.tenant, req.clone()).await?;
            out.extend(
                page.matches
                    .iter()
                    .filter_map(|r| serde_json::from_slice(r.json.as_deref()?).ok()),
            );
            if !page.has_next || out.len() >= 50_000 {
                break;
            }
            req.page_token = page.token.clone();
            req.query.offset = page.offset + page.count;
        }
        Ok(out)
    }

    /// A relative reference `Type/id` resolved in the tenant.
    async fn resolve(&self, reference: &str) -> Result<Option<(String, Value)>, FhirError> {
        let mut parts = reference.rsplitn(3, '/');
        let (Some(id), Some(ty)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        if !ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            return Ok(None);
        }
        Ok(self.read(ty, id).await?.map(|r| (ty.to_string(), r)))
    }
}

/// The tenant's 医療機関番号: the tenant setting `clins_institution`, otherwise the one
/// institution number on the tenant's Organizations.
pub async fn institution(rec: &Records<'_>, settings: &Value) -> Result<String, FhirError> {
    if let Some(n) = s(settings, "clins_institution") {
        if ids::is_institution_number(n) {
            return Ok(n.to_string());
        }
        return Err(refuse(
            "R9012",
            format!("テナント設定 clins_institution '{n}' は10桁の医療機関番号ではありません"),
            format!("tenant setting clins_institution '{n}' is not a 10-digit institution number"),
        ));
    }
    let orgs = rec
        .search(
            "Organization",
            &format!("identifier={}|&_count=100", ids::INSTITUTION_SYSTEM),
        )
        .await?;
    let mut numbers: Vec<String> = orgs
        .iter()
        .flat_map(|o| arr(o, "identifier"))
        .filter(|i| s(i, "system") == Some(ids::INSTITUTION_SYSTEM))
        .filter_map(|i| s(i, "value"))
        .filter(|v| ids::is_institution_number(v))
        .map(str::to_string)
        .collect();
    numbers.sort();
    numbers.dedup();
    match numbers.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(refuse(
            "CLINS-SUBMIT-INSTITUTION",
            "医療機関番号がわかりません: テナント設定 clins_institution (iryo clins bind --tenant) か、医療機関番号を持つ Organization を登録してください",
            "the institution number is unknown: set clins_institution (iryo clins bind --tenant) or store an Organization with the institution number",
        )),
        many => Err(refuse(
            "CLINS-SUBMIT-INSTITUTION",
            format!("Organization に複数の医療機関番号 ({}) があります: テナント設定 clins_institution で指定してください", many.join(", ")),
            format!("several institution numbers on Organizations ({}): set clins_institution", many.join(", ")),
        )),
    }
}

/// The patient key (§5): the Patient's JP_Insurance_memberID identifier, otherwise built
/// from an active Coverage (保険者番号 of the payor, 記号/番号/枝番 extensions).
pub async fn patient_key(
    rec: &Records<'_>,
    patient: &Value,
    pid: &str,
) -> Result<String, FhirError> {
    let own: Vec<&str> = arr(patient, "identifier")
        .iter()
        .filter(|i| s(i, "system") == Some(ids::MEMBER_ID_SYSTEM))
        .filter_map(|i| s(i, "value"))
        .collect();
    let mut candidates: Vec<String> = own.iter().map(|v| v.to_string()).collect();
    if candidates.is_empty() {
        let coverages = rec
            .search(
                "Coverage",
                &format!("beneficiary=Patient/{pid}&status=active&_count=100"),
            )
            .await?;
        for c in &coverages {
            if let Some(k) = key_of_coverage(rec, c).await? {
                candidates.push(k);
            }
        }
    }
    let mut last_error = None;
    for c in &candidates {
        match ids::normalize_patient_key(c) {
            Ok(k) => return Ok(k.as_str().to_string()),
            Err((ja, en)) => last_error = Some((ja, en)),
        }
    }
    Err(match last_error {
        Some((ja, en)) => refuse("R1013", ja, en),
        None => refuse(
            "R1012",
            "被保険者個人識別子がわかりません: Patient.identifier (JP_Insurance_memberID) か、有効な Coverage (保険者番号・記号・番号・枝番) を登録してください",
            "no patient key: give the Patient a JP_Insurance_memberID identifier or an active Coverage (insurer, symbol, number, branch)",
        ),
    })
}

async fn key_of_coverage(rec: &Records<'_>, c: &Value) -> Result<Option<String>, FhirError> {
    let ext = |name: &str| {
        arr(c, "extension")
            .iter()
            .find(|e| s(e, "url") == Some(&format!("{COVERAGE_EXT}{name}")))
            .and_then(|e| s(e, "valueString"))
            .unwrap_or("")
            .to_string()
    };
    let mut insurer = None;
    for p in arr(c, "payor") {
        if let Some(i) = p
            .pointer("/identifier")
            .filter(|i| s(i, "system") == Some(INSURER_SYSTEM))
            .and_then(|i| s(i, "value"))
        {
            insurer = Some(i.to_string());
            break;
        }
        if let Some(r) = s(p, "reference") {
            if let Some((_, org)) = rec.resolve(r).await? {
                insurer = arr(&org, "identifier")
                    .iter()
                    .find(|i| s(i, "system") == Some(INSURER_SYSTEM))
                    .and_then(|i| s(i, "value"))
                    .map(str::to_string);
                if insurer.is_some() {
                    break;
                }
            }
        }
    }
    let number = ext("InsuredPersonNumber");
    Ok(insurer.filter(|_| !number.is_empty()).map(|ins| {
        format!(
            "{ins}:{}:{number}:{}",
            ext("InsuredPersonSymbol"),
            ext("InsuredPersonSubNumber")
        )
    }))
}

fn institution_ext(inst: &str) -> Value {
    json!({"url": ids::INSTITUTION_EXT, "valueIdentifier": {"system": ids::INSTITUTION_SYSTEM, "value": inst}})
}

/// The Patient entry: demographics of the clinic's Patient, its 施設内患者ID (R1010) and the
/// one JP_Insurance_memberID (R1012).
fn clins_patient(p: &Value, pid: &str, inst: &str, key: &str) -> Value {
    let mut out = json!({
        "resourceType": "Patient",
        "meta": {
            "lastUpdated": p.pointer("/meta/lastUpdated").cloned().unwrap_or(Value::Null),
            "profile": [PATIENT_PROFILE],
        },
        "extension": [institution_ext(inst)],
        "identifier": [
            {"system": format!("{LOCAL_PATIENT_SYSTEM}{inst}"), "value": pid},
            {"system": ids::MEMBER_ID_SYSTEM, "value": key},
        ],
    });
    for k in ["name", "telecom", "gender", "birthDate", "address"] {
        if let Some(v) = p.get(k) {
            out[k] = v.clone();
        }
    }
    if out["meta"]["lastUpdated"].is_null() {
        out["meta"].as_object_mut().map(|m| m.remove("lastUpdated"));
    }
    out
}

/// Remove every Reference that `keep` refuses (and what becomes empty); true when `v` is
/// left empty.
fn strip_refs(v: &mut Value, keep: &dyn Fn(&str) -> bool) -> bool {
    let is_dropped_ref = |x: &Value| {
        x.get("reference")
            .and_then(Value::as_str)
            .is_some_and(|r| !keep(r))
    };
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child = m.get_mut(&k).expect("key");
                if is_dropped_ref(child) || strip_refs(child, keep) {
                    m.remove(&k);
                }
            }
            m.is_empty()
        }
        Value::Array(a) => {
            a.retain_mut(|x| !(is_dropped_ref(x) || strip_refs(x, keep)));
            a.is_empty()
        }
        _ => false,
    }
}

/// An item as JP-CLINS wants it (§3): profile, resource-instance identifier, institution and
/// department extensions, subject → the Bundle's Patient, Encounter / Practitioner /
/// Specimen / order contained (`#id`), every other outside reference removed.
async fn clins_item(
    rec: &Records<'_>,
    r: &Value,
    ty: &str,
    inst: &str,
    patient_url: &str,
    settings: &Value,
) -> Result<Value, FhirError> {
    let id = s(r, "id").unwrap_or("");
    let mut item = r.clone();
    let obj = item.as_object_mut().expect("resource");
    for k in ["id", "meta", "text", "contained"] {
        obj.remove(k);
    }
    let tags: Vec<Value> = r
        .pointer("/meta/tag")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| s(t, "system") == Some(ids::INDICATION_SYSTEM))
        .cloned()
        .collect();
    let mut meta = json!({"profile": [profile_of(ty)]});
    if let Some(lu) = r.pointer("/meta/lastUpdated") {
        meta["lastUpdated"] = lu.clone();
    }
    if !tags.is_empty() {
        meta["tag"] = Value::Array(tags);
    }
    let mut identifiers: Vec<Value> = arr(r, "identifier")
        .iter()
        .filter(|i| s(i, "system") == Some(INSTANCE_SYSTEM))
        .cloned()
        .collect();
    if identifiers.is_empty() {
        identifiers.push(json!({"system": INSTANCE_SYSTEM, "value": format!("{inst}-{ty}-{id}")}));
    }
    // the resources it points at, contained
    let mut contained: Vec<Value> = vec![];
    let mut seen: Vec<(String, String)> = vec![];
    let mut department = None;
    for field in [
        "encounter",
        "recorder",
        "asserter",
        "specimen",
        "performer",
        "basedOn",
    ] {
        let targets: Vec<&mut Value> = match item.get_mut(field) {
            Some(Value::Array(a)) => a.iter_mut().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => continue,
        };
        for t in targets {
            let Some(reference) = t
                .get("reference")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                continue;
            };
            if reference.starts_with('#') {
                continue;
            }
            let local = match seen.iter().find(|(r, _)| *r == reference) {
                Some((_, l)) => Some(l.clone()),
                None => match rec.resolve(&reference).await? {
                    Some((rty, mut res)) => {
                        let local = format!("{}{}", rty.to_lowercase(), contained.len() + 1);
                        if rty == "Encounter" && department.is_none() {
                            department = arr(&res, "serviceType")
                                .first()
                                .or_else(|| res.get("serviceType"))
                                .filter(|st| {
                                    arr(st, "coding")
                                        .iter()
                                        .any(|c| s(c, "system") == Some(DEPARTMENT_SYSTEM))
                                })
                                .cloned();
                        }
                        let o = res.as_object_mut().expect("resource");
                        for k in ["meta", "text", "contained"] {
                            o.remove(k);
                        }
                        o.insert("id".into(), json!(local));
                        o.insert(
                            "meta".into(),
                            json!({"profile": [format!("http://jpfhir.jp/fhir/core/StructureDefinition/JP_{rty}")]}),
                        );
                        strip_refs(&mut res, &|_| false);
                        contained.push(res);
                        seen.push((reference.clone(), local.clone()));
                        Some(local)
                    }
                    None => None,
                },
            };
            if let Some(l) = local {
                t["reference"] = json!(format!("#{l}"));
            }
        }
    }
    for k in ["subject", "patient"] {
        if item.get(k).is_some() {
            item[k] = json!({"reference": patient_url});
        }
    }
    strip_refs(&mut item, &|r| r.starts_with('#') || r == patient_url);
    // institution number (R9011) and department (R9014C/O)
    let mut exts: Vec<Value> = arr(&item, "extension")
        .iter()
        .filter(|e| s(e, "url") != Some(ids::INSTITUTION_EXT))
        .cloned()
        .collect();
    exts.insert(0, institution_ext(inst));
    if !exts.iter().any(|e| s(e, "url") == Some(DEPARTMENT_EXT)) {
        let dept = department.or_else(|| settings.get("clins_department").cloned());
        if let Some(d) = dept.filter(Value::is_object) {
            exts.push(json!({"url": DEPARTMENT_EXT, "valueCodeableConcept": d}));
        }
    }
    if ty == "Observation" {
        // one category, in the JP Core system (JP_Observation_LabResult_eCS)
        item["category"] =
            json!([{"coding": [{"system": LAB_CATEGORY_SYSTEM, "code": "laboratory"}]}]);
    }
    let mut out = Map::new();
    out.insert("resourceType".into(), json!(ty));
    out.insert("meta".into(), meta);
    if !contained.is_empty() {
        out.insert("contained".into(), Value::Array(contained));
    }
    out.insert("extension".into(), Value::Array(exts));
    out.insert("identifier".into(), Value::Array(identifiers));
    for (k, v) in item.as_object().expect("resource") {
        if !matches!(k.as_str(), "resourceType" | "extension" | "identifier") {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

fn date_of(s: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

/// Items the 5情報 list carries: not entered-in-error or refuted, and ended (abatement) within
/// 5 years or not ended (§2 "Report unit").
fn in_list(r: &Value, today: chrono::NaiveDate) -> bool {
    let vs = r
        .pointer("/verificationStatus/coding/0/code")
        .and_then(Value::as_str);
    if matches!(vs, Some("entered-in-error" | "refuted")) {
        return false;
    }
    match s(r, "abatementDateTime").and_then(date_of) {
        Some(end) => (today - end).num_days() <= FIVE_YEARS_DAYS,
        None => true,
    }
}

/// Lab results sent: final results, not panels (R6081: no hasMember).
fn is_sent_lab(r: &Value) -> bool {
    !matches!(
        s(r, "status"),
        Some("entered-in-error" | "registered" | "preliminary")
    ) && r.get("hasMember").is_none()
}

/// The report an Observation belongs to: its encounter, otherwise its day.
fn report_key(r: &Value) -> String {
    if let Some(e) = r.pointer("/encounter/reference").and_then(Value::as_str) {
        return format!("enc:{e}");
    }
    let day = s(r, "effectiveDateTime")
        .or_else(|| s(r, "issued"))
        .and_then(|d| d.get(..10))
        .unwrap_or("undated");
    format!("day:{day}")
}

fn report_year(items: &[&Value], now_year: i32) -> i32 {
    items
        .iter()
        .filter_map(|r| s(r, "effectiveDateTime").or_else(|| s(r, "issued")))
        .filter_map(date_of)
        .map(|d| d.year())
        .max()
        .filter(|y| (2020..=2039).contains(y))
        .unwrap_or(now_year)
}

fn fresh_urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

#[allow(clippy::too_many_arguments)]
async fn unit(
    rec: &Records<'_>,
    kind: &'static str,
    local: String,
    year: i32,
    inst: &str,
    patient: &Value,
    items: &[&Value],
    settings: &Value,
    now: DateTime<Utc>,
) -> Result<Unit, FhirError> {
    let patient_url = fresh_urn();
    let mut entries = vec![json!({"fullUrl": patient_url, "resource": patient})];
    for r in items {
        let item = clins_item(rec, r, kind, inst, &patient_url, settings).await?;
        entries.push(json!({"fullUrl": fresh_urn(), "resource": item}));
    }
    let stamp = jst(now).to_rfc3339_opts(SecondsFormat::Secs, false);
    let identifier = format!("{inst}^{year}^{local}");
    let bundle = json!({
        "resourceType": "Bundle",
        "meta": {
            "lastUpdated": stamp,
            "profile": [BUNDLE_PROFILE],
            "tag": [{"system": ids::RESOURCE_TYPE_TAG, "code": kind}],
        },
        "identifier": {"system": ids::BUNDLE_ID_SYSTEM, "value": identifier},
        "type": "collection",
        "timestamp": stamp,
        "entry": entries,
    });
    Ok(Unit {
        kind,
        identifier,
        bundle,
        items: items.len(),
    })
}

/// Build the report units of Patient `pid` of the tenant for `types` (full lists of
/// Conditions and allergies, one unit per lab report).
pub async fn build(
    rec: &Records<'_>,
    tenant_name: &str,
    settings: &Value,
    pid: &str,
    types: &[&str],
    now: DateTime<Utc>,
) -> Result<Built, FhirError> {
    let patient = rec.patient(pid).await?;
    let inst = institution(rec, settings).await?;
    let key = patient_key(rec, &patient, pid).await?;
    let p = clins_patient(&patient, pid, &inst, &key);
    let today = jst(now).date_naive();
    let year = jst(now).year();
    let seed = |prefix: &str, extra: &str| {
        format!(
            "{prefix}-{}",
            ids::hash_hex(&format!("{tenant_name}/{pid}/{extra}"), 32)
        )
    };
    let mut units = vec![];
    for ty in TYPES.iter().filter(|t| types.contains(t)) {
        let param = if *ty == "AllergyIntolerance" {
            "patient"
        } else {
            "subject"
        };
        match *ty {
            "Condition" | "AllergyIntolerance" => {
                let all = rec
                    .search(ty, &format!("{param}=Patient/{pid}&_count=1000"))
                    .await?;
                let items: Vec<&Value> = all.iter().filter(|r| in_list(r, today)).collect();
                if !items.is_empty() {
                    let local = seed(if *ty == "Condition" { "C" } else { "A" }, ty);
                    units.push(unit(rec, ty, local, year, &inst, &p, &items, settings, now).await?);
                }
            }
            _ => {
                let all = rec
                    .search(
                        ty,
                        &format!("{param}=Patient/{pid}&category=laboratory&_count=1000"),
                    )
                    .await?;
                let mut reports: Vec<(String, Vec<&Value>)> = vec![];
                for r in all.iter().filter(|r| is_sent_lab(r)) {
                    let k = report_key(r);
                    match reports.iter_mut().find(|(key, _)| *key == k) {
                        Some((_, v)) => v.push(r),
                        None => reports.push((k, vec![r])),
                    }
                }
                reports.sort_by(|a, b| a.0.cmp(&b.0));
                for (k, items) in reports {
                    let y = report_year(&items, year);
                    units.push(
                        unit(rec, ty, seed("O", &k), y, &inst, &p, &items, settings, now).await?,
                    );
                }
            }
        }
    }
    Ok(Built {
        institution: inst,
        patient_key: key,
        units,
    })
}

/// Document kinds by Composition.type (jp-clins.md §4): LOINC code → (name, Bundle profile).
const DOCUMENTS: &[(&str, &str, &str)] = &[
    (
        "57133-1",
        "eReferral",
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral|1.10.0",
    ),
    (
        "18842-5",
        "eDischargeSummary",
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary|1.10.0",
    ),
    (
        "53576-5",
        "eCheckupGeneral",
        "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral|1.5.0",
    ),
];

/// Largest number of resources a document may gather.
const MAX_DOCUMENT_RESOURCES: usize = 1000;

/// The relative references (`Type/id`, version suffix dropped) anywhere in `v`.
fn relative_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("reference").and_then(Value::as_str) {
                let r = r.split("/_history/").next().unwrap_or(r);
                let mut parts = r.split('/');
                if let (Some(ty), Some(id), None) = (parts.next(), parts.next(), parts.next()) {
                    if ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !id.is_empty() {
                        out.push(format!("{ty}/{id}"));
                    }
                }
            }
            m.values().for_each(|c| relative_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| relative_refs(c, out)),
        _ => {}
    }
}

/// Point every relative reference of `v` that `map` knows at its fullUrl.
fn rewrite_refs(v: &mut Value, map: &std::collections::HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("reference") {
                let key = r.split("/_history/").next().unwrap_or(r).to_string();
                if let Some(u) = map.get(&key) {
                    *r = u.clone();
                }
            }
            m.values_mut().for_each(|c| rewrite_refs(c, map));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, map)),
        _ => {}
    }
}

/// Build the document Bundle (jp-clins.md §4) of the tenant's Composition `composition_id`
/// about Patient `pid`: the Composition first, then every resource it reaches through
/// references (subject, author, custodian, section entries, and theirs), each with a fresh
/// `urn:uuid` fullUrl that the references point at; the Patient carries the patient key.
pub async fn build_document(
    rec: &Records<'_>,
    tenant_name: &str,
    settings: &Value,
    pid: &str,
    composition_id: &str,
    now: DateTime<Utc>,
) -> Result<Built, FhirError> {
    let patient = rec.patient(pid).await?;
    let comp = rec
        .read("Composition", composition_id)
        .await?
        .ok_or_else(|| FhirError::not_found("Composition", composition_id))?;
    let subject = comp
        .pointer("/subject/reference")
        .and_then(Value::as_str)
        .unwrap_or("");
    if subject != format!("Patient/{pid}") {
        return Err(refuse(
            "CLINS-SUBMIT-DOCUMENT",
            format!("Composition/{composition_id} はこの患者 (Patient/{pid}) の文書ではありません"),
            format!("Composition/{composition_id} is not about Patient/{pid}"),
        ));
    }
    let codes: Vec<&str> = arr(comp.get("type").unwrap_or(&Value::Null), "coding")
        .iter()
        .filter_map(|c| s(c, "code"))
        .collect();
    let Some((_, kind, profile)) = DOCUMENTS.iter().find(|(c, _, _)| codes.contains(c)) else {
        return Err(refuse(
            "CLINS-SUBMIT-DOCUMENT",
            "Composition.type は 57133-1 (診療情報提供書)、18842-5 (退院時サマリー)、53576-5 (健診結果報告書) のいずれかです",
            "Composition.type must be 57133-1 (referral), 18842-5 (discharge summary) or 53576-5 (checkup report)",
        ));
    };
    let inst = institution(rec, settings).await?;
    let key = patient_key(rec, &patient, pid).await?;
    // the Composition and everything it reaches
    let mut order = vec![format!("Composition/{composition_id}")];
    let mut resources = vec![comp];
    let mut next = 0;
    while next < resources.len() {
        let mut refs = vec![];
        relative_refs(&resources[next], &mut refs);
        next += 1;
        for r in refs {
            if order.contains(&r) {
                continue;
            }
            if order.len() >= MAX_DOCUMENT_RESOURCES {
                return Err(refuse(
                    "CLINS-SUBMIT-DOCUMENT",
                    format!("文書が {MAX_DOCUMENT_RESOURCES} を超えるリソースを参照しています"),
                    format!("the document reaches more than {MAX_DOCUMENT_RESOURCES} resources"),
                ));
            }
            if let Some((_, res)) = rec.resolve(&r).await? {
                order.push(r);
                resources.push(res);
            }
        }
    }
    let urls: std::collections::HashMap<String, String> =
        order.iter().map(|r| (r.clone(), fresh_urn())).collect();
    let mut entries = vec![];
    for (r, mut res) in order.iter().zip(resources) {
        rewrite_refs(&mut res, &urls);
        if *r == format!("Patient/{pid}")
            && !arr(&res, "identifier")
                .iter()
                .any(|i| s(i, "system") == Some(ids::MEMBER_ID_SYSTEM))
        {
            let mut list = arr(&res, "identifier").to_vec();
            list.push(json!({"system": ids::MEMBER_ID_SYSTEM, "value": key}));
            res["identifier"] = Value::Array(list);
        }
        let mut e = Map::new();
        e.insert("fullUrl".into(), json!(urls[r]));
        e.insert("resource".into(), res);
        entries.push(Value::Object(e));
    }
    let stamp = jst(now).to_rfc3339_opts(SecondsFormat::Secs, false);
    let local = format!(
        "D-{}",
        ids::hash_hex(&format!("{tenant_name}/{pid}/{composition_id}"), 32)
    );
    let year = jst(now).year();
    let identifier = format!("{inst}^{year}^{local}");
    let mut bundle = json!({
        "resourceType": "Bundle",
        "meta": {"lastUpdated": stamp, "profile": [profile]},
        "identifier": {"system": ids::BUNDLE_ID_SYSTEM, "value": identifier},
        "type": "document",
        "timestamp": stamp,
    });
    let n = entries.len();
    bundle["entry"] = Value::Array(entries);
    Ok(Built {
        institution: inst,
        patient_key: key,
        units: vec![Unit {
            kind,
            identifier,
            bundle,
            items: n,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_refs_keeps_local_and_patient_and_drops_empties() {
        let mut v = json!({
            "subject": {"reference": "urn:uuid:p"},
            "encounter": {"reference": "#enc1"},
            "basedOn": [{"reference": "ServiceRequest/1"}],
            "participant": [{"individual": {"reference": "Practitioner/1"}}],
            "recorder": {"display": "看護師A"},
            "note": [{"text": "x", "authorReference": {"reference": "Practitioner/2"}}],
        });
        strip_refs(&mut v, &|r| r.starts_with('#') || r == "urn:uuid:p");
        assert_eq!(
            v,
            json!({
                "subject": {"reference": "urn:uuid:p"},
                "encounter": {"reference": "#enc1"},
                "recorder": {"display": "看護師A"},
                "note": [{"text": "x"}],
            })
        );
    }

    #[test]
    fn list_membership_and_report_grouping() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        assert!(in_list(&json!({}), today));
        assert!(in_list(&json!({"abatementDateTime": "2022-01-01"}), today));
        assert!(!in_list(&json!({"abatementDateTime": "2020-01-01"}), today));
        assert!(!in_list(
            &json!({"verificationStatus": {"coding": [{"code": "entered-in-error"}]}}),
            today
        ));
        let a = json!({"encounter": {"reference": "Encounter/1"}, "effectiveDateTime": "2025-01-02T10:00:00+09:00"});
        let b = json!({"effectiveDateTime": "2025-01-02T11:00:00+09:00"});
        assert_eq!(report_key(&a), "enc:Encounter/1");
        assert_eq!(report_key(&b), "day:2025-01-02");
        assert_eq!(report_year(&[&a, &b], 2026), 2025);
        assert_eq!(
            report_year(&[&json!({"effectiveDateTime": "2015-01-01"})], 2026),
            2026
        );
        assert!(!is_sent_lab(&json!({"status": "final", "hasMember": []})));
        assert!(!is_sent_lab(&json!({"status": "preliminary"})));
        assert!(is_sent_lab(&json!({"status": "final"})));
    }
}
