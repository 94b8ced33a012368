//! For every invariant key of jp-clins.md §8: a mutation of a valid example breaks exactly
//! that rule, and the validator reports exactly that key (and no other new key).

use iryo_validator::{Severity, Validator};
use serde_json::{json, Value};
use std::sync::LazyLock;

static V: LazyLock<Validator> = LazyLock::new(Validator::new);

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The CLINS Observation Bundle (valid).
fn obs_bundle() -> Value {
    fixture("Bundle-Bundle-CLINS-Observations-Example-01.json")
}

/// A CLINS Condition Bundle built from the Patient of the Observation Bundle and a valid
/// JP_Condition_eCS example.
fn cond_bundle() -> Value {
    let mut b = obs_bundle();
    b["meta"]["tag"][0]["code"] = json!("Condition");
    let patient = b["entry"][0].clone();
    let cond = fixture("Condition-Example-JP-Condition-eCS-01.json");
    b["entry"] = json!([patient, {"fullUrl": "urn:uuid:0a2b5b3c-1111-4a0e-9c55-3d0f4b1c2d3e", "resource": cond}]);
    b
}

fn patient() -> Value {
    obs_bundle()["entry"][0]["resource"].clone()
}

fn med_request() -> Value {
    fixture("MedicationRequest-Example-JP-MedReq-PO-TID-2days.json")
}

fn obs(b: &mut Value, i: usize) -> &mut Value {
    &mut b["entry"][i]["resource"]
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().unwrap().remove(key);
}

fn remove_ext(v: &mut Value, url_part: &str) {
    let exts = v["extension"].as_array_mut().unwrap();
    exts.retain(|e| !e["url"].as_str().unwrap().contains(url_part));
}

fn issue_keys(v: &Value, severity: Severity) -> Vec<String> {
    let out = V.validate(v, &[]);
    let mut keys: Vec<String> = out.keys(severity).into_iter().map(str::to_string).collect();
    keys.sort();
    keys
}

type Mutation = fn() -> Value;

/// In "also": the profile's structure (slices, fixed values) encodes the same rule, so
/// non-invariant errors are expected too.
const STRUCTURE: &str = "(structure)";

