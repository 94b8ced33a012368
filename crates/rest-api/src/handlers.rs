//! Request dispatch and the FHIR interactions: read, vread, create, update, patch, delete
//! (plain and conditional), history, search, compartments, batch/transaction, operations.

use crate::bundle;
use crate::error::{FhirError, Issue};
use crate::format::{shape, to_bytes, Shape};
use crate::{AppState, FHIR_JSON};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_db::{HistoryQuery, SearchPage, SearchRequest, StoredResource, WriteOp, WriteOutcome};
use iryo_search::query::{parse_pairs, split_query, Handling, SearchQuery, Summary};
use serde_json::{json, Value};

/// `Prefer: return=…`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    Outcome,
}

/// Everything about a request that interactions need.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub tenant: i64,
    pub tenant_name: String,
    /// `http://host/fhir` or `http://host/t/{tenant}/fhir`
    pub base: String,
    pub pretty: bool,
    pub ret: Return,
    pub handling: Handling,
    pub shape: Shape,
    pub respond_async: bool,
}

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub fn check_type(ty: &str) -> Result<(), FhirError> {
    if iryo_fhir_spec::r4().is_resource_type(ty) {
        Ok(())
    } else {
        Err(FhirError::new(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!("リソース型 '{ty}' はありません"),
            format!("unknown resource type '{ty}'"),
        ))
    }
}

pub fn check_id(id: &str) -> Result<(), FhirError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::bad_request(
            format!("'{id}' は正しいリソースIDではありません（英数字・'-'・'.' の1〜64文字）"),
            format!("'{id}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)"),
        ))
    }
}

/// HTTP date (RFC 7231) of epoch ms.
pub fn http_date(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

pub fn instant(ms: i64) -> String {
    iryo_search::date::format_instant(ms)
}

fn json_response(status: StatusCode, v: &Value, pretty: bool) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        to_bytes(v, pretty),
    )
        .into_response()
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\""))
        .unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// A response carrying one stored resource.
fn resource_response(status: StatusCode, r: &StoredResource, ctx: &Ctx) -> Response {
    let mut resp = match &r.json {
        Some(json) if ctx.shape.is_identity() && !ctx.pretty => (
            status,
            [(header::CONTENT_TYPE, FHIR_JSON)],
            json.as_ref().clone(),
        )
            .into_response(),
        Some(json) => {
            let v: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
            json_response(status, &shape(v, &ctx.shape), ctx.pretty)
        }
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag(r.version));
    if let Ok(v) = HeaderValue::from_str(&http_date(r.last_updated)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    resp
}

/// The response to a write, honouring `Prefer: return`.
fn write_response(o: &WriteOutcome, status: StatusCode, ctx: &Ctx) -> Response {
    let loc = format!("{}/{}/{}/_history/{}", ctx.base, o.ty, o.id, o.version);
    let mut resp = match ctx.ret {
        Return::Minimal => status.into_response(),
        Return::Outcome => {
            let oo = crate::error::operation_outcome(&[Issue {
                severity: "information",
                code: "informational",
                message_ja: format!("{}/{} を保存しました（版 {}）", o.ty, o.id, o.version),
                message_en: format!("{}/{} stored as version {}", o.ty, o.id, o.version),
                expression: None,
            }]);
            json_response(status, &oo, ctx.pretty)
        }
        Return::Representation => match &o.body {
            Some(b) if !ctx.pretty => (
                status,
                [(header::CONTENT_TYPE, FHIR_JSON)],
                b.as_ref().clone(),
            )
                .into_response(),
            Some(b) => {
                let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
                json_response(status, &v, true)
            }
            None => status.into_response(),
        },
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag(o.version));
    if let Ok(v) = HeaderValue::from_str(&http_date(o.last_updated)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&loc) {
        h.insert(header::LOCATION, v.clone());
        h.insert(header::CONTENT_LOCATION, v);
    }
    resp
}

fn parse_prefer(headers: &HeaderMap) -> (Return, Handling, bool) {
    let mut ret = Return::Representation;
    let mut handling = Handling::Lenient;
    let mut asy = false;
    for v in headers.get_all("prefer") {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split([',', ';']) {
            match part.trim().replace(' ', "").as_str() {
                "return=minimal" => ret = Return::Minimal,
                "return=representation" => ret = Return::Representation,
                "return=OperationOutcome" => ret = Return::Outcome,
                "handling=strict" => handling = Handling::Strict,
                "handling=lenient" => handling = Handling::Lenient,
                "respond-async" => asy = true,
                _ => {}
            }
        }
    }
    (ret, handling, asy)
}

/// `If-Match: W/"3"` → 3.
pub fn parse_etag(v: &str) -> Option<i64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').parse().ok()
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, FhirError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_etag)
            .map(Some)
            .ok_or_else(|| {
                FhirError::bad_request(
                    "If-Match の値が正しくありません（例: W/\"3\"）",
                    "malformed If-Match (expected W/\"<version>\")",
                )
            }),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The axum fallback: every FHIR request comes through here.
pub async fn handle(State(st): State<AppState>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    match handle_inner(st, req, peer).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn check_auth(st: &AppState, headers: &HeaderMap) -> Result<(), FhirError> {
    let Some(token) = &st.config.api_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // constant-time comparison
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(FhirError::new(
            StatusCode::UNAUTHORIZED,
            "login",
            "認証が必要です（Authorization: Bearer）",
            "authentication required (Authorization: Bearer)",
        ))
    }
}

