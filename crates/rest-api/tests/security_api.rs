//! Authentication, access policy and audit of the REST layer over real HTTP (issue 4):
//! each attack is refused AND logged in the hash-chained audit log.

#[path = "support/ops.rs"]
mod ops;

use chrono::{Duration, Utc};
use iryo_rest_api::auth::{AuditSink, Security, TOKEN_AUDIENCE, TOKEN_ISSUER};
use iryo_rest_api::Config;
use iryo_security::roles::Role;
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{AuditQuery, PgSecurityStore, SecurityStore, SqliteSecurityStore};
use iryo_security::token::{ClientKeys, ClientRegistration, TokenRequest, TokenService};
use iryo_testkit::TestServer;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: [u8; 32] = [7u8; 32];
const STATIC: &str = "static-system-token-0123456789abcdef";

struct Env {
    srv: TestServer,
    store: Arc<dyn SecurityStore>,
    audit: AuditSink,
    _pg: Option<iryo_testkit::PgDb>,
}

fn tokens() -> TokenService {
    TokenService::new(KEY, TOKEN_ISSUER, TOKEN_AUDIENCE)
}

fn config(store: Arc<dyn SecurityStore>, audit: AuditSink) -> Config {
    Config {
        security: Some(Arc::new(Security {
            tokens: tokens(),
            store,
            audit,
            static_token: Some(STATIC.into()),
            open_loopback: false,
            clients: vec![ClientRegistration {
                tenant: "default".into(),
                client_id: "lab-system".into(),
                keys: ClientKeys::Pem {
                    algorithm: jsonwebtoken::Algorithm::ES384,
                    pem: include_str!("fixtures/ec_public.pem").into(),
                },
                allowed_scopes: ScopeSet::parse("system/Observation.cruds system/Patient.rs")
                    .unwrap(),
                redirect_uris: Vec::new(),
            }],
            accounts: None,
            secure_cookies: false,
        })),
        operations: ops::test_operations(),
        ..Default::default()
    }
}

async fn envs() -> Vec<Env> {
    let mut out = Vec::new();
    for engine in ["sqlite", "postgres"] {
        // each engine with its own security store: SQLite, or a PostgreSQL database
        let (store, pg): (Arc<dyn SecurityStore>, _) = if engine == "sqlite" {
            (
                Arc::new(SqliteSecurityStore::open_in_memory().expect("security store")),
                None,
            )
        } else {
            let Some(db) = iryo_testkit::PgDb::create("iryo_secapi").await else {
                continue;
            };
            let url = db.url.clone();
            let s: Arc<dyn SecurityStore> = tokio::task::spawn_blocking(move || {
                Arc::new(PgSecurityStore::connect(&url).expect("pg security store"))
                    as Arc<dyn SecurityStore>
            })
            .await
            .expect("open pg security store");
            // the blocking client must not be dropped on an async thread (the aborted server
            // task holds it): keep it; the database is dropped WITH (FORCE) at the end
            std::mem::forget(s.clone());
            (s, Some(db))
        };
        let audit = AuditSink::start(store.clone());
        let cfg = config(store.clone(), audit.clone());
        let srv = if engine == "sqlite" {
            TestServer::sqlite_with(cfg).await
        } else {
            match TestServer::postgres_with(cfg).await {
                Some(s) => s,
                None => continue,
            }
        };
        out.push(Env {
            srv,
            store,
            audit,
            _pg: pg,
        });
    }
    out
}

fn token(
    tenant: &str,
    subject: &str,
    role: Option<Role>,
    admin: bool,
    scopes: &str,
    patient: Option<&str>,
) -> String {
    tokens()
        .issue_token(
            &TokenRequest {
                tenant: tenant.into(),
                subject: subject.into(),
                role,
                is_admin: admin,
                scopes: ScopeSet::parse(scopes).expect("scopes"),
                patient: patient.map(str::to_string),
                lifetime: None,
            },
            Utc::now(),
        )
        .expect("token")
        .access_token
}

/// A token of a staff member of the default tenant.
fn staff(subject: &str, role: Role, scopes: &str) -> String {
    token("default", subject, Some(role), false, scopes, None)
}

impl Env {
    async fn call(
        &self,
        method: &str,
        path: &str,
        tok: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = tok.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/fhir+json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let b = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (s, _, v) = self.srv.request(method, path, &headers, b).await;
        (s, v)
    }

    fn log(&self, q: AuditQuery) -> Vec<iryo_security::audit::AuditRecord> {
        self.audit.flush();
        // on a thread of its own: the PostgreSQL store's client blocks, which an async
        // test thread must not do
        let store = self.store.clone();
        std::thread::spawn(move || store.search_audit("default", &q))
            .join()
            .expect("audit search thread")
            .expect("search audit")
    }

