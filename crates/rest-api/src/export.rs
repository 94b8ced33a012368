//! FHIR Bulk Data `$export` (system, `Patient`, `Group/[id]`), with the async request pattern:
//! kick-off answers 202 with `Content-Location`; polling answers 202 with `X-Progress` until the
//! manifest is ready; output files are NDJSON, one or more per resource type.

use crate::error::FhirError;
use crate::handlers::{instant, Ctx};
use crate::AppState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_db::ExportJob;
use iryo_search::IndexValue;
use serde_json::{json, Value};
use std::collections::HashSet;

const FILE_LIMIT: usize = 16 * 1024 * 1024;

pub async fn kick_off(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    level: Option<(&str, Option<&str>)>,
    pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    if !ctx.respond_async {
        return Err(FhirError::bad_request(
            "$export には Prefer: respond-async が必要です",
            "$export requires the header Prefer: respond-async",
        ));
    }
    let _ = headers;
    let mut types: Option<Vec<String>> = None;
    let mut since: Option<i64> = None;
    for (k, v) in pairs {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(FhirError::bad_request(
                        format!("_outputFormat={v} には対応していません（ndjson のみ）"),
                        format!("_outputFormat={v} is not supported (ndjson only)"),
                    ));
                }
            }
            "_type" => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for t in &list {
                    crate::handlers::check_type(t)?;
                }
                types = Some(list);
            }
            "_since" => {
                since = Some(
                    iryo_search::date::parse_range(v)
                        .map(|r| r.lo)
                        .ok_or_else(|| {
                            FhirError::bad_request(
                                format!("_since の値 '{v}' は日時ではありません"),
                                format!("_since value '{v}' is not a date-time"),
                            )
                        })?,
                )
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::bad_request(
                    format!("$export のパラメータ {other} には対応していません"),
                    format!("unsupported $export parameter {other}"),
                ))
            }
        }
    }
    // Group export: the members, which must exist now
    let mut members: Option<HashSet<String>> = None;
    if let Some(("Group", Some(gid))) = level {
        let g = st.store.read(ctx.tenant, "Group", gid).await?;
        let g = g
            .filter(|g| !g.deleted)
            .ok_or_else(|| FhirError::not_found("Group", gid))?;
        let v: Value =
            serde_json::from_slice(g.json.as_deref().map(Vec::as_slice).unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
        let mut set = HashSet::new();
        for m in v
            .get("member")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = m
                .get("entity")
                .and_then(|e| e.get("reference"))
                .and_then(Value::as_str)
            {
                if let Some(id) = r.strip_prefix("Patient/") {
                    set.insert(id.to_string());
                }
            }
        }
        members = Some(set);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = iryo_db::now_ms();
    let request = match level {
        None => format!("{}/$export", ctx.base),
        Some(("Patient", _)) => format!("{}/Patient/$export", ctx.base),
        Some((_, Some(g))) => format!("{}/Group/{g}/$export", ctx.base),
        Some(_) => format!("{}/$export", ctx.base),
    };
    st.store
        .export_job_put(
            ctx.tenant,
            ExportJob {
                id: id.clone(),
                created: now,
                status: "running".into(),
                request: request.clone(),
                result: "{}".into(),
            },
        )
        .await?;
    let patient_level = level.is_some();
    let (st2, ctx2, id2) = (st.clone(), ctx.clone(), id.clone());
    tokio::spawn(async move {
        let r = run(
            &st2,
            &ctx2,
            &id2,
            types,
            since,
            patient_level,
            members,
            now,
            &request,
        )
        .await;
        let (status, result) = match r {
            Ok(manifest) => ("done", manifest.to_string()),
            Err(e) => ("failed", e.outcome().to_string()),
        };
        let job = ExportJob {
            id: id2.clone(),
            created: now,
            status: status.into(),
            request,
            result,
        };
        if let Err(e) = st2.store.export_job_put(ctx2.tenant, job).await {
            tracing::error!("export {id2}: cannot record the result: {e}");
        }
    });
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/_export/{id}", ctx.base)) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    st: &AppState,
    ctx: &Ctx,
    job: &str,
    types: Option<Vec<String>>,
    since: Option<i64>,
    patient_level: bool,
    members: Option<HashSet<String>>,
    started: i64,
    request: &str,
) -> Result<Value, FhirError> {
    let model = iryo_search::model();
    let all: Vec<String> = model
        .resource_types()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut types = types.unwrap_or(all);
    if patient_level {
        types.retain(|t| {
            t == "Patient"
                || model
                    .compartment_params("Patient", t)
                    .is_some_and(|p| !p.is_empty())
        });
    }
    let mut output = vec![];
    for ty in types {
        let params: Vec<String> = model
            .compartment_params("Patient", &ty)
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let mut after = 0i64;
        let mut buf: Vec<u8> = vec![];
        let mut part = 0;
        let mut count = 0usize;
        loop {
            let batch = st
                .store
                .scan(ctx.tenant, Some(ty.clone()), since, after, 1000)
                .await?;
            if batch.is_empty() {
                break;
            }
            for (rid, r) in &batch {
                after = *rid;
                let Some(j) = &r.json else { continue };
                if patient_level {
                    let keep = if ty == "Patient" {
                        members.as_ref().is_none_or(|m| m.contains(&r.id))
                    } else {
                        let v: Value = serde_json::from_slice(j).unwrap_or(Value::Null);
                        st.store.extractor().extract(&v).into_iter().any(|e| {
                            params.contains(&e.param)
                                && matches!(&e.value, IndexValue::Reference { ty, id } if ty == "Patient" && members.as_ref().is_none_or(|m| m.contains(id)))
                        })
                    };
                    if !keep {
                        continue;
                    }
                }
                buf.extend_from_slice(j);
                buf.push(b'\n');
                count += 1;
                if buf.len() >= FILE_LIMIT {
                    part += 1;
                    let name = format!("{ty}-{part}.ndjson");
                    st.store
                        .export_file_put(ctx.tenant, job, &name, std::mem::take(&mut buf))
                        .await?;
                    output.push(
                        json!({"type": ty, "url": format!("{}/_export/{job}/{name}", ctx.base)}),
                    );
                }
            }
            if let Some(j) = st.store.export_job_get(ctx.tenant, job).await? {
                if j.status == "cancelled" {
                    return Err(FhirError::bad_request(
                        "エクスポートは取り消されました",
                        "export cancelled",
                    ));
                }
            }
        }
        if !buf.is_empty() {
            part += 1;
            let name = format!("{ty}-{part}.ndjson");
            st.store
                .export_file_put(ctx.tenant, job, &name, buf)
                .await?;
            output.push(json!({"type": ty, "url": format!("{}/_export/{job}/{name}", ctx.base), "count": count}));
        }
    }
    Ok(json!({
        "transactionTime": instant(started),
        "request": request,
        "requiresAccessToken": st.config.api_token.is_some(),
        "output": output,
        "error": [],
    }))
}

