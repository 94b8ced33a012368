//! `$validate` (`POST [base]/$validate`, `POST [base]/[type]/$validate`) and validation on
//! write, backed by `iryo-validator` (profiles: R4, JP Core, JP-CLINS, eCheckupReport and
//! tenant-uploaded StructureDefinitions).

use crate::error::{FhirError, Issue};
use crate::handlers::{parse_json, Ctx};
use crate::AppState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_validator::{Severity, Validator};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// One validator per process for the shipped definitions: profiles are loaded lazily and
/// cached.
static VALIDATOR: LazyLock<Arc<Validator>> = LazyLock::new(|| Arc::new(Validator::new()));

/// Validators of tenants that store StructureDefinitions of their own: the shipped definitions
/// plus the tenant's (never another tenant's), rebuilt when the tenant's StructureDefinitions
/// change. Keyed by tenant; the stamp is (count, newest lastUpdated) of those definitions.
static TENANT_VALIDATORS: LazyLock<Mutex<HashMap<i64, ((i64, i64), Arc<Validator>)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The shared validator of the shipped definitions.
pub fn validator() -> &'static Validator {
    &VALIDATOR
}

/// The shared validator of the shipped definitions, as the `Arc` the write path holds.
pub fn shared_validator() -> Arc<Validator> {
    VALIDATOR.clone()
}

/// A search of the tenant's StructureDefinitions.
async fn structure_definitions(
    st: &AppState,
    tenant: i64,
    qs: &str,
) -> Result<iryo_db::SearchPage, FhirError> {
    let query = iryo_search::query::parse_query(
        iryo_search::model(),
        Some("StructureDefinition"),
        qs,
        iryo_search::query::Handling::Strict,
    )
    .map_err(FhirError::from)?;
    let req = iryo_db::SearchRequest {
        query,
        page_token: None,
        base_url: String::new(),
    };
    Ok(st.store.search(tenant, req).await?)
}

/// The validator for a tenant: the shared one, or — when the tenant stores
/// StructureDefinitions (profiles, extensions) — one that also knows those. Looking is one
/// index lookup per call (the newest StructureDefinition of the tenant); the definitions are
/// loaded again only when that changes, so every server sharing a database sees uploads.
pub async fn tenant_validator(st: &AppState, tenant: i64) -> Result<Arc<Validator>, FhirError> {
    let page =
        structure_definitions(st, tenant, "_sort=-_lastUpdated&_count=1&_total=accurate").await?;
    let Some(newest) = page.matches.first() else {
        return Ok(VALIDATOR.clone());
    };
    let stamp = (page.total.unwrap_or(1), newest.last_updated);
    if let Some((s, v)) = TENANT_VALIDATORS.lock().get(&tenant) {
        if *s == stamp {
            return Ok(v.clone());
        }
    }
    let v = Validator::new();
    // up to 1,000 definitions per tenant (one page); more are not loaded
    let page = structure_definitions(st, tenant, "_count=1000").await?;
    for r in &page.matches {
        let Some(json) = &r.json else { continue };
        let Ok(sd) = serde_json::from_slice::<Value>(json) else {
            continue;
        };
        // definitions without a snapshot cannot drive validation; they are skipped
        if let Err(e) = v.add_structure_definition(sd) {
            tracing::warn!("StructureDefinition/{} not used for validation: {e}", r.id);
        }
    }
    let v = Arc::new(v);
    TENANT_VALIDATORS.lock().insert(tenant, (stamp, v.clone()));
    Ok(v)
}

/// True when `Accept-Language` prefers English over Japanese.
pub fn prefers_english(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut best: Option<(f32, bool)> = None;
    for part in v.split(',') {
        let mut it = part.trim().split(';');
        let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let lang = tag.split('-').next().unwrap_or("");
        let english = match lang {
            "en" => true,
            "ja" => false,
            _ => continue,
        };
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, english));
        }
    }
    best.is_some_and(|(_, e)| e)
}

/// What a `$validate` request asks: the resource (absent only where allowed), the profiles
/// and the mode, from a Parameters body or a bare resource plus the query.
struct ValidateRequest {
    resource: Option<Value>,
    profiles: Vec<String>,
    mode: Option<String>,
}

