//! Batch and transaction Bundles on both stores.

use iryo_testkit::{match_ids, TestServer};
use serde_json::{json, Value};

fn tx(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn transaction_resolves_urn_uuid_and_conditional_references() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        let b = tx(vec![
            json!({"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                   "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "A1"}], "name": [{"family": "取引"}]},
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|A1"}}),
            json!({"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                   "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
                                "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
                   "request": {"method": "POST", "url": "Observation"}}),
        ]);
        let (st, _, resp) = srv.post("/fhir", &b).await;
        assert_eq!(st, 200, "{e}: {resp}");
        assert_eq!(resp["type"], "transaction-response");
        let entries = resp["entry"].as_array().unwrap();
        assert_eq!(entries[0]["response"]["status"], "201 Created");
        let loc = entries[0]["response"]["location"].as_str().unwrap();
        let pid = loc.split('/').nth(1).unwrap().to_string();
        let (_, _, obs) = srv
            .get("/fhir/Observation?subject:Patient.identifier=urn:mrn|A1")
            .await;
        assert_eq!(obs["total"], 1, "{e}: {obs}");
        assert_eq!(
            obs["entry"][0]["resource"]["subject"]["reference"],
            format!("Patient/{pid}")
        );

        // again: ifNoneExist matches, conditional reference resolves to the same patient
        let b2 = tx(vec![
            json!({"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                   "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "A1"}]},
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|A1"}}),
            json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "BP2"},
                                "subject": {"reference": "Patient?identifier=urn:mrn|A1"}},
                   "request": {"method": "POST", "url": "Observation"}}),
        ]);
        let (st, _, resp) = srv.post("/fhir", &b2).await;
        assert_eq!(st, 200, "{e}: {resp}");
        assert_eq!(resp["entry"][0]["response"]["status"], "200 OK");
        let (_, _, pats) = srv.get("/fhir/Patient?identifier=urn:mrn|A1").await;
        assert_eq!(pats["total"], 1);
        let (_, _, obs) = srv
            .get(&format!("/fhir/Observation?subject=Patient/{pid}"))
            .await;
        assert_eq!(obs["total"], 2, "{e}: {obs}");
    }
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        let (_, _, _) = srv
            .put(
                "/fhir/Patient/keep",
                &json!({"resourceType": "Patient", "id": "keep", "gender": "male"}),
            )
            .await;
        // second entry is invalid: nothing of the first may be written
        let b = tx(vec![
            json!({"resource": {"resourceType": "Patient", "name": [{"family": "消えるはず"}]}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"resource": {"resourceType": "Patient", "id": "keep", "gender": "female"}, "request": {"method": "PUT", "url": "Patient/keep"}}),
            json!({"resource": {"resourceType": "Observation", "statusX": "final"}, "request": {"method": "POST", "url": "Observation"}}),
        ]);
        let (st, _, oo) = srv.post("/fhir", &b).await;
        assert_eq!(st, 400, "{e}: {oo}");
        assert!(oo.to_string().contains("Bundle.entry[2]"), "{oo}");
        let (_, _, found) = srv.get("/fhir/Patient?family=消えるはず").await;
        assert_eq!(found["total"], 0, "{e}");
        let (_, _, keep) = srv.get("/fhir/Patient/keep").await;
        assert_eq!(keep["gender"], "male");
        assert_eq!(keep["meta"]["versionId"], "1");
        // a version conflict inside the store also rolls back everything
        let b = tx(vec![
            json!({"resource": {"resourceType": "Patient", "name": [{"family": "これも消える"}]}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"resource": {"resourceType": "Patient", "id": "keep", "gender": "other"}, "request": {"method": "PUT", "url": "Patient/keep", "ifMatch": "W/\"7\""}}),
        ]);
        let (st, _, _) = srv.post("/fhir", &b).await;
        assert_eq!(st, 412, "{e}");
        let (_, _, found) = srv.get("/fhir/Patient?family=これも消える").await;
        assert_eq!(found["total"], 0, "{e}");
        // a reference to a missing conditional target fails the whole transaction
        let b = tx(vec![
            json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=urn:none|0"}}, "request": {"method": "POST", "url": "Observation"}}),
        ]);
        let (st, _, _) = srv.post("/fhir", &b).await;
        assert_eq!(st, 404, "{e}");
        // duplicate fullUrl
        let dup = json!({"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}});
        let (st, _, _) = srv.post("/fhir", &tx(vec![dup.clone(), dup])).await;
        assert_eq!(st, 400);
    }
}

#[tokio::test]
async fn transaction_order_and_reads() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.put(
            "/fhir/Patient/del",
            &json!({"resourceType": "Patient", "id": "del"}),
        )
        .await;
        // GET runs after writes; DELETE before POST/PUT
        let b = tx(vec![
            json!({"request": {"method": "GET", "url": "Patient?_id=new1"}}),
            json!({"resource": {"resourceType": "Patient", "id": "new1", "gender": "female"}, "request": {"method": "PUT", "url": "Patient/new1"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/del"}}),
        ]);
        let (st, _, resp) = srv.post("/fhir", &b).await;
        assert_eq!(st, 200, "{e}: {resp}");
        assert_eq!(resp["entry"][0]["resource"]["total"], 1, "{e}: {resp}");
        assert_eq!(resp["entry"][1]["response"]["status"], "201 Created");
        assert_eq!(resp["entry"][2]["response"]["status"], "204 No Content");
        let (st, _, _) = srv.get("/fhir/Patient/del").await;
        assert_eq!(st, 410);
    }
}

#[tokio::test]
async fn batch_entries_are_independent() {
    for srv in TestServer::all().await {
        let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "id": "b1"}, "request": {"method": "PUT", "url": "Patient/b1"}},
            {"resource": {"resourceType": "Patient", "bogus": 1}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/b1"}},
            {"request": {"method": "GET", "url": "Patient/missing"}}
        ]});
        let (st, _, resp) = srv.post("/fhir", &b).await;
        assert_eq!(st, 200, "{resp}");
        assert_eq!(resp["type"], "batch-response");
        let e = resp["entry"].as_array().unwrap();
        assert_eq!(e[0]["response"]["status"], "201 Created");
        assert!(e[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("400"));
        assert_eq!(
            e[1]["response"]["outcome"]["resourceType"],
            "OperationOutcome"
        );
        assert_eq!(e[2]["response"]["status"], "200 OK");
        assert!(e[3]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("404"));
        let (_, _, all) = srv.get("/fhir/Patient").await;
        assert_eq!(match_ids(&all), vec!["b1"]);
    }
}
