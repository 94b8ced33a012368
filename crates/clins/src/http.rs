//! The HTTP face of the platform: `/clins/fhir/...` operations with bearer-token
//! authentication (platform tokens signed by `iryo-security`'s [`TokenService`]).
//!
//! [`TokenService`]: iryo_security::token::TokenService

use crate::checks::Issue;
use crate::ids;
use crate::service::{Actor, Binding, ClinsState, Refusal};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use iryo_security::audit::{AuditAction, AuditOutcome};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The platform's routes under `/clins/fhir`; merge into the main app with
/// `app.merge(iryo_clins::router(state))`.
pub fn router(state: ClinsState) -> Router {
    Router::new()
        .route("/clins/fhir/$register", post(register))
        .route("/clins/fhir/$withdraw", post(withdraw))
        .route("/clins/fhir/$change", post(change))
        .route("/clins/fhir/$consent", post(consent))
        .route("/clins/fhir/$discharge", post(discharge))
        .route("/clins/fhir/Patient/$clins-view", get(institution_view))
        .route("/clins/fhir/$my-records", get(patient_view))
        .route("/clins/fhir/$checkup-reports", get(insurer_view))
        .route("/clins/fhir/$referrals", get(referrals))
        .route("/clins/fhir/$referral", get(fetch_referral))
        .route("/clins/fhir/$retention", post(retention))
        // a transmission may be up to 10 MB (jp-clins.md §2, TG-11822/34)
        .layer(DefaultBodyLimit::max(10 * 1024 * 1024 + 64 * 1024))
        .with_state(state)
}

/// A JSON request body (`application/fhir+json` or `application/json`); a body that is not
/// JSON is answered with an OperationOutcome.
struct FhirJson(Value);

impl FromRequest<ClinsState> for FhirJson {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ClinsState) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let r = Refusal::new(
                413,
                Issue::error(
                    "CLINS-BODY",
                    "",
                    "要求本文を読み取れません(10MB以内にしてください)",
                    format!("cannot read the request body: {e}"),
                ),
            );
            fhir(r.status, r.outcome())
        })?;
        serde_json::from_slice(&bytes).map(FhirJson).map_err(|e| {
            let r = Refusal::new(
                400,
                Issue::error(
                    "CLINS-PARSE",
                    "",
                    format!("JSONとして解析できません: {e}"),
                    format!("the body is not valid JSON: {e}"),
                ),
            );
            fhir(r.status, r.outcome())
        })
    }
}

fn fhir(status: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [("content-type", "application/fhir+json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn done(r: Result<Value, Refusal>) -> Response {
    match r {
        Ok(v) => fhir(200, v),
        Err(e) => fhir(e.status, e.outcome()),
    }
}

fn unauthorized(en: &str) -> Refusal {
    Refusal::new(
        401,
        Issue::error(
            "CLINS-AUTH",
            "",
            "認証が必要です(有効なアクセストークンを指定してください)",
            format!("authentication required: {en}"),
        ),
    )
}

/// The authenticated caller of a handler, from the bearer token; refusals are logged.
struct Caller(Actor);

impl FromRequestParts<ClinsState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ClinsState) -> Result<Self, Response> {
        actor(state, &parts.headers).await.map(Caller)
    }
}

async fn actor(state: &ClinsState, headers: &HeaderMap) -> Result<Actor, Response> {
    let r = resolve(state, headers).await;
    match r {
        Ok(a) => Ok(a),
        Err(e) => {
            let anon = Actor::Operator {
                subject: "anonymous".into(),
            };
            state
                .log(
                    &anon,
                    AuditAction::Login,
                    AuditOutcome::Denied,
                    None,
                    vec![],
                    json!({"refused": e.issues.iter().map(|i| i.key.clone()).collect::<Vec<_>>(), "reason": e.issues[0].message_en}),
                )
                .await;
            Err(fhir(e.status, e.outcome()))
        }
    }
}

async fn resolve(state: &ClinsState, headers: &HeaderMap) -> Result<Actor, Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing bearer token"))?;
    let claims = state
        .inner
        .tokens
        .verify_claims(token.trim(), &state.inner.config.tenant, Utc::now())
        .map_err(|e| unauthorized(&e.to_string()))?;
    match claims.role.as_deref() {
        Some("patient") => {
            let raw = claims
                .patient
                .ok_or_else(|| unauthorized("patient token without patient key"))?;
            let key = ids::normalize_patient_key(&raw).map_err(|(_, en)| unauthorized(&en))?;
            Ok(Actor::Patient {
                subject: claims.sub,
                key,
            })
        }
        Some("platform-operator") => Ok(Actor::Operator {
            subject: claims.sub,
        }),
        _ => match state.binding(&claims.sub).await {
            Some(Binding::Institution(number)) => Ok(Actor::Institution {
                client: claims.sub,
                number,
            }),
            Some(Binding::Insurer(number)) if claims.role.as_deref() == Some("insurer") => {
                Ok(Actor::Insurer {
                    client: claims.sub,
                    number,
                })
            }
            _ => Err(Refusal::new(
                403,
                Issue::error(
                    "CLINS-UNBOUND-CLIENT",
                    "",
                    "このクライアントは医療機関番号・保険者番号に紐付けられていません",
                    "this client is not bound to an institution or insurer number",
                ),
            )),
        },
    }
}