/// Reads the body and query of a `$validate` call. `resource_type` is the type in the URL
/// (a Parameters body at `Parameters/$validate` is the resource itself). An empty body is
/// accepted only when `empty_ok` (instance-level `mode=delete`).
fn validate_request(
    body: &[u8],
    query_pairs: &[(String, String)],
    resource_type: Option<&str>,
    empty_ok: bool,
) -> Result<ValidateRequest, FhirError> {
    let mut profiles: Vec<String> = query_pairs
        .iter()
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v.clone())
        .collect();
    let mut mode: Option<String> = query_pairs
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.clone());
    let body = if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        None
    } else {
        Some(parse_json(body)?)
    };
    let resource = match body {
        Some(b)
            if b.get("resourceType").and_then(Value::as_str) == Some("Parameters")
                && resource_type != Some("Parameters") =>
        {
            let mut res = None;
            for p in b
                .get("parameter")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match p.get("name").and_then(Value::as_str) {
                    Some("resource") => res = p.get("resource").cloned(),
                    Some("profile") => {
                        if let Some(u) = p
                            .get("valueUri")
                            .or_else(|| p.get("valueCanonical"))
                            .and_then(Value::as_str)
                        {
                            profiles.push(u.to_string());
                        }
                    }
                    Some("mode") => {
                        mode = p
                            .get("valueCode")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    }
                    _ => {}
                }
            }
            if res.is_none() && !(empty_ok && mode.as_deref() == Some("delete")) {
                return Err(FhirError::bad_request(
                    "Parameters に resource パラメータがありません",
                    "the Parameters has no 'resource' parameter",
                ));
            }
            res
        }
        other => other,
    };
    if let Some(m) = mode.as_deref() {
        if !matches!(m, "create" | "update" | "delete" | "profile") {
            return Err(FhirError::bad_request(
                format!("mode '{m}' は不正です（create, update, delete, profile のいずれか）"),
                format!("invalid mode '{m}' (create, update, delete or profile)"),
            ));
        }
    }
    if resource.is_none() && mode.as_deref() != Some("delete") {
        return Err(FhirError::bad_request(
            "検証するリソースがありません（本文が空です）",
            "no resource to validate (empty body)",
        ));
    }
    if let (Some(t), Some(r)) = (resource_type, &resource) {
        if r.get("resourceType").and_then(Value::as_str) != Some(t) {
            return Err(FhirError::bad_request(
                format!("リソース型が URL の {t} と一致しません"),
                format!("the resource type does not match {t} in the URL"),
            ));
        }
    }
    Ok(ValidateRequest {
        resource,
        profiles,
        mode,
    })
}

fn outcome_response(outcome: &iryo_validator::Outcome, english: bool, ctx: &Ctx) -> Response {
    let oo = outcome.to_operation_outcome(english);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::FHIR_JSON)],
        crate::format::to_bytes(&oo, ctx.pretty),
    )
        .into_response()
}

/// `POST [base]/$validate` and `POST [base]/[type]/$validate`.
///
/// The body is the resource, or a Parameters with `resource` (and optionally `profile`,
/// `mode`). `profile` and `mode` may also be given in the query. The answer is an
/// OperationOutcome (HTTP 200) with messages in Japanese, or English when `Accept-Language`
/// prefers it. `mode=delete` is accepted and answers without checks (iryo has no delete rules).
pub async fn validate_operation(
    st: &AppState,
    ctx: &Ctx,
    resource_type: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    query_pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let english = prefers_english(headers);
    let req = validate_request(body, query_pairs, resource_type, false)?;
    let outcome = match &req.resource {
        Some(resource) if req.mode.as_deref() != Some("delete") => {
            let refs: Vec<&str> = req.profiles.iter().map(String::as_str).collect();
            tenant_validator(st, ctx.tenant)
                .await?
                .validate(resource, &refs)
        }
        _ => iryo_validator::Outcome::default(),
    };
    Ok(outcome_response(&outcome, english, ctx))
}

