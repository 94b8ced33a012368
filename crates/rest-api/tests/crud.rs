//! CRUD, versioning and conditional interactions over real HTTP, on SQLite and PostgreSQL.

use iryo_testkit::TestServer;
use serde_json::json;

fn patient(family: &str) -> serde_json::Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["太郎"]}], "birthDate": "1980-05-01", "gender": "male"})
}

#[tokio::test]
async fn create_read_update_delete_history() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        let (st, h, body) = srv.post("/fhir/Patient", &patient("山田")).await;
        assert_eq!(st, 201, "{e}: {body}");
        let id = body["id"].as_str().unwrap().to_string();
        assert_eq!(body["meta"]["versionId"], "1");
        assert_eq!(h["etag"], "W/\"1\"");
        assert!(h["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/fhir/Patient/{id}/_history/1")));
        assert!(h.contains_key("last-modified"));

        let (st, h, got) = srv.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, 200);
        assert_eq!(got["name"][0]["family"], "山田");
        assert_eq!(h["etag"], "W/\"1\"");

        // If-None-Match → 304
        let (st, _, _) = srv
            .get_with(
                &format!("/fhir/Patient/{id}"),
                &[("if-none-match", "W/\"1\"")],
            )
            .await;
        assert_eq!(st, 304);

        // update with If-Match
        let mut upd = got.clone();
        upd["name"][0]["family"] = json!("佐藤");
        let (st, h, body) = srv
            .request(
                "PUT",
                &format!("/fhir/Patient/{id}"),
                &[
                    ("content-type", "application/fhir+json"),
                    ("if-match", "W/\"1\""),
                ],
                upd.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 200, "{e}: {body}");
        assert_eq!(h["etag"], "W/\"2\"");
        assert_eq!(body["meta"]["versionId"], "2");

        // stale If-Match → 412
        let (st, _, body) = srv
            .request(
                "PUT",
                &format!("/fhir/Patient/{id}"),
                &[
                    ("content-type", "application/fhir+json"),
                    ("if-match", "W/\"1\""),
                ],
                upd.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 412, "{e}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");

        // vread
        let (st, _, v1) = srv.get(&format!("/fhir/Patient/{id}/_history/1")).await;
        assert_eq!(st, 200);
        assert_eq!(v1["name"][0]["family"], "山田");
        let (st, _, _) = srv.get(&format!("/fhir/Patient/{id}/_history/9")).await;
        assert_eq!(st, 404);

        // delete, then read → 410, history has 3 entries
        let (st, _, _) = srv.delete(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, 204);
        let (st, _, oo) = srv.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, 410);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let (st, _, hist) = srv.get(&format!("/fhir/Patient/{id}/_history")).await;
        assert_eq!(st, 200);
        assert_eq!(hist["type"], "history");
        assert_eq!(hist["total"], 3);
        let methods: Vec<&str> = hist["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);

        // update-as-create with a client id
        let mut p = patient("鈴木");
        p["id"] = json!("client-chosen-1");
        let (st, _, body) = srv.put("/fhir/Patient/client-chosen-1", &p).await;
        assert_eq!(st, 201, "{e}: {body}");
        let (st, _, _) = srv.get("/fhir/Patient/client-chosen-1").await;
        assert_eq!(st, 200);

        // type and system history
        let (_, _, th) = srv.get("/fhir/Patient/_history").await;
        assert_eq!(th["total"], 4);
        let (_, _, sh) = srv.get("/fhir/_history?_count=2").await;
        assert_eq!(sh["entry"].as_array().unwrap().len(), 2);
        assert!(sh["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"));
    }
}

