//! The platform over real HTTP on a loopback port, on SQLite and (when IRYO_TEST_POSTGRES is
//! set) PostgreSQL. Every test has two institutions and checks their isolation.

use chrono::{Duration, Utc};
use iryo_clins::{router, Binding, ClinsConfig, ClinsState};
use iryo_security::roles::Role;
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{AuditQuery, SecurityStore, SqliteSecurityStore};
use iryo_security::token::{TokenRequest, TokenService};
use serde_json::{json, Value};
use std::sync::Arc;

const A: &str = "1318814790";
const B: &str = "1311234567";
const INSURER: &str = "00012345";
/// The same person, written differently by the two institutions (full-width digits; padding).
const PK_A: &str = "00012345:あいう:１８７:05";
const PK_B: &str = "00012345:あいう:187:05";
const OTHER_PK: &str = "00012345:あいう:999:01";

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

struct Env {
    base: String,
    http: reqwest::Client,
    state: ClinsState,
    tokens: TokenService,
    audit: Arc<SqliteSecurityStore>,
    engine: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((admin, db)) = self.pg.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
                }
            })
            .join();
        }
    }
}

async fn start(
    store: iryo_db::Store,
    engine: &'static str,
    dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
) -> Env {
    let tokens = TokenService::new(
        [7u8; 32],
        "https://iryo.test",
        "https://iryo.test/clins/fhir",
    );
    let audit = Arc::new(SqliteSecurityStore::open_in_memory().expect("audit store"));
    let state = ClinsState::new(
        store,
        tokens.clone(),
        audit.clone() as Arc<dyn SecurityStore>,
        ClinsConfig::default(),
    )
    .await
    .expect("clins state");
    state
        .bind_client("hosp-a", Binding::Institution(A.into()))
        .await
        .unwrap();
    state
        .bind_client("hosp-b", Binding::Institution(B.into()))
        .await
        .unwrap();
    state
        .bind_client("kenpo", Binding::Insurer(INSURER.into()))
        .await
        .unwrap();
    state
        .bind_client("kenpo-2", Binding::Insurer("06999999".into()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Env {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        state,
        tokens,
        audit,
        engine,
        _dir: dir,
        pg,
        task,
    }
}

/// SQLite, plus PostgreSQL when IRYO_TEST_POSTGRES is set.
async fn envs() -> Vec<Env> {
    let dir = tempfile::tempdir().unwrap();
    let store = iryo_db::Store::open(&dir.path().display().to_string())
        .await
        .unwrap();
    let mut out = vec![start(store, "sqlite", Some(dir), None).await];
    match std::env::var("IRYO_TEST_POSTGRES") {
        Ok(admin) => {
            let db = format!("iryo_clins_{}", uuid::Uuid::new_v4().simple());
            let (a2, d2) = (admin.clone(), db.clone());
            tokio::task::spawn_blocking(move || {
                let mut c = postgres::Client::connect(&a2, postgres::NoTls).unwrap();
                c.batch_execute(&format!("CREATE DATABASE {d2}")).unwrap();
            })
            .await
            .unwrap();
            // same server, the fresh database instead of the admin one
            let (head, query) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
            let host_start = head.find("://").map_or(0, |i| i + 3);
            let server = match head[host_start..].find('/') {
                Some(i) => &head[..host_start + i],
                None => head,
            };
            let url = if query.is_empty() {
                format!("{server}/{db}")
            } else {
                format!("{server}/{db}?{query}")
            };
            let store = iryo_db::Store::open(&url).await.unwrap();
            out.push(start(store, "postgres", None, Some((admin, db))).await);
        }
        Err(_) => eprintln!("SKIPPED: PostgreSQL part (IRYO_TEST_POSTGRES is not set)"),
    }
    out
}

impl Env {
    fn token(&self, sub: &str, role: Option<Role>, patient: Option<&str>) -> String {
        self.tokens
            .issue_token(
                &TokenRequest {
                    tenant: "clins-platform".into(),
                    subject: sub.into(),
                    role,
                    is_admin: false,
                    scopes: ScopeSet::parse("user/*.rs").unwrap(),
                    patient: patient.map(str::to_string),
                    lifetime: None,
                },
                Utc::now(),
            )
            .unwrap()
            .access_token
    }
    fn inst(&self, n: &str) -> String {
        self.token(if n == A { "hosp-a" } else { "hosp-b" }, None, None)
    }
    async fn post(&self, tok: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/clins/fhir/{path}", self.base))
            .bearer_auth(tok)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, tok: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/clins/fhir/{path}", self.base))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn register(&self, inst: &str, b: &Value) -> (u16, Value) {
        self.post(&self.inst(inst), "$register", b).await
    }
    async fn ok(&self, inst: &str, b: &Value) {
        let (s, oo) = self.register(inst, b).await;
        assert_eq!(s, 200, "{}: {oo}", self.engine);
    }
    async fn consent(&self, inst: &str, pk: &str, inpatient: bool) {
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "patientKey", "valueString": pk}, {"name": "inpatient", "valueBoolean": inpatient}]});
        let (s, b) = self.post(&self.inst(inst), "$consent", &p).await;
        assert_eq!(s, 200, "{b}");
    }
    async fn view(&self, inst: &str, pk: &str) -> (u16, Value) {
        let q: String = url_enc(pk);
        self.get(
            &self.inst(inst),
            &format!("Patient/$clins-view?patientKey={q}"),
        )
        .await
    }
    async fn refusals_logged(&self, key: &str) -> usize {
        self.state.flush_log().await;
        self.audit
            .search_audit("clins-platform", &AuditQuery::default())
            .unwrap()
            .iter()
            .filter(|r| r.entry.details["refused"].to_string().contains(key))
            .count()
    }
}