async fn handle_inner(
    st: AppState,
    req: Request,
    peer: Option<std::net::SocketAddr>,
) -> Result<Response, FhirError> {
    let (parts, body) = req.into_parts();
    crate::auth::check_header_size(&parts.headers)?;
    if st.config.security.is_none() {
        check_auth(&st, &parts.headers)?;
    }
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let (tenant_name, rest, prefix) = match segs.as_slice() {
        [f, rest @ ..] if f == "fhir" => {
            ("default".to_string(), rest.to_vec(), "/fhir".to_string())
        }
        [t, name, f, rest @ ..] if t == "t" && f == "fhir" => {
            (name.clone(), rest.to_vec(), format!("/t/{name}/fhir"))
        }
        _ => {
            return Err(FhirError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("{path} はありません。FHIR API は /fhir または /t/{{テナント}}/fhir です"),
                format!("no such path {path}; the FHIR API is at /fhir or /t/{{tenant}}/fhir"),
            ))
        }
    };
    let tenant = st
        .store
        .tenant_id(&tenant_name)
        .await?
        .ok_or_else(|| FhirError::from(iryo_db::DbError::UnknownTenant(tenant_name.clone())))?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = match &st.config.public_base {
        Some(b) => format!("{}{prefix}", b.trim_end_matches('/')),
        None => format!("http://{host}{prefix}"),
    };
    let pairs = split_query(&raw_query);
    let param = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    // _format: JSON only
    if let Some(f) = param("_format") {
        if !matches!(
            f,
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
        ) {
            return Err(FhirError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!("_format={f} には対応していません（JSON のみ）"),
                format!("_format={f} is not supported (JSON only)"),
            ));
        }
    } else if let Some(acc) = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
    {
        if acc.contains("xml") && !acc.contains("json") && !acc.contains("*/*") {
            return Err(FhirError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                "XML には対応していません（JSON のみ）",
                "XML is not supported (JSON only)",
            ));
        }
    }
    let (ret, handling, respond_async) = parse_prefer(&parts.headers);
    let summary = match param("_summary") {
        None => None,
        Some("true") => Some(Summary::True),
        Some("text") => Some(Summary::Text),
        Some("data") => Some(Summary::Data),
        Some("count") => Some(Summary::Count),
        Some("false") => Some(Summary::False),
        Some(o) => {
            return Err(FhirError::bad_request(
                format!("_summary={o} は使えません"),
                format!("invalid _summary={o}"),
            ))
        }
    };
    let elements = param("_elements")
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let ctx = Ctx {
        tenant,
        tenant_name,
        base,
        pretty: param("_pretty") == Some("true"),
        ret,
        handling,
        shape: Shape { summary, elements },
        respond_async,
    };
    let method = parts.method.clone();
    let headers = parts.headers.clone();
    let body = read_body(&st, body).await?;
    let segs: Vec<&str> = rest.iter().map(String::as_str).collect();
    let op = crate::operation::find(&st.config.operations.0, &segs);
    let op_pairs = match op {
        Some(op) => Some(operation_params(
            op, &method, &segs, &headers, &body, &pairs,
        )?),
        None => None,
    };
    let mut caller = None;
    if let Some(sec) = &st.config.security {
        match (&method, segs.as_slice()) {
            (&Method::GET, [".well-known", "smart-configuration"]) => {
                let v = crate::auth::smart_configuration(sec, &ctx);
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    v.to_string(),
                )
                    .into_response());
            }
            (&Method::POST, ["auth", "token"]) => {
                let now = chrono::Utc::now();
                return Ok(crate::auth::token_endpoint(sec, &ctx, &body, peer, now).await);
            }
            (&Method::GET | &Method::POST, ["auth", "authorize"]) => {
                let r = crate::web::authorize(sec, &ctx, &method, &headers, &pairs, &body, peer);
                return Ok(r.await);
            }
            (&Method::POST, ["auth", "break-glass"]) => {
                let r = crate::web::break_glass_api(sec, &ctx, &headers, &body, peer);
                return Ok(r.await);
            }
            _ => {}
        }
        let op_call = match (op, &op_pairs) {
            (Some(op), Some(p)) => {
                let call = op_call(&st, &ctx, op, &method, &segs, &headers, p, &body, None);
                Some(op.accesses(&call))
            }
            _ => None,
        };
        match secure(
            &st, sec, &ctx, &method, &segs, &pairs, &headers, &body, peer, op_call,
        )
        .await?
        {
            Secured::Respond(r) => return Ok(r),
            Secured::Continue(c) => caller = c,
        }
    }
    if let (Some(op), Some(p)) = (op, &op_pairs) {
        let principal = match &caller {
            Some(crate::auth::Caller::Principal(p)) => Some(p),
            _ => None,
        };
        let call = op_call(&st, &ctx, op, &method, &segs, &headers, p, &body, principal);
        return op.call(call).await;
    }
    match (&method, segs.as_slice()) {
        (&Method::GET, ["metadata"]) => {
            let mut cs = crate::capability::capability_statement(&ctx.base);
            crate::capability::add_operations(&mut cs, &st.config.operations.0);
            Ok(json_response(StatusCode::OK, &cs, ctx.pretty))
        }
        (&Method::POST, []) => bundle::batch_or_transaction(&st, &ctx, &headers, &body).await,
        (&Method::GET, []) => search_system(&st, &ctx, &pairs).await,
        (&Method::POST, ["_search"]) => {
            let pairs = form_pairs(&headers, &body, &pairs)?;
            search_system(&st, &ctx, &pairs).await
        }
        (&Method::POST, ["$validate"]) => {
            crate::validate::validate_operation(&st, &ctx, None, &headers, &body, &pairs).await
        }
        (&Method::POST, [ty, "$validate"]) => {
            check_type(ty)?;
            crate::validate::validate_operation(&st, &ctx, Some(ty), &headers, &body, &pairs).await
        }
        (&Method::POST, [ty, id, "$validate"]) => {
            check_type(ty)?;
            crate::validate::validate_instance(&st, &ctx, ty, id, &headers, &body, &pairs).await
        }
        (&Method::GET, ["_history"]) => history(&st, &ctx, None, None, &pairs).await,
        (&Method::GET, ["$export"]) | (&Method::POST, ["$export"]) => {
            crate::export::kick_off(&st, &ctx, &headers, None, &pairs).await
        }
        (&Method::GET, ["_export", job]) => crate::export::status(&st, &ctx, job).await,
        (&Method::DELETE, ["_export", job]) => crate::export::cancel(&st, &ctx, job).await,
        (&Method::GET, ["_export", job, file]) => crate::export::file(&st, &ctx, job, file).await,
        (&Method::GET, [ty]) => {
            check_type(ty)?;
            search_type(&st, &ctx, ty, &pairs, None).await
        }
        (&Method::POST, [ty, "_search"]) => {
            check_type(ty)?;
            let pairs = form_pairs(&headers, &body, &pairs)?;
            search_type(&st, &ctx, ty, &pairs, None).await
        }
        (&Method::POST, [ty]) => {
            check_type(ty)?;
            create(&st, &ctx, ty, &headers, &body).await
        }
        (&Method::PUT, [ty]) => {
            check_type(ty)?;
            conditional_update(&st, &ctx, ty, &headers, &body, &pairs).await
        }
        (&Method::DELETE, [ty]) => {
            check_type(ty)?;
            conditional_delete(&st, &ctx, ty, &pairs).await
        }
        (&Method::PATCH, [ty]) => {
            check_type(ty)?;
            let id = resolve_conditional(&st, &ctx, ty, &pairs).await?;
            patch(&st, &ctx, ty, &id, &headers, &body).await
        }
        (&Method::GET, [ty, "_history"]) => {
            check_type(ty)?;
            history(&st, &ctx, Some(ty), None, &pairs).await
        }
        (&Method::GET | &Method::POST, ["Patient", "$export"]) => {
            crate::export::kick_off(&st, &ctx, &headers, Some(("Patient", None)), &pairs).await
        }
        (&Method::GET | &Method::POST, ["Group", id, "$export"]) => {
            check_id(id)?;
            crate::export::kick_off(&st, &ctx, &headers, Some(("Group", Some(id))), &pairs).await
        }
        (&Method::GET, [ty, id]) => {
            check_type(ty)?;
            check_id(id)?;
            read(&st, &ctx, ty, id, &headers).await
        }
        (&Method::HEAD, [ty, id]) => {
            check_type(ty)?;
            check_id(id)?;
            let mut r = read(&st, &ctx, ty, id, &headers).await?;
            *r.body_mut() = Body::empty();
            Ok(r)
        }
        (&Method::PUT, [ty, id]) => {
            check_type(ty)?;
            check_id(id)?;
            update(&st, &ctx, ty, id, &headers, &body).await
        }
        (&Method::PATCH, [ty, id]) => {
            check_type(ty)?;
            check_id(id)?;
            patch(&st, &ctx, ty, id, &headers, &body).await
        }
        (&Method::DELETE, [ty, id]) => {
            check_type(ty)?;
            check_id(id)?;
            delete(&st, &ctx, ty, id, &headers).await
        }
        (&Method::GET, [ty, id, "_history"]) => {
            check_type(ty)?;
            check_id(id)?;
            history(&st, &ctx, Some(ty), Some(id), &pairs).await
        }
        (&Method::GET, [ty, id, "_history", vid]) => {
            check_type(ty)?;
            check_id(id)?;
            vread(&st, &ctx, ty, id, vid).await
        }
        (&Method::GET, [cty, cid, ty]) if !ty.starts_with('$') && !ty.starts_with('_') => {
            check_type(cty)?;
            check_id(cid)?;
            check_type(ty)?;
            search_type(
                &st,
                &ctx,
                ty,
                &pairs,
                Some((cty.to_string(), cid.to_string())),
            )
            .await
        }
        _ => Err(FhirError::new(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!("{method} {path} には対応していません"),
            format!("{method} {path} is not supported"),
        )),
    }
}