#[tokio::test]
async fn decimals_and_json_fidelity() {
    for srv in TestServer::all().await {
        let obs = json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "valueQuantity": {"value": 1.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        });
        // send the exact text "1.50" and "1e2"
        let text = obs
            .to_string()
            .replace("1.5,", "1.50,")
            .replace("1.5}", "1.50}");
        let (st, _, body) = srv
            .request(
                "POST",
                "/fhir/Observation",
                &[("content-type", "application/fhir+json")],
                text.into_bytes(),
            )
            .await;
        assert_eq!(st, 201, "{}: {body}", srv.engine);
        let id = body["id"].as_str().unwrap();
        let r = srv
            .client
            .get(srv.url(&format!("/fhir/Observation/{id}")))
            .send()
            .await
            .unwrap();
        let raw = r.text().await.unwrap();
        assert!(raw.contains("\"value\":1.50"), "decimal text kept: {raw}");
    }
}

#[tokio::test]
async fn conditional_create_update_delete() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        let mut p = patient("田中");
        p["identifier"] =
            json!([{"system": "urn:oid:1.2.392.100495.20.3.51.11234567890", "value": "00001"}]);
        let cond = "identifier=urn:oid:1.2.392.100495.20.3.51.11234567890|00001";
        let (st, _, first) = srv
            .request(
                "POST",
                "/fhir/Patient",
                &[
                    ("content-type", "application/fhir+json"),
                    ("if-none-exist", cond),
                ],
                p.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 201, "{e}: {first}");
        let (st, _, again) = srv
            .request(
                "POST",
                "/fhir/Patient",
                &[
                    ("content-type", "application/fhir+json"),
                    ("if-none-exist", cond),
                ],
                p.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 200, "{e}: {again}");
        assert_eq!(again["id"], first["id"]);

        // conditional update of the match
        let mut p2 = p.clone();
        p2["gender"] = json!("female");
        let (st, _, upd) = srv.put(&format!("/fhir/Patient?{cond}"), &p2).await;
        assert_eq!(st, 200, "{e}: {upd}");
        assert_eq!(upd["id"], first["id"]);
        assert_eq!(upd["meta"]["versionId"], "2");

        // no match → create
        let mut p3 = patient("新規");
        p3["identifier"] = json!([{"system": "urn:x", "value": "new"}]);
        let (st, _, created) = srv.put("/fhir/Patient?identifier=urn:x|new", &p3).await;
        assert_eq!(st, 201, "{e}: {created}");

        // two matches → 412
        let (_, _, _) = srv.post("/fhir/Patient", &patient("重複")).await;
        let (_, _, _) = srv.post("/fhir/Patient", &patient("重複")).await;
        let (st, _, oo) = srv.put("/fhir/Patient?family=重複", &patient("重複")).await;
        assert_eq!(st, 412, "{e}: {oo}");

        // conditional delete
        let (st, _, _) = srv.delete("/fhir/Patient?identifier=urn:x|new").await;
        assert_eq!(st, 204);
        let (st, _, _) = srv
            .get(&format!(
                "/fhir/Patient/{}",
                created["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(st, 410);
    }
}

#[tokio::test]
async fn json_patch() {
    for srv in TestServer::all().await {
        let (_, _, p) = srv.post("/fhir/Patient", &patient("パッチ")).await;
        let id = p["id"].as_str().unwrap();
        let ops = json!([{"op": "replace", "path": "/gender", "value": "female"}, {"op": "add", "path": "/active", "value": true}]);
        let (st, _, body) = srv
            .request(
                "PATCH",
                &format!("/fhir/Patient/{id}"),
                &[("content-type", "application/json-patch+json")],
                ops.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 200, "{}: {body}", srv.engine);
        assert_eq!(body["gender"], "female");
        assert_eq!(body["active"], true);
        assert_eq!(body["meta"]["versionId"], "2");
        // a patch producing an invalid resource is refused
        let bad = json!([{"op": "add", "path": "/unknownElement", "value": 1}]);
        let (st, _, oo) = srv
            .request(
                "PATCH",
                &format!("/fhir/Patient/{id}"),
                &[("content-type", "application/json-patch+json")],
                bad.to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 422, "{oo}");
        let (_, _, cur) = srv.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(cur["meta"]["versionId"], "2");
    }
}

#[tokio::test]
async fn bad_input_gets_operation_outcomes() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        // malformed JSON
        let (st, _, oo) = srv
            .request(
                "POST",
                "/fhir/Patient",
                &[("content-type", "application/fhir+json")],
                b"{\"resourceType\": \"Patient\",".to_vec(),
            )
            .await;
        assert_eq!(st, 400, "{e}");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        // wrong content type
        let (st, _, oo) = srv
            .request(
                "POST",
                "/fhir/Patient",
                &[("content-type", "text/plain")],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(st, 415);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        // unknown element, with its path
        let (st, _, oo) = srv
            .post(
                "/fhir/Patient",
                &json!({"resourceType": "Patient", "nmae": [{"family": "x"}]}),
            )
            .await;
        assert_eq!(st, 400);
        assert!(oo.to_string().contains("nmae"), "{oo}");
        // wrong type in URL vs body
        let (st, _, _) = srv.post("/fhir/Observation", &patient("x")).await;
        assert_eq!(st, 400);
        // invalid id
        let (st, _, _) = srv.get("/fhir/Patient/bad$id").await;
        assert_eq!(st, 400);
        // unknown type
        let (st, _, oo) = srv.get("/fhir/NotAType/1").await;
        assert_eq!(st, 404);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        // invalid date search value
        let (st, _, oo) = srv.get("/fhir/Patient?birthdate=2020-13-45").await;
        assert_eq!(st, 400, "{oo}");
        // XML asked for
        let (st, _, _) = srv.get("/fhir/Patient?_format=xml").await;
        assert_eq!(st, 406);
        // nothing was written by any of that
        let (_, _, b) = srv.get("/fhir/Patient").await;
        assert_eq!(b["total"], 0, "{e}: {b}");
    }
}