fn url_enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn keys(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["details"]["coding"][0]["code"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn set_patient(bundle: &mut Value, pk: &str) {
    for e in bundle["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "Patient" {
            for i in e["resource"]["identifier"].as_array_mut().unwrap() {
                if i["system"] == "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID" {
                    i["value"] = json!(pk);
                }
            }
        }
    }
}

fn set_institution(r: &mut Value, inst: &str) {
    for x in r["extension"].as_array_mut().into_iter().flatten() {
        if x["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("JP_eCS_InstitutionNumber"))
        {
            x["valueIdentifier"]["value"] = json!(inst);
        }
    }
}

/// The official Observations Bundle, re-addressed: institution, identifier, patient, date.
fn obs_bundle(inst: &str, local: &str, pk: &str, date: &str) -> Value {
    let mut b = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    b["identifier"]["value"] = json!(format!("{inst}^2025^{local}"));
    set_patient(&mut b, pk);
    for e in b["entry"].as_array_mut().unwrap().iter_mut().skip(1) {
        set_institution(&mut e["resource"], inst);
        e["resource"]["effectiveDateTime"] = json!(date);
    }
    b
}

/// A 5情報 Bundle of `ty` items built from the official single-resource examples.
fn list_bundle(inst: &str, local: &str, pk: &str, ty: &str, items: &[(&str, &[&str])]) -> Value {
    let base = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");
    let mut b = base.clone();
    b["identifier"]["value"] = json!(format!("{inst}^2025^{local}"));
    b["meta"]["tag"][0]["code"] = json!(ty);
    let patient = base["entry"][0].clone();
    let mut entries = vec![patient];
    let src = if ty == "Condition" {
        fixture("Condition-Example-JP-Condition-eCS-01.json")
    } else {
        fixture("AllergyIntolerance-Example-JP-AllergyIntolerance-eCS-01.json")
    };
    for (n, (text, flags)) in items.iter().enumerate() {
        let mut r = src.clone();
        r["code"]["text"] = json!(text);
        set_institution(&mut r, inst);
        r["meta"]["tag"] = json!(flags
            .iter()
            .map(|f| json!({"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": f}))
            .collect::<Vec<_>>());
        if flags.is_empty() {
            r["meta"].as_object_mut().unwrap().remove("tag");
        }
        r["identifier"][0]["value"] = json!(format!("{local}-{n}"));
        entries
            .push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": r}));
    }
    b["entry"] = Value::Array(entries);
    set_patient(&mut b, pk);
    b
}

/// The official referral document from `from` to `to`, with a prescription and, optionally,
/// the patient's agreement.
fn referral(from: &str, to: &str, local: &str, pk: &str, agreed: bool) -> Value {
    let mut b = fixture("Bundle-Bundle-CLINS-Referral-Example-01.json");
    b["identifier"]["value"] = json!(format!("{from}^2025^{local}"));
    set_patient(&mut b, pk);
    for e in b["entry"].as_array_mut().unwrap() {
        let r = &mut e["resource"];
        if r["resourceType"] == "Organization" {
            let v = r["identifier"][0]["value"]
                .as_str()
                .unwrap_or("")
                .to_string();
            r["identifier"][0]["value"] = json!(if v == "1311234567" { to } else { from });
        }
    }
    // The IG 1.5.2 example predates 1.10.0, which requires display on the status codings.
    for e in b["entry"].as_array_mut().unwrap() {
        for k in ["clinicalStatus", "verificationStatus"] {
            let ptr = format!("/resource/{k}/coding/0");
            if let Some(c) = e.pointer_mut(&ptr).and_then(Value::as_object_mut) {
                let code = c["code"].as_str().unwrap_or("").to_string();
                c.entry("display").or_insert(json!(code));
            }
        }
    }
    let mut rx = fixture("MedicationRequest-Example-JP-MedReq-PO-TID-2days.json");
    rx["authoredOn"] = json!(Utc::now().format("%Y-%m-%d").to_string());
    let entries = b["entry"].as_array_mut().unwrap();
    entries
        .push(json!({"fullUrl": "urn:uuid:6f0d8a52-2f0e-4a55-9c1e-1d2b9c1e0a01", "resource": rx}));
    if agreed {
        entries.push(json!({"fullUrl": "urn:uuid:6f0d8a52-2f0e-4a55-9c1e-1d2b9c1e0a02", "resource": {
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "policyRule": {"text": "紹介元での口頭同意"}}}));
    }
    b
}

/// Attach a 退院時サマリー (a document Bundle with one discharge prescription) to a referral,
/// referenced from the Composition's 添付情報 section 210.
fn with_discharge_summary(mut referral: Value) -> Value {
    let mut rx = fixture("MedicationRequest-Example-JP-MedReq-PO-TID-2days.json");
    rx["authoredOn"] = json!(Utc::now().format("%Y-%m-%d").to_string());
    let summary = json!({
        "resourceType": "Bundle", "type": "document",
        "identifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": "1318814790^2025^dis-1"},
        "timestamp": "2025-06-01T10:00:00+09:00",
        "entry": [
            {"fullUrl": "urn:uuid:7a1d0c55-1111-4c2a-9d3e-000000000003", "resource": {
                "resourceType": "Composition", "status": "final", "title": "退院時サマリー",
                "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "18842-5"}]},
                "date": "2025-06-01", "author": [{"display": "退院時主治医"}],
                "section": [{"title": "退院時投薬指示", "entry": [{"reference": "urn:uuid:7a1d0c55-1111-4c2a-9d3e-000000000002"}]}]}},
            {"fullUrl": "urn:uuid:7a1d0c55-1111-4c2a-9d3e-000000000002", "resource": rx}]});
    let url = "urn:uuid:7a1d0c55-1111-4c2a-9d3e-000000000001";
    referral["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fullUrl": url, "resource": summary}));
    referral["entry"][0]["resource"]["section"]
        .as_array_mut()
        .unwrap()
        .push(json!({"title": "添付情報",
            "code": {"coding": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/document-section", "code": "210", "display": "添付情報セクション"}]},
            "entry": [{"reference": url}]}));
    referral
}

