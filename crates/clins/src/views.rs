//! Building the views from stored report units (jp-clins.md §7): viewing windows, flags
//! (UNDELIVERED, UNINFORMED, LTS), source institution of every item, insurer item rules.

use crate::checks::Kind;
use crate::ids::{self, PatientKey};
use crate::service::{tag_of, T_KIND, T_REGISTERED, T_SOURCE, T_STAMP};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};

/// Extension marking an UNINFORMED (未告知) diagnosis with its date, in institution views.
pub const UNINFORMED_EXT: &str = "urn:iryo:clins:uninformed-date";
const DAY_MS: i64 = 86_400_000;

/// Milliseconds of a FHIR date/dateTime (partial dates at their start; local offset honoured).
pub fn date_ms(s: &str) -> Option<i64> {
    if s.len() > 10 {
        return DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis());
    }
    let padded = match s.len() {
        4 => format!("{s}-01-01"),
        7 => format!("{s}-01"),
        10 => s.to_string(),
        _ => return None,
    };
    NaiveDate::parse_from_str(&padded, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp_millis())
}

fn flags(r: &Value) -> Vec<&str> {
    r.pointer("/meta/tag")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter(|t| t["system"] == ids::INDICATION_SYSTEM)
                .filter_map(|t| t["code"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// A Bundle entry. (Built by moving `resource` in: `json!` would copy it through the
/// serializer, which dominated the views' time.)
pub fn entry(full_url: String, resource: Value) -> Value {
    let mut m = serde_json::Map::with_capacity(2);
    m.insert("fullUrl".into(), Value::String(full_url));
    m.insert("resource".into(), resource);
    Value::Object(m)
}

/// The Patient of a stored unit.
pub fn patient_of(unit: &Value) -> Value {
    unit["entry"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .map(|e| &e["resource"])
                .find(|r| r["resourceType"] == "Patient")
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// The normalized patient key of a stored unit.
pub fn patient_key_of(unit: &Value) -> Option<PatientKey> {
    patient_of(unit)["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"] == ids::MEMBER_ID_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .and_then(|v| ids::normalize_patient_key(v).ok())
}

/// A stored unit without the platform's index tags.
pub fn clean_unit(unit: &Value) -> Value {
    let mut u = unit.clone();
    if let Some(tags) = u.pointer_mut("/meta/tag").and_then(Value::as_array_mut) {
        tags.retain(|t| {
            !t["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("urn:iryo:clins:"))
        });
    }
    u
}

fn item_date(r: &Value) -> Option<i64> {
    ["effectiveDateTime", "authoredOn", "issued", "recordedDate"]
        .iter()
        .find_map(|k| r[*k].as_str().and_then(date_ms))
        .or_else(|| {
            r.pointer("/effectivePeriod/start")?
                .as_str()
                .and_then(date_ms)
        })
}

fn is_infection(r: &Value) -> bool {
    r.pointer("/code/coding")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c["system"]
                    .as_str()
                    .is_some_and(|s| s.contains("InfectionLabo"))
            })
        })
}

struct Report<'a> {
    date: i64,
    items: Vec<(&'a Value, &'a Value)>,
}

/// Keep reports dated within `window_ms` of `now`, or among the 3 latest.
fn windowed<'a>(
    mut reports: Vec<Report<'a>>,
    now: i64,
    window_ms: i64,
) -> Vec<(&'a Value, &'a Value)> {
    reports.sort_by_key(|r| std::cmp::Reverse(r.date));
    reports
        .into_iter()
        .enumerate()
        .filter(|(n, r)| *n < 3 || r.date >= now - window_ms)
        .flat_map(|(_, r)| r.items)
        .collect()
}

const FIVE_YEARS_MS: i64 = 5 * 365 * DAY_MS + DAY_MS;
const LAB_WINDOW_MS: i64 = 365 * DAY_MS;
const RX_WINDOW_MS: i64 = 100 * DAY_MS;