#[tokio::test]
async fn payload_limit_is_413() {
    let cfg = iryo_rest_api::Config {
        max_body: 1024,
        ..Default::default()
    };
    let mut servers = vec![TestServer::sqlite_with(cfg.clone()).await];
    if let Some(pg) = TestServer::postgres_with(cfg).await {
        servers.push(pg);
    }
    for srv in servers {
        let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(4000)}]});
        let (st, _, oo) = srv.post("/fhir/Patient", &big).await;
        assert_eq!(st, 413);
        assert_eq!(oo["resourceType"], "OperationOutcome");
    }
}

#[tokio::test]
async fn prefer_return_and_summary_elements() {
    for srv in TestServer::all().await {
        let (st, h, body) = srv
            .request(
                "POST",
                "/fhir/Patient",
                &[
                    ("content-type", "application/fhir+json"),
                    ("prefer", "return=minimal"),
                ],
                patient("最小").to_string().into_bytes(),
            )
            .await;
        assert_eq!(st, 201);
        assert!(body.is_null());
        let loc = h["location"].to_str().unwrap().to_string();
        let id = loc
            .split("/Patient/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let (_, _, oo) = srv
            .request(
                "PUT",
                &format!("/fhir/Patient/{id}"),
                &[
                    ("content-type", "application/fhir+json"),
                    ("prefer", "return=OperationOutcome"),
                ],
                {
                    let mut p = patient("最小");
                    p["id"] = json!(id);
                    p.to_string().into_bytes()
                },
            )
            .await;
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let (_, _, el) = srv
            .get(&format!("/fhir/Patient/{id}?_elements=birthDate"))
            .await;
        assert_eq!(el["birthDate"], "1980-05-01");
        assert!(el.get("name").is_none());
        assert!(el["meta"]["tag"].to_string().contains("SUBSETTED"));
        let (_, _, sm) = srv.get(&format!("/fhir/Patient/{id}?_summary=true")).await;
        assert!(sm.get("name").is_some()); // name is a summary element
        let (_, _, count) = srv.get("/fhir/Patient?_summary=count").await;
        assert_eq!(count["total"], 1);
        assert!(count.get("entry").is_none());
    }
}

#[tokio::test]
async fn capability_statement() {
    let srv = TestServer::sqlite().await;
    let (st, _, cs) = srv.get("/fhir/metadata").await;
    assert_eq!(st, 200);
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let res = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(res.len(), iryo_fhir_spec::r4().resource_types().len());
    let patient = res.iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "family"));
}