    fn denied_count(&self) -> usize {
        self.log(AuditQuery::default())
            .iter()
            .filter(|r| r.entry.outcome == iryo_security::audit::AuditOutcome::Denied)
            .count()
    }
}

fn is_outcome(v: &Value) -> bool {
    v["resourceType"] == "OperationOutcome"
        && v["issue"][0]["details"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        && v["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
}

#[tokio::test]
async fn forged_expired_none_and_missing_tokens_are_refused_and_logged() {
    for env in envs().await {
        let before = env.denied_count();
        // no token
        let (s, v) = env.call("GET", "/fhir/Patient", None, None).await;
        assert_eq!(s, 401, "{}", env.srv.engine);
        assert!(is_outcome(&v));
        // forged: signed with another key
        let forged = TokenService::new([9u8; 32], TOKEN_ISSUER, TOKEN_AUDIENCE)
            .issue_token(
                &TokenRequest {
                    tenant: "default".into(),
                    subject: "mallory".into(),
                    role: Some(Role::Physician),
                    is_admin: true,
                    scopes: ScopeSet::parse("user/*.cruds").unwrap(),
                    patient: None,
                    lifetime: None,
                },
                Utc::now(),
            )
            .unwrap()
            .access_token;
        assert_eq!(
            env.call("GET", "/fhir/Patient", Some(&forged), None)
                .await
                .0,
            401
        );
        // alg=none: the payload of a valid token with an unsigned header
        let good = staff("doc", Role::Physician, "user/*.cruds");
        let payload = good.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(
            env.call("GET", "/fhir/Patient", Some(&none), None).await.0,
            401
        );
        // expired
        let old = tokens()
            .issue_token(
                &TokenRequest {
                    tenant: "default".into(),
                    subject: "doc".into(),
                    role: Some(Role::Physician),
                    is_admin: false,
                    scopes: ScopeSet::parse("user/*.cruds").unwrap(),
                    patient: None,
                    lifetime: Some(Duration::minutes(5)),
                },
                Utc::now() - Duration::hours(2),
            )
            .unwrap()
            .access_token;
        let (s, v) = env.call("GET", "/fhir/Patient", Some(&old), None).await;
        assert_eq!(s, 401);
        assert!(is_outcome(&v));
        // the valid token works
        assert_eq!(
            env.call("GET", "/fhir/Patient", Some(&good), None).await.0,
            200
        );
        let failed = env.log(AuditQuery {
            action: Some(iryo_security::audit::AuditAction::LoginFailed),
            ..Default::default()
        });
        assert!(failed.len() >= 4, "{} failures logged", failed.len());
        assert!(env.denied_count() >= before + 4);
        // the chain stays intact
        let store = env.store.clone();
        let verified = std::thread::spawn(move || store.verify_audit_chain("default"))
            .join()
            .expect("verify thread");
        assert!(verified.unwrap().is_ok(), "{}", env.srv.engine);
    }
}

#[tokio::test]
async fn other_tenants_token_and_cross_tenant_access_are_refused() {
    for env in envs().await {
        env.srv.tenant("clinic-b").await;
        let doc_b = token(
            "clinic-b",
            "doc-b",
            Some(Role::Physician),
            false,
            "user/*.cruds",
            None,
        );
        let doc_a = staff("doc-a", Role::Physician, "user/*.cruds");
        let (s, _) = env
            .call(
                "PUT",
                "/fhir/Patient/pa",
                Some(&doc_a),
                Some(&json!({"resourceType": "Patient", "id": "pa"})),
            )
            .await;
        assert_eq!(s, 201);
        // tenant B's token on tenant A: by id, search, _include, _has, history, export
        for path in [
            "/fhir/Patient/pa",
            "/fhir/Patient?_id=pa",
            "/fhir/Observation?_include=Observation:subject",
            "/fhir/Patient?_has:Observation:subject:code=x",
            "/fhir/Patient/pa/_history",
            "/fhir/_history",
        ] {
            let (s, v) = env.call("GET", path, Some(&doc_b), None).await;
            assert_eq!(s, 401, "{path}");
            assert!(is_outcome(&v));
        }
        let (s, _) = env.call("GET", "/fhir/$export", Some(&doc_b), None).await;
        assert_eq!(s, 401);
        // tenant B's own data is reachable with its token
        assert_eq!(
            env.call("GET", "/t/clinic-b/fhir/Patient", Some(&doc_b), None)
                .await
                .0,
            200
        );
        // and tenant A's token does not open tenant B
        assert_eq!(
            env.call("GET", "/t/clinic-b/fhir/Patient", Some(&doc_a), None)
                .await
                .0,
            401
        );
        let failed = env.log(AuditQuery {
            action: Some(iryo_security::audit::AuditAction::LoginFailed),
            ..Default::default()
        });
        assert!(failed.len() >= 7);
    }
}

#[tokio::test]
async fn roles_and_scopes_limit_interactions() {
    for env in envs().await {
        let doc = staff("doc", Role::Physician, "user/*.cruds");
        let nurse = staff("nurse", Role::Nurse, "user/*.cruds");
        let reader = staff("doc2", Role::Physician, "user/*.rs");
        let p = json!({"resourceType": "Patient", "id": "p1"});
        assert_eq!(
            env.call("PUT", "/fhir/Patient/p1", Some(&doc), Some(&p))
                .await
                .0,
            201
        );
        let mr = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "x"}});
        // nurses do not prescribe
        let (s, v) = env
            .call("POST", "/fhir/MedicationRequest", Some(&nurse), Some(&mr))
            .await;
        assert_eq!(s, 403);
        assert!(is_outcome(&v));
        // read-only scopes do not write
        assert_eq!(
            env.call("POST", "/fhir/MedicationRequest", Some(&reader), Some(&mr))
                .await
                .0,
            403
        );
        // a transaction entry the caller may not perform refuses the whole Bundle
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": mr, "request": {"method": "POST", "url": "MedicationRequest"}}]});
        assert_eq!(
            env.call("POST", "/fhir", Some(&nurse), Some(&tx)).await.0,
            403
        );
        assert_eq!(
            env.call("POST", "/fhir", Some(&doc), Some(&tx)).await.0,
            200
        );
        // the static system token keeps working
        assert_eq!(
            env.call("GET", "/fhir/MedicationRequest", Some(STATIC), None)
                .await
                .0,
            200
        );
        let denied = env.log(AuditQuery::default());
        assert!(denied.iter().any(|r| r.entry.actor == "nurse"
            && r.entry.outcome == iryo_security::audit::AuditOutcome::Denied));
        assert!(denied.iter().any(|r| r.entry.actor == "doc"
            && r.entry.action == iryo_security::audit::AuditAction::Create
            && r.entry.outcome == iryo_security::audit::AuditOutcome::Success));
    }
}

