//! # iryo-operation-clins-submit — the clinic side of the 電子カルテ情報共有サービス
//!
//! `POST [base]/Patient/{id}/$clins-submit` (issue 5 item 6) builds the JP_Bundle_CLINS report
//! units of one patient from the tenant's own records ([`build`]: the full lists of Conditions
//! and AllergyIntolerances, one unit per lab report) and registers them with the platform:
//!
//! - **in process** when the platform runs in the same server ([`ClinsSubmit::set_platform`]):
//!   the service is called directly, as platform client `tenant:{name}`, which must be bound
//!   to the tenant's 医療機関番号 (`iryo clins bind --tenant NAME --institution N`);
//! - **remotely** when the tenant setting `clins_remote` = `{"url": "https://…/clins/fhir",
//!   "token": "…"}` is present: `POST {url}/$register` with that bearer token (HTTPS; plain
//!   HTTP only to a loopback address).
//!
//! With `composition=Composition/{cid}` it sends that document instead (診療情報提供書,
//! 退院時サマリー or 健診結果報告書 by `Composition.type`; [`build::build_document`]).
//!
//! The tenant's 医療機関番号 is its setting `clins_institution`, otherwise the institution number
//! of its Organization. The result of every submission is kept as a `Task` (`for` = the
//! Patient, one output per report unit with its identifier and the platform's
//! OperationOutcome, contained) and returned: the Task with 200 when every unit was accepted,
//! otherwise the platform's status with an OperationOutcome of the refusals.

pub mod build;

use axum::http::StatusCode;
use build::{Built, Records, TYPES};
use chrono::{SecondsFormat, Utc};
use iryo_clins::{ids, Actor, Binding, ClinsState};
use iryo_db::WriteOp;
use iryo_rest_api::auth::Access;
use iryo_rest_api::operation::{fhir_json, Level, Operation, OperationCall, OperationFuture};
use iryo_rest_api::FhirError;
use iryo_security::roles::Interaction;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// The `$clins-submit` operation.
#[derive(Default)]
pub struct ClinsSubmit {
    platform: OnceLock<ClinsState>,
    http: OnceLock<Result<reqwest::Client, String>>,
}

impl ClinsSubmit {
    /// Without an in-process platform (tenants then need `clins_remote`).
    pub fn new() -> Self {
        Self::default()
    }

    /// With the platform running in this process.
    pub fn in_process(state: ClinsState) -> Self {
        let s = Self::default();
        s.set_platform(state);
        s
    }

    /// Attach the in-process platform (once; later calls are ignored).
    pub fn set_platform(&self, state: ClinsState) {
        let _ = self.platform.set(state);
    }

    /// The HTTPS client (rustls with the system's trust store); an error when it cannot be
    /// set up (e.g. no usable root certificates), reported per request instead of a panic.
    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The platform client a tenant acts as in process.
pub fn tenant_client(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// Where the units go.
enum Platform<'a> {
    InProcess(&'a ClinsState),
    Remote { url: String, token: String },
}

impl Platform<'_> {
    fn describe(&self) -> String {
        match self {
            Platform::InProcess(_) => "in-process".into(),
            Platform::Remote { url, .. } => url.clone(),
        }
    }
}

fn outcome(key: &str, severity: &str, ja: &str, en: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": severity,
        "code": if severity == "information" {"informational"} else {"business-rule"},
        "details": {"coding": [{"system": "urn:iryo:clins:rule", "code": key}], "text": ja},
        "diagnostics": en,
    }]})
}

