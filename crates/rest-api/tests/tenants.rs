//! Tenant isolation: nothing of one tenant is reachable from another, for every feature.

use iryo_testkit::{match_ids, TestServer};
use serde_json::json;

async fn seed(srv: &TestServer, base: &str, family: &str) {
    let r = |v: serde_json::Value| v;
    for v in [
        r(json!({"resourceType": "Organization", "id": "org", "name": format!("{family}病院")})),
        r(
            json!({"resourceType": "Patient", "id": "p", "name": [{"family": family}], "identifier": [{"system": "urn:mrn", "value": "1"}],
            "managingOrganization": {"reference": "Organization/org"}}),
        ),
        r(
            json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"}]},
            "subject": {"reference": "Patient/p"}}),
        ),
    ] {
        let path = format!(
            "{base}/{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let (st, _, b) = srv.put(&path, &v).await;
        assert!(st == 201 || st == 200, "{b}");
    }
}

#[tokio::test]
async fn tenants_are_isolated_for_every_feature() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("clinic-a").await;
        srv.tenant("clinic-b").await;
        let (a, b) = ("/t/clinic-a/fhir", "/t/clinic-b/fhir");
        seed(&srv, a, "青木").await;
        // clinic-b has only a patient with another id
        srv.put(
            &format!("{b}/Patient/q"),
            &json!({"resourceType": "Patient", "id": "q", "name": [{"family": "別院"}]}),
        )
        .await;

        // read, vread, history
        assert_eq!(srv.get(&format!("{b}/Patient/p")).await.0, 404, "{e}");
        assert_eq!(srv.get(&format!("{b}/Patient/p/_history/1")).await.0, 404);
        assert_eq!(srv.get(&format!("{b}/Patient/p/_history")).await.0, 404);
        let (_, _, h) = srv.get(&format!("{b}/_history")).await;
        assert_eq!(h["total"], 1, "{e}: {h}");
        let (_, _, h) = srv.get(&format!("{b}/Observation/_history")).await;
        assert_eq!(h["total"], 0);
        // search, chain, _has, include, revinclude, compartment, system search
        let (_, _, s) = srv.get(&format!("{b}/Patient?family=青木")).await;
        assert_eq!(s["total"], 0);
        let (_, _, s) = srv
            .get(&format!("{b}/Observation?subject:Patient.family=青木"))
            .await;
        assert_eq!(s["total"], 0);
        let (_, _, s) = srv
            .get(&format!("{b}/Patient?_has:Observation:subject:code=1-1"))
            .await;
        assert_eq!(s["total"], 0);
        let (_, _, s) = srv
            .get(&format!(
                "{b}/Patient?_revinclude=Observation:subject&_include=Patient:organization"
            ))
            .await;
        assert_eq!(s["entry"].as_array().unwrap().len(), 1, "{e}: {s}");
        let (_, _, s) = srv.get(&format!("{b}/Patient/p/Observation")).await;
        assert_eq!(s["total"], 0);
        let (_, _, s) = srv.get(&format!("{b}?_id=p")).await;
        assert_eq!(s["total"], 0);
        // a reference in tenant b to Patient/p does not reach tenant a's patient through _include
        srv.put(&format!("{b}/Observation/x"), &json!({"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}})).await;
        let (_, _, s) = srv
            .get(&format!("{b}/Observation?_include=Observation:subject"))
            .await;
        assert_eq!(s["entry"].as_array().unwrap().len(), 1, "{e}: {s}");
        // conditional create/update/delete do not match the other tenant
        let (st, _, _) = srv
            .request(
                "POST",
                &format!("{b}/Patient"),
                &[
                    ("content-type", "application/fhir+json"),
                    ("if-none-exist", "identifier=urn:mrn|1"),
                ],
                json!({"resourceType": "Patient"}).to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 201, "{e}");
        assert_eq!(srv.delete(&format!("{b}/Patient?family=青木")).await.0, 204);
        assert_eq!(
            srv.get(&format!("{a}/Patient/p")).await.0,
            200,
            "{e}: tenant a untouched"
        );
        // transaction conditional references stay in the tenant
        let t = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
            "subject": {"reference": "Patient?family=青木"}}, "request": {"method": "POST", "url": "Observation"}}]});
        assert_eq!(srv.post(b, &t).await.0, 404, "{e}");
        // same ids in both tenants are different resources
        srv.put(
            &format!("{b}/Patient/p"),
            &json!({"resourceType": "Patient", "id": "p", "name": [{"family": "同じID"}]}),
        )
        .await;
        let (_, _, pa) = srv.get(&format!("{a}/Patient/p")).await;
        assert_eq!(pa["name"][0]["family"], "青木");
        assert_eq!(pa["meta"]["versionId"], "1");
        // the default tenant sees none of it
        let (_, _, d) = srv.get("/fhir/Patient").await;
        assert_eq!(match_ids(&d), Vec::<String>::new());
        // unknown tenant
        let (st, _, oo) = srv.get("/t/nope/fhir/Patient").await;
        assert_eq!(st, 404);
        assert_eq!(oo["resourceType"], "OperationOutcome");
    }
}

#[tokio::test]
async fn api_token_is_required_when_configured() {
    let cfg = iryo_rest_api::Config {
        api_token: Some("x".repeat(40)),
        ..Default::default()
    };
    let srv = TestServer::sqlite_with(cfg).await;
    let (st, _, oo) = srv.get("/fhir/metadata").await;
    assert_eq!(st, 401);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (st, _, _) = srv
        .get_with(
            "/fhir/metadata",
            &[("authorization", &format!("Bearer {}", "y".repeat(40)))],
        )
        .await;
    assert_eq!(st, 401);
    let (st, _, _) = srv
        .get_with(
            "/fhir/metadata",
            &[("authorization", &format!("Bearer {}", "x".repeat(40)))],
        )
        .await;
    assert_eq!(st, 200);
}