/// `POST [base]/[type]/[id]/$validate`: the body validated as the resource `[type]/[id]`.
///
/// Modes (FHIR R4 `Resource/$validate`):
/// - none or `profile`: the content is validated (against `profile`, or its `meta.profile`);
/// - `update`: the content is validated as an update of `[type]/[id]`: it needs an `id`
///   equal to `[id]` (iryo lets an update create the resource, so the resource need not
///   exist yet);
/// - `delete`: the content is ignored (the body may be empty) and the answer says whether
///   `[type]/[id]` may be deleted: iryo has no rules that forbid a delete (no referential
///   integrity checks), so the answer is an information issue. The store is not read, so the
///   answer does not tell whether the resource exists;
/// - `create` is refused (400): a create has no id.
pub async fn validate_instance(
    st: &AppState,
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
    query_pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let english = prefers_english(headers);
    if !crate::handlers::is_valid_id(id) {
        return Err(FhirError::bad_request(
            format!("id '{id}' は不正です（英数字・'-'・'.' で 64 文字まで）"),
            format!("invalid id '{id}' (letters, digits, '-', '.', at most 64)"),
        ));
    }
    let req = validate_request(body, query_pairs, Some(resource_type), true)?;
    let mode = req.mode.as_deref();
    if mode == Some("create") {
        return Err(FhirError::bad_request(
            "mode=create はインスタンスレベル（[type]/[id]/$validate）では使えません（作成には id がありません）",
            "mode=create cannot be used at the instance level ([type]/[id]/$validate): a create has no id",
        ));
    }
    if mode == Some("delete") {
        let outcome = iryo_validator::Outcome {
            issues: vec![iryo_validator::ValidationIssue {
                severity: Severity::Information,
                code: "informational",
                expression: resource_type.to_string(),
                key: None,
                message_ja: format!(
                    "{resource_type}/{id} の削除を妨げる規則はありません（参照整合性の検査はありません）"
                ),
                message_en: format!(
                    "No rule prevents deleting {resource_type}/{id} (no referential integrity checks)"
                ),
            }],
        };
        return Ok(outcome_response(&outcome, english, ctx));
    }
    let resource = req.resource.unwrap_or_default();
    let refs: Vec<&str> = req.profiles.iter().map(String::as_str).collect();
    let mut outcome = tenant_validator(st, ctx.tenant)
        .await?
        .validate(&resource, &refs);
    if mode == Some("update") {
        let body_id = resource.get("id").and_then(Value::as_str);
        if body_id != Some(id) {
            let (ja, en) = match body_id {
                None => (
                    format!("更新として検証するには id（{id}）が必要です"),
                    format!("an update needs the resource id ({id})"),
                ),
                Some(b) => (
                    format!("リソースの id '{b}' が URL の id '{id}' と一致しません"),
                    format!("the resource id '{b}' does not match the id '{id}' in the URL"),
                ),
            };
            outcome.issues.insert(
                0,
                iryo_validator::ValidationIssue {
                    severity: Severity::Error,
                    code: "invalid",
                    expression: format!("{resource_type}.id"),
                    key: None,
                    message_ja: ja,
                    message_en: en,
                },
            );
        }
    }
    Ok(outcome_response(&outcome, english, ctx))
}

/// Validation on write, per tenant setting: `off` (nothing), `base` (the base R4
/// definitions: structure, cardinality, invariants, required bindings), `profiles` (every
/// profile in `meta.profile`). Errors refuse the write with 422 and an OperationOutcome.
pub fn validate_on_write(
    validator: &Validator,
    mode: &str,
    resource: &Value,
) -> Result<(), FhirError> {
    let outcome = match mode {
        "off" => return Ok(()),
        "base" => validator.validate_base(resource),
        "profiles" => validator.validate(resource, &[]),
        other => {
            return Err(FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!("検証モード '{other}' は不明です（off, base, profiles）"),
                format!("unknown validation mode '{other}' (off, base, profiles)"),
            ))
        }
    };
    if !outcome.has_errors() {
        return Ok(());
    }
    let issues = outcome
        .issues
        .iter()
        .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        .map(|i| {
            let ja = i.message_ja.clone();
            let en = i.message_en.clone();
            Issue::error(i.code, ja, en).at(i.expression.clone())
        })
        .collect();
    Err(FhirError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        issues,
    })
}