/// `valueString`/`valueIdentifier.value`/`valueBoolean` of a Parameters parameter.
fn param<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["parameter"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
}

fn param_str<'a>(p: &'a Value, name: &str) -> Option<&'a str> {
    let x = param(p, name)?;
    x["valueString"]
        .as_str()
        .or_else(|| x["valueIdentifier"]["value"].as_str())
        .or_else(|| x["valueCode"].as_str())
}

/// A refused request for a missing parameter (logged like every refusal).
async fn missing(s: &ClinsState, a: &Actor, name: &str) -> Response {
    let e = Refusal::new(
        400,
        Issue::error(
            "CLINS-PARAMETER",
            name,
            format!("パラメータ {name} がありません"),
            format!("parameter {name} is missing"),
        ),
    );
    let e = s.refuse(a, AuditAction::Read, None, e).await;
    fhir(400, e.outcome())
}

async fn register(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    FhirJson(body): FhirJson,
) -> Response {
    done(s.register(&a, body).await)
}

async fn withdraw(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    FhirJson(body): FhirJson,
) -> Response {
    let (Some(pk), Some(id)) = (
        param_str(&body, "patientKey"),
        param_str(&body, "identifier"),
    ) else {
        return missing(&s, &a, "patientKey, identifier").await;
    };
    done(s.withdraw(&a, pk, id).await)
}

async fn change(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    FhirJson(body): FhirJson,
) -> Response {
    let (Some(pk), Some(id), Some(b)) = (
        param_str(&body, "patientKey"),
        param_str(&body, "identifier"),
        param(&body, "resource").map(|p| p["resource"].clone()),
    ) else {
        return missing(&s, &a, "patientKey, identifier, resource").await;
    };
    done(s.change(&a, Some((pk, id)), b).await)
}

async fn consent(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    FhirJson(body): FhirJson,
) -> Response {
    let Some(pk) = param_str(&body, "patientKey") else {
        return missing(&s, &a, "patientKey").await;
    };
    let inpatient = param(&body, "inpatient")
        .and_then(|p| p["valueBoolean"].as_bool())
        .unwrap_or(false);
    done(s.record_consent(&a, pk, inpatient, Utc::now()).await)
}

async fn discharge(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    FhirJson(body): FhirJson,
) -> Response {
    let Some(pk) = param_str(&body, "patientKey") else {
        return missing(&s, &a, "patientKey").await;
    };
    done(s.discharge(&a, pk, Utc::now()).await)
}

async fn institution_view(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    q: Query<HashMap<String, String>>,
) -> Response {
    let Some(pk) = q.get("patientKey") else {
        return missing(&s, &a, "patientKey").await;
    };
    match s.institution_view_json(&a, pk, Utc::now()).await {
        Ok(bytes) => (
            StatusCode::OK,
            [("content-type", "application/fhir+json; charset=utf-8")],
            bytes,
        )
            .into_response(),
        Err(e) => fhir(e.status, e.outcome()),
    }
}

async fn patient_view(State(s): State<ClinsState>, Caller(a): Caller) -> Response {
    done(s.patient_view(&a, Utc::now()).await)
}

async fn insurer_view(State(s): State<ClinsState>, Caller(a): Caller) -> Response {
    done(s.insurer_view(&a).await)
}

async fn referrals(State(s): State<ClinsState>, Caller(a): Caller) -> Response {
    done(s.referrals(&a, Utc::now()).await)
}

async fn fetch_referral(
    State(s): State<ClinsState>,
    Caller(a): Caller,
    q: Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("identifier") else {
        return missing(&s, &a, "identifier").await;
    };
    done(s.fetch_referral(&a, id, Utc::now()).await)
}

async fn retention(State(s): State<ClinsState>, Caller(a): Caller) -> Response {
    if !matches!(a, Actor::Operator { .. }) {
        let e = Refusal::new(
            403,
            Issue::error(
                "CLINS-FORBIDDEN",
                "",
                "保存期間処理は運用者だけが実行できます",
                "only the platform operator may run retention",
            ),
        );
        let e = s.refuse(&a, AuditAction::Delete, None, e).await;
        return fhir(e.status, e.outcome());
    }
    done(s.run_retention(Utc::now()).await.map(|r| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "removed", "valueInteger": r.removed_units.len()},
            {"name": "trimmed", "valueInteger": r.trimmed_units.len()},
            {"name": "referrals", "valueInteger": r.removed_referrals.len()},
        ]})
    }))
}
