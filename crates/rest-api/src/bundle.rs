//! Batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction).
//!
//! A transaction is resolved completely before anything is written: ids are assigned to POST
//! entries, `urn:uuid:` fullUrls and conditional references (`Patient?identifier=…`) are
//! replaced by literal references, conditional creates/updates/deletes are matched; then all
//! writes go to the store as ONE all-or-nothing write, in the spec's order (DELETE, POST,
//! PUT/PATCH), and GETs run last. A batch runs each entry on its own.

use crate::error::{FhirError, Issue};
use crate::handlers::{
    check_id, check_resource, check_type, conditional_matches, instant, parse_json, Ctx, Return,
};
use crate::AppState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_db::{WriteOp, WriteOutcome};
use serde_json::{json, Value};
use std::collections::HashMap;

fn entry_err(i: usize, e: FhirError) -> FhirError {
    let mut e = e;
    for is in e.issues.iter_mut() {
        let prefix = format!("Bundle.entry[{i}]");
        is.expression = Some(match &is.expression {
            Some(x) => format!("{prefix}.{x}"),
            None => prefix,
        });
        is.message_ja = format!("エントリ {i}: {}", is.message_ja);
        is.message_en = format!("entry {i}: {}", is.message_en);
    }
    e
}

/// What one entry asks for, after parsing `request`.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    ty: String,
    id: Option<String>,
    query: Option<String>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
}

fn parse_req(i: usize, e: &Value) -> Result<Req, FhirError> {
    let r = e.get("request").ok_or_else(|| {
        entry_err(
            i,
            FhirError::bad_request("request がありません", "entry has no request"),
        )
    })?;
    let method = r
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_uppercase();
    let url = r
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    if !matches!(
        method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH"
    ) {
        return Err(entry_err(
            i,
            FhirError::bad_request(
                format!("request.method '{method}' は使えません"),
                format!("invalid request.method '{method}'"),
            ),
        ));
    }
    if url.is_empty() {
        return Err(entry_err(
            i,
            FhirError::bad_request("request.url がありません", "entry has no request.url"),
        ));
    }
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (url.clone(), None),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ty = segs.first().copied().unwrap_or("").to_string();
    let id = segs.get(1).map(|s| s.to_string());
    let if_match = r
        .get("ifMatch")
        .and_then(Value::as_str)
        .and_then(crate::handlers::parse_etag);
    let if_none_exist = r
        .get("ifNoneExist")
        .and_then(Value::as_str)
        .map(|s| s.trim_start_matches('?').to_string());
    Ok(Req {
        method,
        ty,
        id,
        query,
        if_match,
        if_none_exist,
    })
}

/// POST [base] with a batch or transaction Bundle.
pub async fn batch_or_transaction(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let v = crate::handlers::parse_resource(headers, body)?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::bad_request(
            "ベースURLへの POST は batch または transaction の Bundle です",
            "POST to the base URL takes a batch or transaction Bundle",
        ));
    }
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "transaction" => {
            check_resource(&v, Some("Bundle"))?;
            let b = transaction(st, ctx, v).await?;
            Ok(json_ok(&b, ctx))
        }
        "batch" => {
            let b = batch(st, ctx, v).await;
            Ok(json_ok(&b, ctx))
        }
        other => Err(FhirError::bad_request(
            format!("Bundle.type '{other}' は処理できません（batch か transaction）"),
            format!("cannot process Bundle.type '{other}' (batch or transaction expected)"),
        )),
    }
}

fn json_ok(v: &Value, ctx: &Ctx) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, crate::FHIR_JSON)],
        crate::format::to_bytes(v, ctx.pretty),
    )
        .into_response()
}

/// Replace every `reference` string found in `map` (fullUrl → literal reference).
fn rewrite_refs(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = x {
                        if let Some(t) = map.get(s.as_str()) {
                            *s = t.clone();
                        }
                    }
                } else {
                    rewrite_refs(x, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, map)),
        _ => {}
    }
}

/// Collect conditional references (`Type?query`) used in resources.
fn conditional_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference" {
                    if let Some(s) = x.as_str() {
                        if s.contains('?') && !s.starts_with("urn:") && !s.contains("://") {
                            out.push(s.to_string());
                        }
                    }
                } else {
                    conditional_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| conditional_refs(x, out)),
        _ => {}
    }
}