/// Authentication and access policy of one request ([`crate::auth`]). `Ok(Some(response))`
/// when the request was answered here (the audit log, a compartment-limited search),
/// `Ok(None)` to dispatch it normally.
#[allow(clippy::too_many_arguments)]
/// What [`secure`] decided: answer now (a search narrowed to the caller's compartment,
/// the AuditEvent search), or go on with the routed handler as this caller.
enum Secured {
    Respond(Response),
    Continue(Option<crate::auth::Caller>),
}

#[allow(clippy::too_many_arguments)]
async fn secure(
    st: &AppState,
    sec: &crate::auth::Security,
    ctx: &Ctx,
    method: &Method,
    segs: &[&str],
    pairs: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
    peer: Option<std::net::SocketAddr>,
    op_accesses: Option<Vec<crate::auth::Access>>,
) -> Result<Secured, FhirError> {
    use crate::auth;
    let now = chrono::Utc::now();
    let tenant = ctx.tenant_name.as_str();
    let is_op = op_accesses.is_some();
    // the CapabilityStatement is public (clients discover the security settings there)
    let Some(mut accesses) = op_accesses.or_else(|| auth::route_accesses(method, segs, pairs))
    else {
        return Ok(Secured::Continue(None));
    };
    let caller = auth::authenticate(sec, headers, tenant, peer, now)?;
    if segs == ["AuditEvent"] && *method == Method::GET {
        return auth::audit_search(sec, &caller, ctx, pairs, peer, now)
            .await
            .map(Secured::Respond);
    }
    let patient = caller.patient().map(str::to_string);
    if *method == Method::POST && segs.is_empty() {
        if patient.is_some() {
            auth::log_refusal(
                sec,
                &caller,
                tenant,
                "bundle by a patient-restricted caller",
                peer,
                now,
            );
            return Err(auth::outside_compartment("batch/transaction"));
        }
        let v = parse_resource(headers, body)?;
        accesses = auth::bundle_accesses(&v);
    }
    if let Some(pid) = &patient {
        if let Some(p) = auth::compartment_escape(pairs) {
            auth::log_refusal(
                sec,
                &caller,
                tenant,
                &format!("compartment escape: {p}"),
                peer,
                now,
            );
            return Err(auth::outside_compartment(&p));
        }
        // instance access: in the compartment only if the compartment search finds it
        for a in accesses.iter_mut() {
            if let (Some(id), None) = (&a.id, &a.patient) {
                if in_compartment(st, ctx, &a.resource_type, id, pid).await? {
                    a.patient = Some(pid.clone());
                }
            }
        }
    }
    let restrict = auth::check_accesses(sec, &caller, tenant, &accesses, peer, now)?;
    let Some(pid) = restrict else {
        return Ok(Secured::Continue(Some(caller)));
    };
    if is_op {
        // an operation is open to a compartment-restricted caller only when every access
        // it declares lies in that caller's compartment
        if !accesses.is_empty() && accesses.iter().all(|a| a.patient.as_ref() == Some(&pid)) {
            return Ok(Secured::Continue(Some(caller)));
        }
        auth::log_refusal(
            sec,
            &caller,
            tenant,
            "operation outside the caller's compartment",
            peer,
            now,
        );
        return Err(auth::outside_compartment(&segs.join("/")));
    }
    // limited to one patient's compartment: only type-level searches can be narrowed
    match (method.as_str(), segs) {
        ("GET", [ty]) | ("POST", [ty, "_search"]) => {
            check_type(ty)?;
            let mut pairs = if *method == Method::POST {
                form_pairs(headers, body, pairs)?
            } else {
                pairs.to_vec()
            };
            if *ty == "Patient" {
                pairs.push(("_id".into(), pid));
                search_type(st, ctx, ty, &pairs, None)
                    .await
                    .map(Secured::Respond)
            } else {
                search_type(st, ctx, ty, &pairs, Some(("Patient".into(), pid)))
                    .await
                    .map(Secured::Respond)
            }
        }
        ("GET", ["Patient", c, _]) if *c == pid => Ok(Secured::Continue(Some(caller))),
        _ => {
            auth::log_refusal(
                sec,
                &caller,
                tenant,
                "type-level access outside a compartment search",
                peer,
                now,
            );
            Err(auth::outside_compartment(&segs.join("/")))
        }
    }
}

