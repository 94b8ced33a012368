//! The operation extension point (`iryo_rest_api::operation`): routing, parameters, errors,
//! the CapabilityStatement, tenants, and the access policy with security on.

#[path = "support/ops.rs"]
mod ops;

use iryo_rest_api::Config;
use iryo_testkit::TestServer;
use ops::test_operations;
use serde_json::{json, Value};

fn param<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["parameter"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .map(|p| {
            p.as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                .map(|(_, v)| v)
                .unwrap_or(&Value::Null)
        })
        .unwrap_or(&Value::Null)
}

async fn servers() -> Vec<TestServer> {
    let cfg = Config {
        operations: test_operations(),
        ..Default::default()
    };
    let mut out = vec![TestServer::sqlite_with(cfg.clone()).await];
    if let Some(pg) = TestServer::postgres_with(cfg).await {
        out.push(pg);
    }
    out
}

#[tokio::test]
async fn operations_are_routed_with_tenant_id_params_and_body() {
    for srv in servers().await {
        srv.tenant("clinic-b").await;
        let p = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "山田"}]});
        assert_eq!(
            srv.put("/fhir/Patient/p1", &p).await.0,
            201,
            "{}",
            srv.engine
        );
        let p = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Tanaka"}]});
        assert_eq!(srv.put("/t/clinic-b/fhir/Patient/p1", &p).await.0, 201);

        let (st, _, v) = srv
            .get("/fhir/Patient/p1/$name-length?greeting=%E3%81%93%E3%82%93%E3%81%AB%E3%81%A1%E3%81%AF")
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(param(&v, "length"), &json!(2));
        assert_eq!(param(&v, "tenant"), &json!("default"));
        assert_eq!(param(&v, "greeting"), &json!("こんにちは"));

        // the other tenant's Patient/p1 is another resource
        let (st, _, v) = srv
            .post(
                "/t/clinic-b/fhir/Patient/p1/$name-length",
                &json!({"note": "x"}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(param(&v, "length"), &json!(6));
        assert_eq!(param(&v, "tenant"), &json!("clinic-b"));
        assert_eq!(param(&v, "note"), &json!("x"));

        // form parameters of a POST
        let (st, _, v) = srv
            .request(
                "POST",
                "/fhir/Patient/p1/$name-length",
                &[("content-type", "application/x-www-form-urlencoded")],
                b"greeting=hi".to_vec(),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(param(&v, "greeting"), &json!("hi"));
    }
}

#[tokio::test]
async fn operation_errors_are_operation_outcomes() {
    for srv in servers().await {
        // unknown instance: the operation's own 404
        let (st, _, v) = srv.get("/fhir/Patient/nobody/$name-length").await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (404, Some("OperationOutcome"))
        );
        // invalid id: checked before the operation runs
        let (st, _, v) = srv.get("/fhir/Patient/bad$id!/$name-length").await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (400, Some("OperationOutcome")),
            "{v}"
        );
        // malformed body
        let p = json!({"resourceType": "Patient", "id": "p2"});
        srv.put("/fhir/Patient/p2", &p).await;
        let (st, _, v) = srv
            .request(
                "POST",
                "/fhir/Patient/p2/$name-length",
                &[("content-type", "application/fhir+json")],
                b"{not json".to_vec(),
            )
            .await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (400, Some("OperationOutcome"))
        );
        // GET of an operation with side effects
        let (st, _, v) = srv.get("/fhir/$touch").await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (405, Some("OperationOutcome"))
        );
        assert_eq!(srv.post("/fhir/$touch", &json!({})).await.0, 200);
        // an operation at a level it is not registered at is unknown
        let (st, _, _) = srv.get("/fhir/Observation/o1/$name-length").await;
        assert!(st >= 400 && st < 500, "{st}");
    }
}

#[tokio::test]
async fn capability_statement_lists_registered_operations() {
    for srv in servers().await {
        let (st, _, cs) = srv.get("/fhir/metadata").await;
        assert_eq!(st, 200);
        let sys = cs["rest"][0]["operation"]
            .as_array()
            .expect("system operations");
        assert!(sys.iter().any(|o| o["name"] == "touch"
            && o["definition"] == "https://iryo.example.jp/fhir/OperationDefinition/touch"));
        let patient = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Patient")
            .unwrap();
        assert!(patient["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "name-length"));
        // and on no other resource
        let obs = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Observation")
            .unwrap();
        assert!(obs.get("operation").is_none());
    }
}
