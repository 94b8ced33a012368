//! The individual checks: cardinality, fixed/pattern, choice types, slicing, bindings,
//! displays, references, contained resources, tenant profiles, meta.profile versions.

use iryo_validator::{Severity, Validator};
use serde_json::{json, Value};
use std::sync::LazyLock;

static V: LazyLock<Validator> = LazyLock::new(Validator::new);

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn errors(v: &Value, profiles: &[&str]) -> Vec<(String, String)> {
    V.validate(v, profiles)
        .errors()
        .map(|i| (i.expression.clone(), i.message_en.clone()))
        .collect()
}

#[test]
fn profile_cardinality_and_fixed_value() {
    let mut b = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    b["type"] = json!("document");
    let e = errors(&b, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Bundle.type" && m.contains("fixed value \"collection\"")),
        "{e:?}"
    );
    let mut b = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    b.as_object_mut().unwrap().remove("timestamp");
    let e = errors(&b, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Bundle.timestamp" && m.contains("minimum required = 1")),
        "{e:?}"
    );
}

#[test]
fn closed_slicing_rejects_unmatched_entries() {
    // JP_Bundle_CLINS entries are closed: a Practitioner entry matches no slice.
    let mut b = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    b["entry"].as_array_mut().unwrap().push(json!({
        "fullUrl": "urn:uuid:7d3f2a10-0000-4000-8000-000000000001",
        "resource": {"resourceType": "Practitioner", "name": [{"text": "検査 太郎"}]}
    }));
    let e = errors(&b, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Bundle.entry[5]" && m.contains("slicing is closed")),
        "{e:?}"
    );
}

#[test]
fn entries_are_validated_against_their_slice_profiles() {
    // An entry Observation without identifier breaks JP_Observation_LabResult_eCS.
    let mut b = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    b["entry"][1]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("identifier");
    let e = errors(&b, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Bundle.entry[1].resource.identifier"
                && m.contains("minimum required")),
        "{e:?}"
    );
}

#[test]
fn choice_type_restriction() {
    // JP_Observation_LabResult_eCS allows value[x] as Quantity, CodeableConcept or string only.
    let mut o =
        fixture("Bundle-Bundle-CLINS-Observations-Example-01.json")["entry"][1]["resource"].clone();
    let q = o.as_object_mut().unwrap().remove("valueQuantity").unwrap();
    assert!(q.is_object());
    o["valueBoolean"] = json!(true);
    let e = errors(&o, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Observation.value" && m.contains("Type boolean is not allowed")),
        "{e:?}"
    );
}

#[test]
fn required_binding_and_display() {
    let p = json!({"resourceType": "Patient", "gender": "unknown-gender"});
    let out = V.validate(&p, &[]);
    assert!(out.has_errors());
    let obs = |code: &str, display: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": code, "display": display}]}]})
    };
    let out = V.validate(&obs("laboratory", "Wrongly named"), &[]);
    assert!(!out.has_errors(), "{:?}", out.issues);
    let w = out
        .issues
        .iter()
        .find(|i| i.severity == Severity::Warning)
        .expect("display warning");
    assert_eq!(w.expression, "Observation.category[0].coding[0].display");
    assert!(w.message_en.contains("Laboratory"), "{w:?}");
    assert!(!V
        .validate(&obs("laboratory", "Laboratory"), &[])
        .issues
        .iter()
        .any(|i| i.severity <= Severity::Warning));
    // Unknown code in a complete code system: error.
    assert!(V.validate(&obs("no-such-category", "x"), &[]).has_errors());
    // Code systems that are not shipped (SNOMED CT): no error.
    let c = json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006", "display": "Myocardial infarction"}]}});
    assert!(!V.validate(&c, &[]).has_errors());
}