/// The parameters of an operation call (query, plus the form of a form-encoded POST), after
/// checking the method and the path's type and id.
fn operation_params(
    op: &dyn crate::operation::Operation,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    body: &[u8],
    pairs: &[(String, String)],
) -> Result<Vec<(String, String)>, FhirError> {
    if *method != Method::POST && !(*method == Method::GET && op.allows_get()) {
        return Err(FhirError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("${} は {} では呼び出せません", op.name(), method),
            format!("${} cannot be invoked with {}", op.name(), method),
        ));
    }
    match segs {
        [ty, _] => check_type(ty)?,
        [ty, id, _] => {
            check_type(ty)?;
            check_id(id)?;
        }
        _ => {}
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && form {
        form_pairs(headers, body, pairs)
    } else {
        Ok(pairs.to_vec())
    }
}

#[allow(clippy::too_many_arguments)]
fn op_call<'a>(
    st: &'a AppState,
    ctx: &'a Ctx,
    op: &dyn crate::operation::Operation,
    method: &'a Method,
    segs: &[&'a str],
    headers: &'a HeaderMap,
    params: &'a [(String, String)],
    body: &'a [u8],
    principal: Option<&'a iryo_security::authz::Principal>,
) -> crate::operation::OperationCall<'a> {
    use crate::operation::Level;
    let (resource_type, id) = match (op.level(), segs) {
        (Level::Type(_), [ty, _]) => (Some(*ty), None),
        (Level::Instance(_), [ty, id, _]) => (Some(*ty), Some(*id)),
        _ => (None, None),
    };
    crate::operation::OperationCall {
        store: &st.store,
        tenant: ctx.tenant,
        tenant_name: &ctx.tenant_name,
        base: &ctx.base,
        method,
        resource_type,
        id,
        headers,
        params,
        body,
        principal,
        pretty: ctx.pretty,
    }
}

/// Whether `ty/id` is in the compartment of `Patient/pid` (or is that patient).
async fn in_compartment(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    pid: &str,
) -> Result<bool, FhirError> {
    if ty == "Patient" {
        return Ok(id == pid);
    }
    if !iryo_fhir_spec::r4().is_resource_type(ty) || !is_valid_id(id) {
        return Ok(false);
    }
    let pairs = vec![("_id".to_string(), id.to_string())];
    let q = parse_pairs(iryo_search::model(), Some(ty), &pairs, Handling::Strict)?;
    let req = SearchRequest {
        query: q,
        page_token: None,
        base_url: ctx.base.clone(),
    };
    let page = st
        .store
        .search_compartment(ctx.tenant, ("Patient".into(), pid.into()), req)
        .await?;
    Ok(!page.matches.is_empty())
}

async fn read_body(st: &AppState, body: Body) -> Result<bytes::Bytes, FhirError> {
    axum::body::to_bytes(body, st.config.max_body)
        .await
        .map_err(|_| {
            FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                format!(
                    "リクエスト本文が上限 {} バイトを超えています",
                    st.config.max_body
                ),
                format!(
                    "request body exceeds the limit of {} bytes",
                    st.config.max_body
                ),
            )
        })
}

