//! `$clins-submit` over real HTTP: clinic tenants on a real iryo server (SQLite and, with
//! IRYO_TEST_POSTGRES, PostgreSQL) submit their records to the platform running in the same
//! process, or to a second server acting as a remote platform. Two tenants, two institutions.

use iryo_clins::{Actor, Binding, ClinsConfig, ClinsState};
use iryo_operation_clins_submit::{tenant_client, ClinsSubmit};
use iryo_rest_api::{Config, Operations};
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{SecurityStore, SqliteSecurityStore};
use iryo_security::token::{TokenRequest, TokenService};
use iryo_testkit::TestServer;
use serde_json::{json, Value};
use std::sync::Arc;

const A: &str = "1318814790";
const B: &str = "1311234567";
/// The key clinic A's Coverage yields (full-width 番号, as a clinic may store it).
const KEY_A: &str = "00012345:あいう:187:05";
const KEY_B: &str = "06123456::778:";
const DEPT: &str = "http://jami.jp/SS-MIX2/CodeSystem/ClinicalDepartment";

fn fixture(name: &str) -> Value {
    let p = format!(
        "{}/../clins/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn platform_tokens() -> TokenService {
    TokenService::new(
        [9u8; 32],
        "https://iryo.test",
        "https://iryo.test/clins/fhir",
    )
}

async fn platform(store: iryo_db::Store) -> ClinsState {
    let audit = Arc::new(SqliteSecurityStore::open_in_memory().expect("audit"));
    ClinsState::new(
        store,
        platform_tokens(),
        audit as Arc<dyn SecurityStore>,
        ClinsConfig::default(),
    )
    .await
    .expect("platform")
}

/// A clinic server whose `$clins-submit` has no in-process platform yet, on SQLite and
/// (when configured) PostgreSQL.
async fn clinic_servers() -> Vec<(TestServer, Arc<ClinsSubmit>)> {
    let mut out = vec![];
    for pg in [false, true] {
        let op = Arc::new(ClinsSubmit::new());
        let config = Config {
            operations: Operations(vec![op.clone()]),
            ..Default::default()
        };
        let srv = if pg {
            match TestServer::postgres_with(config).await {
                Some(s) => s,
                None => continue,
            }
        } else {
            TestServer::sqlite_with(config).await
        };
        out.push((srv, op));
    }
    out
}

async fn put(srv: &TestServer, tenant: &str, r: Value) {
    let path = format!(
        "/t/{tenant}/fhir/{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    );
    let (s, _, b) = srv.put(&path, &r).await;
    assert!(s == 200 || s == 201, "{path}: {s} {b}");
}

async fn settings(srv: &TestServer, tenant: &str, v: Value) {
    let id = srv.store.tenant_id(tenant).await.unwrap().unwrap();
    srv.store.tenant_set_settings(id, v).await.unwrap();
}

/// A clinic's own records of one patient, written as a clinic EHR would (plain references,
/// nothing contained, no JP-CLINS identifiers): taken from the official JP-CLINS examples.
async fn clinic_records(srv: &TestServer, tenant: &str, pid: &str, member_id: Option<&str>) {
    let example = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    let ex_patient = &example["entry"][0]["resource"];
    let mut patient = json!({"resourceType": "Patient", "id": pid,
        "identifier": [{"system": "urn:iryo:test:mrn", "value": format!("MRN-{pid}")}]});
    for k in ["name", "telecom", "gender", "birthDate", "address"] {
        patient[k] = ex_patient[k].clone();
    }
    if let Some(m) = member_id {
        patient["identifier"]
            .as_array_mut()
            .unwrap()
            .push(json!({"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": m}));
    }
    put(srv, tenant, patient).await;
    put(srv, tenant, json!({"resourceType": "Encounter", "id": format!("{pid}-e1"), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "外来"},
        "serviceType": {"coding": [{"system": DEPT, "code": "08", "display": "循環器科"}], "text": "循環器内科"},
        "subject": {"reference": format!("Patient/{pid}")}})).await;
    let mut e2 = json!({"resourceType": "Encounter", "id": format!("{pid}-e2"), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "外来"},
        "serviceType": {"coding": [{"system": DEPT, "code": "08", "display": "循環器科"}]},
        "subject": {"reference": format!("Patient/{pid}")}});
    put(srv, tenant, e2.take()).await;
    put(srv, tenant, json!({"resourceType": "Specimen", "id": format!("{pid}-s1"),
        "type": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationSampleMaterialCode_CS", "code": "023", "display": "血清"}], "text": "血清"},
        "subject": {"reference": format!("Patient/{pid}")}})).await;
    put(srv, tenant, json!({"resourceType": "Practitioner", "id": format!("{pid}-d1"),
        "identifier": [{"system": format!("urn:oid:1.2.392.100495.20.3.41.1{A}"), "value": "D001"}],
        "name": [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}], "text": "田中 宏"}]})).await;
    let enc = json!({"reference": format!("Encounter/{pid}-e1")});
    // Conditions: one current, one ended 10 years ago (not in the list, §2)
    let mut c = fixture("Condition-Example-JP-Condition-eCS-01.json");
    for k in ["contained", "extension", "identifier", "text", "meta"] {
        c.as_object_mut().unwrap().remove(k);
    }
    c["id"] = json!(format!("{pid}-c1"));
    c["subject"] = json!({"reference": format!("Patient/{pid}")});
    c["encounter"] = enc.clone();
    put(srv, tenant, c.clone()).await;
    let mut old = c.clone();
    old["id"] = json!(format!("{pid}-c2"));
    old["code"]["text"] = json!("古い病名");
    old["onsetDateTime"] = json!("2014-01-01");
    old["abatementDateTime"] = json!("2015-01-01");
    old["clinicalStatus"]["coding"][0]["code"] = json!("resolved");
    old["clinicalStatus"]["coding"][0]["display"] = json!("Resolved");
    put(srv, tenant, old).await;
    let mut al = fixture("AllergyIntolerance-Example-JP-AllergyIntolerance-eCS-01.json");
    for k in ["extension", "identifier", "text"] {
        al.as_object_mut().unwrap().remove(k);
    }
    al["meta"] = json!({"tag": al["meta"]["tag"].clone()});
    al["id"] = json!(format!("{pid}-al1"));
    al["patient"] = json!({"reference": format!("Patient/{pid}")});
    put(srv, tenant, al).await;
    // lab results: the four of the official report in one encounter, and one more in
    // another encounter (two reports)
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for (n, e) in example["entry"].as_array().unwrap()[1..].iter().enumerate() {
        let mut o = e["resource"].clone();
        for k in ["contained", "extension", "identifier", "meta"] {
            o.as_object_mut().unwrap().remove(k);
        }
        o["id"] = json!(format!("{pid}-o{n}"));
        o["subject"] = json!({"reference": format!("Patient/{pid}")});
        o["encounter"] = enc.clone();
        o["performer"] = json!([{"reference": format!("Practitioner/{pid}-d1")}]);
        o["specimen"] = json!({"reference": format!("Specimen/{pid}-s1")});
        o["effectiveDateTime"] = json!(format!("{today}T09:00:00+09:00"));
        put(srv, tenant, o.clone()).await;
        if n == 0 {
            o["id"] = json!(format!("{pid}-o-later"));
            o["encounter"] = json!({"reference": format!("Encounter/{pid}-e2")});
            o["effectiveDateTime"] = json!("2025-03-03T09:00:00+09:00");
            put(srv, tenant, o).await;
        }
    }
}

