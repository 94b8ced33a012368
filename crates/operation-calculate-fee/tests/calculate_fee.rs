//! `Encounter/{id}/$calculate-fee` over real HTTP, on SQLite and PostgreSQL, with the fixture
//! masters of `crates/fee` (unchanged rows of the official 支払基金 files, R6 values).

use iryo_operation_calculate_fee::CalculateFee;
use iryo_rest_api::auth::{AuditSink, Security, TOKEN_AUDIENCE, TOKEN_ISSUER};
use iryo_rest_api::{Config, Operations};
use iryo_security::roles::Role;
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{AuditQuery, SecurityStore, SqliteSecurityStore};
use iryo_security::token::{TokenRequest, TokenService};
use iryo_testkit::TestServer;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const PROC: &str = "http://jpfhir.jp/fhir/core/CodeSystem/JP_ProcedureCodesMedical_CS";
const DRUG: &str = "https://iryo.example.jp/fhir/CodeSystem/ssk-medication";

/// The fixture masters imported once per test binary.
fn masters() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let path = dir.join("fee-masters.db");
        let fixtures =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fee/tests/fixtures/masters");
        iryo_fee::import_masters(&fixtures, &path, &mut |_| {}).expect("fixture import");
        path
    })
    .clone()
}

fn config(master_store: PathBuf) -> Config {
    Config {
        operations: Operations(vec![Arc::new(CalculateFee::new(master_store))]),
        ..Default::default()
    }
}

/// Security on: tokens signed with a test key, an in-memory security store and access log.
fn secured(master_store: PathBuf, sec: &Arc<dyn SecurityStore>, audit: &AuditSink) -> Config {
    Config {
        security: Some(Arc::new(Security {
            tokens: tokens(),
            store: sec.clone(),
            audit: audit.clone(),
            static_token: None,
            open_loopback: false,
            clients: vec![],
            accounts: None,
            secure_cookies: false,
        })),
        ..config(master_store)
    }
}

fn tokens() -> TokenService {
    TokenService::new([9u8; 32], TOKEN_ISSUER, TOKEN_AUDIENCE)
}

fn token(tenant: &str, subject: &str, role: Role, patient: Option<&str>) -> String {
    let scopes = if patient.is_some() {
        "patient/*.rs"
    } else {
        "user/*.cruds"
    };
    tokens()
        .issue_token(
            &TokenRequest {
                tenant: tenant.into(),
                subject: subject.into(),
                role: Some(role),
                is_admin: false,
                scopes: ScopeSet::parse(scopes).unwrap(),
                patient: patient.map(str::to_string),
                lifetime: None,
            },
            chrono::Utc::now(),
        )
        .unwrap()
        .access_token
}

async fn servers_with(master_store: PathBuf) -> Vec<TestServer> {
    let mut out = vec![TestServer::sqlite_with(config(master_store.clone())).await];
    if let Some(pg) = TestServer::postgres_with(config(master_store)).await {
        out.push(pg);
    }
    out
}

/// The value of a top-level parameter.
fn param<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["parameter"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .and_then(|p| {
            p.as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| v)
        })
        .unwrap_or(&Value::Null)
}

fn part<'v>(p: &'v Value, name: &str) -> &'v Value {
    p["part"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .and_then(|x| {
            x.as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| v)
        })
        .unwrap_or(&Value::Null)
}

/// `(code of the line's last item, points, count, total)` of every line.
fn lines(v: &Value) -> Vec<(String, i64, i64, i64)> {
    v["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "line")
        .map(|l| {
            let items: Vec<&Value> = l["part"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["name"] == "item")
                .collect();
            let code = part(items.last().unwrap(), "code")["code"]
                .as_str()
                .unwrap()
                .to_string();
            (
                code,
                part(l, "points").as_i64().unwrap(),
                part(l, "count").as_i64().unwrap(),
                part(l, "total").as_i64().unwrap(),
            )
        })
        .collect()
}

fn messages(v: &Value) -> Vec<String> {
    v["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "message")
        .map(|m| part(m, "text").as_str().unwrap_or("").to_string())
        .collect()
}

fn patient(id: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": "山田", "given": ["花子"]}],
           "gender": "female", "birthDate": birth})
}

