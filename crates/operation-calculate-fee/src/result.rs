//! A calculated visit as a FHIR `Parameters` resource (the answer of `$calculate-fee`).
//!
//! ```text
//! encounter        valueReference   Encounter/{id}
//! patient          valueReference   Patient/{id}
//! date             valueDate        the visit date
//! totalPoints      valueInteger     合計点数
//! medicalCost      valueMoney       医療費 (点 × 10 円)
//! burdenPercent    valueInteger     負担割合 %
//! copay            valueMoney       窓口負担 (what the patient pays)
//! insuranceCopay   valueMoney       保険の一部負担金 before any 公費
//! publicExpense    valueMoney       paid by the 公費
//! line (0..*)      part: shikibetsu valueCode (診療識別), item (1..*; part: kind valueCode
//!                  S/Y/T, code valueCoding, quantity valueDecimal, unit valueString,
//!                  masterAmount valueDecimal), points / count / total valueInteger,
//!                  rule valueCode, reason valueString (日本語), reasonEn valueString
//! comment (0..*)   part: shikibetsu valueCode, code valueCoding, text valueString
//! message (0..*)   part: level valueCode (info/warning), rule valueCode, code valueString,
//!                  text valueString (日本語), textEn valueString
//! ```

use iryo_fee::calc::model::{ItemKind, Level};
use iryo_fee::fhir::{SYSTEM_COMMENT, SYSTEM_DRUG, SYSTEM_MATERIAL, SYSTEM_PROCEDURE};
use iryo_fee::VisitResult;
use serde_json::{json, Value};

fn p(name: &str, value_kind: &str, v: Value) -> Value {
    json!({"name": name, value_kind: v})
}

fn part(name: &str, parts: Vec<Value>) -> Value {
    json!({"name": name, "part": parts})
}

fn yen(v: i64) -> Value {
    json!({"value": v, "currency": "JPY"})
}

/// A decimal text (`"0.50000"`) as a JSON number with its exact digits, trailing zeros dropped.
fn decimal(text: &str) -> Value {
    let t = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    };
    serde_json::from_str::<serde_json::Number>(t)
        .map(Value::Number)
        .unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The `Parameters` answer for one calculated visit.
pub fn parameters(r: &VisitResult, encounter_id: &str) -> Value {
    let mut ps = vec![
        p(
            "encounter",
            "valueReference",
            json!({"reference": format!("Encounter/{encounter_id}")}),
        ),
        p(
            "patient",
            "valueReference",
            json!({"reference": format!("Patient/{}", r.patient_id)}),
        ),
        p("date", "valueDate", json!(r.date.to_string())),
        p("totalPoints", "valueInteger", json!(r.total_points)),
        p("medicalCost", "valueMoney", yen(r.total_yen)),
        p("burdenPercent", "valueInteger", json!(r.burden_percent)),
        p("copay", "valueMoney", yen(r.copay_yen)),
        p("insuranceCopay", "valueMoney", yen(r.insurance_copay_yen)),
        p("publicExpense", "valueMoney", yen(r.public_expense_yen)),
    ];
    for l in &r.lines {
        let mut parts = vec![p(
            "shikibetsu",
            "valueCode",
            json!(format!("{:02}", l.shikibetsu)),
        )];
        for it in &l.items {
            let (kind, system) = match it.kind {
                ItemKind::Procedure => ("S", SYSTEM_PROCEDURE),
                ItemKind::Drug => ("Y", SYSTEM_DRUG),
                ItemKind::Material => ("T", SYSTEM_MATERIAL),
            };
            let mut item = vec![
                p("kind", "valueCode", json!(kind)),
                p(
                    "code",
                    "valueCoding",
                    json!({"system": system, "code": it.code, "display": it.name}),
                ),
            ];
            if let Some(q) = &it.quantity {
                item.push(p("quantity", "valueDecimal", decimal(q)));
            }
            if let Some(u) = it.unit.as_deref().filter(|u| !u.is_empty()) {
                item.push(p("unit", "valueString", json!(u)));
            }
            item.push(p(
                "masterAmount",
                "valueDecimal",
                decimal(&it.master_amount),
            ));
            parts.push(part("item", item));
        }
        parts.extend([
            p("points", "valueInteger", json!(l.points)),
            p("count", "valueInteger", json!(l.count)),
            p("total", "valueInteger", json!(l.total)),
            p("rule", "valueCode", json!(l.rule)),
            p("reason", "valueString", json!(l.reason_ja)),
            p("reasonEn", "valueString", json!(l.reason_en)),
        ]);
        ps.push(part("line", parts));
    }
    for c in &r.comments {
        let mut parts = vec![
            p(
                "shikibetsu",
                "valueCode",
                json!(format!("{:02}", c.shikibetsu)),
            ),
            p(
                "code",
                "valueCoding",
                json!({"system": SYSTEM_COMMENT, "code": c.code, "display": c.name}),
            ),
        ];
        if !c.text.is_empty() {
            parts.push(p("text", "valueString", json!(c.text)));
        }
        ps.push(part("comment", parts));
    }
    for m in &r.messages {
        let level = match m.level {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        let mut parts = vec![
            p("level", "valueCode", json!(level)),
            p("rule", "valueCode", json!(m.rule)),
        ];
        if let Some(c) = &m.code {
            parts.push(p("code", "valueString", json!(c)));
        }
        parts.push(p("text", "valueString", json!(m.message_ja)));
        parts.push(p("textEn", "valueString", json!(m.message_en)));
        ps.push(part("message", parts));
    }
    json!({"resourceType": "Parameters", "parameter": ps})
}

/// The element (`ChargeItem/x.code`, `MedicationRequest/y.medicationCodeableConcept`, …) of
/// Encounter `encounter` that orders `code`, for pointing an error at it.
pub fn resource_with_code(resources: &[Value], encounter: &str, code: &str) -> Option<String> {
    const ORDERS: [(&str, &str, &str); 3] = [
        ("ChargeItem", "context", "code"),
        ("ServiceRequest", "encounter", "code"),
        (
            "MedicationRequest",
            "encounter",
            "medicationCodeableConcept",
        ),
    ];
    resources.iter().find_map(|r| {
        let ty = r.get("resourceType")?.as_str()?;
        let (_, link, element) = ORDERS.iter().find(|(t, _, _)| *t == ty)?;
        let target = r.get(*link)?.get("reference")?.as_str()?;
        if crate::reference_id(target, "Encounter") != Some(encounter) {
            return None;
        }
        let has = r
            .get(*element)?
            .get("coding")?
            .as_array()?
            .iter()
            .any(|c| c.get("code").and_then(Value::as_str) == Some(code));
        let id = r.get("id")?.as_str()?;
        has.then(|| format!("{ty}/{id}.{element}"))
    })
}