/// Parameters of `POST …/_search`: the form body plus the URL query.
fn form_pairs(
    headers: &HeaderMap,
    body: &[u8],
    query: &[(String, String)],
) -> Result<Vec<(String, String)>, FhirError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !body.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "_search の本文は application/x-www-form-urlencoded です",
            "the body of _search must be application/x-www-form-urlencoded",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| FhirError::bad_request("本文が UTF-8 ではありません", "body is not UTF-8"))?;
    let mut pairs = query.to_vec();
    pairs.extend(split_query(text));
    Ok(pairs)
}

/// Parse a JSON resource body, checking the content type and the base R4 structure.
pub fn parse_resource(headers: &HeaderMap, body: &[u8]) -> Result<Value, FhirError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/fhir+json");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !matches!(
        mime,
        "application/fhir+json" | "application/json" | "application/json+fhir" | ""
    ) {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("Content-Type '{mime}' には対応していません（application/fhir+json を使ってください）"),
            format!("unsupported Content-Type '{mime}' (use application/fhir+json)"),
        ));
    }
    parse_json(body)
}

pub fn parse_json(body: &[u8]) -> Result<Value, FhirError> {
    if body.is_empty() {
        return Err(FhirError::bad_request("本文が空です", "empty body"));
    }
    serde_json::from_slice::<Value>(body).map_err(|e| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            format!("JSON として読めません（{} 行 {} 列）", e.line(), e.column()),
            format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Structural check against the base R4 definitions; errors refuse the write.
pub fn check_resource(v: &Value, expected_type: Option<&str>) -> Result<(), FhirError> {
    let rt = v.get("resourceType").and_then(Value::as_str);
    match (rt, expected_type) {
        (None, _) => {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                "structure",
                "resourceType がありません",
                "missing resourceType",
            ))
        }
        (Some(a), Some(b)) if a != b => {
            return Err(FhirError::bad_request(
                format!("本文のリソース型 {a} が URL の {b} と一致しません"),
                format!("resourceType {a} does not match the URL's {b}"),
            ))
        }
        _ => {}
    }
    let issues = iryo_fhir_spec::r4().check_structure(v);
    let errors: Vec<Issue> = issues
        .into_iter()
        .filter(|i| {
            matches!(
                i.severity,
                iryo_fhir_spec::Severity::Error | iryo_fhir_spec::Severity::Fatal
            )
        })
        .map(|i| Issue {
            severity: "error",
            code: i.code,
            message_ja: i.message_ja,
            message_en: i.message_en,
            expression: Some(i.expression),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FhirError {
            status: StatusCode::BAD_REQUEST,
            issues: errors,
        })
    }
}

/// Write through the store after the tenant's validation on write: with the tenant setting
/// `{"validation": "profiles"}` every written resource is validated against its `meta.profile`
/// (JP Core, JP-CLINS, eCheckup, uploaded profiles) and errors refuse the whole write (422).
/// `base` (default) and `off` keep the structural R4 check that every write passes anyway.
pub async fn store_write(
    st: &AppState,
    ctx: &Ctx,
    ops: Vec<WriteOp>,
) -> Result<Vec<WriteOutcome>, FhirError> {
    let settings = st.store.tenant_settings(ctx.tenant).await?;
    // off: the structural check only; base (default): base R4 invariants and required
    // bindings; profiles: every profile in meta.profile
    let mode = settings
        .get("validation")
        .and_then(Value::as_str)
        .unwrap_or("base");
    if mode != "off" {
        let validator = if mode == "profiles" {
            crate::validate::tenant_validator(st, ctx.tenant).await?
        } else {
            crate::validate::shared_validator()
        };
        let many = ops.len() > 1;
        for (i, op) in ops.iter().enumerate() {
            if let WriteOp::Put { resource, .. } = op {
                crate::validate::validate_on_write(&validator, mode, resource).map_err(
                    |mut e| {
                        if many {
                            for is in e.issues.iter_mut() {
                                is.message_ja = format!("書き込み {i}: {}", is.message_ja);
                                is.message_en = format!("write {i}: {}", is.message_en);
                            }
                        }
                        e
                    },
                )?;
            }
        }
    }
    Ok(st.store.write(ctx.tenant, ops).await?)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Run a search that should match at most one resource (conditional interactions).
pub async fn conditional_matches(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    query: &str,
) -> Result<Vec<StoredResource>, FhirError> {
    let pairs = split_query(query);
    conditional_matches_pairs(st, ctx, ty, &pairs).await
}

async fn conditional_matches_pairs(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    pairs: &[(String, String)],
) -> Result<Vec<StoredResource>, FhirError> {
    let mut q = parse_pairs(iryo_search::model(), Some(ty), pairs, Handling::Strict)?;
    if q.clauses.is_empty() {
        return Err(FhirError::new(
            StatusCode::PRECONDITION_FAILED,
            "invalid",
            "条件付き操作には検索条件が必要です",
            "a conditional interaction needs search criteria",
        ));
    }
    q.count = Some(2);
    let page = st
        .store
        .search(
            ctx.tenant,
            SearchRequest {
                query: q,
                page_token: None,
                base_url: ctx.base.clone(),
            },
        )
        .await?;
    Ok(page.matches)
}

fn multiple_matches(ty: &str) -> FhirError {
    FhirError::new(
        StatusCode::PRECONDITION_FAILED,
        "multiple-matches",
        format!("条件に一致する {ty} が複数あります"),
        format!("the criteria match more than one {ty}"),
    )
}

async fn create(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let mut v = parse_resource(headers, body)?;
    check_resource(&v, Some(ty))?;
    if let Some(cond) = headers.get("if-none-exist").and_then(|h| h.to_str().ok()) {
        let q = cond.split_once('?').map(|(_, q)| q).unwrap_or(cond);
        let found = conditional_matches(st, ctx, ty, q).await?;
        match found.len() {
            0 => {}
            1 => return Ok(resource_response(StatusCode::OK, &found[0], ctx)),
            _ => return Err(multiple_matches(ty)),
        }
    }
    v["id"] = Value::String(new_id());
    let out = store_write(st, ctx, vec![WriteOp::create(v)]).await?;
    Ok(write_response(&out[0], StatusCode::CREATED, ctx))
}

async fn update(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let v = parse_resource(headers, body)?;
    check_resource(&v, Some(ty))?;
    match v.get("id").and_then(Value::as_str) {
        Some(bid) if bid == id => {}
        Some(bid) => {
            return Err(FhirError::bad_request(
                format!("本文の id '{bid}' が URL の id '{id}' と一致しません"),
                format!("body id '{bid}' does not match URL id '{id}'"),
            ))
        }
        None => {
            return Err(FhirError::bad_request(
                "更新する本文に id がありません",
                "the resource to update has no id",
            ))
        }
    }
    put_and_respond(st, ctx, v, headers).await
}

/// Store an update (or update-as-create) honouring `If-Match`; 201 when it created the resource.
async fn put_and_respond(
    st: &AppState,
    ctx: &Ctx,
    v: Value,
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    let im = if_match(headers)?;
    let put = WriteOp::Put {
        resource: v,
        if_match: im,
        create_only: false,
    };
    let out = store_write(st, ctx, vec![put]).await?;
    let status = if out[0].created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(write_response(&out[0], status, ctx))
}

async fn conditional_update(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    headers: &HeaderMap,
    body: &[u8],
    pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let mut v = parse_resource(headers, body)?;
    check_resource(&v, Some(ty))?;
    let found = conditional_matches_pairs(st, ctx, ty, pairs).await?;
    let id = match found.len() {
        0 => match v.get("id").and_then(Value::as_str) {
            Some(id) => {
                check_id(id)?;
                id.to_string()
            }
            None => new_id(),
        },
        1 => {
            let fid = found[0].id.clone();
            if let Some(bid) = v.get("id").and_then(Value::as_str) {
                if bid != fid {
                    return Err(FhirError::bad_request(
                        format!("本文の id '{bid}' が条件に一致した {ty}/{fid} と違います"),
                        format!("body id '{bid}' differs from the matched {ty}/{fid}"),
                    ));
                }
            }
            fid
        }
        _ => return Err(multiple_matches(ty)),
    };
    v["id"] = Value::String(id);
    put_and_respond(st, ctx, v, headers).await
}

async fn resolve_conditional(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    pairs: &[(String, String)],
) -> Result<String, FhirError> {
    let found = conditional_matches_pairs(st, ctx, ty, pairs).await?;
    match found.len() {
        0 => Err(FhirError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("条件に一致する {ty} はありません"),
            format!("no {ty} matches the criteria"),
        )),
        1 => Ok(found[0].id.clone()),
        _ => Err(multiple_matches(ty)),
    }
}