/// Clinic A finds its patient key through the Coverage (保険者 Organization + 記号/番号/枝番).
async fn coverage(srv: &TestServer, tenant: &str, pid: &str) {
    put(srv, tenant, json!({"resourceType": "Organization", "id": "insurer-1",
        "identifier": [{"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber", "value": "12345"}],
        "name": "テスト健保"})).await;
    let ext = |n: &str, v: &str| json!({"url": format!("http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPerson{n}"), "valueString": v});
    put(
        srv,
        tenant,
        json!({"resourceType": "Coverage", "id": format!("{pid}-cov"), "status": "active",
        "extension": [ext("Symbol", "あいう"), ext("Number", "１８７"), ext("SubNumber", "5")],
        "beneficiary": {"reference": format!("Patient/{pid}")},
        "payor": [{"reference": "Organization/insurer-1"}]}),
    )
    .await;
}

async fn submit(srv: &TestServer, tenant: &str, pid: &str, query: &str) -> (u16, Value) {
    let (s, _, b) = srv
        .post(
            &format!("/t/{tenant}/fhir/Patient/{pid}/$clins-submit{query}"),
            &json!({"resourceType": "Parameters"}),
        )
        .await;
    (s, b)
}

fn keys(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["details"]["coding"][0]["code"].as_str())
        .map(str::to_string)
        .collect()
}