#[tokio::test]
async fn patient_user_sees_only_own_compartment() {
    for env in envs().await {
        let doc = staff("doc", Role::Physician, "user/*.cruds");
        for pid in ["p1", "p2"] {
            let p = json!({"resourceType": "Patient", "id": pid});
            assert_eq!(
                env.call("PUT", &format!("/fhir/Patient/{pid}"), Some(&doc), Some(&p))
                    .await
                    .0,
                201
            );
            let o = json!({"resourceType": "Observation", "id": format!("o-{pid}"), "status": "final",
                "code": {"text": "bp"}, "subject": {"reference": format!("Patient/{pid}")}});
            assert_eq!(
                env.call(
                    "PUT",
                    &format!("/fhir/Observation/o-{pid}"),
                    Some(&doc),
                    Some(&o)
                )
                .await
                .0,
                201
            );
        }
        let me = token(
            "default",
            "pat-1",
            Some(Role::Patient),
            false,
            "patient/*.rs",
            Some("p1"),
        );
        assert_eq!(
            env.call("GET", "/fhir/Patient/p1", Some(&me), None).await.0,
            200
        );
        assert_eq!(
            env.call("GET", "/fhir/Observation/o-p1", Some(&me), None)
                .await
                .0,
            200
        );
        let before = env.denied_count();
        for path in [
            "/fhir/Patient/p2",
            "/fhir/Observation/o-p2",
            "/fhir/Patient/p2/Observation",
            "/fhir/Observation?_include=Observation:subject",
            "/fhir/Patient?_revinclude=Observation:subject",
            "/fhir/Patient?_has:Observation:subject:status=final",
            "/fhir/Observation/_history",
            "/fhir/_history",
            "/fhir?_type=Observation",
            "/fhir/Observation/o-p2/_history",
        ] {
            let (s, v) = env.call("GET", path, Some(&me), None).await;
            assert_eq!(s, 403, "{path}: {v}");
            assert!(is_outcome(&v));
        }
        // searches are narrowed to the compartment
        let (s, b) = env.call("GET", "/fhir/Observation", Some(&me), None).await;
        assert_eq!(s, 200);
        assert_eq!(iryo_testkit::match_ids(&b), vec!["o-p1".to_string()]);
        let (_, b) = env.call("GET", "/fhir/Patient", Some(&me), None).await;
        assert_eq!(iryo_testkit::match_ids(&b), vec!["p1".to_string()]);
        let (_, b) = env
            .call(
                "GET",
                "/fhir/Observation?subject=Patient/p2",
                Some(&me),
                None,
            )
            .await;
        assert!(iryo_testkit::match_ids(&b).is_empty());
        // writes and export refused
        let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            env.call("POST", "/fhir/Observation", Some(&me), Some(&o))
                .await
                .0,
            403
        );
        assert_eq!(
            env.call("GET", "/fhir/Patient/$export", Some(&me), None)
                .await
                .0,
            403
        );
        assert!(env.denied_count() >= before + 10, "every refusal is logged");
    }
}

