//! `POST [base]/[type]/[id]/$validate` over HTTP: the body validated as `[type]/[id]` with the
//! modes of FHIR R4 (none/profile, update, delete; create refused), on SQLite and PostgreSQL
//! and in two tenants.

use iryo_testkit::TestServer;
use serde_json::{json, Value};

fn errors(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| format!("{} {}", i["expression"], i["diagnostics"]))
        .collect()
}

#[tokio::test]
async fn instance_validate_modes() {
    for srv in TestServer::all().await {
        let e = srv.engine;
        srv.tenant("clinic-b").await;
        for base in ["/fhir", "/t/clinic-b/fhir"] {
            let ok = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "山田"}], "gender": "male"});
            // no mode: general validation of the content
            let (st, _, oo) = srv.post(&format!("{base}/Patient/p1/$validate"), &ok).await;
            assert_eq!(st, 200, "{e} {base}: {oo}");
            assert_eq!(oo["resourceType"], "OperationOutcome");
            assert!(errors(&oo).is_empty(), "{e} {base}: {oo}");

            // mode=update: the id must be the one in the URL
            let (st, _, oo) = srv
                .post(&format!("{base}/Patient/p1/$validate?mode=update"), &ok)
                .await;
            assert_eq!(st, 200, "{e} {base}: {oo}");
            assert!(errors(&oo).is_empty(), "{e} {base}: {oo}");
            let (st, _, oo) = srv
                .post(&format!("{base}/Patient/p2/$validate?mode=update"), &ok)
                .await;
            assert_eq!(st, 200, "{e} {base}: {oo}");
            let errs = errors(&oo);
            assert_eq!(errs.len(), 1, "{e} {base}: {oo}");
            assert!(
                errs[0].contains("Patient.id") && errs[0].contains("p2"),
                "{errs:?}"
            );
            let mut no_id = ok.clone();
            no_id.as_object_mut().unwrap().remove("id");
            let (_, _, oo) = srv
                .post(&format!("{base}/Patient/p1/$validate?mode=update"), &no_id)
                .await;
            assert_eq!(errors(&oo).len(), 1, "{e} {base}: {oo}");

            // mode=update in a Parameters body, content errors reported too (English on request)
            let bad = json!({"resourceType": "Patient", "id": "p1", "gender": "mail"});
            let params = json!({"resourceType": "Parameters", "parameter": [
                {"name": "resource", "resource": bad},
                {"name": "mode", "valueCode": "update"}]});
            let (st, _, oo) = srv
                .request(
                    "POST",
                    &format!("{base}/Patient/p1/$validate"),
                    &[
                        ("content-type", "application/fhir+json"),
                        ("accept-language", "en"),
                    ],
                    params.to_string().into_bytes(),
                )
                .await;
            assert_eq!(st, 200, "{e} {base}: {oo}");
            let errs = errors(&oo);
            assert!(
                errs.iter()
                    .any(|x| x.contains("Patient.gender") && x.contains("value set")),
                "{e} {base}: {errs:?}"
            );

            // mode=delete: no body needed; iryo has no rule against a delete
            let (st, _, oo) = srv
                .request(
                    "POST",
                    &format!("{base}/Patient/p1/$validate?mode=delete"),
                    &[("content-type", "application/fhir+json")],
                    Vec::new(),
                )
                .await;
            assert_eq!(st, 200, "{e} {base}: {oo}");
            assert_eq!(oo["issue"][0]["severity"], "information", "{oo}");
            assert!(errors(&oo).is_empty());

            // refused: create at instance level, a body of another type, a bad id, a bad mode,
            // an empty body without mode=delete, an unknown type
            let cases: Vec<(String, Vec<u8>, u16)> = vec![
                (
                    format!("{base}/Patient/p1/$validate?mode=create"),
                    ok.to_string().into_bytes(),
                    400,
                ),
                (
                    format!("{base}/Observation/p1/$validate"),
                    ok.to_string().into_bytes(),
                    400,
                ),
                (
                    format!("{base}/Patient/bad$id/$validate"),
                    ok.to_string().into_bytes(),
                    400,
                ),
                (
                    format!("{base}/Patient/p1/$validate?mode=bogus"),
                    ok.to_string().into_bytes(),
                    400,
                ),
                (format!("{base}/Patient/p1/$validate"), Vec::new(), 400),
                (
                    format!("{base}/Patient/p1/$validate"),
                    b"{nope".to_vec(),
                    400,
                ),
                (
                    format!("{base}/NoSuchType/p1/$validate"),
                    ok.to_string().into_bytes(),
                    404,
                ),
            ];
            for (path, body, want) in cases {
                let (st, _, oo) = srv
                    .request(
                        "POST",
                        &path,
                        &[("content-type", "application/fhir+json")],
                        body,
                    )
                    .await;
                assert_eq!(st, want, "{e} {path}: {oo}");
                assert_eq!(oo["resourceType"], "OperationOutcome", "{e} {path}");
            }

            // nothing is stored by $validate, in either tenant
            let (_, _, b) = srv.get(&format!("{base}/Patient")).await;
            assert_eq!(b["total"], 0, "{e} {base}");
        }
    }
}