pub async fn status(st: &AppState, ctx: &Ctx, job: &str) -> Result<Response, FhirError> {
    let j = st
        .store
        .export_job_get(ctx.tenant, job)
        .await?
        .ok_or_else(|| FhirError::not_found("$export", job))?;
    match j.status.as_str() {
        "running" => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut()
                .insert("x-progress", HeaderValue::from_static("in-progress"));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(r)
        }
        "done" => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            j.result,
        )
            .into_response()),
        _ => Ok((
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, crate::FHIR_JSON)],
            j.result,
        )
            .into_response()),
    }
}

pub async fn cancel(st: &AppState, ctx: &Ctx, job: &str) -> Result<Response, FhirError> {
    let j = st
        .store
        .export_job_get(ctx.tenant, job)
        .await?
        .ok_or_else(|| FhirError::not_found("$export", job))?;
    if j.status == "running" {
        st.store
            .export_job_put(
                ctx.tenant,
                ExportJob {
                    status: "cancelled".into(),
                    ..j
                },
            )
            .await?;
    } else {
        st.store.export_job_delete(ctx.tenant, job).await?;
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

pub async fn file(st: &AppState, ctx: &Ctx, job: &str, name: &str) -> Result<Response, FhirError> {
    let body = st
        .store
        .export_file_get(ctx.tenant, job, name)
        .await?
        .ok_or_else(|| FhirError::not_found("$export file", name))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        body,
    )
        .into_response())
}