async fn patch(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json-patch+json") {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "PATCH は application/json-patch+json（JSON Patch）で送ってください",
            "PATCH requires application/json-patch+json (JSON Patch)",
        ));
    }
    let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
        FhirError::bad_request(
            format!("JSON Patch として読めません: {e}"),
            format!("malformed JSON Patch: {e}"),
        )
    })?;
    let cur = st.store.read(ctx.tenant, ty, id).await?;
    let cur = match cur {
        Some(c) if !c.deleted => c,
        _ => return Err(FhirError::not_found(ty, id)),
    };
    let expected = if_match(headers)?;
    if let Some(e) = expected {
        if e != cur.version {
            return Err(iryo_db::DbError::VersionConflict {
                ty: ty.into(),
                id: id.into(),
                expected: e,
                current: cur.version,
            }
            .into());
        }
    }
    let mut v: Value =
        serde_json::from_slice(cur.json.as_deref().map(Vec::as_slice).unwrap_or(b"{}"))
            .map_err(|e| FhirError::bad_request(e.to_string(), e.to_string()))?;
    json_patch::patch(&mut v, &ops).map_err(|e| {
        FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            format!("パッチを適用できません: {e}"),
            format!("cannot apply patch: {e}"),
        )
    })?;
    if v.get("id").and_then(Value::as_str) != Some(id)
        || v.get("resourceType").and_then(Value::as_str) != Some(ty)
    {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            "パッチで id や resourceType は変えられません",
            "a patch may not change id or resourceType",
        ));
    }
    check_resource(&v, Some(ty)).map_err(|mut e| {
        e.status = StatusCode::UNPROCESSABLE_ENTITY;
        e
    })?;
    // optimistic: the version we patched must still be current
    let out = store_write(
        st,
        ctx,
        vec![WriteOp::Put {
            resource: v,
            if_match: Some(cur.version),
            create_only: false,
        }],
    )
    .await?;
    Ok(write_response(&out[0], StatusCode::OK, ctx))
}

async fn delete(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    let im = if_match(headers)?;
    let out = store_write(
        st,
        ctx,
        vec![WriteOp::Delete {
            ty: ty.into(),
            id: id.into(),
            if_match: im,
        }],
    )
    .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if out[0].version > 0 {
        resp.headers_mut()
            .insert(header::ETAG, etag(out[0].version));
    }
    Ok(resp)
}

