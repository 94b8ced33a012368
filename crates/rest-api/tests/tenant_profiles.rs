//! StructureDefinitions a tenant stores drive `$validate` and `profiles` validation on write in
//! that tenant — and only there.

use iryo_testkit::TestServer;
use serde_json::{json, Value};

const URL: &str = "https://clinic-a.example.jp/fhir/StructureDefinition/clinic-patient";

/// The base R4 Patient definition as a profile of the clinic requiring `birthDate` (min 1 in
/// the snapshot), or not.
fn clinic_patient(birth_date_required: bool) -> Value {
    let mut sd =
        iryo_fhir_spec::r4_definition_by_url("http://hl7.org/fhir/StructureDefinition/Patient")
            .expect("base Patient definition");
    let o = sd.as_object_mut().unwrap();
    o.insert("id".into(), json!("clinic-patient"));
    o.insert("url".into(), json!(URL));
    o.insert("name".into(), json!("ClinicPatient"));
    o.insert("derivation".into(), json!("constraint"));
    o.insert(
        "baseDefinition".into(),
        json!("http://hl7.org/fhir/StructureDefinition/Patient"),
    );
    o.remove("differential");
    o.remove("text");
    for e in sd["snapshot"]["element"].as_array_mut().unwrap() {
        // the definitions embedded in iryo are compacted (no texts): give each element what
        // a published snapshot has (sdf-3, eld-18)
        if e.get("definition").is_none() {
            e["definition"] = json!("定義 (definition)");
        }
        if e["isModifier"] == true && e.get("isModifierReason").is_none() {
            e["isModifierReason"] = json!("modifier");
        }
        if e["path"] == "Patient.birthDate" {
            e["min"] = json!(if birth_date_required { 1 } else { 0 });
        }
    }
    sd
}

fn errors(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["severity"] == "error" || i["severity"] == "fatal")
                .map(|i| i.to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn tenant_structure_definitions_drive_validation_in_that_tenant_only() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("clinic-a").await;
        srv.tenant("clinic-b").await;
        let (st, _, b) = srv
            .put(
                "/t/clinic-a/fhir/StructureDefinition/clinic-patient",
                &clinic_patient(true),
            )
            .await;
        assert!(st == 201 || st == 200, "{e}: {b}");
        let no_birth = json!({"resourceType": "Patient", "meta": {"profile": [URL]}, "name": [{"family": "山田"}]});
        let with_birth = json!({"resourceType": "Patient", "meta": {"profile": [URL]}, "name": [{"family": "山田"}], "birthDate": "1980-05-01"});
        let (st, _, oo) = srv
            .post("/t/clinic-a/fhir/Patient/$validate", &no_birth)
            .await;
        assert_eq!(st, 200, "{e}: {oo}");
        let errs = errors(&oo);
        assert!(errs.iter().any(|x| x.contains("birthDate")), "{e}: {oo}");
        let (_, _, oo) = srv
            .post("/t/clinic-a/fhir/Patient/$validate", &with_birth)
            .await;
        assert!(errors(&oo).is_empty(), "{e}: {oo}");
        // another tenant does not know the definition
        let (_, _, oo) = srv
            .post("/t/clinic-b/fhir/Patient/$validate", &no_birth)
            .await;
        assert!(
            !errors(&oo).iter().any(|x| x.contains("birthDate")),
            "{e}: {oo}"
        );
        // validation on write in profiles mode uses it too
        let t = srv.store.tenant_id("clinic-a").await.unwrap().unwrap();
        srv.store
            .tenant_set_settings(t, json!({"validation": "profiles"}))
            .await
            .unwrap();
        let (st, _, oo) = srv.post("/t/clinic-a/fhir/Patient", &no_birth).await;
        assert_eq!(st, 422, "{e}: {oo}");
        assert_eq!(
            srv.post("/t/clinic-a/fhir/Patient", &with_birth).await.0,
            201
        );
        // an updated definition is used at once
        let (st, _, b) = srv
            .put(
                "/t/clinic-a/fhir/StructureDefinition/clinic-patient",
                &clinic_patient(false),
            )
            .await;
        assert_eq!(st, 200, "{e}: {b}");
        let (st, _, oo) = srv.post("/t/clinic-a/fhir/Patient", &no_birth).await;
        assert_eq!(st, 201, "{e}: {oo}");
    }
}
