//! `$validate` over HTTP: base R4 and JP Core profiles, messages in Japanese or English.

use iryo_testkit::TestServer;
use serde_json::json;

#[tokio::test]
async fn validate_operation() {
    let srv = TestServer::sqlite().await;
    // valid base R4 Patient: no error issues
    let ok = json!({"resourceType": "Patient", "name": [{"family": "山田"}], "gender": "male"});
    let (st, _, oo) = srv.post("/fhir/Patient/$validate", &ok).await;
    assert_eq!(st, 200, "{oo}");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        !oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["severity"] == "error"),
        "{oo}"
    );
    // invalid code for a required binding, checked against the JP Core Patient profile
    let bad = json!({"resourceType": "Patient", "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]},
        "name": [{"family": "山田"}], "gender": "mail"});
    let (st, _, oo) = srv.post("/fhir/$validate", &bad).await;
    assert_eq!(st, 200, "{oo}");
    let errors: Vec<_> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .collect();
    assert!(!errors.is_empty(), "{oo}");
    assert!(oo.to_string().contains("gender"), "{oo}");
    // nothing is stored by $validate
    let (_, _, b) = srv.get("/fhir/Patient").await;
    assert_eq!(b["total"], 0);
    // malformed body → OperationOutcome 400
    let (st, _, oo) = srv
        .request(
            "POST",
            "/fhir/Patient/$validate",
            &[("content-type", "application/fhir+json")],
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn validation_on_write_per_tenant() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("strict-clinic").await;
        let t = srv.store.tenant_id("strict-clinic").await.unwrap().unwrap();
        srv.store
            .tenant_set_settings(t, json!({"validation": "profiles"}))
            .await
            .unwrap();
        // gender 'mail' breaks the required binding of JP_Patient: structurally it is a valid code
        let bad = json!({"resourceType": "Patient", "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]},
            "name": [{"family": "山田"}], "gender": "mail"});
        // the default tenant validates against base R4: the required binding of
        // Patient.gender refuses 'mail' too
        let (st, _, b) = srv.post("/fhir/Patient", &bad).await;
        assert_eq!(st, 422, "{e}: base R4 validation on write: {b}");
        assert!(b.to_string().contains("gender"), "{b}");
        // a tenant with validation off keeps only the structural check
        srv.tenant("no-validation").await;
        let t_off = srv.store.tenant_id("no-validation").await.unwrap().unwrap();
        srv.store
            .tenant_set_settings(t_off, json!({"validation": "off"}))
            .await
            .unwrap();
        let (st, _, b) = srv.post("/t/no-validation/fhir/Patient", &bad).await;
        assert_eq!(st, 201, "{e}: {b}");
        let (st, _, oo) = srv.post("/t/strict-clinic/fhir/Patient", &bad).await;
        assert_eq!(st, 422, "{e}: {oo}");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo.to_string().contains("gender"), "{oo}");
        // also inside a transaction: nothing stored
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "可"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": bad, "request": {"method": "POST", "url": "Patient"}}]});
        let (st, _, _) = srv.post("/t/strict-clinic/fhir", &tx).await;
        assert_eq!(st, 422, "{e}");
        let (_, _, b) = srv.get("/t/strict-clinic/fhir/Patient").await;
        assert_eq!(b["total"], 0, "{e}: nothing stored");
        // a valid JP Patient is accepted by the strict tenant
        let good = json!({"resourceType": "Patient", "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]},
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11310000001", "value": "00001"}],
            "name": [{"family": "山田", "given": ["太郎"]}], "gender": "male", "birthDate": "1980-05-01"});
        let (st, _, b) = srv.post("/t/strict-clinic/fhir/Patient", &good).await;
        assert_eq!(st, 201, "{e}: {b}");
    }
}