fn entries_of<'a>(view: &'a Value, ty: &str) -> Vec<&'a Value> {
    view["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == ty)
        .collect()
}

fn sources(view: &Value) -> Vec<String> {
    let mut s: Vec<String> = view["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["meta"]["source"].as_str())
        .map(|s| s.rsplit('#').next().unwrap_or("").to_string())
        .collect();
    s.sort();
    s.dedup();
    s
}

fn today() -> String {
    Utc::now().format("%Y-%m-%dT10:00:00+09:00").to_string()
}

#[tokio::test]
async fn register_links_patients_and_views_need_consent() {
    for env in envs().await {
        let e = env.engine;
        let (s, oo) = env
            .register(A, &obs_bundle(A, "obs-1", PK_A, &today()))
            .await;
        assert_eq!(s, 200, "{e}: {oo}");
        assert!(keys(&oo).contains(&"CLINS-ACCEPTED".to_string()));
        let (s, oo) = env
            .register(
                B,
                &list_bundle(B, "cond-1", PK_B, "Condition", &[("高血圧症", &[])]),
            )
            .await;
        assert_eq!(s, 200, "{e}: {oo}");
        // another patient at A: must never appear in this patient's views
        let (s, _) = env
            .register(A, &obs_bundle(A, "obs-x", OTHER_PK, &today()))
            .await;
        assert_eq!(s, 200);

        // no consent: refused, logged
        let (s, oo) = env.view(B, PK_B).await;
        assert_eq!(s, 403, "{e}");
        assert_eq!(keys(&oo), vec!["CLINS-NO-CONSENT"]);
        assert!(env.refusals_logged("CLINS-NO-CONSENT").await >= 1);

        env.consent(B, PK_A, false).await;
        let (s, view) = env.view(B, "00012345:あいう:187:05").await;
        assert_eq!(s, 200, "{e}: {view}");
        assert_eq!(view["entry"][0]["resource"]["resourceType"], "Patient");
        assert_eq!(entries_of(&view, "Observation").len(), 4, "{e}");
        assert_eq!(entries_of(&view, "Condition").len(), 1, "{e}");
        let mut both = vec![A.to_string(), B.to_string()];
        both.sort();
        assert_eq!(sources(&view), both);

        // consent is per institution: A has none
        let (s, _) = env.view(A, PK_A).await;
        assert_eq!(s, 403);
        // bad key in a view: R1013
        let (s, oo) = env.view(B, "12345678:a b:1:01").await;
        assert_eq!((s, keys(&oo)), (422, vec!["R1013".to_string()]));

        // patient view through a patient account linked to the key
        let tok = env.token("patient-1", Some(Role::Patient), Some(PK_B));
        let (s, mine) = env.get(&tok, "$my-records").await;
        assert_eq!(s, 200);
        assert_eq!(entries_of(&mine, "Observation").len(), 4);
        let tok = env.token("patient-2", Some(Role::Patient), Some(OTHER_PK));
        let (_, other) = env.get(&tok, "$my-records").await;
        assert_eq!(entries_of(&other, "Condition").len(), 0);
        assert_eq!(entries_of(&other, "Observation").len(), 4);

        // FHIR media type accepted; a body that is not JSON gets an OperationOutcome
        let r = env
            .http
            .post(format!("{}/clins/fhir/$register", env.base))
            .bearer_auth(env.inst(A))
            .header("content-type", "application/fhir+json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let oo: Value = r.json().await.unwrap();
        assert_eq!(keys(&oo), vec!["CLINS-PARSE"]);
        let r = env
            .http
            .post(format!("{}/clins/fhir/$register", env.base))
            .bearer_auth(env.inst(A))
            .header("content-type", "application/fhir+json")
            .body(obs_bundle(A, "fhir-json", PK_A, &today()).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        // unauthenticated and unbound clients
        let (s, _) = env.get("garbage", "$my-records").await;
        assert_eq!(s, 401);
        let tok = env.token("hosp-unknown", None, None);
        let (s, oo) = env
            .post(&tok, "$register", &obs_bundle(A, "z", PK_A, &today()))
            .await;
        assert_eq!(
            (s, keys(&oo)),
            (403, vec!["CLINS-UNBOUND-CLIENT".to_string()])
        );
    }
}

#[tokio::test]
async fn same_identifier_replaces_and_lists_replace_whole() {
    for env in envs().await {
        env.consent(A, PK_A, true).await;
        let b1 = list_bundle(
            A,
            "c1",
            PK_A,
            "Condition",
            &[("胃潰瘍", &[]), ("高血圧症", &[])],
        );
        env.ok(A, &b1).await;
        let bb = list_bundle(B, "c1", PK_B, "Condition", &[("糖尿病", &[])]);
        env.ok(B, &bb).await;
        let (_, v) = env.view(A, PK_A).await;
        assert_eq!(entries_of(&v, "Condition").len(), 3);
        // a new full list from A replaces A's earlier list (other identifier), not B's
        let b2 = list_bundle(A, "c2", PK_A, "Condition", &[("胃潰瘍", &[])]);
        env.ok(A, &b2).await;
        let (_, v) = env.view(A, PK_A).await;
        let texts: Vec<&str> = entries_of(&v, "Condition")
            .iter()
            .filter_map(|c| c["code"]["text"].as_str())
            .collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts.contains(&"糖尿病") && texts.contains(&"胃潰瘍"));
        // same identifier again: replaced
        let b3 = list_bundle(A, "c2", PK_A, "Condition", &[("逆流性食道炎", &[])]);
        env.ok(A, &b3).await;
        // observations: same identifier replaces
        env.ok(A, &obs_bundle(A, "o1", PK_A, &today())).await;
        let mut again = obs_bundle(A, "o1", PK_A, &today());
        again["entry"].as_array_mut().unwrap().truncate(2);
        env.ok(A, &again).await;
        let (_, v) = env.view(A, PK_A).await;
        let texts: Vec<&str> = entries_of(&v, "Condition")
            .iter()
            .filter_map(|c| c["code"]["text"].as_str())
            .collect();
        assert_eq!(texts.len(), 2);
        assert!(texts.contains(&"逆流性食道炎") && texts.contains(&"糖尿病"));
        assert_eq!(entries_of(&v, "Observation").len(), 1);
    }
}

#[tokio::test]
async fn withdraw_only_by_owner_and_change_is_atomic() {
    for env in envs().await {
        env.consent(B, PK_B, false).await;
        env.ok(A, &obs_bundle(A, "w1", PK_A, &today())).await;
        let wd = |id: &str, pk: &str| {
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "patientKey", "valueString": pk},
                {"name": "identifier", "valueIdentifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": id}}]})
        };
        let id = format!("{A}^2025^w1");
        let (s, oo) = env.post(&env.inst(B), "$withdraw", &wd(&id, PK_B)).await;
        assert_eq!((s, keys(&oo)), (403, vec!["CLINS-NOT-OWNER".to_string()]));
        assert_eq!(
            entries_of(&env.view(B, PK_B).await.1, "Observation").len(),
            4
        );
        // parameters missing
        let (s, oo) = env
            .post(
                &env.inst(A),
                "$withdraw",
                &json!({"resourceType": "Parameters"}),
            )
            .await;
        assert_eq!((s, keys(&oo)), (400, vec!["CLINS-PARAMETER".to_string()]));
        assert!(env.refusals_logged("CLINS-PARAMETER").await >= 1);
        // wrong patient: not found
        let (s, _) = env
            .post(&env.inst(A), "$withdraw", &wd(&id, OTHER_PK))
            .await;
        assert_eq!(s, 404);

        // change with an invalid new Bundle: nothing happens
        let mut bad = obs_bundle(A, "w2", PK_A, &today());
        bad["entry"][0]["fullUrl"] = bad["entry"][1]["fullUrl"].clone();
        let mut p = wd(&id, PK_A);
        p["parameter"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "resource", "resource": bad}));
        let (s, oo) = env.post(&env.inst(A), "$change", &p).await;
        assert_eq!(s, 422);
        assert!(keys(&oo).contains(&"CLINS-DUP-FULLURL".to_string()));
        assert_eq!(
            entries_of(&env.view(B, PK_B).await.1, "Observation").len(),
            4
        );

        // a valid change: old unit gone, new one in
        let mut newer = obs_bundle(A, "w2", PK_A, &today());
        newer["entry"].as_array_mut().unwrap().truncate(3);
        let mut p = wd(&id, PK_A);
        p["parameter"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "resource", "resource": newer}));
        let (s, oo) = env.post(&env.inst(A), "$change", &p).await;
        assert_eq!(s, 200, "{oo}");
        assert_eq!(
            entries_of(&env.view(B, PK_B).await.1, "Observation").len(),
            2
        );
        // B cannot change A's unit either
        let (s, _) = env.post(&env.inst(B), "$change", &p).await;
        assert_eq!(s, 422); // identifier of the new Bundle is A's: institution mismatch

        let (s, _) = env
            .post(
                &env.inst(A),
                "$withdraw",
                &wd(&format!("{A}^2025^w2"), PK_A),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(
            entries_of(&env.view(B, PK_B).await.1, "Observation").len(),
            0
        );
    }
}