fn of_type<'a>(b: &'a Value, ty: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == ty)
        .collect()
}

async fn tasks(srv: &TestServer, tenant: &str, pid: &str) -> Vec<Value> {
    let (s, _, b) = srv
        .get(&format!("/t/{tenant}/fhir/Task?subject=Patient/{pid}"))
        .await;
    assert_eq!(s, 200, "{b}");
    of_type(&b, "Task").into_iter().cloned().collect()
}

fn inst(n: &str) -> Actor {
    Actor::Institution {
        client: format!("viewer-{n}"),
        number: n.into(),
    }
}

/// What institution `viewer` sees of `key` on the platform (after recording a consent).
async fn platform_view(state: &ClinsState, viewer: &str, key: &str) -> Value {
    let now = chrono::Utc::now();
    state
        .record_consent(&inst(viewer), key, false, now)
        .await
        .unwrap();
    state
        .institution_view(&inst(viewer), key, now)
        .await
        .unwrap_or_else(|e| panic!("{}", e.outcome()))
}

/// The platform in the clinic server's process, on its store; tenants clinic-a and clinic-b.
async fn in_process(srv: &TestServer, op: &ClinsSubmit) -> ClinsState {
    let state = platform(srv.store.clone()).await;
    op.set_platform(state.clone());
    srv.tenant("clinic-a").await;
    srv.tenant("clinic-b").await;
    state
}