#[tokio::test]
async fn audit_events_for_administrators_only() {
    for env in envs().await {
        let doc = staff("doc", Role::Physician, "user/*.cruds");
        let admin = token(
            "default",
            "admin",
            Some(Role::SystemAdministrator),
            true,
            "user/*.rs",
            None,
        );
        let p = json!({"resourceType": "Patient", "id": "p9"});
        assert_eq!(
            env.call("PUT", "/fhir/Patient/p9", Some(&doc), Some(&p))
                .await
                .0,
            201
        );
        assert_eq!(
            env.call("GET", "/fhir/Patient/p9", Some(&doc), None)
                .await
                .0,
            200
        );
        assert_eq!(
            env.call("GET", "/fhir/AuditEvent", Some(&doc), None)
                .await
                .0,
            403
        );
        let (s, b) = env
            .call(
                "GET",
                "/fhir/AuditEvent?agent=doc&action=read",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["resourceType"], "Bundle");
        let entries = b["entry"].as_array().expect("entries");
        assert!(!entries.is_empty());
        assert!(entries
            .iter()
            .all(|e| e["resource"]["resourceType"] == "AuditEvent"));
        // searches are logged with their parameters
        assert_eq!(
            env.call("GET", "/fhir/Patient?name=yamada", Some(&doc), None)
                .await
                .0,
            200
        );
        let searches = env.log(AuditQuery {
            action: Some(iryo_security::audit::AuditAction::Search),
            ..Default::default()
        });
        assert!(searches
            .iter()
            .any(|r| r.entry.details["query"] == "name=yamada" && r.entry.actor == "doc"));
        let (s, b) = env
            .call(
                "GET",
                "/fhir/AuditEvent?patient=p9&date=ge2020-01-01",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert!(!b["entry"].as_array().map(Vec::is_empty).unwrap_or(true));
        assert_eq!(
            env.call("GET", "/fhir/AuditEvent?date=garbage", Some(&admin), None)
                .await
                .0,
            400
        );
    }
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    for env in envs().await {
        let doc = staff("doc", Role::Physician, "user/*.cruds");
        let big = "x".repeat(200_000);
        let auth = format!("Bearer {doc}");
        let r = env
            .srv
            .client
            .get(env.srv.url("/fhir/Patient"))
            .header("authorization", &auth)
            .header("x-padding", &big)
            .send()
            .await;
        match r {
            Ok(resp) => assert!(resp.status().as_u16() >= 400),
            Err(_) => {} // the server closed the connection: refused
        }
        let huge = format!("Bearer {}", "a".repeat(100_000));
        let (s, _, _) = env
            .srv
            .request(
                "GET",
                "/fhir/Patient",
                &[("authorization", huge.as_str())],
                Vec::new(),
            )
            .await;
        assert!(s == 401 || s == 431, "{s}");
    }
}

fn assertion(jti: &str, aud: &str, key_pem: &[u8]) -> String {
    let now = Utc::now().timestamp();
    let claims = json!({"iss": "lab-system", "sub": "lab-system", "aud": aud,
        "exp": now + 240, "iat": now, "jti": jti});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key_pem).expect("ec key"),
    )
    .expect("sign")
}

async fn token_request(env: &Env, form: &str) -> (u16, Value) {
    let (s, _, v) = env
        .srv
        .request(
            "POST",
            "/fhir/auth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes().to_vec(),
        )
        .await;
    (s, v)
}