#[tokio::test]
async fn refusals_carry_keys_and_store_nothing() {
    for env in envs().await {
        env.consent(B, PK_A, false).await;
        let good = obs_bundle(A, "r1", PK_A, &today());
        let mut cases: Vec<(&str, Value, &str)> = vec![];
        let mut mixed = good.clone();
        let cond = list_bundle(A, "x", PK_A, "Condition", &[("胃潰瘍", &[])])["entry"][1].clone();
        mixed["entry"].as_array_mut().unwrap().push(cond);
        cases.push(("mixed types", mixed, "CLINS-MIXED-TYPES"));
        let mut dup = good.clone();
        dup["entry"][2]["fullUrl"] = dup["entry"][1]["fullUrl"].clone();
        cases.push(("duplicate fullUrl", dup, "CLINS-DUP-FULLURL"));
        let mut order = good.clone();
        order["entry"].as_array_mut().unwrap().swap(0, 1);
        cases.push(("patient not first", order, "R0211"));
        let mut noinst = good.clone();
        noinst["entry"][1]["resource"]["extension"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        cases.push(("missing institution number", noinst, "R9011"));
        let mut badinst = good.clone();
        set_institution(&mut badinst["entry"][1]["resource"], "13188147");
        cases.push(("malformed institution number", badinst, "R9012"));
        let mut badid = good.clone();
        badid["identifier"]["value"] = json!(format!("{A}^2025^bad_id!"));
        cases.push(("malformed identifier", badid, "R2152"));
        let mut badkey = good.clone();
        set_patient(&mut badkey, "00012345:あい う:187:05");
        cases.push(("invalid patient key", badkey, "R1013"));
        let mut nolocal = good.clone();
        nolocal["entry"][1]["resource"]["code"]["coding"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        cases.push(("no local lab code", nolocal, "R6021"));
        for (what, b, key) in cases {
            let (s, oo) = env.register(A, &b).await;
            assert_eq!(s, 422, "{}: {what}: {oo}", env.engine);
            assert!(keys(&oo).contains(&key.to_string()), "{what}: {oo}");
            assert!(env.refusals_logged(key).await >= 1, "{what} not logged");
        }
        // another institution's identifier
        let (s, oo) = env.register(B, &good).await;
        assert_eq!(s, 422);
        assert!(keys(&oo).contains(&"CLINS-INSTITUTION-MISMATCH".to_string()));
        // nothing stored
        let (s, v) = env.view(B, PK_A).await;
        assert_eq!(s, 200);
        assert_eq!(v["entry"].as_array().unwrap().len(), 1, "{v}");
        // patients, insurers cannot register
        let tok = env.token("p", Some(Role::Patient), Some(PK_A));
        let (s, oo) = env.post(&tok, "$register", &good).await;
        assert_eq!((s, keys(&oo)), (403, vec!["CLINS-FORBIDDEN".to_string()]));
    }
}

#[tokio::test]
async fn referrals_reach_only_their_destination_with_prescriptions() {
    for env in envs().await {
        let ref1 = with_discharge_summary(referral(A, B, "ref-1", PK_A, true));
        let (s, oo) = env.register(A, &ref1).await;
        assert_eq!(s, 200, "{}: {oo}", env.engine);
        let (s, oo) = env.register(A, &referral(A, B, "ref-2", PK_A, false)).await;
        assert_eq!(s, 200, "{oo}");
        // B sees the agreed referral only
        let (s, list) = env.get(&env.inst(B), "$referrals").await;
        assert_eq!(s, 200);
        assert_eq!(list["total"], 1, "{list}");
        let (s, doc) = env
            .get(
                &env.inst(B),
                &format!(
                    "$referral?identifier={}",
                    url_enc(&format!("{A}^2025^ref-1"))
                ),
            )
            .await;
        assert_eq!(s, 200, "{doc}");
        assert_eq!(doc["type"], "document");
        let attached = doc["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["resourceType"] == "Bundle");
        assert!(attached, "the 退院時サマリー travels with the referral");
        let (s, oo) = env
            .get(
                &env.inst(B),
                &format!(
                    "$referral?identifier={}",
                    url_enc(&format!("{A}^2025^ref-2"))
                ),
            )
            .await;
        assert_eq!((s, keys(&oo)), (403, vec!["CLINS-NO-CONSENT".to_string()]));
        // A is not the destination
        let (s, list) = env.get(&env.inst(A), "$referrals").await;
        assert_eq!((s, list["total"].as_u64()), (200, Some(0)));
        let (s, _) = env
            .get(
                &env.inst(A),
                &format!(
                    "$referral?identifier={}",
                    url_enc(&format!("{A}^2025^ref-1"))
                ),
            )
            .await;
        assert_eq!(s, 404);
        // after consent at B, the second referral too; prescriptions are in the 6情報
        env.consent(B, PK_B, false).await;
        let (_, list) = env.get(&env.inst(B), "$referrals").await;
        assert_eq!(list["total"], 2);
        let (_, v) = env.view(B, PK_B).await;
        let rx = entries_of(&v, "MedicationRequest");
        assert_eq!(rx.len(), 3, "2 referrals + the attached summary: {v}");
        assert!(rx[0]["meta"]["source"].as_str().unwrap().ends_with(A));
        // referral retention: removed some days after fetch, the unfetched one stays
        let rep = env
            .state
            .run_retention(Utc::now() + Duration::days(8))
            .await
            .unwrap();
        assert_eq!(rep.removed_referrals.len(), 1, "{rep:?}");
        let (_, list) = env.get(&env.inst(B), "$referrals").await;
        assert_eq!(list["total"], 1);
    }
}

#[tokio::test]
async fn flags_and_viewing_windows() {
    for env in envs().await {
        env.consent(B, PK_A, false).await;
        let b = list_bundle(
            A,
            "f1",
            PK_A,
            "Condition",
            &[
                ("胃癌", &["UNINFORMED"]),
                ("非公開病名", &["UNDELIVERED"]),
                ("高血圧症", &[]),
            ],
        );
        env.ok(A, &b).await;
        let (_, v) = env.view(B, PK_A).await;
        let conds = entries_of(&v, "Condition");
        assert_eq!(conds.len(), 2);
        let marked: Vec<&&Value> = conds
            .iter()
            .filter(|c| {
                c["extension"]
                    .to_string()
                    .contains("urn:iryo:clins:uninformed-date")
            })
            .collect();
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0]["code"]["text"], "胃癌");
        let tok = env.token("p", Some(Role::Patient), Some(PK_A));
        let (_, mine) = env.get(&tok, "$my-records").await;
        let texts: Vec<&str> = entries_of(&mine, "Condition")
            .iter()
            .filter_map(|c| c["code"]["text"].as_str())
            .collect();
        assert_eq!(texts, vec!["高血圧症"]);

        // lab reports: 1 this month, 4 older than a year → the recent one + 2 more (last 3)
        let old = |y: i64| {
            (Utc::now() - Duration::days(365 * y + 30))
                .format("%Y-%m-%d")
                .to_string()
        };
        for (n, d) in [today(), old(2), old(3), old(4), old(5)].iter().enumerate() {
            let mut ob = obs_bundle(A, &format!("lab{n}"), PK_A, d);
            ob["entry"].as_array_mut().unwrap().truncate(2);
            env.ok(A, &ob).await;
        }
        let (_, v) = env.view(B, PK_A).await;
        let dates: Vec<&str> = entries_of(&v, "Observation")
            .iter()
            .filter_map(|o| o["effectiveDateTime"].as_str())
            .collect();
        assert_eq!(dates.len(), 3, "{dates:?}");
        assert!(!dates.contains(&old(4).as_str()) && !dates.contains(&old(5).as_str()));
    }
}

#[tokio::test]
async fn retention_keeps_lts_and_logs() {
    for env in envs().await {
        env.consent(B, PK_A, false).await;
        let b = list_bundle(
            A,
            "al",
            PK_A,
            "AllergyIntolerance",
            &[("さば", &["LTS"]), ("卵", &[])],
        );
        env.ok(A, &b).await;
        env.ok(B, &obs_bundle(B, "o", PK_B, &today())).await;
        // only the operator runs it over HTTP; nothing is due now
        let (s, oo) = env.post(&env.inst(A), "$retention", &json!({})).await;
        assert_eq!((s, keys(&oo)), (403, vec!["CLINS-FORBIDDEN".to_string()]));
        let op = env.token("ops", Some(Role::PlatformOperator), None);
        let (s, out) = env.post(&op, "$retention", &json!({})).await;
        assert_eq!(s, 200, "{out}");
        assert_eq!(out["parameter"][0]["valueInteger"], 0);
        let rep = env.state.run_retention(Utc::now()).await.unwrap();
        assert!(rep.removed_units.is_empty() && rep.trimmed_units.is_empty());
        let later = Utc::now() + Duration::days(5 * 365 + 10);
        let rep = env.state.run_retention(later).await.unwrap();
        assert_eq!(rep.removed_units.len(), 1, "{rep:?}");
        assert_eq!(rep.trimmed_units.len(), 1);
        let (_, v) = env.view(B, PK_A).await;
        let allergies = entries_of(&v, "AllergyIntolerance");
        assert_eq!(allergies.len(), 1);
        assert_eq!(allergies[0]["code"]["text"], "さば");
        assert_eq!(entries_of(&v, "Observation").len(), 0);
        env.state.flush_log().await;
        let logged = env
            .audit
            .search_audit("clins-platform", &AuditQuery::default())
            .unwrap()
            .iter()
            .any(|r| r.entry.details["operation"] == "retention" && r.entry.resources.len() == 2);
        assert!(logged);
    }
}

/// A small 健診結果報告書 document (JP_Bundle_eCheckupGeneral) with one 特定健診 item and one
/// employer-only item.
fn checkup(inst: &str, local: &str, pk: &str, event: &str) -> Value {
    let obs = |code: &str, sec: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:oid:1.2.392.200119.6.1005", "code": code}]},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"},
            "effectiveDateTime": "2025-04-01", "valueString": sec})
    };
    let patient = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json")["entry"][0].clone();
    let mut b = json!({
        "resourceType": "Bundle",
        "meta": {"lastUpdated": "2025-04-02T10:00:00+09:00", "profile": ["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral|1.5.0"]},
        "identifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": format!("{inst}^2025^{local}")},
        "type": "document", "timestamp": "2025-04-02T10:00:00+09:00",
        "entry": [
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": {
                "resourceType": "Composition", "status": "final", "title": "健診結果報告書",
                "type": {"coding": [{"system": "http://loinc.org", "code": "53576-5"}]},
                "event": [{"code": [{"coding": [{"system": "urn:oid:1.2.392.200119.6.1002", "code": event}]}]}],
                "section": [
                    {"code": {"coding": [{"system": "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code", "code": "01011"}]},
                     "entry": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000003"}]},
                    {"code": {"coding": [{"system": "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code", "code": "01031"}]},
                     "entry": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000004"}]}]}},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002", "resource": patient["resource"]},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003", "resource": obs("9N001000000000001", "tokutei")},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000004", "resource": obs("9Z999000000000001", "employer")},
        ]
    });
    set_patient(&mut b, pk);
    b
}