/// The Condition/AllergyIntolerance items shown at `now`: active, or ended within 5 years.
fn shown_until(r: &Value) -> i64 {
    r["abatementDateTime"]
        .as_str()
        .and_then(date_ms)
        .map_or(i64::MAX, |e| e.saturating_add(FIVE_YEARS_MS))
}

/// The items of a unit that views may show (not the Patient, not UNDELIVERED).
fn view_items(u: &Value) -> impl Iterator<Item = &Value> {
    u["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] != "Patient" && !flags(r).contains(&"UNDELIVERED"))
}

/// What a unit holds for the 6情報 views, grouped as the windows need it: list items
/// (Conditions, allergies), lab and infection reports, the prescription report, each report
/// with its date (the latest item date; 0 when no item is dated).
struct UnitItems<'a> {
    list: Vec<&'a Value>,
    lab: Option<(i64, Vec<&'a Value>)>,
    infection: Option<(i64, Vec<&'a Value>)>,
    rx: Option<(i64, Vec<&'a Value>)>,
}

fn report(list: Vec<&Value>) -> Option<(i64, Vec<&Value>)> {
    (!list.is_empty()).then(|| {
        let date = list.iter().filter_map(|r| item_date(r)).max().unwrap_or(0);
        (date, list)
    })
}

fn unit_items(u: &Value, kind: Kind) -> UnitItems<'_> {
    let mut out = UnitItems {
        list: vec![],
        lab: None,
        infection: None,
        rx: None,
    };
    let (mut labs, mut infections, mut rx) = (vec![], vec![], vec![]);
    for r in view_items(u) {
        match (kind, r["resourceType"].as_str()) {
            (Kind::Condition | Kind::AllergyIntolerance, _)
            | (Kind::DocumentItems, Some("Condition" | "AllergyIntolerance")) => out.list.push(r),
            (Kind::Observation, _) | (Kind::DocumentItems, Some("Observation")) => {
                if is_infection(r) {
                    infections.push(r)
                } else {
                    labs.push(r)
                }
            }
            (Kind::DocumentItems, Some("MedicationRequest")) => rx.push(r),
            _ => {}
        }
    }
    out.lab = report(labs);
    out.infection = report(infections);
    out.rx = report(rx);
    out
}

/// One entry of the per-patient index (what the views need to pick units without reading
/// them): kind, source, registration, version stamp, the dates of its reports and until when
/// its list items are shown.
pub fn index_entry(u: &Value) -> Option<Value> {
    let kind = tag_of(u, T_KIND).and_then(Kind::from_code)?;
    let items = unit_items(u, kind);
    let until = items.list.iter().map(|r| shown_until(r)).max();
    Some(json!({
        "id": u["id"],
        "k": kind.code(),
        "src": tag_of(u, T_SOURCE),
        "reg": tag_of(u, T_REGISTERED),
        "stamp": tag_of(u, T_STAMP),
        "until": until,
        "lab": items.lab.map(|r| r.0),
        "inf": items.infection.map(|r| r.0),
        "rx": items.rx.map(|r| r.0),
    }))
}

/// The ids of the units a view at `now` needs, from the index entries: every unit with list
/// items still shown, the units of reports inside the windows or among the 3 latest (ties
/// included), the unit with the latest registration (its Patient is shown), and checkup
/// reports when `checkups`.
pub fn units_needed(entries: &[Value], now: DateTime<Utc>, checkups: bool) -> Vec<String> {
    let now = now.timestamp_millis();
    let mut need: Vec<&str> = vec![];
    for e in entries {
        let kind = e["k"].as_str().and_then(Kind::from_code);
        if e["until"].as_i64().is_some_and(|u| u >= now)
            || (checkups && kind == Some(Kind::Checkup))
        {
            need.push(e["id"].as_str().unwrap_or(""));
        }
    }
    for (field, window) in [
        ("lab", LAB_WINDOW_MS),
        ("inf", LAB_WINDOW_MS),
        ("rx", RX_WINDOW_MS),
    ] {
        let mut dates: Vec<i64> = entries.iter().filter_map(|e| e[field].as_i64()).collect();
        dates.sort_unstable_by(|a, b| b.cmp(a));
        let third = dates.get(2).copied().unwrap_or(i64::MIN);
        for e in entries {
            if let Some(d) = e[field].as_i64() {
                if d >= now - window || d >= third {
                    need.push(e["id"].as_str().unwrap_or(""));
                }
            }
        }
    }
    if let Some(latest) = entries.iter().max_by(|a, b| {
        a["reg"]
            .as_str()
            .unwrap_or("")
            .cmp(b["reg"].as_str().unwrap_or(""))
    }) {
        need.push(latest["id"].as_str().unwrap_or(""));
    }
    let mut out: Vec<String> = need.into_iter().map(str::to_string).collect();
    out.sort();
    out.dedup();
    out
}

/// The value of an item's resource-instance identifier (for duplicates).
fn instance_id(r: &Value) -> Option<&str> {
    r["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"] == "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier")?
        .get("value")?
        .as_str()
}

/// The 6情報 view of a patient: one collection Bundle, Patient first, then every item shown
/// to this audience with `meta.source` = its institution. `for_patient`: UNINFORMED hidden;
/// otherwise UNINFORMED items are marked with their date. UNDELIVERED items are never shown.
///
/// Items taken out of documents (referral, discharge summary, checkup) count like 5情報 items.
/// The same item (same institution, resource type and resource-instance identifier) sent both
/// in a 5情報 Bundle and in a document, or in several documents, is shown once: the 5情報
/// version, otherwise the latest registered.
pub fn six_info(
    key: &PatientKey,
    units: &[std::sync::Arc<Value>],
    now: DateTime<Utc>,
    for_patient: bool,
) -> Value {
    serde_json::to_value(six_info_view(key, units, now, for_patient)).unwrap_or(Value::Null)
}

/// [`six_info`] as a value that borrows the units' items and serializes them without copying
/// them (what the HTTP answer needs: the items are written once, straight from the units).
pub fn six_info_view<'a>(
    key: &PatientKey,
    units: &'a [std::sync::Arc<Value>],
    now: DateTime<Utc>,
    for_patient: bool,
) -> SixInfo<'a> {
    let now_ms = now.timestamp_millis();
    let mut plain: Vec<(&Value, &Value)> = vec![];
    let (mut labs, mut infections, mut rx) = (vec![], vec![], vec![]);
    let mut latest_patient: Option<(&str, &Value)> = None;
    for u in units.iter().map(|u| &**u) {
        let Some(kind) = tag_of(u, T_KIND).and_then(Kind::from_code) else {
            continue;
        };
        let reg = tag_of(u, T_REGISTERED).unwrap_or("");
        if latest_patient.as_ref().is_none_or(|(r, _)| *r < reg) {
            latest_patient = Some((reg, u));
        }
        let items = unit_items(u, kind);
        plain.extend(
            items
                .list
                .into_iter()
                .filter(|r| shown_until(r) >= now_ms)
                .map(|r| (u, r)),
        );
        for (r, out) in [
            (items.lab, &mut labs),
            (items.infection, &mut infections),
            (items.rx, &mut rx),
        ] {
            if let Some((date, list)) = r {
                out.push(Report {
                    date,
                    items: list.into_iter().map(|r| (u, r)).collect(),
                });
            }
        }
    }
    plain.extend(windowed(labs, now_ms, LAB_WINDOW_MS));
    plain.extend(windowed(infections, now_ms, LAB_WINDOW_MS));
    plain.extend(windowed(rx, now_ms, RX_WINDOW_MS));
    dedupe(&mut plain);

    let mut patient = latest_patient
        .map(|(_, u)| patient_of(u))
        .unwrap_or_else(|| {
            json!({"resourceType": "Patient", "identifier": [{"system": ids::MEMBER_ID_SYSTEM, "value": key.as_str()}]})
        });
    patient["id"] = json!("patient");
    let mut items = vec![];
    for (n, (u, r)) in plain.into_iter().enumerate() {
        let fl = flags(r);
        if for_patient && fl.contains(&"UNINFORMED") {
            continue;
        }
        let inst = tag_of(u, T_SOURCE).unwrap_or("");
        let uninformed = fl.contains(&"UNINFORMED").then(|| {
            ["recordedDate", "onsetDateTime"]
                .iter()
                .find_map(|k| r[*k].as_str().map(str::to_string))
                .unwrap_or_else(|| tag_of(u, T_REGISTERED).unwrap_or("").to_string())
        });
        items.push(Shown {
            n,
            item: r,
            inst,
            uninformed,
        });
    }
    SixInfo {
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        patient,
        items,
    }
}

