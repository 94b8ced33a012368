//! `$validate` (`POST [base]/$validate`, `POST [base]/[type]/$validate`) and validation on
//! write, backed by `iryo-validator` (profiles: R4, JP Core, JP-CLINS, eCheckupReport and
//! tenant-uploaded StructureDefinitions).

use crate::error::{FhirError, Issue};
use crate::handlers::{parse_json, Ctx};
use crate::AppState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_validator::{Severity, Validator};
use serde_json::Value;
use std::sync::LazyLock;

/// One validator per process: profiles are loaded lazily and cached.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(Validator::new);

/// The shared validator (e.g. to add tenant StructureDefinitions).
pub fn validator() -> &'static Validator {
    &VALIDATOR
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

/// `POST [base]/$validate` and `POST [base]/[type]/$validate`.
///
/// The body is the resource, or a Parameters with `resource` (and optionally `profile`,
/// `mode`). `profile` and `mode` may also be given in the query. The answer is an
/// OperationOutcome (HTTP 200) with messages in Japanese, or English when `Accept-Language`
/// prefers it. `mode=delete` is accepted and answers without checks (iryo has no delete rules).
pub async fn validate_operation(
    _st: &AppState,
    ctx: &Ctx,
    resource_type: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    query_pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let english = prefers_english(headers);
    let body = parse_json(body)?;
    let mut profiles: Vec<String> = query_pairs
        .iter()
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v.clone())
        .collect();
    let mut mode: Option<String> = query_pairs
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.clone());
    let resource = if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && resource_type != Some("Parameters")
    {
        let mut res = None;
        for p in body
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
        res.ok_or_else(|| {
            FhirError::bad_request(
                "Parameters に resource パラメータがありません",
                "the Parameters has no 'resource' parameter",
            )
        })?
    } else {
        body
    };
    if let Some(m) = mode.as_deref() {
        if !matches!(m, "create" | "update" | "delete" | "profile") {
            return Err(FhirError::bad_request(
                format!("mode '{m}' は不正です（create, update, delete, profile のいずれか）"),
                format!("invalid mode '{m}' (create, update, delete or profile)"),
            ));
        }
    }
    let rt = resource.get("resourceType").and_then(Value::as_str);
    if let Some(t) = resource_type {
        if rt != Some(t) {
            return Err(FhirError::bad_request(
                format!("リソース型が URL の {t} と一致しません"),
                format!("the resource type does not match {t} in the URL"),
            ));
        }
    }
    let outcome = if mode.as_deref() == Some("delete") {
        iryo_validator::Outcome::default()
    } else {
        let refs: Vec<&str> = profiles.iter().map(String::as_str).collect();
        VALIDATOR.validate(&resource, &refs)
    };
    let oo = outcome.to_operation_outcome(english);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::FHIR_JSON)],
        crate::format::to_bytes(&oo, ctx.pretty),
    )
        .into_response())
}

/// Validation on write, per tenant setting: `off` (nothing), `base` (the base R4
/// definitions: structure, cardinality, invariants, required bindings), `profiles` (every
/// profile in `meta.profile`). Errors refuse the write with 422 and an OperationOutcome.
pub fn validate_on_write(mode: &str, resource: &Value) -> Result<(), FhirError> {
    let outcome = match mode {
        "off" => return Ok(()),
        "base" => VALIDATOR.validate_base(resource),
        "profiles" => VALIDATOR.validate(resource, &[]),
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