fn order_of(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

/// What to write for an entry, and how to answer it.
enum Planned {
    Write {
        op_index: usize,
        created_hint: bool,
    },
    /// Conditional create that matched: answer with the existing resource.
    Existing {
        ty: String,
        id: String,
    },
    /// Conditional delete that matched nothing.
    NoOp,
    Read(Req),
}

/// Process a transaction Bundle for a tenant outside HTTP (e.g. `iryo import`): the same rules.
pub async fn process_transaction(
    st: &AppState,
    tenant: i64,
    tenant_name: &str,
    base: &str,
    bundle: Value,
) -> Result<Value, FhirError> {
    let ctx = Ctx {
        tenant,
        tenant_name: tenant_name.to_string(),
        base: base.to_string(),
        pretty: false,
        ret: Return::Minimal,
        handling: iryo_search::query::Handling::Strict,
        shape: Default::default(),
        respond_async: false,
    };
    check_resource(&bundle, Some("Bundle"))?;
    transaction(st, &ctx, bundle).await
}

async fn transaction(st: &AppState, ctx: &Ctx, bundle: Value) -> Result<Value, FhirError> {
    let entries: Vec<Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut reqs = Vec::with_capacity(entries.len());
    let mut full_urls: HashMap<String, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let r = parse_req(i, e)?;
        check_type(&r.ty).map_err(|e| entry_err(i, e))?;
        if let Some(fu) = e.get("fullUrl").and_then(Value::as_str) {
            if full_urls.insert(fu.to_string(), i).is_some() {
                return Err(entry_err(
                    i,
                    FhirError::bad_request(
                        format!("fullUrl '{fu}' が重複しています"),
                        format!("duplicate fullUrl '{fu}'"),
                    ),
                ));
            }
        }
        reqs.push(r);
    }
    // 1. ids for creates; fullUrl → literal reference
    let mut refmap: HashMap<String, String> = HashMap::new();
    let mut ids: Vec<Option<String>> = vec![None; entries.len()];
    let mut planned: Vec<Option<Planned>> = (0..entries.len()).map(|_| None).collect();
    for (i, r) in reqs.iter().enumerate() {
        let fu = entries[i].get("fullUrl").and_then(Value::as_str);
        match r.method.as_str() {
            "POST" => {
                if let Some(cond) = &r.if_none_exist {
                    let found = conditional_matches(st, ctx, &r.ty, cond)
                        .await
                        .map_err(|e| entry_err(i, e))?;
                    match found.len() {
                        0 => {}
                        1 => {
                            ids[i] = Some(found[0].id.clone());
                            planned[i] = Some(Planned::Existing {
                                ty: r.ty.clone(),
                                id: found[0].id.clone(),
                            });
                        }
                        _ => {
                            return Err(entry_err(
                                i,
                                FhirError::new(
                                    StatusCode::PRECONDITION_FAILED,
                                    "multiple-matches",
                                    "ifNoneExist に複数一致しました",
                                    "ifNoneExist matched more than one resource",
                                ),
                            ))
                        }
                    }
                }
                if ids[i].is_none() {
                    ids[i] = Some(uuid::Uuid::new_v4().to_string());
                }
            }
            "PUT" | "PATCH" => {
                if let Some(id) = &r.id {
                    check_id(id).map_err(|e| entry_err(i, e))?;
                    ids[i] = Some(id.clone());
                } else if let Some(q) = &r.query {
                    let found = conditional_matches(st, ctx, &r.ty, q)
                        .await
                        .map_err(|e| entry_err(i, e))?;
                    ids[i] = Some(match found.len() {
                        0 if r.method == "PUT" => entries[i]
                            .get("resource")
                            .and_then(|x| x.get("id"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                        1 => found[0].id.clone(),
                        0 => return Err(entry_err(i, FhirError::not_found(&r.ty, q))),
                        _ => {
                            return Err(entry_err(
                                i,
                                FhirError::new(
                                    StatusCode::PRECONDITION_FAILED,
                                    "multiple-matches",
                                    "条件付き更新に複数一致しました",
                                    "conditional update matched more than one resource",
                                ),
                            ))
                        }
                    });
                }
            }
            "DELETE" => {
                if let Some(id) = &r.id {
                    check_id(id).map_err(|e| entry_err(i, e))?;
                    ids[i] = Some(id.clone());
                } else if let Some(q) = &r.query {
                    let found = conditional_matches(st, ctx, &r.ty, q)
                        .await
                        .map_err(|e| entry_err(i, e))?;
                    match found.len() {
                        0 => planned[i] = Some(Planned::NoOp),
                        1 => ids[i] = Some(found[0].id.clone()),
                        _ => {
                            return Err(entry_err(
                                i,
                                FhirError::new(
                                    StatusCode::PRECONDITION_FAILED,
                                    "multiple-matches",
                                    "条件付き削除に複数一致しました",
                                    "conditional delete matched more than one resource",
                                ),
                            ))
                        }
                    }
                }
            }
            _ => {}
        }
        if let (Some(fu), Some(id)) = (fu, &ids[i]) {
            refmap.insert(fu.to_string(), format!("{}/{}", r.ty, id));
        }
    }
    // 2. conditional references
    for (i, e) in entries.iter().enumerate() {
        if let Some(res) = e.get("resource") {
            let mut conds = vec![];
            conditional_refs(res, &mut conds);
            for c in conds {
                if refmap.contains_key(&c) {
                    continue;
                }
                let (ty, q) = c.split_once('?').unwrap_or((&c, ""));
                check_type(ty).map_err(|e| entry_err(i, e))?;
                let found = conditional_matches(st, ctx, ty, q)
                    .await
                    .map_err(|e| entry_err(i, e))?;
                match found.len() {
                    1 => {
                        refmap.insert(c.clone(), format!("{ty}/{}", found[0].id));
                    }
                    0 => {
                        return Err(entry_err(
                            i,
                            FhirError::new(
                                StatusCode::NOT_FOUND,
                                "not-found",
                                format!("条件付き参照 {c} に一致するリソースがありません"),
                                format!("conditional reference {c} matches nothing"),
                            ),
                        ))
                    }
                    _ => {
                        return Err(entry_err(
                            i,
                            FhirError::new(
                                StatusCode::PRECONDITION_FAILED,
                                "multiple-matches",
                                format!("条件付き参照 {c} に複数一致しました"),
                                format!("conditional reference {c} matches more than one resource"),
                            ),
                        ))
                    }
                }
            }
        }
    }
    // 3. build the writes in processing order
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| order_of(&reqs[i].method));
    let mut ops: Vec<WriteOp> = vec![];
    for &i in &order {
        let r = &reqs[i];
        if planned[i].is_some() {
            continue;
        }
        match r.method.as_str() {
            "DELETE" => {
                let id = ids[i].clone().ok_or_else(|| {
                    entry_err(
                        i,
                        FhirError::bad_request(
                            "DELETE の対象がありません",
                            "DELETE needs Type/id or a condition",
                        ),
                    )
                })?;
                planned[i] = Some(Planned::Write {
                    op_index: ops.len(),
                    created_hint: false,
                });
                ops.push(WriteOp::Delete {
                    ty: r.ty.clone(),
                    id,
                    if_match: r.if_match,
                });
            }
            "POST" | "PUT" => {
                let mut res = entries[i].get("resource").cloned().ok_or_else(|| {
                    entry_err(
                        i,
                        FhirError::bad_request("resource がありません", "entry has no resource"),
                    )
                })?;
                rewrite_refs(&mut res, &refmap);
                let id = ids[i].clone().ok_or_else(|| {
                    entry_err(
                        i,
                        FhirError::bad_request(
                            "PUT の対象がありません",
                            "PUT needs Type/id or a condition",
                        ),
                    )
                })?;
                if r.method == "PUT" {
                    if let Some(bid) = res.get("id").and_then(Value::as_str) {
                        if bid != id {
                            return Err(entry_err(
                                i,
                                FhirError::bad_request(
                                    format!("resource.id '{bid}' が request.url と一致しません"),
                                    format!("resource.id '{bid}' does not match request.url"),
                                ),
                            ));
                        }
                    }
                }
                res["id"] = Value::String(id);
                // the whole Bundle passed the structural check before; only the type must match the URL
                if res.get("resourceType").and_then(Value::as_str) != Some(r.ty.as_str()) {
                    return Err(entry_err(
                        i,
                        FhirError::bad_request(
                            format!("resource の型が request.url の {} と一致しません", r.ty),
                            format!("resource type does not match request.url type {}", r.ty),
                        ),
                    ));
                }
                planned[i] = Some(Planned::Write {
                    op_index: ops.len(),
                    created_hint: r.method == "POST",
                });
                ops.push(WriteOp::Put {
                    resource: res,
                    if_match: r.if_match,
                    create_only: r.method == "POST",
                });
            }
            "PATCH" => {
                let id = ids[i].clone().ok_or_else(|| {
                    entry_err(
                        i,
                        FhirError::bad_request("PATCH の対象がありません", "PATCH needs Type/id"),
                    )
                })?;
                let cur = st.store.read(ctx.tenant, &r.ty, &id).await?;
                let Some(cur) = cur.filter(|c| !c.deleted) else {
                    return Err(entry_err(i, FhirError::not_found(&r.ty, &id)));
                };
                let patch_src = entries[i].get("resource").ok_or_else(|| {
                    entry_err(
                        i,
                        FhirError::bad_request(
                            "PATCH の resource（Binary）がありません",
                            "PATCH entry needs a Binary resource with the JSON Patch",
                        ),
                    )
                })?;
                let patch_json = binary_patch(patch_src).map_err(|e| entry_err(i, e))?;
                let patch: json_patch::Patch = serde_json::from_value(patch_json).map_err(|e| {
                    entry_err(
                        i,
                        FhirError::bad_request(
                            format!("JSON Patch として読めません: {e}"),
                            format!("malformed JSON Patch: {e}"),
                        ),
                    )
                })?;
                let mut v: Value =
                    serde_json::from_slice(cur.json.as_deref().map(Vec::as_slice).unwrap_or(b"{}"))
                        .unwrap_or(Value::Null);
                json_patch::patch(&mut v, &patch).map_err(|e| {
                    entry_err(
                        i,
                        FhirError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "processing",
                            format!("パッチを適用できません: {e}"),
                            format!("cannot apply patch: {e}"),
                        ),
                    )
                })?;
                check_resource(&v, Some(&r.ty)).map_err(|e| entry_err(i, e))?;
                planned[i] = Some(Planned::Write {
                    op_index: ops.len(),
                    created_hint: false,
                });
                ops.push(WriteOp::Put {
                    resource: v,
                    if_match: Some(r.if_match.unwrap_or(cur.version)),
                    create_only: false,
                });
            }
            _ => planned[i] = Some(Planned::Read(r.clone())),
        }
    }
    // 4. one all-or-nothing write
    let outcomes: Vec<WriteOutcome> = if ops.is_empty() {
        vec![]
    } else {
        crate::handlers::store_write(st, ctx, ops).await?
    };
    // 5. answer in entry order
    let mut out = Vec::with_capacity(entries.len());
    for (i, p) in planned.into_iter().enumerate() {
        let entry = match p {
            Some(Planned::Write {
                op_index,
                created_hint,
            }) => write_entry(ctx, &outcomes[op_index], created_hint),
            Some(Planned::Existing { ty, id }) => {
                let r = st.store.read(ctx.tenant, &ty, &id).await?;
                let mut e = json!({"fullUrl": format!("{}/{ty}/{id}", ctx.base), "response": {"status": "200 OK"}});
                if let Some(r) = r {
                    e["response"]["etag"] = json!(format!("W/\"{}\"", r.version));
                    e["response"]["location"] = json!(format!("{ty}/{id}/_history/{}", r.version));
                    if ctx.ret == Return::Representation {
                        if let Some(j) = &r.json {
                            e["resource"] = serde_json::from_slice(j).unwrap_or(Value::Null);
                        }
                    }
                }
                e
            }
            Some(Planned::NoOp) => json!({"response": {"status": "204 No Content"}}),
            Some(Planned::Read(r)) => read_entry(st, ctx, &r).await,
            None => json!({"response": {"status": "500 Internal Server Error"}}),
        };
        let _ = i;
        out.push(entry);
    }
    Ok(json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out}))
}

