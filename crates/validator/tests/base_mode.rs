//! `Validator::validate_base` (validation on write in tenant mode `base`): base R4 structure,
//! core invariants and required bindings; `meta.profile` ignored.

use iryo_validator::{Severity, Validator};
use serde_json::{json, Value};
use std::sync::LazyLock;

static V: LazyLock<Validator> = LazyLock::new(Validator::new);

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (key or code, location) of the error issues.
fn errors(v: &Value) -> Vec<(String, String)> {
    V.validate_base(v)
        .errors()
        .map(|i| {
            (
                i.key.clone().unwrap_or(i.code.to_string()),
                i.expression.clone(),
            )
        })
        .collect()
}

#[test]
fn valid_fixtures_pass() {
    for name in [
        "Bundle-Bundle-CLINS-Observations-Example-01.json",
        "Condition-Example-JP-Condition-eCS-01.json",
        "MedicationRequest-Example-JP-MedReq-PO-TID-2days.json",
        "Patient-Example-JP-Patient-eCS-MAKINO.json",
    ] {
        assert_eq!(errors(&fixture(name)), vec![], "{name}");
    }
}

#[test]
fn core_invariants_are_enforced() {
    // obs-6: dataAbsentReason only when there is no value
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "体温"}, "valueQuantity": {"value": 36.5, "unit": "Cel"},
        "dataAbsentReason": {"text": "測定不能"}});
    assert_eq!(
        errors(&obs),
        vec![("obs-6".to_string(), "Observation".to_string())]
    );
    // per-1: a period must not end before it starts
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2024-05-02", "end": "2024-05-01"}});
    assert_eq!(
        errors(&enc),
        vec![("per-1".to_string(), "Encounter.period".to_string())]
    );
    // pat-1: a contact needs some detail
    let pat = json!({"resourceType": "Patient", "contact": [{"gender": "female"}]});
    assert_eq!(
        errors(&pat),
        vec![("pat-1".to_string(), "Patient.contact[0]".to_string())]
    );
    // ext-1: an extension has a value or extensions, not both
    let pat = json!({"resourceType": "Patient", "extension": [{
        "url": "http://example.org/ext", "valueString": "x",
        "extension": [{"url": "a", "valueString": "y"}]}]});
    assert!(
        errors(&pat)
            .iter()
            .any(|(k, l)| k == "ext-1" && l == "Patient.extension[0]"),
        "{:?}",
        errors(&pat)
    );
    // dom-3: a contained resource must be referenced
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Practitioner", "id": "p1"}]});
    assert_eq!(
        errors(&obs),
        vec![("dom-3".to_string(), "Observation".to_string())]
    );
    // inside a Bundle: the entry's location
    let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0f4a6c1e-0000-4000-8000-000000000001", "resource": obs}]});
    assert_eq!(
        errors(&b),
        vec![("dom-3".to_string(), "Bundle.entry[0].resource".to_string())]
    );
}

#[test]
fn required_bindings_are_errors_extensible_warnings() {
    let pat = json!({"resourceType": "Patient", "gender": "mail"});
    assert_eq!(
        errors(&pat),
        vec![("code-invalid".to_string(), "Patient.gender".to_string())]
    );
    // extensible (Condition.category): an unknown code of a shipped system is a warning only
    let cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
        "category": [{"coding": [{"system": "http://example.org/cat", "code": "zzz"}]}]});
    let out = V.validate_base(&cond);
    assert!(!out.has_errors(), "{:?}", out.issues);
    assert!(
        out.issues
            .iter()
            .any(|i| i.severity == Severity::Warning && i.expression == "Condition.category[0]"),
        "{:?}",
        out.issues
    );
}

#[test]
fn meta_profile_is_ignored() {
    // R1013 (JP-CLINS insured-person identifier) is not a base R4 rule.
    let mut p = fixture("Patient-Example-JP-Patient-eCS-MAKINO.json");
    for id in p["identifier"].as_array_mut().unwrap() {
        if id["system"] == "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID" {
            id["value"] = json!("broken");
        }
    }
    assert!(V.validate(&p, &[]).keys(Severity::Error).contains(&"R1013"));
    assert_eq!(errors(&p), vec![]);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for v in [
        json!(null),
        json!([1, 2]),
        json!("Patient"),
        json!({}),
        json!({"resourceType": "NoSuchType"}),
        json!({"resourceType": "Patient", "name": "山田"}),
        json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": 5}]}),
    ] {
        assert!(V.validate_base(&v).has_errors(), "{v}");
    }
}