async fn conditional_delete(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let found = conditional_matches_pairs(st, ctx, ty, pairs).await?;
    match found.len() {
        0 => Ok(StatusCode::NO_CONTENT.into_response()),
        1 => {
            store_write(
                st,
                ctx,
                vec![WriteOp::Delete {
                    ty: ty.into(),
                    id: found[0].id.clone(),
                    if_match: None,
                }],
            )
            .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(multiple_matches(ty)),
    }
}

async fn read(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    let r = st.store.read(ctx.tenant, ty, id).await?;
    match r {
        None => Err(FhirError::not_found(ty, id)),
        Some(r) if r.deleted => Err(FhirError::new(
            StatusCode::GONE,
            "deleted",
            format!("{ty}/{id} は削除されています"),
            format!("{ty}/{id} has been deleted"),
        )),
        Some(r) => {
            if let Some(inm) = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_etag)
            {
                if inm == r.version {
                    let mut resp = StatusCode::NOT_MODIFIED.into_response();
                    resp.headers_mut().insert(header::ETAG, etag(r.version));
                    return Ok(resp);
                }
            }
            Ok(resource_response(StatusCode::OK, &r, ctx))
        }
    }
}

async fn vread(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    vid: &str,
) -> Result<Response, FhirError> {
    let v: i64 = vid.parse().map_err(|_| {
        FhirError::bad_request(
            format!("版 '{vid}' は整数ではありません"),
            format!("version '{vid}' is not an integer"),
        )
    })?;
    match st.store.vread(ctx.tenant, ty, id, v).await? {
        None => Err(FhirError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{ty}/{id} の版 {v} はありません"),
            format!("{ty}/{id} has no version {v}"),
        )),
        Some(r) if r.deleted => {
            let mut e = FhirError::new(
                StatusCode::GONE,
                "deleted",
                format!("{ty}/{id} の版 {v} は削除を表します"),
                format!("version {v} of {ty}/{id} is a deletion"),
            )
            .into_response();
            e.headers_mut().insert(header::ETAG, etag(v));
            Ok(e)
        }
        Some(r) => Ok(resource_response(StatusCode::OK, &r, ctx)),
    }
}

fn date_param(name: &str, v: &str) -> Result<i64, FhirError> {
    iryo_search::date::parse_range(v)
        .map(|r| r.lo)
        .ok_or_else(|| {
            FhirError::bad_request(
                format!("{name} の値 '{v}' は日時ではありません"),
                format!("{name} value '{v}' is not a date-time"),
            )
        })
}

async fn history(
    st: &AppState,
    ctx: &Ctx,
    ty: Option<&str>,
    id: Option<&str>,
    pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    let mut q = HistoryQuery {
        ty: ty.map(str::to_string),
        id: id.map(str::to_string),
        count: 50,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "_since" => q.since = Some(date_param(k, v)?),
            "_at" => q.at = Some(date_param(k, v)?),
            "_count" => {
                q.count = v
                    .parse::<usize>()
                    .map_err(|_| {
                        FhirError::bad_request("_count は整数です", "_count must be an integer")
                    })?
                    .min(1000)
            }
            "_offset" => {
                q.offset = v.parse().map_err(|_| {
                    FhirError::bad_request("_offset は整数です", "_offset must be an integer")
                })?
            }
            "_tx" => q.max_tx = v.parse().ok(),
            "_format" | "_pretty" | "_summary" | "_elements" => {}
            other if ctx.handling == Handling::Strict => {
                return Err(FhirError::bad_request(
                    format!("履歴では {other} は使えません"),
                    format!("unknown history parameter {other}"),
                ))
            }
            _ => {}
        }
    }
    if let (Some(t), Some(i)) = (ty, id) {
        if st.store.read(ctx.tenant, t, i).await?.is_none() {
            return Err(FhirError::not_found(t, i));
        }
    }
    let (entries, total, max_tx) = st.store.history(ctx.tenant, q.clone()).await?;
    let path = match (ty, id) {
        (Some(t), Some(i)) => format!("{}/{t}/{i}/_history", ctx.base),
        (Some(t), None) => format!("{}/{t}/_history", ctx.base),
        _ => format!("{}/_history", ctx.base),
    };
    let link = |offset: usize| {
        let mut s = format!("{path}?_count={}&_offset={offset}&_tx={max_tx}", q.count);
        if let Some(since) = q.since {
            s.push_str(&format!("&_since={}", instant(since)));
        }
        if let Some(at) = q.at {
            s.push_str(&format!("&_at={}", instant(at)));
        }
        s
    };
    let mut links = vec![json!({"relation": "self", "url": link(q.offset)})];
    if q.offset + entries.len() < total as usize {
        links.push(json!({"relation": "next", "url": link(q.offset + q.count)}));
    }
    if q.offset > 0 {
        links.push(json!({"relation": "previous", "url": link(q.offset.saturating_sub(q.count))}));
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let r = &e.resource;
        let full = format!("{}/{}/{}", ctx.base, r.ty, r.id);
        let (method, url, status) = match e.op {
            0 => ("POST", r.ty.clone(), "201 Created"),
            1 => ("PUT", format!("{}/{}", r.ty, r.id), "200 OK"),
            _ => ("DELETE", format!("{}/{}", r.ty, r.id), "204 No Content"),
        };
        let mut entry = json!({
            "fullUrl": full,
            "request": {"method": method, "url": url},
            "response": {"status": status, "etag": format!("W/\"{}\"", r.version), "lastModified": instant(r.last_updated)},
        });
        if let Some(j) = &r.json {
            let v: Value = serde_json::from_slice(j).unwrap_or(Value::Null);
            entry["resource"] = shape(v, &ctx.shape);
        }
        out.push(entry);
    }
    let b = json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": links,
        "entry": out,
    });
    Ok(json_response(StatusCode::OK, &b, ctx.pretty))
}