/// The 6情報 view of [`six_info_view`]: the Patient and the shown items, borrowed.
pub struct SixInfo<'a> {
    timestamp: String,
    patient: Value,
    items: Vec<Shown<'a>>,
}

impl SixInfo<'_> {
    /// Entries of the Bundle (the Patient and the items).
    pub fn entries(&self) -> usize {
        self.items.len() + 1
    }
}

/// One shown item and what the view changes in it: `meta.source` = its institution, the
/// institution-number extension when missing, subject/patient → the view's Patient, and the
/// UNINFORMED date extension.
struct Shown<'a> {
    n: usize,
    item: &'a Value,
    inst: &'a str,
    uninformed: Option<String>,
}

impl Shown<'_> {
    fn meta(&self, meta: &Value) -> Value {
        let mut m = match meta {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        m.insert(
            "source".into(),
            Value::String(format!("{}#{}", ids::INSTITUTION_SYSTEM, self.inst)),
        );
        Value::Object(m)
    }

    fn extensions(&self, existing: Option<&Value>) -> Vec<Value> {
        let mut list: Vec<Value> = existing
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if crate::checks::institution_of(self.item).is_none() {
            list.push(json!({"url": ids::INSTITUTION_EXT, "valueIdentifier": {"system": ids::INSTITUTION_SYSTEM, "value": self.inst}}));
        }
        if let Some(d) = &self.uninformed {
            list.push(json!({"url": UNINFORMED_EXT, "valueDateTime": d}));
        }
        list
    }
}