fn coverage(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Coverage", "id": id, "status": "active",
        "beneficiary": {"reference": format!("Patient/{patient}")},
        "payor": [{"identifier": {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber",
                                  "value": "06130012"}}],
        "costToBeneficiary": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-copay-type",
                                                    "code": "copaypct"}]},
                               "valueQuantity": {"value": 30}}]})
}

fn encounter(id: &str, patient: &str, start: &str, kind: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "https://iryo.example.jp/fhir/CodeSystem/fee-visit-kind", "code": kind}]}],
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": start}})
}

fn service_request(id: &str, enc: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "ServiceRequest", "id": id, "status": "completed", "intent": "order",
        "code": {"coding": [{"system": PROC, "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "encounter": {"reference": format!("Encounter/{enc}")}})
}

fn charge_item(id: &str, enc: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "ChargeItem", "id": id, "status": "billable",
        "code": {"coding": [{"system": PROC, "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "context": {"reference": format!("Encounter/{enc}")},
        "quantity": {"value": 1}})
}

/// ガスター散2% 3 g a day for 14 days, 院内.
fn gaster(id: &str, enc: &str, patient: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": DRUG, "code": "610406079"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "encounter": {"reference": format!("Encounter/{enc}")},
        "dosageInstruction": [{"text": "1日2回朝夕食後",
            "doseAndRate": [{"rateRatio": {"numerator": {"value": 3},
                                            "denominator": {"value": 1, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}}]}],
        "dispenseRequest": {"expectedSupplyDuration": {"value": 14, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}})
}

async fn put_all(srv: &TestServer, base: &str, resources: &[Value]) {
    for r in resources {
        let path = format!(
            "{base}/{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let (st, _, body) = srv.put(&path, r).await;
        assert!(
            st == 200 || st == 201,
            "{path} ({}): {st} {body}",
            srv.engine
        );
    }
}

/// Patient p-1 of the default tenant: visit a1 on 2024-07-01 (tests, a drug), a2 on 07-16 (07-15 is 海の日: a 休日加算 would apply).
fn clinic_a_data() -> Vec<Value> {
    vec![
        patient("p-1", "1980-05-01"),
        coverage("cov-1", "p-1"),
        encounter("a1", "p-1", "2024-07-01T10:00:00+09:00", "revisit"),
        service_request("sr-1", "a1", "p-1", "160008010"), // 末梢血液一般検査
        service_request("sr-2", "a1", "p-1", "160019410"), // グルコース
        charge_item("ci-1", "a1", "p-1", "160000410"),     // 尿蛋白
        gaster("mr-1", "a1", "p-1"),
        encounter("a2", "p-1", "2024-07-16T09:30:00+09:00", "revisit"),
        service_request("sr-3", "a2", "p-1", "160019410"), // グルコース again
    ]
}

#[tokio::test]
async fn worked_example_with_history_and_tenant_facility() {
    for srv in servers_with(masters()).await {
        put_all(&srv, "/fhir", &clinic_a_data()).await;
        // the default tenant has a pharmacist (調剤技術基本料)
        let t = srv.store.tenant_id("default").await.unwrap().unwrap();
        srv.store
            .tenant_set_settings(
                t,
                json!({"fee_facility": {"code": "1312345", "name": "いりょうクリニック",
                                        "kind": "clinic", "pharmacist_on_staff": true}}),
            )
            .await
            .unwrap();

        let (st, _, v) = srv.get("/fhir/Encounter/a1/$calculate-fee").await;
        assert_eq!(st, 200, "{} {v}", srv.engine);
        assert_eq!(v["resourceType"], "Parameters");
        assert_eq!(param(&v, "encounter")["reference"], "Encounter/a1");
        assert_eq!(param(&v, "date"), "2024-07-01");
        // Worked by hand from the R6 master values (2024-07-01):
        //   再診料 112007410                                    75
        //   末梢血液一般検査 160008010                          21
        //   グルコース 160019410                                11
        //   尿蛋白 160000410                                     7
        //   判断料 血液学的 125 + 生化学的(1) 144 + 尿・糞便 34   303   (first tests of the month)
        //   ガスター散2% 16.5円 × 3 g = 49.5円 → 5点 × 14日      70
        //   調剤料 内服 11 + 処方料 その他 42                    53
        //   調基 その他 (pharmacist on staff, tenant setting)    14
        //   外来管理加算 (no excluding item)                     52
        //   total 75+21+11+7+303+70+53+14+52                  = 606 点 → 6,060 円
        //   copay 30 %: 1,818 円 → 1,820 円 (10-yen rounding, 8 ≥ 5 rounds up)
        let mut got = lines(&v);
        got.sort();
        let mut want: Vec<(String, i64, i64, i64)> = [
            ("112007410", 75, 1),
            ("160008010", 21, 1),
            ("160019410", 11, 1),
            ("160000410", 7, 1),
            ("160061810", 125, 1),
            ("160061910", 144, 1),
            ("160061710", 34, 1),
            ("610406079", 5, 14),
            ("120000710", 11, 1),
            ("120001210", 42, 1),
            ("120001810", 14, 1),
            ("112011010", 52, 1),
        ]
        .iter()
        .map(|(c, p, n)| (c.to_string(), *p, *n, p * n))
        .collect();
        want.sort();
        assert_eq!(got, want, "{}", srv.engine);
        assert_eq!(param(&v, "totalPoints"), 606);
        assert_eq!(param(&v, "medicalCost")["value"], 6060);
        assert_eq!(param(&v, "burdenPercent"), 30);
        assert_eq!(param(&v, "copay")["value"], 1820);
        assert_eq!(param(&v, "copay")["currency"], "JPY");
        // every line says why, in Japanese
        let line = v["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "line" && part(p, "rule") == "drug")
            .unwrap();
        assert!(part(line, "reason")
            .as_str()
            .unwrap()
            .contains("16.5円×3 = 49.5円 → 5点 × 14日分"));
        assert_eq!(part(line, "shikibetsu"), "21");

        // a2 (07-16): the 生化学的検査(1)判断料 was billed on a1, so only
        //   再診料 75 + グルコース 11 + 外来管理加算 52 = 138 点 → 1,380 円 × 30 % = 414 → 410 円
        let (st, _, v) = srv
            .post(
                "/fhir/Encounter/a2/$calculate-fee",
                &json!({"resourceType": "Parameters"}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let mut got = lines(&v);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("112007410".to_string(), 75, 1, 75),
                ("112011010".to_string(), 52, 1, 52),
                ("160019410".to_string(), 11, 1, 11),
            ]
        );
        assert_eq!(param(&v, "totalPoints"), 138);
        assert_eq!(param(&v, "copay")["value"], 410);
        assert!(
            messages(&v).iter().any(|m| m.contains("当月算定済み")),
            "{:?}",
            messages(&v)
        );
        // the earlier visit is unchanged by the later one (history only flows forward)
        let (_, _, again) = srv.get("/fhir/Encounter/a1/$calculate-fee").await;
        assert_eq!(param(&again, "totalPoints"), 606);
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    for srv in servers_with(masters()).await {
        srv.tenant("clinic-b").await;
        put_all(&srv, "/fhir", &clinic_a_data()).await;
        // clinic-b: a 初診 of its own patient under the same ids, no facility setting
        let b = vec![
            patient("p-1", "1990-01-10"),
            coverage("cov-1", "p-1"),
            encounter("b1", "p-1", "2024-07-02T11:00:00+09:00", "initial"),
        ];
        put_all(&srv, "/t/clinic-b/fhir", &b).await;
        // another tenant's Encounter is unknown here
        let (st, _, v) = srv
            .get("/t/clinic-b/fhir/Encounter/a1/$calculate-fee")
            .await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (404, Some("OperationOutcome")),
            "{v}"
        );
        let (st, _, _) = srv.get("/fhir/Encounter/b1/$calculate-fee").await;
        assert_eq!(st, 404);
        // clinic-b's own visit: 初診料 291 点 only (no orders) → 2,910 円 × 30 % = 873 → 870 円
        let (st, _, v) = srv
            .get("/t/clinic-b/fhir/Encounter/b1/$calculate-fee")
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(lines(&v), vec![("111000110".to_string(), 291, 1, 291)]);
        assert_eq!(param(&v, "copay")["value"], 870);
        // clinic-a's a1 still sees only clinic-a's data; without a facility setting
        // there is no 調基: 606 − 14 = 592
        let (st, _, v) = srv.get("/fhir/Encounter/a1/$calculate-fee").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(param(&v, "totalPoints"), 592);
    }
}

fn issue_expression(v: &Value) -> String {
    v["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn bad_input_gets_operation_outcomes() {
    for srv in servers_with(masters()).await {
        put_all(&srv, "/fhir", &clinic_a_data()).await;
        // unknown Encounter: 404
        let (st, _, v) = srv.get("/fhir/Encounter/nope/$calculate-fee").await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (404, Some("OperationOutcome"))
        );
        // a ServiceRequest coded in another system: 422 naming it
        let mut sr = service_request("sr-bad", "a2", "p-1", "2345-7");
        sr["code"]["coding"][0]["system"] = json!("http://loinc.org");
        put_all(&srv, "/fhir", &[sr]).await;
        let (st, _, v) = srv.get("/fhir/Encounter/a2/$calculate-fee").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(issue_expression(&v), "ServiceRequest/sr-bad.code", "{v}");
        assert!(v["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("不正"));
        srv.delete("/fhir/ServiceRequest/sr-bad").await;
        // a 9-digit code that is not in the master: 422 pointing at the ChargeItem
        put_all(
            &srv,
            "/fhir",
            &[charge_item("ci-x", "a2", "p-1", "199999999")],
        )
        .await;
        let (st, _, v) = srv.get("/fhir/Encounter/a2/$calculate-fee").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(issue_expression(&v), "ChargeItem/ci-x.code", "{v}");
        assert!(v["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("199999999"));
        srv.delete("/fhir/ChargeItem/ci-x").await;
        // the patient's birth date is missing: 422 naming Patient.birthDate
        let mut p = patient("p-1", "1980-05-01");
        p.as_object_mut().unwrap().remove("birthDate");
        put_all(&srv, "/fhir", &[p]).await;
        let (st, _, v) = srv.get("/fhir/Encounter/a2/$calculate-fee").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(issue_expression(&v), "Patient/p-1.birthDate", "{v}");
        put_all(&srv, "/fhir", &[patient("p-1", "1980-05-01")]).await;
        // an inpatient encounter is not calculated
        let mut e = encounter("i1", "p-1", "2024-07-20T10:00:00+09:00", "revisit");
        e["class"]["code"] = json!("IMP");
        put_all(&srv, "/fhir", &[e]).await;
        let (st, _, v) = srv.get("/fhir/Encounter/i1/$calculate-fee").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(issue_expression(&v), "Encounter/i1.class", "{v}");
        // no health insurance on the date
        put_all(
            &srv,
            "/fhir",
            &[encounter(
                "a0",
                "p-1",
                "2019-01-07T10:00:00+09:00",
                "revisit",
            )],
        )
        .await;
        let mut c = coverage("cov-1", "p-1");
        c["period"] = json!({"start": "2020-04-01"});
        put_all(&srv, "/fhir", &[c]).await;
        let (st, _, v) = srv.get("/fhir/Encounter/a0/$calculate-fee").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(issue_expression(&v), "Patient/p-1.Coverage", "{v}");
        // the good visit still calculates after all that
        let (st, _, v) = srv.get("/fhir/Encounter/a2/$calculate-fee").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(param(&v, "totalPoints"), 138);
        // the operation is listed on Encounter in the CapabilityStatement
        let (_, _, cs) = srv.get("/fhir/metadata").await;
        let enc = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Encounter")
            .unwrap();
        assert!(enc["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "calculate-fee"));
    }
}

#[tokio::test]
async fn without_masters_the_answer_says_to_import_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("fee-masters.db");
    for srv in servers_with(missing.clone()).await {
        put_all(&srv, "/fhir", &clinic_a_data()).await;
        let (st, _, v) = srv.get("/fhir/Encounter/a1/$calculate-fee").await;
        assert_eq!(
            (st, v["resourceType"].as_str()),
            (409, Some("OperationOutcome")),
            "{v}"
        );
        let text = v["issue"][0]["details"]["text"].as_str().unwrap();
        assert!(text.contains("iryo fee masters import"), "{text}");
        assert!(text.contains("点数マスター"), "{text}");
    }
    // importing them makes the same server work without a restart
    let srv = TestServer::sqlite_with(config(missing.clone())).await;
    put_all(&srv, "/fhir", &clinic_a_data()).await;
    assert_eq!(srv.get("/fhir/Encounter/a2/$calculate-fee").await.0, 409);
    std::fs::copy(masters(), &missing).unwrap();
    let (st, _, v) = srv.get("/fhir/Encounter/a2/$calculate-fee").await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn roles_are_enforced_and_the_call_is_logged() {
    for engine in ["sqlite", "postgres"] {
        let sec: Arc<dyn SecurityStore> = Arc::new(SqliteSecurityStore::open_in_memory().unwrap());
        let audit = AuditSink::start(sec.clone());
        let cfg = secured(masters(), &sec, &audit);
        let srv = if engine == "sqlite" {
            TestServer::sqlite_with(cfg).await
        } else {
            match TestServer::postgres_with(cfg).await {
                Some(s) => s,
                None => continue,
            }
        };
        let t = srv.store.tenant_id("default").await.unwrap().unwrap();
        let ops = clinic_a_data()
            .into_iter()
            .map(iryo_db::WriteOp::put)
            .collect();
        srv.store.write(t, ops).await.unwrap();
        srv.tenant("clinic-b").await;
        let call = |tok: Option<String>| {
            let srv = &srv;
            async move {
                let auth = tok.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("authorization", a)])
                    .unwrap_or_default();
                let (st, _, v) = srv
                    .request("GET", "/fhir/Encounter/a1/$calculate-fee", &headers, vec![])
                    .await;
                (st, v)
            }
        };
        // 医療事務 and 医師 may calculate
        let (st, v) = call(Some(token("default", "clerk", Role::MedicalClerk, None))).await;
        assert_eq!(st, 200, "{engine} {v}");
        assert_eq!(param(&v, "totalPoints"), 592);
        let (st, _) = call(Some(token("default", "doc", Role::Physician, None))).await;
        assert_eq!(st, 200);
        // no token: 401; a token of another tenant: 401
        assert_eq!(call(None).await.0, 401);
        let other = token("clinic-b", "clerk", Role::MedicalClerk, None);
        assert_eq!(call(Some(other)).await.0, 401);
        // システム管理者 and 保険者 read no Encounters: 403 OperationOutcome
        for role in [Role::SystemAdministrator, Role::Insurer] {
            let (st, v) = call(Some(token("default", "x", role, None))).await;
            assert_eq!(
                (st, v["resourceType"].as_str()),
                (403, Some("OperationOutcome"))
            );
        }
        // a patient user, even the visit's own patient: the operation reads beyond the
        // compartment (Coverage search, other visits), so it is refused
        let (st, _) = call(Some(token("default", "pt", Role::Patient, Some("p-1")))).await;
        assert_eq!(st, 403);
        // the clerk's call is in the access log as a read of Encounter/a1
        audit.flush();
        let log = sec.search_audit("default", &AuditQuery::default()).unwrap();
        assert!(log.iter().any(|r| r.entry.actor == "clerk"
            && r.entry.outcome == iryo_security::audit::AuditOutcome::Success
            && r.entry.resources.iter().any(|x| x == "Encounter/a1")));
        assert!(log.iter().any(|r| r.entry.actor == "x"
            && r.entry.outcome == iryo_security::audit::AuditOutcome::Denied));
    }
}