async fn search_system(
    st: &AppState,
    ctx: &Ctx,
    pairs: &[(String, String)],
) -> Result<Response, FhirError> {
    // `_type=Patient,Observation` narrows a system search to one type at a time here.
    let types: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let rest: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_type")
        .cloned()
        .collect();
    for ty in &types {
        if !iryo_fhir_spec::r4().is_resource_type(ty) {
            return Err(FhirError::bad_request(
                format!("_type の {ty} は FHIR R4 のリソース型ではありません"),
                format!("_type: {ty} is not an R4 resource type"),
            ));
        }
    }
    if let [ty] = types.as_slice() {
        return search_type(st, ctx, ty, &rest, None).await;
    }
    let mut q = parse_pairs(iryo_search::model(), None, &rest, ctx.handling)?;
    if !types.is_empty() {
        // several types: the parameters common to all resources (`_id`, `_lastUpdated`,
        // `_tag`, `_profile`, `_security`, `_source`) over those types
        q.understood.push(("_type".into(), types.join(",")));
        q.types = types;
    }
    run_search(st, ctx, q, None, ctx.base.clone()).await
}

pub async fn search_type(
    st: &AppState,
    ctx: &Ctx,
    ty: &str,
    pairs: &[(String, String)],
    compartment: Option<(String, String)>,
) -> Result<Response, FhirError> {
    let mut q = parse_pairs(iryo_search::model(), Some(ty), pairs, ctx.handling)?;
    resolve_absolute_refs(&mut q, &ctx.base);
    let self_base = match &compartment {
        Some((ct, ci)) => format!("{}/{ct}/{ci}/{ty}", ctx.base),
        None => format!("{}/{ty}", ctx.base),
    };
    run_search(st, ctx, q, compartment, self_base).await
}

/// `subject=http://our-base/Patient/1` is the local `Patient/1`.
fn resolve_absolute_refs(q: &mut SearchQuery, base: &str) {
    use iryo_search::query::{Clause, Value as QV};
    fn walk(c: &mut Clause, base: &str) {
        match c {
            Clause::Param { values, .. } => {
                for v in values.iter_mut() {
                    if let QV::Url(u) = v {
                        if let Some(rest) = u.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
                            if let Some((t, i)) = rest.split_once('/') {
                                *v = QV::Reference {
                                    ty: Some(t.to_string()),
                                    id: i.to_string(),
                                };
                            }
                        }
                    }
                }
            }
            Clause::Chain { inner, .. } | Clause::Has { inner, .. } => walk(inner, base),
        }
    }
    for c in q.clauses.iter_mut() {
        walk(c, base);
    }
}

async fn run_search(
    st: &AppState,
    ctx: &Ctx,
    mut q: SearchQuery,
    compartment: Option<(String, String)>,
    self_base: String,
) -> Result<Response, FhirError> {
    if q.summary.is_none() {
        q.summary = ctx.shape.summary;
    }
    let token = q.page_token.clone();
    let req = SearchRequest {
        query: q.clone(),
        page_token: token,
        base_url: ctx.base.clone(),
    };
    let page = match compartment {
        Some(c) => st.store.search_compartment(ctx.tenant, c, req).await?,
        None => st.store.search(ctx.tenant, req).await?,
    };
    let b = search_bundle(ctx, &q, &page, &self_base);
    Ok(json_response(StatusCode::OK, &b, ctx.pretty))
}

fn encode_pair(k: &str, v: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b':')
        .remove(b'|')
        .remove(b',')
        .remove(b'$');
    format!(
        "{}={}",
        utf8_percent_encode(k, KEEP),
        utf8_percent_encode(v, KEEP)
    )
}

/// The searchset Bundle with links, matches, includes and an outcome for ignored parameters.
pub fn search_bundle(ctx: &Ctx, q: &SearchQuery, page: &SearchPage, self_base: &str) -> Value {
    let understood: Vec<String> = q
        .understood
        .iter()
        .filter(|(k, _)| k != "_offset" && k != "_count")
        .map(|(k, v)| encode_pair(k, v))
        .collect();
    let count = page.count;
    let link = |offset: usize| {
        let mut parts = understood.clone();
        parts.push(format!("_count={count}"));
        parts.push(format!("_offset={offset}"));
        if let Some(t) = &page.token {
            parts.push(format!("_page={t}"));
        }
        format!("{self_base}?{}", parts.join("&"))
    };
    let mut links = vec![json!({"relation": "self", "url": link(page.offset)})];
    if page.has_next {
        links.push(json!({"relation": "next", "url": link(page.offset + count)}));
    }
    if page.offset > 0 && page.token.is_some() {
        links.push(json!({"relation": "previous", "url": link(page.offset.saturating_sub(count))}));
        links.push(json!({"relation": "first", "url": link(0)}));
    }
    let mut entries = Vec::with_capacity(page.matches.len() + page.includes.len() + 1);
    let mut push = |r: &StoredResource, mode: &str| {
        let Some(j) = &r.json else { return };
        let v: Value = serde_json::from_slice(j).unwrap_or(Value::Null);
        let v = shape(v, &ctx.shape);
        entries.push(json!({
            "fullUrl": format!("{}/{}/{}", ctx.base, r.ty, r.id),
            "resource": v,
            "search": {"mode": mode},
        }));
    };
    for r in &page.matches {
        push(r, "match");
    }
    for r in &page.includes {
        push(r, "include");
    }
    if !q.ignored.is_empty() {
        let issues: Vec<Issue> = q
            .ignored
            .iter()
            .map(|(k, why)| Issue {
                severity: "warning",
                code: "not-supported",
                message_ja: format!("パラメータ {k} は無視しました: {why}"),
                message_en: format!("parameter {k} was ignored (unknown or unsupported)"),
                expression: Some(k.clone()),
            })
            .collect();
        entries.push(json!({
            "resource": crate::error::operation_outcome(&issues),
            "search": {"mode": "outcome"},
        }));
    }
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    if let Some(t) = page.total {
        b["total"] = json!(t);
    }
    if b["entry"].as_array().is_some_and(Vec::is_empty) {
        b.as_object_mut().map(|m| m.remove("entry"));
    }
    b
}
