//! Broken variants of valid resources: each asserts the exact location and issue code.

use iryo_fhir_spec::{r4, Issue, Severity};
use serde_json::{json, Value};

fn issues(v: Value) -> Vec<Issue> {
    r4().check_structure(&v)
}

/// Exactly one error, at `expr`, with `code`.
fn one(v: Value, expr: &str, code: &str) -> Issue {
    let is = issues(v);
    assert_eq!(is.len(), 1, "{is:#?}");
    assert_eq!(is[0].expression, expr, "{is:#?}");
    assert_eq!(is[0].code, code, "{is:#?}");
    assert_eq!(is[0].severity, Severity::Error);
    assert!(!is[0].message_ja.is_empty() && !is[0].message_en.is_empty());
    is[0].clone()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678+09:00"},
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51", "value": "12345"}],
        "name": [{"family": "山田", "given": ["太郎", "次郎"], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "じろう"}]}]}],
        "gender": "male",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T10:00:00+09:00"}]},
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "contact": [{"name": {"text": "山田花子"}, "telecom": [{"system": "phone", "value": "03-1234-5678"}]}],
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "病院"}],
        "managingOrganization": {"reference": "#org1"}
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02",
        "valueQuantity": {"value": 1.50, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [{"code": {"text": "x"}, "valueString": "y"}]
    })
}

#[test]
fn valid_resources_pass() {
    assert_eq!(issues(patient()), vec![]);
    assert_eq!(issues(observation()), vec![]);
}

#[test]
fn unknown_element() {
    let mut p = patient();
    p["name"][0]["nickname"] = json!("taro");
    let i = one(p, "Patient.name[0].nickname", "structure");
    assert!(i.message_en.contains("nickname"));
    let mut p = patient();
    p["foo"] = json!(1);
    one(p, "Patient.foo", "structure");
}

#[test]
fn wrong_json_kinds() {
    let mut p = patient();
    p["active"] = json!("true");
    one(p, "Patient.active", "structure");
    let mut p = patient();
    p["name"] = json!({"family": "x"});
    one(p, "Patient.name", "structure");
    let mut p = patient();
    p["gender"] = json!(["male"]);
    one(p, "Patient.gender", "structure");
    let mut p = patient();
    p["multipleBirthInteger"] = json!("2");
    one(p, "Patient.multipleBirth.ofType(integer)", "structure");
    let mut p = patient();
    p["name"][0]["given"][1] = json!(5);
    one(p, "Patient.name[0].given[1]", "structure");
    let mut p = patient();
    p["contact"][0]["name"] = json!("山田花子");
    one(p, "Patient.contact[0].name", "structure");
}

#[test]
fn bad_primitive_values() {
    let mut p = patient();
    p["birthDate"] = json!("1970-02-30");
    let i = one(p, "Patient.birthDate", "value");
    assert!(i.message_en.contains("1970-02-30"));
    let mut p = patient();
    p["meta"]["lastUpdated"] = json!("2024-01-02");
    one(p, "Patient.meta.lastUpdated", "value");
    let mut p = patient();
    p["gender"] = json!(" male");
    one(p, "Patient.gender", "value");
    let mut p = patient();
    p["multipleBirthInteger"] = json!(1.5);
    one(p, "Patient.multipleBirth.ofType(integer)", "value");
    let mut p = patient();
    p["multipleBirthInteger"] = json!(2147483648u64);
    one(p, "Patient.multipleBirth.ofType(integer)", "value");
    let mut p = patient();
    p["identifier"][0]["system"] = json!("urn:oid:1.2 3");
    one(p, "Patient.identifier[0].system", "value");
    let mut o = observation();
    o["effectiveDateTime"] = json!("2024-01-02T10:00:00");
    one(o, "Observation.effective.ofType(dateTime)", "value");
}