/// A remote platform URL is usable: HTTPS, or HTTP to a loopback host.
pub fn remote_url_ok(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl ClinsSubmit {
    fn platform<'a>(&'a self, settings: &Value) -> Result<Platform<'a>, FhirError> {
        if let Some(r) = settings.get("clins_remote").filter(|r| !r.is_null()) {
            let (Some(url), Some(token)) = (
                r.get("url").and_then(Value::as_str),
                r.get("token").and_then(Value::as_str),
            ) else {
                return Err(build::refuse(
                    "CLINS-SUBMIT-CONFIG",
                    "テナント設定 clins_remote には url と token が必要です",
                    "the tenant setting clins_remote needs url and token",
                ));
            };
            if !remote_url_ok(url) {
                return Err(build::refuse(
                    "CLINS-SUBMIT-CONFIG",
                    format!("プラットフォームの URL '{url}' は https:// でなければなりません(http はループバックのみ)"),
                    format!("the platform URL '{url}' must be https:// (http only to loopback)"),
                ));
            }
            return Ok(Platform::Remote {
                url: url.trim_end_matches('/').to_string(),
                token: token.to_string(),
            });
        }
        match self.platform.get() {
            Some(s) => Ok(Platform::InProcess(s)),
            None => Err(build::refuse(
                "CLINS-SUBMIT-CONFIG",
                "電子カルテ情報共有サービスが設定されていません(このサーバでは動いておらず、テナント設定 clins_remote もありません)",
                "no sharing service: the platform does not run in this server and the tenant has no clins_remote setting",
            )),
        }
    }

    /// In process: the tenant's platform client must be bound to its institution number.
    async fn check_binding(
        state: &ClinsState,
        tenant: &str,
        inst: &str,
    ) -> Result<(), (u16, Value)> {
        let client = tenant_client(tenant);
        match state.client_binding(&client).await {
            Some(Binding::Institution(n)) if n == inst => Ok(()),
            Some(Binding::Institution(n)) => Err((403, outcome(
                "CLINS-INSTITUTION-MISMATCH",
                "error",
                &format!("テナントの医療機関番号 {inst} が、共有サービスでの紐付け {n} と一致しません"),
                &format!("the tenant's institution number {inst} differs from its platform binding {n}"),
            ))),
            _ => Err((403, outcome(
                "CLINS-UNBOUND-CLIENT",
                "error",
                &format!("テナント {tenant} は共有サービスで医療機関番号に紐付けられていません(iryo clins bind --tenant {tenant} --institution {inst})"),
                &format!("tenant {tenant} is not bound to an institution on the platform (iryo clins bind --tenant {tenant} --institution {inst})"),
            ))),
        }
    }

    async fn register(
        &self,
        platform: &Platform<'_>,
        tenant: &str,
        inst: &str,
        bundle: Value,
    ) -> (u16, Value) {
        match platform {
            Platform::InProcess(state) => {
                let actor = Actor::Institution {
                    client: tenant_client(tenant),
                    number: inst.to_string(),
                };
                match state.register(&actor, bundle).await {
                    Ok(oo) => (200, oo),
                    Err(r) => (r.status, r.outcome()),
                }
            }
            Platform::Remote { url, token } => {
                let http = match self.http() {
                    Ok(h) => h,
                    Err(e) => {
                        return (
                            502,
                            outcome(
                                "CLINS-SUBMIT-REMOTE",
                                "error",
                                &format!("HTTPS クライアントを準備できません: {e}"),
                                &format!("cannot set up the HTTPS client: {e}"),
                            ),
                        )
                    }
                };
                let r = http
                    .post(format!("{url}/$register"))
                    .bearer_auth(token)
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string())
                    .send()
                    .await;
                let unreachable = |e: String| {
                    (
                        502,
                        outcome(
                            "CLINS-SUBMIT-REMOTE",
                            "error",
                            &format!("共有サービス {url} に送信できませんでした: {e}"),
                            &format!("could not reach the platform at {url}: {e}"),
                        ),
                    )
                };
                match r {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.json::<Value>().await {
                            Ok(v) if v["resourceType"] == "OperationOutcome" => (status, v),
                            Ok(_) => unreachable(format!("HTTP {status}: not an OperationOutcome")),
                            Err(e) => unreachable(format!("HTTP {status}: {e}")),
                        }
                    }
                    Err(e) => unreachable(e.to_string()),
                }
            }
        }
    }

    async fn run(&self, call: &OperationCall<'_>) -> Result<axum::response::Response, FhirError> {
        let pid = call.id.unwrap_or_default();
        let types = requested_types(call)?;
        let settings = call.store.tenant_settings(call.tenant).await?;
        let rec = Records {
            store: call.store,
            tenant: call.tenant,
        };
        let platform = self.platform(&settings)?;
        let now = Utc::now();
        let built = match requested_composition(call)? {
            Some(c) => {
                build::build_document(&rec, call.tenant_name, &settings, pid, &c, now).await?
            }
            None => build::build(&rec, call.tenant_name, &settings, pid, &types, now).await?,
        };
        let Built {
            institution,
            patient_key,
            units,
        } = built;
        if units.is_empty() {
            return Err(build::refuse(
                "R02143",
                "送信する傷病名・アレルギー・検査結果がありません",
                "the patient has no Conditions, allergies or lab results to send",
            ));
        }
        if let Platform::InProcess(state) = &platform {
            if let Err((status, oo)) =
                Self::check_binding(state, call.tenant_name, &institution).await
            {
                return Ok(fhir_json(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    &oo,
                ));
            }
        }
        let mut results = vec![];
        for u in units {
            let (status, oo) = self
                .register(&platform, call.tenant_name, &institution, u.bundle)
                .await;
            results.push((u.kind, u.identifier, u.items, status, oo));
        }
        let accepted = results.iter().all(|r| r.3 == 200);
        let task_id = uuid::Uuid::new_v4().simple().to_string();
        let when = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut contained = vec![];
        let mut outputs = vec![];
        for (n, (kind, ident, items, status, oo)) in results.iter().enumerate() {
            let mut oo = oo.clone();
            oo["id"] = json!(format!("o{n}"));
            contained.push(oo);
            outputs.push(json!({
                "type": {"text": format!("{kind} 報告単位 ({items} 件) HTTP {status}")},
                "valueIdentifier": {"system": ids::BUNDLE_ID_SYSTEM, "value": ident},
            }));
            outputs.push(json!({
                "type": {"text": format!("結果 {ident}")},
                "valueReference": {"reference": format!("#o{n}")},
            }));
        }
        let requester = call.principal.map(|p| p.subject.clone());
        let mut task = json!({
            "resourceType": "Task",
            "id": task_id,
            "meta": {"tag": [{"system": "urn:iryo:operation", "code": "clins-submit"}]},
            "contained": contained,
            "status": if accepted {"completed"} else {"failed"},
            "businessStatus": {"text": if accepted {"登録済み (accepted)"} else {"拒否あり (refused)"}},
            "intent": "order",
            "code": {
                "coding": [{"system": "urn:iryo:operation", "code": "clins-submit"}],
                "text": "電子カルテ情報共有サービスへの登録 ($clins-submit)",
            },
            "for": {"reference": format!("Patient/{pid}")},
            "authoredOn": when,
            "lastModified": when,
            "owner": {"identifier": {"system": ids::INSTITUTION_SYSTEM, "value": institution}},
            "input": [
                {"type": {"text": "platform"}, "valueString": platform.describe()},
                {"type": {"text": "patientKey"}, "valueString": patient_key},
            ],
            "output": outputs,
        });
        if let Some(r) = requester {
            task["requester"] = json!({"display": r});
        }
        let stored = call
            .store
            .write(call.tenant, vec![WriteOp::create(task.clone())])
            .await?;
        if let Some(v) = stored.first().map(|o| o.version) {
            task["meta"]["versionId"] = json!(v.to_string());
        }
        if accepted {
            return Ok(fhir_json(StatusCode::OK, &task));
        }
        // the refusals, with where the result is kept
        let status = results.iter().find(|r| r.3 != 200).map_or(422, |r| r.3);
        let mut issues: Vec<Value> = results
            .iter()
            .filter(|r| r.3 != 200)
            .flat_map(|r| r.4["issue"].as_array().cloned().unwrap_or_default())
            .collect();
        issues.extend(
            outcome(
                "CLINS-SUBMIT-RECORDED",
                "information",
                &format!("結果を Task/{task_id} に記録しました"),
                &format!("the result is kept as Task/{task_id}"),
            )["issue"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        Ok(fhir_json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            &json!({"resourceType": "OperationOutcome", "issue": issues}),
        ))
    }
}

