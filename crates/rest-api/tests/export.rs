//! Bulk Data $export (system, Patient, Group) with the async request pattern, on both stores.

use iryo_testkit::TestServer;
use serde_json::{json, Value};
use std::time::Duration;

async fn run_export(srv: &TestServer, path: &str) -> Value {
    let (st, h, body) = srv
        .get_with(
            path,
            &[
                ("prefer", "respond-async"),
                ("accept", "application/fhir+json"),
            ],
        )
        .await;
    assert_eq!(st, 202, "{}: {path}: {body}", srv.engine);
    let loc = h["content-location"].to_str().unwrap().to_string();
    let poll = loc.strip_prefix(&srv.base).unwrap().to_string();
    for _ in 0..200 {
        let (st, h, body) = srv.get(&poll).await;
        match st {
            202 => {
                assert!(h.contains_key("x-progress"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return body,
            other => panic!("{}: export status {other}: {body}", srv.engine),
        }
    }
    panic!("export did not finish");
}

async fn ndjson(srv: &TestServer, url: &str) -> Vec<Value> {
    let path = url.strip_prefix(&srv.base).unwrap();
    let r = srv.client.get(srv.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn outputs(manifest: &Value) -> Vec<(String, String)> {
    manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().to_string(),
                o["url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn system_patient_and_group_export() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("clinic-x").await;
        for (base, n) in [("/fhir", 3), ("/t/clinic-x/fhir", 1)] {
            for i in 0..n {
                srv.put(
                    &format!("{base}/Patient/p{i}"),
                    &json!({"resourceType": "Patient", "id": format!("p{i}")}),
                )
                .await;
                srv.put(
                    &format!("{base}/Observation/o{i}"),
                    &json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": format!("Patient/p{i}")}}),
                )
                .await;
            }
        }
        srv.put(
            "/fhir/Organization/org",
            &json!({"resourceType": "Organization", "id": "org", "name": "病院"}),
        )
        .await;
        srv.put(
            "/fhir/Group/g",
            &json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/p1"}}]}),
        )
        .await;

        // system level: everything of this tenant only
        let m = run_export(&srv, "/fhir/$export").await;
        assert!(m["transactionTime"].is_string());
        let outs = outputs(&m);
        let types: Vec<&str> = outs.iter().map(|(t, _)| t.as_str()).collect();
        assert!(
            types.contains(&"Patient")
                && types.contains(&"Observation")
                && types.contains(&"Organization"),
            "{e}: {m}"
        );
        let (_, purl) = outs.iter().find(|(t, _)| t == "Patient").unwrap();
        assert_eq!(ndjson(&srv, purl).await.len(), 3, "{e}");
        // _type filter
        let m = run_export(&srv, "/fhir/$export?_type=Observation").await;
        assert_eq!(outputs(&m).len(), 1);
        // Patient level: compartment resources only (no Organization)
        let m = run_export(&srv, "/fhir/Patient/$export").await;
        let types: Vec<String> = outputs(&m).into_iter().map(|(t, _)| t).collect();
        assert!(
            !types.contains(&"Organization".to_string()),
            "{e}: {types:?}"
        );
        // Group level: member p1 and its Observation only
        let m = run_export(&srv, "/fhir/Group/g/$export").await;
        for (t, url) in outputs(&m) {
            let rows = ndjson(&srv, &url).await;
            match t.as_str() {
                "Patient" => assert_eq!(
                    rows.iter()
                        .map(|r| r["id"].as_str().unwrap())
                        .collect::<Vec<_>>(),
                    vec!["p1"]
                ),
                "Observation" => assert_eq!(
                    rows.iter()
                        .map(|r| r["id"].as_str().unwrap())
                        .collect::<Vec<_>>(),
                    vec!["o1"]
                ),
                _ => {}
            }
        }
        // the other tenant's export sees its own data only; the job is invisible across tenants
        let m = run_export(&srv, "/t/clinic-x/fhir/$export").await;
        let (_, purl) = outputs(&m)
            .into_iter()
            .find(|(t, _)| t == "Patient")
            .unwrap();
        assert_eq!(ndjson(&srv, &purl).await.len(), 1);
        let foreign = purl.replace("/t/clinic-x/fhir", "/fhir");
        let (st, _, _) = srv.get(foreign.strip_prefix(&srv.base).unwrap()).await;
        assert_eq!(st, 404, "{e}");
        // kick-off without Prefer: respond-async is refused
        let (st, _, oo) = srv.get("/fhir/$export").await;
        assert_eq!(st, 400);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let (st, _, _) = srv
            .get_with(
                "/fhir/$export?_outputFormat=text/csv",
                &[("prefer", "respond-async")],
            )
            .await;
        assert_eq!(st, 400);
    }
}