/// The JSON Patch carried by a Binary (base64 data) or a Parameters-free JSON array.
fn binary_patch(v: &Value) -> Result<Value, FhirError> {
    if let Some(data) = v.get("data").and_then(Value::as_str) {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
            .ok_or_else(|| {
                FhirError::bad_request(
                    "Binary.data が base64 ではありません",
                    "Binary.data is not base64",
                )
            })?;
        return parse_json(&bytes);
    }
    Err(FhirError::bad_request(
        "PATCH エントリは JSON Patch を Binary.data（base64）で送ってください",
        "a PATCH entry carries the JSON Patch as Binary.data (base64)",
    ))
}

fn write_entry(ctx: &Ctx, o: &WriteOutcome, created_hint: bool) -> Value {
    let status = if o.deleted {
        "204 No Content".to_string()
    } else if o.created || created_hint {
        "201 Created".to_string()
    } else {
        "200 OK".to_string()
    };
    let mut e = json!({
        "response": {
            "status": status,
            "lastModified": instant(o.last_updated),
        }
    });
    if o.version > 0 {
        e["response"]["etag"] = json!(format!("W/\"{}\"", o.version));
    }
    if !o.deleted {
        e["fullUrl"] = json!(format!("{}/{}/{}", ctx.base, o.ty, o.id));
        e["response"]["location"] = json!(format!("{}/{}/_history/{}", o.ty, o.id, o.version));
        if ctx.ret == Return::Representation {
            if let Some(b) = &o.body {
                e["resource"] = serde_json::from_slice(b).unwrap_or(Value::Null);
            }
        }
    }
    e
}