impl serde::Serialize for Shown<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(obj) = self.item.as_object() else {
            return self.item.serialize(s);
        };
        let mut m = s.serialize_map(None)?;
        let (mut had_meta, mut had_ext) = (false, false);
        let patient_ref = json!({"reference": "urn:iryo-clins:patient"});
        for (k, v) in obj {
            match k.as_str() {
                "meta" => {
                    had_meta = true;
                    m.serialize_entry(k, &self.meta(v))?;
                }
                "extension" => {
                    had_ext = true;
                    m.serialize_entry(k, &self.extensions(Some(v)))?;
                }
                "subject" | "patient" if v.is_object() => m.serialize_entry(k, &patient_ref)?,
                _ => m.serialize_entry(k, v)?,
            }
        }
        if !had_meta {
            m.serialize_entry("meta", &self.meta(&Value::Null))?;
        }
        if !had_ext {
            let ext = self.extensions(None);
            if !ext.is_empty() {
                m.serialize_entry("extension", &ext)?;
            }
        }
        m.end()
    }
}

struct Entries<'b, 'a>(&'b SixInfo<'a>);

impl serde::Serialize for Entries<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct One<'c, T: serde::Serialize>(String, &'c T);
        impl<T: serde::Serialize> serde::Serialize for One<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("fullUrl", &self.0)?;
                m.serialize_entry("resource", self.1)?;
                m.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.entries()))?;
        seq.serialize_element(&One("urn:iryo-clins:patient".into(), &self.0.patient))?;
        for i in &self.0.items {
            seq.serialize_element(&One(format!("urn:iryo-clins:item:{}", i.n), i))?;
        }
        seq.end()
    }
}

impl serde::Serialize for SixInfo<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("resourceType", "Bundle")?;
        m.serialize_entry("type", "collection")?;
        m.serialize_entry("timestamp", &self.timestamp)?;
        m.serialize_entry("entry", &Entries(self))?;
        m.end()
    }
}