#[tokio::test]
async fn smart_backend_services_client_credentials() {
    for env in envs().await {
        let (s, conf) = env
            .call("GET", "/fhir/.well-known/smart-configuration", None, None)
            .await;
        assert_eq!(s, 200);
        let endpoint = conf["token_endpoint"]
            .as_str()
            .expect("token endpoint")
            .to_string();
        assert!(endpoint.ends_with("/fhir/auth/token"));
        let good_key = include_bytes!("fixtures/ec_private.pem");
        let other_key = include_bytes!("fixtures/ec_other_private.pem");
        let form = |a: &str, scope: &str| {
            format!("grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}&scope={scope}")
        };
        let a = assertion("j1", &endpoint, good_key);
        let (s, v) = token_request(&env, &form(&a, "system/Observation.rs")).await;
        assert_eq!(s, 200, "{v}");
        let tok = v["access_token"].as_str().expect("token").to_string();
        assert_eq!(
            env.call("GET", "/fhir/Observation", Some(&tok), None)
                .await
                .0,
            200
        );
        // granted scopes only: no Patient write, no MedicationRequest
        assert_eq!(
            env.call("GET", "/fhir/MedicationRequest", Some(&tok), None)
                .await
                .0,
            403
        );
        // replayed assertion, wrong key, wrong audience, unknown scope: refused
        assert_eq!(
            token_request(&env, &form(&a, "system/Observation.rs"))
                .await
                .0,
            401
        );
        let forged = assertion("j2", &endpoint, other_key);
        assert_eq!(
            token_request(&env, &form(&forged, "system/Observation.rs"))
                .await
                .0,
            401
        );
        let wrong_aud = assertion("j3", "https://elsewhere/token", good_key);
        assert_eq!(
            token_request(&env, &form(&wrong_aud, "system/Observation.rs"))
                .await
                .0,
            401
        );
        let a4 = assertion("j4", &endpoint, good_key);
        assert_eq!(
            token_request(&env, &form(&a4, "system/MedicationRequest.rs"))
                .await
                .0,
            400
        );
        assert_eq!(token_request(&env, "grant_type=password").await.0, 400);
        let failed = env.log(AuditQuery {
            action: Some(iryo_security::audit::AuditAction::LoginFailed),
            ..Default::default()
        });
        assert!(failed.len() >= 5, "{}", failed.len());
    }
}

#[tokio::test]
async fn operations_follow_the_access_policy_and_are_logged() {
    for env in envs().await {
        let doc = staff("doc", Role::Physician, "user/*.cruds");
        for pid in ["p1", "p2"] {
            let p = json!({"resourceType": "Patient", "id": pid, "name": [{"family": "佐藤"}]});
            let path = format!("/fhir/Patient/{pid}");
            assert_eq!(env.call("PUT", &path, Some(&doc), Some(&p)).await.0, 201);
        }
        // a physician may read patients: the operation runs
        let (st, v) = env
            .call("GET", "/fhir/Patient/p1/$name-length", Some(&doc), None)
            .await;
        assert_eq!(st, 200, "{v}");
        // no token: 401
        let (st, _) = env
            .call("GET", "/fhir/Patient/p1/$name-length", None, None)
            .await;
        assert_eq!(st, 401);
        // a system administrator has no clinical data access: 403, logged as denied
        let before = env.denied_count();
        let sysadm = staff("it", Role::SystemAdministrator, "user/*.cruds");
        let (st, v) = env
            .call("GET", "/fhir/Patient/p1/$name-length", Some(&sysadm), None)
            .await;
        assert_eq!(st, 403, "{v}");
        assert!(is_outcome(&v));
        assert_eq!(env.denied_count(), before + 1);
        // a patient user: their own record only
        let me = token(
            "default",
            "pat-1",
            Some(Role::Patient),
            false,
            "patient/*.rs",
            Some("p1"),
        );
        let (st, _) = env
            .call("GET", "/fhir/Patient/p1/$name-length", Some(&me), None)
            .await;
        assert_eq!(st, 200);
        let (st, v) = env
            .call("GET", "/fhir/Patient/p2/$name-length", Some(&me), None)
            .await;
        assert_eq!(st, 403, "{v}");
        // a token of another tenant
        let other = token(
            "clinic-b",
            "doc",
            Some(Role::Physician),
            false,
            "user/*.cruds",
            None,
        );
        let (st, _) = env
            .call("GET", "/fhir/Patient/p1/$name-length", Some(&other), None)
            .await;
        assert_eq!(st, 401);
        // the allowed call is in the access log as a read of Patient/p1
        let log = env.log(AuditQuery::default());
        assert!(log.iter().any(|r| r.entry.actor == "doc"
            && r.entry.outcome == iryo_security::audit::AuditOutcome::Success
            && r.entry.resources.iter().any(|x| x == "Patient/p1")));
    }
}