async fn read_entry(st: &AppState, ctx: &Ctx, r: &Req) -> Value {
    let fail = |e: FhirError| json!({"response": {"status": format!("{} {}", e.status.as_u16(), e.status.canonical_reason().unwrap_or("")), "outcome": e.outcome()}});
    if let Some(id) = &r.id {
        if let Err(e) = check_id(id) {
            return fail(e);
        }
        return match st.store.read(ctx.tenant, &r.ty, id).await {
            Ok(Some(s)) if !s.deleted => json!({
                "fullUrl": format!("{}/{}/{}", ctx.base, s.ty, s.id),
                "resource": s.json.as_ref().map(|j| serde_json::from_slice::<Value>(j).unwrap_or(Value::Null)),
                "response": {"status": "200 OK", "etag": format!("W/\"{}\"", s.version), "lastModified": instant(s.last_updated)},
            }),
            Ok(Some(_)) => fail(FhirError::new(
                StatusCode::GONE,
                "deleted",
                format!("{}/{id} は削除されています", r.ty),
                format!("{}/{id} has been deleted", r.ty),
            )),
            Ok(None) => fail(FhirError::not_found(&r.ty, id)),
            Err(e) => fail(e.into()),
        };
    }
    // a search
    let pairs = iryo_search::query::split_query(r.query.as_deref().unwrap_or(""));
    let q = match iryo_search::query::parse_pairs(
        iryo_search::model(),
        Some(&r.ty),
        &pairs,
        ctx.handling,
    ) {
        Ok(q) => q,
        Err(e) => return fail(e.into()),
    };
    let req = iryo_db::SearchRequest {
        query: q.clone(),
        page_token: None,
        base_url: ctx.base.clone(),
    };
    match st.store.search(ctx.tenant, req).await {
        Ok(page) => json!({
            "resource": crate::handlers::search_bundle(ctx, &q, &page, &format!("{}/{}", ctx.base, r.ty)),
            "response": {"status": "200 OK"},
        }),
        Err(e) => fail(e.into()),
    }
}