#[tokio::test]
async fn clinics_submit_to_the_platform_in_process() {
    for (srv, op) in clinic_servers().await {
        let e = srv.engine;
        let state = in_process(&srv, &op).await;
        // clinic A: number from its settings, key from its Coverage
        settings(&srv, "clinic-a", json!({"clins_institution": A})).await;
        clinic_records(&srv, "clinic-a", "p1", None).await;
        coverage(&srv, "clinic-a", "p1").await;
        // clinic B: number from its Organization, key on the Patient
        put(&srv, "clinic-b", json!({"resourceType": "Organization", "id": "self",
            "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": B}],
            "name": "B診療所"})).await;
        clinic_records(&srv, "clinic-b", "pb", Some(KEY_B)).await;

        // not bound on the platform yet: refused, nothing sent, nothing kept
        let (s, oo) = submit(&srv, "clinic-a", "p1", "").await;
        assert_eq!(
            (s, keys(&oo)),
            (403, vec!["CLINS-UNBOUND-CLIENT".to_string()]),
            "{e}: {oo}"
        );
        assert!(tasks(&srv, "clinic-a", "p1").await.is_empty());

        state
            .bind_client(&tenant_client("clinic-a"), Binding::Institution(A.into()))
            .await
            .unwrap();
        state
            .bind_client(&tenant_client("clinic-b"), Binding::Institution(B.into()))
            .await
            .unwrap();
        let (s, task) = submit(&srv, "clinic-a", "p1", "").await;
        assert_eq!(s, 200, "{e}: {task}");
        assert_eq!(task["resourceType"], "Task");
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["for"]["reference"], "Patient/p1");
        let idents: Vec<&str> = task["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["valueIdentifier"]["value"].as_str())
            .collect();
        // Conditions, allergies, two lab reports; identifiers 医療機関番号^年^ID (R2152)
        assert_eq!(idents.len(), 4, "{task}");
        for i in &idents {
            let parts: Vec<&str> = i.split('^').collect();
            assert_eq!(parts[0], A);
            assert!(parts[1].starts_with("202") && parts[2].len() <= 36, "{i}");
        }
        for oo in task["contained"].as_array().unwrap() {
            assert_eq!(keys(oo)[0], "CLINS-ACCEPTED", "{oo}");
        }
        // kept with the patient's record
        let kept = tasks(&srv, "clinic-a", "p1").await;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["id"], task["id"]);

        // the platform shows the clinic's items to another institution, with their source
        let v = platform_view(&state, B, KEY_A).await;
        let conditions = of_type(&v, "Condition");
        assert_eq!(
            conditions.len(),
            1,
            "{e}: the ended one is not in the list: {v}"
        );
        assert_eq!(conditions[0]["code"]["text"], "十二指腸潰瘍・H1期");
        assert!(conditions[0]["meta"]["source"]
            .as_str()
            .unwrap()
            .ends_with(A));
        assert_eq!(of_type(&v, "AllergyIntolerance").len(), 1);
        let obs = of_type(&v, "Observation");
        assert_eq!(obs.len(), 5, "{e}: {v}");
        assert!(obs.iter().all(|o| o["contained"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["resourceType"] == "Practitioner")));

        // sending again replaces (same identifiers; full lists)
        let (s, _) = submit(&srv, "clinic-a", "p1", "?type=Condition").await;
        assert_eq!(s, 200);
        let v = platform_view(&state, B, KEY_A).await;
        assert_eq!(of_type(&v, "Condition").len(), 1);
        assert_eq!(of_type(&v, "Observation").len(), 5);
        assert_eq!(tasks(&srv, "clinic-a", "p1").await.len(), 2);

        // tenant isolation: clinic B cannot submit clinic A's patient, and sees no Task of A
        let (s, oo) = submit(&srv, "clinic-b", "p1", "").await;
        assert_eq!(s, 404, "{oo}");
        assert!(tasks(&srv, "clinic-b", "p1").await.is_empty());
        let (s, task_b) = submit(&srv, "clinic-b", "pb", "?type=AllergyIntolerance").await;
        assert_eq!(s, 200, "{e}: {task_b}");
        let v = platform_view(&state, A, KEY_B).await;
        let al = of_type(&v, "AllergyIntolerance");
        assert_eq!(al.len(), 1);
        assert!(al[0]["meta"]["source"].as_str().unwrap().ends_with(B));
        assert!(
            of_type(&v, "Condition").is_empty(),
            "only allergies were asked"
        );

        // a record the platform refuses (Condition without onsetDateTime, R9013C): the
        // refusal is returned with its key and kept as a failed Task; nothing replaced
        let (s, mut c) = srv
            .get("/t/clinic-a/fhir/Condition/p1-c1")
            .await
            .into_parts();
        assert_eq!(s, 200);
        c.as_object_mut().unwrap().remove("onsetDateTime");
        put(&srv, "clinic-a", c).await;
        let (s, oo) = submit(&srv, "clinic-a", "p1", "?type=Condition").await;
        assert_eq!(s, 422, "{oo}");
        let k = keys(&oo);
        assert!(k.iter().any(|k| k.starts_with("R9013C")), "{oo}");
        assert!(k.contains(&"CLINS-SUBMIT-RECORDED".to_string()));
        let failed: Vec<Value> = tasks(&srv, "clinic-a", "p1")
            .await
            .into_iter()
            .filter(|t| t["status"] == "failed")
            .collect();
        assert_eq!(failed.len(), 1);
        let v = platform_view(&state, B, KEY_A).await;
        assert_eq!(of_type(&v, "Condition").len(), 1, "the accepted list stays");

        // binding and tenant disagree: refused
        state
            .bind_client(&tenant_client("clinic-b"), Binding::Institution(A.into()))
            .await
            .unwrap();
        let (s, oo) = submit(&srv, "clinic-b", "pb", "").await;
        assert_eq!(
            (s, keys(&oo)),
            (403, vec!["CLINS-INSTITUTION-MISMATCH".to_string()])
        );
        // bad parameters
        let (s, _) = submit(&srv, "clinic-a", "p1", "?type=MedicationRequest").await;
        assert_eq!(s, 400);
        let (s, _) = submit(&srv, "clinic-a", "nobody", "").await;
        assert_eq!(s, 404);
    }
}

trait IntoParts {
    fn into_parts(self) -> (u16, Value);
}