#[tokio::test]
async fn insurers_receive_checkups_under_item_rules() {
    for env in envs().await {
        // profile validation of the hand-made checkup is not the point here
        let st = env.unvalidated_state().await;
        let a = iryo_clins::Actor::Institution {
            client: "hosp-a".into(),
            number: A.into(),
        };
        st.register(&a, checkup(A, "k1", PK_A, "010"))
            .await
            .unwrap();
        st.register(&a, checkup(A, "k2", PK_A, "030"))
            .await
            .unwrap();
        let b = iryo_clins::Actor::Institution {
            client: "hosp-b".into(),
            number: B.into(),
        };
        st.register(&b, checkup(B, "k3", "06999999::55:", "010"))
            .await
            .unwrap();

        let tok = env.token("kenpo", Some(Role::Insurer), None);
        let (s, list) = env.get(&tok, "$checkup-reports").await;
        assert_eq!(s, 200, "{list}");
        assert_eq!(list["total"], 2, "{list}");
        for e in list["entry"].as_array().unwrap() {
            let doc = &e["resource"];
            let event =
                doc["entry"][0]["resource"]["event"][0]["code"][0]["coding"][0]["code"].clone();
            let values: Vec<&str> = entries_of(doc, "Observation")
                .iter()
                .filter_map(|o| o["valueString"].as_str())
                .collect();
            if event == "010" {
                assert_eq!(values, vec!["tokutei", "employer"]);
            } else {
                assert_eq!(values, vec!["tokutei"]);
            }
        }
        // the other insurer sees only its own insured
        let tok = env.token("kenpo-2", Some(Role::Insurer), None);
        let (_, list) = env.get(&tok, "$checkup-reports").await;
        assert_eq!(list["total"], 1);
        // institutions are not insurers
        let (s, _) = env.get(&env.inst(A), "$checkup-reports").await;
        assert_eq!(s, 403);
        // the patient sees both own checkup reports
        let tok = env.token("p", Some(Role::Patient), Some(PK_B));
        let (_, mine) = env.get(&tok, "$my-records").await;
        assert_eq!(entries_of(&mine, "Bundle").len(), 2);
    }
}