/// Process a batch Bundle outside HTTP (e.g. `iryo import`).
pub async fn process_batch(
    st: &AppState,
    tenant: i64,
    tenant_name: &str,
    base: &str,
    bundle: Value,
) -> Value {
    let ctx = Ctx {
        tenant,
        tenant_name: tenant_name.to_string(),
        base: base.to_string(),
        pretty: false,
        ret: Return::Minimal,
        handling: iryo_search::query::Handling::Strict,
        shape: Default::default(),
        respond_async: false,
    };
    batch(st, &ctx, bundle).await
}

/// A batch: every entry on its own; failures become entry responses with an OperationOutcome.
async fn batch(st: &AppState, ctx: &Ctx, bundle: Value) -> Value {
    let entries: Vec<Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        // each entry is a one-entry transaction (no cross-entry references in a batch)
        let single = json!({"resourceType": "Bundle", "type": "transaction", "entry": [e]});
        let r = match parse_req(i, e) {
            Ok(_) => match check_resource(&single, Some("Bundle")) {
                Ok(()) => transaction(st, ctx, single).await,
                Err(e) => Err(entry_err(0, e)),
            },
            Err(err) => Err(err),
        };
        match r {
            Ok(mut b) => {
                let first = b["entry"]
                    .as_array_mut()
                    .and_then(|a| a.pop())
                    .unwrap_or(Value::Null);
                out.push(first);
            }
            Err(err) => {
                let mut err = err;
                for is in err.issues.iter_mut() {
                    is.expression = Some(format!("Bundle.entry[{i}]"));
                }
                out.push(json!({"response": {
                    "status": format!("{} {}", err.status.as_u16(), err.status.canonical_reason().unwrap_or("")),
                    "outcome": crate::error::operation_outcome(&err.issues.iter().cloned().collect::<Vec<Issue>>()),
                }}));
            }
        }
    }
    json!({"resourceType": "Bundle", "type": "batch-response", "entry": out})
}