/// (key, severity, mutated instance, other keys that necessarily break with it)
fn cases() -> Vec<(&'static str, Severity, Mutation, &'static [&'static str])> {
    vec![
        (
            "R0211",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let e = b["entry"].as_array_mut().unwrap();
                e.swap(0, 1);
                b
            },
            &["R0212", "R9011", "R9012", STRUCTURE],
        ),
        (
            "R0212",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                obs(&mut b, 0)["meta"]["profile"] =
                    json!(["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]);
                b
            },
            &[],
        ),
        (
            "R0213",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["meta"]["profile"] =
                    json!(["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS_X"]);
                b
            },
            &[],
        ),
        (
            "R02141",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["meta"]["tag"][0]["system"] = json!("http://example.org/other-tag-system");
                b
            },
            &["R02142", "R02143", STRUCTURE],
        ),
        (
            "R02142",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["meta"]["tag"][0]["code"] = json!("MedicationRequest");
                b
            },
            &["R02143"],
        ),
        (
            "R02143",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["meta"]["tag"][0]["code"] = json!("Condition");
                b
            },
            &[],
        ),
        (
            "R02151",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["identifier"]["system"] = json!("http://example.org/bundle-id");
                b
            },
            &["R2152", STRUCTURE],
        ),
        (
            "R2152",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                b["identifier"]["value"] = json!("1318814790^24^0123-IDa");
                b
            },
            &[],
        ),
        (
            "R9011",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                remove_ext(obs(&mut b, 1), "JP_eCS_InstitutionNumber");
                b
            },
            &["R9012"],
        ),
        (
            "R9012",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 1);
                for e in o["extension"].as_array_mut().unwrap() {
                    if e["url"].as_str().unwrap().contains("InstitutionNumber") {
                        e["valueIdentifier"]["value"] = json!("5318814790");
                    }
                }
                b
            },
            &["valid-value-institutionNumberExtension"],
        ),
        (
            "R9013C",
            Severity::Error,
            || {
                let mut b = cond_bundle();
                remove(obs(&mut b, 1), "onsetDateTime");
                b
            },
            &[],
        ),
        (
            "R9014C",
            Severity::Error,
            || {
                let mut b = cond_bundle();
                remove_ext(obs(&mut b, 1), "JP_eCS_Department");
                b
            },
            &[],
        ),
        (
            "R9013O",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 2);
                o["contained"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|c| c["resourceType"] != "Encounter");
                remove(o, "encounter");
                b
            },
            &["R9016O"],
        ),
        (
            "R9014O",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                remove_ext(obs(&mut b, 1), "JP_eCS_Department");
                b
            },
            &[],
        ),
        (
            "R9016O",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 1);
                let enc = o["encounter"].clone();
                remove(o, "encounter");
                // The contained Encounter stays referenced (dom-3).
                o["focus"] = json!([enc]);
                b
            },
            &[],
        ),
        (
            "R9017O",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 2);
                let perf = o["performer"].clone();
                remove(o, "performer");
                // The contained Practitioner stays referenced (dom-3).
                o["focus"] = perf;
                b
            },
            &["needs-performer-on-CLINS"],
        ),
        (
            "R9019O",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 2);
                o["contained"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|c| c["resourceType"] != "Practitioner");
                o["performer"] = json!([{"display": "検査 太郎"}]);
                b
            },
            &[],
        ),
        (
            "R6021",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 1);
                o["code"]["coding"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|c| !c["system"].as_str().unwrap().contains("LocalCode"));
                b
            },
            &["warn-localCode-observation-laboresult"],
        ),
        (
            "R6031",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                obs(&mut b, 1)["meta"]["tag"] = json!([{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "LTS"}]);
                b
            },
            &[],
        ),
        (
            "R6081",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                obs(&mut b, 1)["hasMember"] =
                    json!([{"reference": "urn:uuid:fd601925-858c-2d96-f061-9de1076d419c"}]);
                b
            },
            &[],
        ),
        (
            "R1010",
            Severity::Error,
            || {
                let mut p = patient();
                p["identifier"][0]["system"] = json!("urn:oid:1.2.392.100495.20.3.51.21318814790");
                p
            },
            &[],
        ),
        (
            "R1012",
            Severity::Error,
            || {
                let mut p = patient();
                p["identifier"][1]["system"] =
                    json!("http://jpfhir.jp/fhir/clins/Idsystem/JP_PublicPayer_memberID");
                p
                // R1013's expression also demands the identifier it checks.
            },
            &["R1013"],
        ),
        (
            "R1013",
            Severity::Error,
            || {
                let mut p = patient();
                p["identifier"][1]["value"] = json!("0012345:あいう:１８７:01");
                p
            },
            &[],
        ),
        (
            "R1113",
            Severity::Error,
            || {
                let mut p = patient();
                p["name"][0]["text"] = json!("牧野　爛漫");
                p
            },
            &[],
        ),
        (
            "R5020",
            Severity::Error,
            || {
                let mut m = med_request();
                let coding = m["dosageInstruction"][0]["timing"]["code"]["coding"]
                    .as_array_mut()
                    .unwrap();
                coding.retain(|c| {
                    !c["system"]
                        .as_str()
                        .unwrap()
                        .contains("MedicationUsage_ePrescription")
                });
                m
            },
            &[],
        ),
        (
            "R5021",
            Severity::Error,
            || {
                let mut m = med_request();
                let coding = m["dosageInstruction"][0]["timing"]["code"]["coding"]
                    .as_array_mut()
                    .unwrap();
                coding.push(json!({"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_MedicationUsage_Uncoded_CS", "code": "0X0XXXXXXXXX0000", "display": "ダミー用法コード"}));
                m
            },
            &["R5020"],
        ),
        (
            "R3010",
            Severity::Warning,
            || {
                let mut m = med_request();
                let coding = m["medicationCodeableConcept"]["coding"]
                    .as_array_mut()
                    .unwrap();
                coding.retain(|c| !c["system"].as_str().unwrap().contains("YJ-code"));
                m
            },
            &[],
        ),
        (
            "valid-value-institutionNumberExtension",
            Severity::Error,
            || {
                let mut c = fixture("Condition-Example-JP-Condition-eCS-01.json");
                for e in c["extension"].as_array_mut().unwrap() {
                    if e["url"].as_str().unwrap().contains("InstitutionNumber") {
                        e["valueIdentifier"]["value"] = json!("13188147");
                    }
                }
                c
            },
            &[],
        ),
        (
            "referenceRangeLowUnits-isSameAs-resultValueUnits",
            Severity::Error,
            || {
                let mut b = obs_bundle();
                let o = obs(&mut b, 1);
                o["valueQuantity"] = json!({"value": 3.9, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"});
                o["referenceRange"] = json!([{"low": {"value": 3.8, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}]);
                b
            },
            &[],
        ),
    ]
}

#[test]
fn baselines_are_valid() {
    for (name, v) in [
        ("obs bundle", obs_bundle()),
        ("condition bundle", cond_bundle()),
        ("patient", patient()),
        ("medication request", med_request()),
    ] {
        let out = V.validate(&v, &[]);
        let errors: Vec<_> = out.errors().collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn every_key_is_reported_exactly() {
    let mut failures = Vec::new();
    let base_warn: Vec<Vec<String>> = [obs_bundle(), cond_bundle(), patient(), med_request()]
        .iter()
        .map(|v| issue_keys(v, Severity::Warning))
        .collect();
    let baseline_warnings: Vec<String> = base_warn.into_iter().flatten().collect();
    for (key, severity, mutate, also) in cases() {
        let v = mutate();
        // R0213 is a rule of the Bundle profile about meta.profile itself: validate against
        // the profile explicitly.
        let profiles: &[&str] = if key == "R0213" {
            &["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS"]
        } else {
            &[]
        };
        let out = V.validate(&v, profiles);
        let got = out.keys(severity);
        if !got.contains(&key) {
            failures.push(format!(
                "{key}: not reported; got {:?}",
                out.issues
                    .iter()
                    .filter(|i| i.severity <= Severity::Warning)
                    .map(|i| format!("{} {:?} {}", i.expression, i.key, i.message_en))
                    .collect::<Vec<_>>()
            ));
            continue;
        }
        // Nothing else breaks, except the rules that necessarily break with it.
        let mut other: Vec<&str> = out
            .issues
            .iter()
            .filter(|i| i.severity <= Severity::Warning)
            .filter_map(|i| i.key.as_deref())
            .filter(|k| *k != key && !also.contains(k) && !baseline_warnings.iter().any(|b| b == k))
            .collect();
        other.dedup();
        if !other.is_empty() {
            failures.push(format!("{key}: other keys too: {other:?}"));
        }
        let unkeyed: Vec<String> = out
            .errors()
            .filter(|i| i.key.is_none())
            .map(|i| format!("{} {}", i.expression, i.message_en))
            .collect();
        if !unkeyed.is_empty() && !also.contains(&STRUCTURE) {
            failures.push(format!(
                "{key}: unexpected non-invariant errors {unkeyed:?}"
            ));
        }
        // Messages are bilingual and name the key.
        let issue = out
            .issues
            .iter()
            .find(|i| i.key.as_deref() == Some(key))
            .unwrap();
        assert!(
            issue.message_ja.contains(key) && issue.message_en.contains(key),
            "{issue:?}"
        );
        assert!(
            !issue
                .message_en
                .chars()
                .any(|c| ('\u{3040}'..='\u{30ff}').contains(&c)),
            "English message has kana: {issue:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_example_egfr_lacks_local_code() {
    let o = fixture("Observation-ErrorExample-ObsLabo-eGFR.json");
    let out = V.validate(&o, &[]);
    assert!(out
        .keys(Severity::Warning)
        .contains(&"warn-localCode-observation-laboresult"));
    // Sent to CLINS inside a Bundle it is refused with R6021.
    let mut b = obs_bundle();
    b["entry"][1]["resource"] = o;
    let out = V.validate(&b, &[]);
    assert!(
        out.keys(Severity::Error).contains(&"R6021"),
        "{:#?}",
        out.issues
    );
}

#[test]
fn error_insurance_number_gives_r1013() {
    // Patient-Example-Patient-standard-ErrorInsuranceNo: 枝番 must be 2 digits.
    let mut p = fixture("Patient-Example-JP-Patient-eCS-MAKINO.json");
    assert!(!V.validate(&p, &[]).has_errors());
    for id in p["identifier"].as_array_mut().unwrap() {
        if id["system"] == "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID" {
            id["value"] = json!("00012345:あいう:１８７:1");
        }
    }
    let out = V.validate(&p, &[]);
    assert_eq!(
        out.keys(Severity::Error),
        vec!["R1013"],
        "{:#?}",
        out.issues
    );
    let i = out.errors().next().unwrap();
    assert_eq!(i.expression, "Patient");
    assert!(i.message_ja.starts_with("R1013:"));
}