#[test]
fn bad_id() {
    let mut p = patient();
    p["id"] = json!("a_b");
    one(p, "Patient.id", "value");
    let mut p = patient();
    p["contained"][0]["id"] = json!("x".repeat(65));
    one(p, "Patient.contained[0].id", "value");
    // Element ids are plain strings: no id format.
    let mut p = patient();
    p["name"][0]["id"] = json!("name_1");
    assert_eq!(issues(p), vec![]);
}

#[test]
fn missing_required() {
    let mut o = observation();
    o.as_object_mut().unwrap().remove("status");
    let i = one(o, "Observation.status", "required");
    assert!(i.message_en.contains("status"));
    let mut o = observation();
    o["component"][0].as_object_mut().unwrap().remove("code");
    one(o, "Observation.component[0].code", "required");
    // A primitive given only by its extension is present.
    let mut o = observation();
    o.as_object_mut().unwrap().remove("status");
    o["_status"] = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
    assert_eq!(issues(o), vec![]);
    // Required choice: Extension.url is required.
    let mut p = patient();
    p["extension"] = json!([{"valueString": "x"}]);
    one(p, "Patient.extension[0].url", "required");
}

#[test]
fn two_choice_values() {
    let mut o = observation();
    o["valueString"] = json!("x");
    let i = one(o, "Observation.value", "structure");
    assert!(i.message_en.contains("valueQuantity") && i.message_en.contains("valueString"));
    // value and its _value are the same variant.
    let mut o = observation();
    o["_effectiveDateTime"] = json!({"id": "e1"});
    assert_eq!(issues(o), vec![]);
    // A choice suffix that is not an allowed type.
    let mut o = observation();
    o.as_object_mut().unwrap().remove("valueQuantity");
    o["valueAddress"] = json!({"text": "x"});
    let i = one(o, "Observation.valueAddress", "structure");
    assert!(i.message_en.contains("value[x]"), "{}", i.message_en);
}

#[test]
fn empty_values() {
    let mut p = patient();
    p["identifier"] = json!([]);
    one(p, "Patient.identifier", "structure");
    let mut p = patient();
    p["name"][0]["family"] = json!("");
    one(p, "Patient.name[0].family", "value");
    let mut p = patient();
    p["maritalStatus"] = json!({});
    one(p, "Patient.maritalStatus", "structure");
}

#[test]
fn primitive_extensions() {
    // _given longer than given.
    let mut p = patient();
    p["name"][0]["_given"] = json!([null, {"id": "a"}, {"id": "b"}]);
    one(p, "Patient.name[0].given", "structure");
    // null in given without an extension at that index.
    let mut p = patient();
    p["name"][0]["given"] = json!(["太郎", null]);
    p["name"][0]["_given"] = json!([{"id": "a"}, null]);
    let is = issues(p);
    assert_eq!(is.len(), 2, "{is:#?}");
    assert_eq!(is[0].expression, "Patient.name[0].given[1]");
    assert_eq!(is[1].expression, "Patient.name[0].given[1]");
    // null in given with an extension there is fine.
    let mut p = patient();
    p["name"][0]["given"] = json!(["太郎", null]);
    assert_eq!(issues(p), vec![]);
    // Unknown key inside a primitive's extension object.
    let mut p = patient();
    p["_birthDate"]["value"] = json!("1970");
    one(p, "Patient.birthDate.value", "structure");
    // Extension errors inside.
    let mut p = patient();
    p["_birthDate"]["extension"][0]["url"] = json!(1);
    one(p, "Patient.birthDate.extension[0].url", "structure");
    // xhtml has no extensions (xhtml.extension max 0).
    let mut p = patient();
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", "_div": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}});
    one(p, "Patient.text.div.extension", "structure");
    // _ on a complex element.
    let mut p = patient();
    p["_contact"] = json!([{"id": "x"}]);
    one(p, "Patient._contact", "structure");
}