impl Env {
    /// A second service on the same store and log that skips profile validation (for
    /// hand-made documents whose profile conformance is not the point of a test).
    async fn unvalidated_state(&self) -> ClinsState {
        ClinsState::new(
            self.state.store().clone(),
            self.tokens.clone(),
            self.audit.clone() as Arc<dyn SecurityStore>,
            ClinsConfig {
                validate_profiles: false,
                ..ClinsConfig::default()
            },
        )
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn consent_lasts_24_hours_outpatient_and_until_discharge_inpatient() {
    for env in envs().await {
        env.ok(A, &obs_bundle(A, "c", PK_A, &today())).await;
        let key = iryo_clins::ids::normalize_patient_key(PK_A).unwrap();
        env.consent(B, PK_A, false).await;
        let now = Utc::now();
        assert!(env.state.has_consent(&key, B, now).await.unwrap());
        assert!(!env
            .state
            .has_consent(&key, B, now + Duration::hours(25))
            .await
            .unwrap());
        assert!(!env.state.has_consent(&key, A, now).await.unwrap());

        env.consent(A, PK_A, true).await;
        assert!(env
            .state
            .has_consent(&key, A, now + Duration::days(30))
            .await
            .unwrap());
        assert_eq!(env.view(A, PK_A).await.0, 200);
        let p = json!({"resourceType": "Parameters", "parameter": [{"name": "patientKey", "valueString": PK_A}]});
        let (s, _) = env.post(&env.inst(A), "$discharge", &p).await;
        assert_eq!(s, 200);
        let (s, oo) = env.view(A, PK_A).await;
        assert_eq!((s, keys(&oo)), (403, vec!["CLINS-NO-CONSENT".to_string()]));
        // B's outpatient consent is untouched by A's discharge
        assert_eq!(env.view(B, PK_A).await.0, 200);
        // discharge without a consent
        let p = json!({"resourceType": "Parameters", "parameter": [{"name": "patientKey", "valueString": OTHER_PK}]});
        assert_eq!(env.post(&env.inst(B), "$discharge", &p).await.0, 404);
    }
}

#[tokio::test]
async fn conditions_ended_more_than_five_years_ago_are_not_shown() {
    for env in envs().await {
        env.consent(B, PK_A, false).await;
        let mut b = list_bundle(
            A,
            "old",
            PK_A,
            "Condition",
            &[("虫垂炎", &[]), ("骨折", &[])],
        );
        let long_ago = (Utc::now() - Duration::days(6 * 365))
            .format("%Y-%m-%d")
            .to_string();
        b["entry"][1]["resource"]["abatementDateTime"] = json!(long_ago);
        b["entry"][1]["resource"]["clinicalStatus"]["coding"][0]["code"] = json!("resolved");
        b["entry"][1]["resource"]["clinicalStatus"]["coding"][0]["display"] = json!("Resolved");
        env.ok(A, &b).await;
        let (_, v) = env.view(B, PK_A).await;
        let texts: Vec<&str> = entries_of(&v, "Condition")
            .iter()
            .filter_map(|c| c["code"]["text"].as_str())
            .collect();
        assert_eq!(texts, vec!["骨折"]);
        // A registered it; A without consent still sees nothing
        assert_eq!(env.view(A, PK_A).await.0, 403);
    }
}

/// Issue 5 item 2: Conditions, allergies and lab results inside registered documents reach
/// the 6情報 views with their source institution; an item sent both in a 5情報 list and in a
/// document, or in two documents, is shown once.
#[tokio::test]
async fn documents_feed_the_six_info_views() {
    for env in envs().await {
        let e = env.engine;
        let ref1 = referral(A, B, "ref-1", PK_A, true);
        let doc_conditions = entries_of(&ref1, "Condition").len();
        let doc_allergies = entries_of(&ref1, "AllergyIntolerance").len();
        assert!(doc_conditions >= 2 && doc_allergies >= 1, "fixture changed");
        env.ok(A, &ref1).await;
        env.consent(B, PK_B, false).await;
        let (s, v) = env.view(B, PK_B).await;
        assert_eq!(s, 200, "{e}: {v}");
        let conditions = entries_of(&v, "Condition");
        assert_eq!(conditions.len(), doc_conditions, "{e}: {v}");
        assert_eq!(entries_of(&v, "AllergyIntolerance").len(), doc_allergies);
        for c in &conditions {
            assert!(c["meta"]["source"].as_str().unwrap().ends_with(A), "{c}");
            assert_eq!(c["subject"]["reference"], "urn:iryo-clins:patient");
        }
        // the same referral content sent again in a second document: still shown once
        env.ok(A, &referral(A, B, "ref-2", PK_A, true)).await;
        let (_, v) = env.view(B, PK_B).await;
        assert_eq!(entries_of(&v, "Condition").len(), doc_conditions, "{e}");
        // A's 5情報 list names the referral's first diagnosis (same resource identifier):
        // shown once, the 5情報 version
        let first_id = conditions[0]["identifier"][0]["value"].as_str().unwrap();
        let mut list = list_bundle(A, "cond-list", PK_A, "Condition", &[("リスト版", &[])]);
        list["entry"][1]["resource"]["identifier"][0]["value"] = json!(first_id);
        env.ok(A, &list).await;
        let (_, v) = env.view(B, PK_B).await;
        let conditions = entries_of(&v, "Condition");
        assert_eq!(conditions.len(), doc_conditions, "{e}: {v}");
        let same: Vec<&&Value> = conditions
            .iter()
            .filter(|c| c["identifier"][0]["value"] == first_id)
            .collect();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0]["code"]["text"], "リスト版");
        // B's own item with the same identifier is another institution's item: not merged
        let mut list_b = list_bundle(B, "cond-b", PK_B, "Condition", &[("B病院", &[])]);
        list_b["entry"][1]["resource"]["identifier"][0]["value"] = json!(first_id);
        env.ok(B, &list_b).await;
        let (_, v) = env.view(B, PK_B).await;
        assert_eq!(entries_of(&v, "Condition").len(), doc_conditions + 1, "{e}");
        // withdrawing the referrals removes their items again; the lists stay
        for id in ["ref-1", "ref-2"] {
            let p = json!({"resourceType": "Parameters", "parameter": [
                {"name": "patientKey", "valueString": PK_A},
                {"name": "identifier", "valueString": format!("{A}^2025^{id}")}]});
            let (s, oo) = env.post(&env.inst(A), "$withdraw", &p).await;
            assert_eq!(s, 200, "{oo}");
        }
        let (_, v) = env.view(B, PK_B).await;
        assert_eq!(entries_of(&v, "Condition").len(), 2, "{e}: {v}");
        assert_eq!(entries_of(&v, "AllergyIntolerance").len(), 0);

        // checkup lab results (the 検査 sections) are lab results of the views
        let st = env.unvalidated_state().await;
        let a = iryo_clins::Actor::Institution {
            client: "hosp-a".into(),
            number: A.into(),
        };
        st.register(&a, checkup(A, "k1", OTHER_PK, "010"))
            .await
            .unwrap();
        env.consent(B, OTHER_PK, false).await;
        let (_, v) = env.view(B, OTHER_PK).await;
        let obs = entries_of(&v, "Observation");
        let mut values: Vec<&str> = obs
            .iter()
            .filter_map(|o| o["valueString"].as_str())
            .collect();
        values.sort();
        assert_eq!(values, vec!["employer", "tokutei"], "{e}: {v}");
        assert!(obs[0]["meta"]["source"].as_str().unwrap().ends_with(A));
        // A's patient is not B's other patient: nothing of OTHER_PK in PK_B's view
        let (_, v) = env.view(B, PK_B).await;
        assert!(entries_of(&v, "Observation").is_empty(), "{e}: {v}");
    }
}

