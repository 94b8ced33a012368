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