#[test]
fn nested_resources() {
    let mut p = patient();
    p["contained"][0]["name"] = json!(["病院"]);
    one(p, "Patient.contained[0].name", "structure");
    let mut p = patient();
    p["contained"][0]["resourceType"] = json!("Hospital");
    one(p, "Patient.contained[0].resourceType", "not-supported");
    let mut p = patient();
    p["contained"][0]
        .as_object_mut()
        .unwrap()
        .remove("resourceType");
    one(p, "Patient.contained[0]", "required");
    let b = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1"}}, "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    one(
        b,
        "Bundle.entry[1].resource.value.ofType(Quantity).value",
        "structure",
    );
    let params = json!({
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "birthDate": "19700101"}}]
    });
    one(
        params,
        "Parameters.parameter[0].resource.birthDate",
        "value",
    );
}

#[test]
fn resource_type_problems() {
    one(json!({"id": "x"}), "Resource", "required");
    one(
        json!({"resourceType": "DomainResource"}),
        "Resource.resourceType",
        "not-supported",
    );
    one(
        json!({"resourceType": "Patiant"}),
        "Resource.resourceType",
        "not-supported",
    );
    one(json!(["Patient"]), "Resource", "structure");
    one(
        json!({"resourceType": 5}),
        "Resource.resourceType",
        "structure",
    );
    // resourceType inside a datatype is an unknown element.
    let mut p = patient();
    p["name"][0]["resourceType"] = json!("HumanName");
    one(p, "Patient.name[0].resourceType", "structure");
}

#[test]
fn backbone_and_content_reference() {
    let q = json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "item": [{"linkId": "1.1.1", "type": "boolean", "bogus": 1}]}]}]
    });
    one(
        q,
        "Questionnaire.item[0].item[0].item[0].bogus",
        "structure",
    );
    let q = json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"type": "string"}]}]
    });
    one(q, "Questionnaire.item[0].item[0].linkId", "required");
}

#[test]
fn decimals_keep_text() {
    let o: Value = serde_json::from_str(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50e2}}"#,
    )
    .unwrap();
    assert_eq!(issues(o), vec![]);
}

#[test]
fn many_errors_reported() {
    let p = json!({"resourceType": "Patient", "id": "bad id", "gender": 1, "foo": [], "name": [{"given": [""]}]});
    let is = issues(p);
    let exprs: Vec<&str> = is.iter().map(|i| i.expression.as_str()).collect();
    assert_eq!(
        exprs,
        [
            "Patient.id",
            "Patient.gender",
            "Patient.foo",
            "Patient.name[0].given[0]"
        ]
    );
}

#[test]
fn check_value_of_datatypes_and_backbones() {
    let m = r4();
    assert_eq!(
        m.check_value(
            "HumanName",
            &json!({"family": "山田", "given": ["太郎"]}),
            "name"
        ),
        vec![]
    );
    let is = m.check_value("HumanName", &json!({"family": ["山田"]}), "Patient.name[0]");
    assert_eq!(is.len(), 1);
    assert_eq!(is[0].expression, "Patient.name[0].family");
    let is = m.check_value(
        "Patient.contact",
        &json!({"gender": "x  y"}),
        "Patient.contact[0]",
    );
    assert_eq!(is.len(), 1, "{is:#?}");
    assert_eq!(
        (is[0].expression.as_str(), is[0].code),
        ("Patient.contact[0].gender", "value")
    );
    assert_eq!(
        m.check_value("Nope", &json!({}), "x")[0].code,
        "not-supported"
    );
    assert_eq!(
        m.check_value("Coding", &json!("x"), "c")[0].code,
        "structure"
    );
}

#[test]
fn issues_are_capped() {
    let mut p = serde_json::Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    for i in 0..5000 {
        p.insert(format!("bogus{i}"), json!(1));
    }
    let is = issues(Value::Object(p));
    assert_eq!(is.len(), iryo_fhir_spec::MAX_ISSUES + 1);
    assert_eq!(is.last().unwrap().code, "too-costly");
    let given: Vec<Value> = (0..5000).map(|_| json!(5)).collect();
    let is = issues(json!({"resourceType": "Patient", "name": [{"given": given}]}));
    assert_eq!(is.len(), iryo_fhir_spec::MAX_ISSUES + 1);
}