/// Concurrent registrations for one patient all land in the per-patient index (a lost race
/// on the index is retried), so the view shows every unit.
#[tokio::test]
async fn concurrent_registrations_keep_the_index_complete() {
    for env in envs().await {
        let mut tasks = vec![];
        for n in 0..8 {
            let state = env.state.clone();
            let inst = if n % 2 == 0 { A } else { B };
            let b = obs_bundle(inst, &format!("conc-{n}"), PK_A, &today());
            tasks.push(tokio::spawn(async move {
                let actor = iryo_clins::Actor::Institution {
                    client: format!("c-{inst}"),
                    number: inst.into(),
                };
                state.register(&actor, b).await
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|r| panic!("{}", r.outcome()));
        }
        env.consent(B, PK_B, false).await;
        let (s, v) = env.view(B, PK_B).await;
        assert_eq!(s, 200);
        assert_eq!(
            entries_of(&v, "Observation").len(),
            8 * 4,
            "{}: {v}",
            env.engine
        );
        // withdrawing one of them concurrently with a new registration
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "patientKey", "valueString": PK_A},
            {"name": "identifier", "valueString": format!("{A}^2025^conc-0")}]});
        let (tok, b9) = (env.inst(A), obs_bundle(B, "conc-9", PK_B, &today()));
        let (w, r) = tokio::join!(env.post(&tok, "$withdraw", &p), env.register(B, &b9));
        assert_eq!((w.0, r.0), (200, 200), "{} {}", w.1, r.1);
        let (_, v) = env.view(B, PK_B).await;
        assert_eq!(entries_of(&v, "Observation").len(), 8 * 4, "{}", env.engine);
        // the JSON written straight from the units is the view
        let b = iryo_clins::Actor::Institution {
            client: "hosp-b".into(),
            number: B.into(),
        };
        let now = Utc::now();
        let bytes = env
            .state
            .institution_view_json(&b, PK_B, now)
            .await
            .unwrap();
        let value = env.state.institution_view(&b, PK_B, now).await.unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), value);
    }
}