impl IntoParts for iryo_testkit::Resp {
    fn into_parts(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

#[tokio::test]
async fn clinics_submit_to_a_remote_platform() {
    // the platform: a second server with its own store
    let dir = tempfile::tempdir().unwrap();
    let pstore = iryo_db::Store::open(&dir.path().display().to_string())
        .await
        .unwrap();
    let remote = platform(pstore).await;
    remote
        .bind_client("remote-clinic-a", Binding::Institution(A.into()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = iryo_clins::router(remote.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let token = platform_tokens()
        .issue_token(
            &TokenRequest {
                tenant: "clins-platform".into(),
                subject: "remote-clinic-a".into(),
                role: None,
                is_admin: false,
                scopes: ScopeSet::parse("user/*.rs").unwrap(),
                patient: None,
                lifetime: None,
            },
            chrono::Utc::now(),
        )
        .unwrap()
        .access_token;

    for (srv, _op) in clinic_servers().await {
        let e = srv.engine;
        srv.tenant("clinic-a").await;
        srv.tenant("clinic-b").await;
        clinic_records(&srv, "clinic-a", "p1", None).await;
        coverage(&srv, "clinic-a", "p1").await;
        clinic_records(&srv, "clinic-b", "p1", Some(KEY_B)).await;
        // no platform in process, no remote configured: a clear refusal
        settings(&srv, "clinic-a", json!({"clins_institution": A})).await;
        let (s, oo) = submit(&srv, "clinic-a", "p1", "").await;
        assert_eq!(s, 422, "{oo}");
        assert!(oo.to_string().contains("CLINS-SUBMIT-CONFIG"), "{oo}");
        // plain HTTP to a non-loopback host is refused
        settings(
            &srv,
            "clinic-a",
            json!({"clins_institution": A,
            "clins_remote": {"url": "http://clins.example.jp/clins/fhir", "token": token}}),
        )
        .await;
        let (s, oo) = submit(&srv, "clinic-a", "p1", "").await;
        assert_eq!(s, 422, "{oo}");
        // the remote platform over HTTP on loopback
        settings(
            &srv,
            "clinic-a",
            json!({"clins_institution": A,
            "clins_remote": {"url": format!("http://{addr}/clins/fhir/"), "token": token}}),
        )
        .await;
        let (s, t) = submit(&srv, "clinic-a", "p1", "").await;
        assert_eq!(s, 200, "{e}: {t}");
        assert_eq!(t["status"], "completed");
        assert_eq!(
            t["input"][0]["valueString"],
            format!("http://{addr}/clins/fhir")
        );
        let v = platform_view(&remote, B, KEY_A).await;
        assert_eq!(of_type(&v, "Condition").len(), 1, "{v}");
        assert_eq!(of_type(&v, "Observation").len(), 5);
        // clinic B uses A's token but is not institution A: the platform refuses (the
        // institution number in the identifiers is B's), kept as a failed Task
        settings(
            &srv,
            "clinic-b",
            json!({"clins_institution": B,
            "clins_remote": {"url": format!("http://{addr}/clins/fhir"), "token": token}}),
        )
        .await;
        let (s, oo) = submit(&srv, "clinic-b", "p1", "?type=Condition").await;
        assert_eq!(s, 422, "{oo}");
        assert!(
            keys(&oo).contains(&"CLINS-INSTITUTION-MISMATCH".to_string()),
            "{oo}"
        );
        assert_eq!(tasks(&srv, "clinic-b", "p1").await[0]["status"], "failed");
        // a wrong token: the platform's 401 is returned and kept
        settings(
            &srv,
            "clinic-a",
            json!({"clins_institution": A,
            "clins_remote": {"url": format!("http://{addr}/clins/fhir"), "token": "not-a-token"}}),
        )
        .await;
        let (s, oo) = submit(&srv, "clinic-a", "p1", "?type=Condition").await;
        assert_eq!(s, 401, "{oo}");
        assert!(keys(&oo).contains(&"CLINS-AUTH".to_string()));
        // an unreachable platform: 502, kept
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        settings(
            &srv,
            "clinic-a",
            json!({"clins_institution": A,
            "clins_remote": {"url": format!("http://{closed}/clins/fhir"), "token": token}}),
        )
        .await;
        let (s, oo) = submit(&srv, "clinic-a", "p1", "?type=Condition").await;
        assert_eq!(s, 502, "{oo}");
        assert!(keys(&oo).contains(&"CLINS-SUBMIT-REMOTE".to_string()));
        let statuses: Vec<String> = tasks(&srv, "clinic-a", "p1")
            .await
            .iter()
            .map(|t| t["status"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| *s == "failed").count(),
            2,
            "{statuses:?}"
        );
        assert_eq!(statuses.iter().filter(|s| *s == "completed").count(), 1);
    }
    task.abort();
}

/// The official referral example, stored in a clinic tenant as separate resources (plain
/// `Type/id` references), is sent again as a document with `composition=`.
async fn store_referral(srv: &TestServer, tenant: &str) -> (String, String) {
    let b = fixture("Bundle-Bundle-CLINS-Referral-Example-01.json");
    let mut map = std::collections::HashMap::new();
    for e in b["entry"].as_array().unwrap() {
        let r = &e["resource"];
        map.insert(
            e["fullUrl"].as_str().unwrap().to_string(),
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ),
        );
    }
    fn rewrite(v: &mut Value, map: &std::collections::HashMap<String, String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get_mut("reference") {
                    if let Some(t) = map.get(r.as_str()) {
                        *r = t.clone();
                    }
                }
                m.values_mut().for_each(|c| rewrite(c, map));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| rewrite(c, map)),
            _ => {}
        }
    }
    let (mut pid, mut cid) = (String::new(), String::new());
    for e in b["entry"].as_array().unwrap() {
        let mut r = e["resource"].clone();
        rewrite(&mut r, &map);
        // the IG 1.5.2 example predates 1.10.0, which requires display on status codings
        for k in ["clinicalStatus", "verificationStatus"] {
            if let Some(c) = r
                .pointer_mut(&format!("/{k}/coding/0"))
                .and_then(Value::as_object_mut)
            {
                let code = c["code"].as_str().unwrap_or("").to_string();
                c.entry("display").or_insert(json!(code));
            }
        }
        match r["resourceType"].as_str().unwrap() {
            "Patient" => pid = r["id"].as_str().unwrap().to_string(),
            "Composition" => cid = r["id"].as_str().unwrap().to_string(),
            _ => {}
        }
        put(srv, tenant, r).await;
    }
    (pid, cid)
}

#[tokio::test]
async fn clinics_submit_documents() {
    for (srv, op) in clinic_servers().await {
        let e = srv.engine;
        let state = in_process(&srv, &op).await;
        settings(&srv, "clinic-a", json!({"clins_institution": A})).await;
        settings(&srv, "clinic-b", json!({"clins_institution": B})).await;
        state
            .bind_client(&tenant_client("clinic-a"), Binding::Institution(A.into()))
            .await
            .unwrap();
        state
            .bind_client(&tenant_client("clinic-b"), Binding::Institution(B.into()))
            .await
            .unwrap();
        let (pid, cid) = store_referral(&srv, "clinic-a").await;
        let q = format!("?composition=Composition/{cid}");
        let (s, task) = submit(&srv, "clinic-a", &pid, &q).await;
        assert_eq!(s, 200, "{e}: {task}");
        assert_eq!(task["status"], "completed");
        let ident = task["output"][0]["valueIdentifier"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            ident.starts_with(&format!("{A}^")) && ident.contains("^D-"),
            "{ident}"
        );
        // the destination (B, 紹介先 of the example) fetches it after the patient's consent
        let key = "00012345:あいう:187:05";
        let now = chrono::Utc::now();
        state
            .record_consent(&inst(B), key, false, now)
            .await
            .unwrap();
        let b_actor = inst(B);
        let doc = state
            .fetch_referral(&b_actor, &ident, now)
            .await
            .unwrap_or_else(|r| panic!("{e}: {}", r.outcome()));
        assert_eq!(doc["type"], "document");
        assert_eq!(doc["entry"][0]["resource"]["resourceType"], "Composition");
        let urls: Vec<&str> = doc["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["fullUrl"].as_str())
            .collect();
        assert!(urls.iter().all(|u| u.starts_with("urn:uuid:")));
        let subject = doc["entry"][0]["resource"]["subject"]["reference"]
            .as_str()
            .unwrap();
        assert!(urls.contains(&subject), "references point at the entries");
        // its Conditions reach the 6情報 view with A as source (item 2)
        let v = state.institution_view(&b_actor, key, now).await.unwrap();
        let conditions = of_type(&v, "Condition");
        assert!(!conditions.is_empty(), "{v}");
        assert!(conditions
            .iter()
            .all(|c| c["meta"]["source"].as_str().unwrap().ends_with(A)));
        // sending again replaces the same unit
        let (s, again) = submit(&srv, "clinic-a", &pid, &q).await;
        assert_eq!(s, 200, "{again}");
        assert_eq!(again["output"][0]["valueIdentifier"]["value"], ident);

        // another tenant cannot send clinic A's document; another patient's document is refused
        let (s, _) = submit(&srv, "clinic-b", &pid, &q).await;
        assert_eq!(s, 404);
        put(&srv, "clinic-a", json!({"resourceType": "Patient", "id": "other",
            "identifier": [{"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": KEY_B}]}))
        .await;
        let (s, oo) = submit(&srv, "clinic-a", "other", &q).await;
        assert_eq!(s, 422, "{oo}");
        assert!(oo.to_string().contains("CLINS-SUBMIT-DOCUMENT"));
        let (s, _) = submit(&srv, "clinic-a", &pid, "?composition=Composition/none").await;
        assert_eq!(s, 404);
    }
}