#[test]
fn reference_target_types_and_contained() {
    let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Medication/1"}});
    let e = errors(&o, &[]);
    assert!(
        e.iter()
            .any(|(x, m)| x == "Observation.subject" && m.contains("Medication is not allowed")),
        "{e:?}"
    );
    let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "#nope"}});
    let e = errors(&o, &[]);
    assert!(
        e.iter().any(|(x, _)| x == "Observation.subject.reference"),
        "{e:?}"
    );
    // Contained resources are validated too, with their own locations.
    let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p", "gender": "nope"}],
        "subject": {"reference": "#p"}});
    let e = errors(&o, &[]);
    assert!(
        e.iter()
            .any(|(x, _)| x.starts_with("Observation.contained[0]")),
        "{e:?}"
    );
}

#[test]
fn unreferenced_contained_resource_is_dom3() {
    let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p"}]});
    let out = V.validate(&o, &[]);
    assert_eq!(out.keys(Severity::Error), vec!["dom-3"], "{:?}", out.issues);
    let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p"}], "subject": {"reference": "#p"}});
    assert!(!V.validate(&o, &[]).has_errors());
}

#[test]
fn meta_profile_with_and_without_version() {
    let mut p = fixture("Patient-Example-JP-Patient-eCS-MAKINO.json");
    p["identifier"] = json!([]);
    p.as_object_mut().unwrap().remove("identifier");
    for prof in [
        "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS",
        "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS|1.10.0",
    ] {
        p["meta"]["profile"] = json!([prof]);
        let out = V.validate(&p, &[]);
        assert!(
            out.keys(Severity::Error).contains(&"R1012"),
            "{prof}: {:?}",
            out.issues
        );
    }
    // Unknown profile: a warning, and the base definition still applies.
    p["meta"]["profile"] = json!(["http://example.org/StructureDefinition/unknown"]);
    let out = V.validate(&p, &[]);
    assert!(out
        .issues
        .iter()
        .any(|i| i.code == "not-found" && i.severity == Severity::Warning));
}

#[test]
fn tenant_profile_is_used() {
    let v = Validator::new();
    let base = v.validate(&json!({"resourceType": "Patient"}), &[]);
    assert!(!base.has_errors());
    // A tenant profile derived from base Patient's snapshot, with birthDate 1..1.
    let sd = iryo_fhir_spec::r4_structure_definitions()
        .into_iter()
        .find(|s| s["url"] == "http://hl7.org/fhir/StructureDefinition/Patient")
        .unwrap();
    let mut sd = sd;
    sd["url"] = json!("http://clinic.example.jp/StructureDefinition/MyPatient");
    sd["derivation"] = json!("constraint");
    for e in sd["snapshot"]["element"].as_array_mut().unwrap() {
        if e["path"] == "Patient.birthDate" {
            e["min"] = json!(1);
        }
    }
    let url = v.add_structure_definition(sd).unwrap();
    let out = v.validate(&json!({"resourceType": "Patient"}), &[&url]);
    assert!(
        out.errors().any(|i| i.expression == "Patient.birthDate"),
        "{:?}",
        out.issues
    );
    assert!(v
        .add_structure_definition(json!({"resourceType": "Patient"}))
        .is_err());
}

#[test]
fn garbage_never_panics() {
    for v in [
        json!(null),
        json!([]),
        json!({"resourceType": 5}),
        json!({"resourceType": "NoSuchType"}),
        json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Bundle", "entry": "x"}}]}),
        json!({"resourceType": "Patient", "meta": {"profile": ["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS"]}}),
    ] {
        let _ = V.validate(&v, &[]);
        let _ = V.validate(
            &v,
            &["http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS"],
        );
    }
}

#[test]
fn operation_outcome_languages() {
    let out = V.validate(&json!({"resourceType": "Patient", "gender": "x"}), &[]);
    let ja = out.to_operation_outcome(false);
    let en = out.to_operation_outcome(true);
    assert_eq!(ja["resourceType"], "OperationOutcome");
    assert_ne!(ja["issue"][0]["diagnostics"], en["issue"][0]["diagnostics"]);
    let ok = V
        .validate(&json!({"resourceType": "Patient"}), &[])
        .to_operation_outcome(false);
    assert_eq!(ok["issue"][0]["severity"], "information");
}