/// The `composition` parameter (`Composition/{id}` or `{id}`, query or Parameters body):
/// submit that document instead of the 5情報 lists.
fn requested_composition(call: &OperationCall<'_>) -> Result<Option<String>, FhirError> {
    let mut c = call.param("composition").map(str::to_string);
    if let Some(body) = call.body_json()? {
        for p in body["parameter"].as_array().into_iter().flatten() {
            if p["name"] == "composition" {
                c = p["valueReference"]["reference"]
                    .as_str()
                    .or(p["valueString"].as_str())
                    .map(str::to_string);
            }
        }
    }
    Ok(c.map(|c| c.trim_start_matches("Composition/").to_string()))
}

/// The `type` parameters (query, form or Parameters body): Condition, AllergyIntolerance,
/// Observation; all three when none is given.
fn requested_types(call: &OperationCall<'_>) -> Result<Vec<&'static str>, FhirError> {
    let mut asked: Vec<String> = call
        .params
        .iter()
        .filter(|(k, _)| k == "type")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    if let Some(body) = call.body_json()? {
        if body["resourceType"] != "Parameters" {
            return Err(FhirError::bad_request(
                "本文は Parameters リソースでなければなりません",
                "the body must be a Parameters resource",
            ));
        }
        for p in body["parameter"].as_array().into_iter().flatten() {
            if p["name"] == "type" {
                if let Some(v) = p["valueCode"].as_str().or(p["valueString"].as_str()) {
                    asked.push(v.to_string());
                }
            }
        }
    }
    if asked.is_empty() {
        return Ok(TYPES.to_vec());
    }
    asked
        .iter()
        .map(|a| {
            TYPES.iter().find(|t| **t == a.trim()).copied().ok_or_else(|| {
                FhirError::bad_request(
                    format!("type '{a}' は Condition, AllergyIntolerance, Observation のいずれかです"),
                    format!("type '{a}' must be Condition, AllergyIntolerance or Observation"),
                )
            })
        })
        .collect()
}

impl Operation for ClinsSubmit {
    fn name(&self) -> &'static str {
        "clins-submit"
    }
    fn level(&self) -> Level {
        Level::Instance("Patient")
    }
    fn allows_get(&self) -> bool {
        false
    }
    fn accesses(&self, call: &OperationCall<'_>) -> Vec<Access> {
        let id = call.id.unwrap_or_default();
        let in_compartment = |i: Interaction, ty: &str| {
            let mut a = Access::new(i, ty);
            a.patient = Some(id.to_string());
            a
        };
        let mut v = vec![
            Access::new(Interaction::Read, "Patient").with_id(id),
            in_compartment(Interaction::Search, "Condition"),
            in_compartment(Interaction::Search, "AllergyIntolerance"),
            in_compartment(Interaction::Search, "Observation"),
            in_compartment(Interaction::Search, "Coverage"),
            Access::new(Interaction::Read, "Encounter"),
            Access::new(Interaction::Read, "Practitioner"),
            Access::new(Interaction::Read, "Organization"),
            in_compartment(Interaction::Create, "Task"),
        ];
        if requested_composition(call).ok().flatten().is_some() {
            // a document: the Composition and what it reaches
            for ty in [
                "Composition",
                "MedicationRequest",
                "DocumentReference",
                "Consent",
            ] {
                v.push(Access::new(Interaction::Read, ty));
            }
        }
        v
    }
    fn call<'a>(&'a self, call: OperationCall<'a>) -> OperationFuture<'a> {
        Box::pin(async move { self.run(&call).await })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_urls() {
        assert!(super::remote_url_ok("https://clins.example.jp/clins/fhir"));
        assert!(super::remote_url_ok("http://127.0.0.1:8080/clins/fhir"));
        assert!(super::remote_url_ok("http://localhost/clins/fhir"));
        assert!(!super::remote_url_ok("http://clins.example.jp/clins/fhir"));
        assert!(!super::remote_url_ok("http://127.0.0.1.evil.jp/clins/fhir"));
        assert!(!super::remote_url_ok("ftp://x"));
    }
}