/// Drop items taken out of documents that repeat another item (same source institution,
/// resource type and resource-instance identifier): the 5情報 item wins over the document's,
/// a later registered document over an earlier one. Items of 5情報 units are never dropped
/// (their replacement follows the report-unit rules); prescriptions are not compared.
fn dedupe(items: &mut Vec<(&Value, &Value)>) {
    use std::collections::HashMap;
    let key = |u: &Value, r: &Value| -> Option<(String, String, String)> {
        let ty = r["resourceType"].as_str()?;
        if !matches!(ty, "Condition" | "AllergyIntolerance" | "Observation") {
            return None;
        }
        Some((
            tag_of(u, T_SOURCE)?.to_string(),
            ty.to_string(),
            instance_id(r)?.to_string(),
        ))
    };
    let is_doc =
        |u: &Value| tag_of(u, T_KIND).and_then(Kind::from_code) == Some(Kind::DocumentItems);
    // per key: the best unit (5情報 first, then the latest registered), by unit id
    let mut best: HashMap<(String, String, String), (bool, &str, &str)> = HashMap::new();
    for (u, r) in items.iter() {
        let Some(k) = key(u, r) else { continue };
        let rank = (
            !is_doc(u),
            tag_of(u, T_REGISTERED).unwrap_or(""),
            u["id"].as_str().unwrap_or(""),
        );
        match best.get(&k) {
            Some(b) if *b >= rank => {}
            _ => {
                best.insert(k, rank);
            }
        }
    }
    items.retain(|(u, r)| {
        if !is_doc(u) {
            return true;
        }
        match key(u, r).and_then(|k| best.get(&k)) {
            Some((_, _, unit)) => *unit == u["id"].as_str().unwrap_or(""),
            None => true,
        }
    });
}

/// Event codes of checkups run by the insurer itself (特定健康診査, 広域連合の保健事業).
const INSURER_RUN_EVENTS: &[&str] = &["010", "020"];
/// Sections holding 特定健診 items (検査, 問診).
const TOKUTEI_SECTIONS: &[&str] = &["01011", "01012"];

/// A checkup report as an insurer receives it: insurer-run checkups in full; other checkups
/// (事業者健診 …) reduced to the Observations of the 特定健診 sections.
pub fn checkup_for_insurer(unit: &Value) -> Value {
    let mut u = clean_unit(unit);
    let comp = u
        .pointer("/entry/0/resource")
        .cloned()
        .unwrap_or(Value::Null);
    let event_codes: Vec<&str> = comp["event"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["code"].as_array().into_iter().flatten())
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .filter_map(|c| c["code"].as_str())
        .collect();
    if event_codes.iter().any(|c| INSURER_RUN_EVENTS.contains(c)) {
        return u;
    }
    let mut allowed: Vec<String> = vec![];
    fn walk(secs: &Value, allowed: &mut Vec<String>) {
        for s in secs.as_array().into_iter().flatten() {
            let code = s.pointer("/code/coding/0/code").and_then(Value::as_str);
            if code.is_some_and(|c| TOKUTEI_SECTIONS.contains(&c)) {
                for e in s["entry"].as_array().into_iter().flatten() {
                    if let Some(r) = e["reference"].as_str() {
                        allowed.push(r.to_string());
                    }
                }
            }
            walk(&s["section"], allowed);
        }
    }
    walk(&comp["section"], &mut allowed);
    if let Some(entries) = u["entry"].as_array_mut() {
        entries.retain(|e| {
            e["resource"]["resourceType"] != "Observation"
                || e["fullUrl"]
                    .as_str()
                    .is_some_and(|f| allowed.iter().any(|a| a == f))
        });
    }
    u
}

/// A unit past retention reduced to its LTS items; `None` when nothing is to be kept.
pub fn keep_lts(unit: &Value) -> Option<Value> {
    let entries = unit["entry"].as_array()?;
    let lts: Vec<Value> = entries
        .iter()
        .filter(|e| flags(&e["resource"]).contains(&"LTS"))
        .cloned()
        .collect();
    if lts.is_empty() {
        return None;
    }
    let mut u = unit.clone();
    let kept: Vec<Value> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .cloned()
        .chain(lts)
        .collect();
    u["entry"] = Value::Array(kept);
    Some(u)
}
