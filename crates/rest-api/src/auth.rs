//! API authentication, access policy and audit trail of the REST layer (issue 4).
//!
//! When [`crate::Config::security`] is set, every request to the FHIR API must carry
//! `Authorization: Bearer <token>`: an access token signed by [`TokenService`] (issued by
//! `iryo token issue` or `POST /auth/token`), or the static system token of
//! `--api-token-file` (kept for compatibility; it acts as a backend client with `system/*.cruds`).
//! Each interaction is checked with [`authorize`]; every decision (allowed or refused) and
//! every authentication failure is appended to the hash-chained audit log by a background
//! writer that batches entries ([`AuditSink`]), so requests never wait for an fsync.
//!
//! Without `security` (the default [`crate::Config`]) the API is open: tests and local
//! development on loopback only; `iryo serve` never runs a non-loopback address that way.

use crate::error::FhirError;
use axum::http::{header, HeaderMap, Method, StatusCode};
use chrono::{DateTime, Utc};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::authz::{access_audit_entry, authorize, AccessRequest, Decision, Principal};
use iryo_security::roles::Interaction;
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{NewAuditEntry, SecurityStore};
use iryo_security::token::TokenService;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Largest number of audit entries written in one transaction.
const AUDIT_BATCH: usize = 512;
/// How long the writer waits for more entries before committing a batch.
const AUDIT_LINGER: Duration = Duration::from_millis(3);

enum AuditMsg {
    Entry(Box<NewAuditEntry>),
    Flush(mpsc::Sender<()>),
}

/// Feeds the audit writer thread. Cloning is cheap; the writer ends when every sink is dropped.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditMsg>,
}

impl AuditSink {
    /// Starts the writer thread on `store`. Entries are committed in batches
    /// ([`SecurityStore::append_audit_many`]) a few milliseconds after they arrive.
    pub fn start(store: Arc<dyn SecurityStore>) -> AuditSink {
        let (tx, rx) = mpsc::channel::<AuditMsg>();
        std::thread::Builder::new()
            .name("iryo-audit".into())
            .spawn(move || audit_writer(store, rx))
            .map_err(|e| tracing::error!("cannot start the audit writer: {e}"))
            .ok();
        AuditSink { tx }
    }

    /// Queues one entry.
    pub fn send(&self, e: NewAuditEntry) {
        if self.tx.send(AuditMsg::Entry(Box::new(e))).is_err() {
            tracing::error!("audit writer stopped; entry lost");
        }
    }

    /// Blocks until every entry queued before this call is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(AuditMsg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

fn audit_writer(store: Arc<dyn SecurityStore>, rx: mpsc::Receiver<AuditMsg>) {
    let mut batch: Vec<NewAuditEntry> = Vec::new();
    let mut waiters: Vec<mpsc::Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Let the batch fill while this thread sleeps: waiting on the channel instead would
        // have every request wake it (a context switch per logged access, ~20 % of the CPU of
        // a read-heavy load).
        std::thread::sleep(AUDIT_LINGER);
        while let Some(m) = next.take() {
            match m {
                AuditMsg::Entry(e) => batch.push(*e),
                AuditMsg::Flush(w) => waiters.push(w),
            }
            if batch.len() < AUDIT_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let entries = std::mem::take(&mut batch);
            let n = entries.len();
            if let Err(e) = store.append_audit_many(entries) {
                tracing::error!("audit log write failed ({n} entries): {}", e.message_en);
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// The security part of the API configuration.
pub struct Security {
    pub tokens: TokenService,
    pub store: Arc<dyn SecurityStore>,
    pub audit: AuditSink,
    /// The static token of `--api-token-file`: a backend client with `system/*.cruds`.
    pub static_token: Option<String>,
    /// Requests from a loopback peer without a token are let through (development only,
    /// `--insecure-loopback`); they are still logged as `anonymous-loopback`.
    pub open_loopback: bool,
    /// SMART clients: Backend Services (keys) at `[base]/auth/token`, and public apps
    /// (`redirect_uris`) of the authorization code flow. Client-assertion `jti`s are
    /// recorded in `store` (`sec_jti`), so servers sharing a database refuse replays.
    pub clients: Vec<iryo_security::token::ClientRegistration>,
    /// The account service behind web login, sessions, SMART authorization and
    /// break-glass ([`crate::web`]); `None` = no web login (token-only API). It needs
    /// `SecurityConfig::secret_key` (CSRF tokens and login-step cookies are signed with it).
    pub accounts: Option<Arc<crate::web::WebAccounts>>,
    /// Cookies get `Secure` and the `__Host-` prefix (HTTPS directly or behind a TLS proxy).
    pub secure_cookies: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("static_token", &self.static_token.is_some())
            .field("open_loopback", &self.open_loopback)
            .finish()
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Security is off, or a loopback peer in `--insecure-loopback` mode.
    Open,
    Principal(Principal),
}

impl Caller {
    /// The patient whose compartment limits this caller (patient users, `patient/` scopes).
    pub fn patient(&self) -> Option<&str> {
        match self {
            Caller::Principal(p) => p.patient.as_deref(),
            Caller::Open => None,
        }
    }
}

/// Largest total size of the request headers (names + values), in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// 431 when the request headers are larger than [`MAX_HEADER_BYTES`].
pub fn check_header_size(headers: &HeaderMap) -> Result<(), FhirError> {
    let total: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if total > MAX_HEADER_BYTES {
        return Err(FhirError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too-costly",
            format!("リクエストヘッダーが上限 {MAX_HEADER_BYTES} バイトを超えています"),
            format!("request headers exceed the limit of {MAX_HEADER_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// 401 (the OperationOutcome of an authentication failure).
pub fn unauthorized(ja: &str, en: &str) -> FhirError {
    FhirError::new(StatusCode::UNAUTHORIZED, "login", ja, en)
}

fn forbidden(ja: &str, en: &str) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, "forbidden", ja, en)
}

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The source address as logged.
pub fn source_ip(peer: Option<SocketAddr>) -> Option<String> {
    peer.map(|p| p.ip().to_string())
}

/// Finds the caller of a request to `tenant`. Failures are logged (`login-failed`).
pub fn authenticate(
    sec: &Security,
    headers: &HeaderMap,
    tenant: &str,
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) -> Result<Caller, FhirError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let fail = |reason: &str, ja: &str, en: &str| {
        let mut e = NewAuditEntry::new(
            now,
            tenant,
            "anonymous",
            AuditAction::LoginFailed,
            AuditOutcome::Denied,
        );
        e.source_ip = source_ip(peer);
        e.details = serde_json::json!({"reason": reason, "channel": "api"});
        sec.audit.send(e);
        unauthorized(ja, en)
    };
    let Some(auth) = auth else {
        if sec.open_loopback && peer.is_some_and(|p| p.ip().is_loopback()) {
            return Ok(Caller::Open);
        }
        return Err(fail(
            "no token",
            "認証が必要です（Authorization: Bearer）",
            "authentication required (Authorization: Bearer)",
        ));
    };
    let Some(token) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
    else {
        return Err(fail(
            "not a bearer token",
            "Authorization ヘッダーは Bearer 形式にしてください",
            "the Authorization header must use the Bearer scheme",
        ));
    };
    let token = token.trim();
    if let Some(st) = &sec.static_token {
        if ct_eq(st.as_bytes(), token.as_bytes()) {
            return Ok(Caller::Principal(Principal {
                tenant: tenant.to_string(),
                subject: "system:api-token-file".into(),
                role: None,
                is_admin: false,
                scopes: ScopeSet::parse("system/*.cruds").ok(),
                patient: None,
                break_glass: None,
            }));
        }
    }
    match sec.tokens.verify(token, tenant, now) {
        Ok(p) => Ok(Caller::Principal(p)),
        Err(e) => Err(fail(&e.message_en, &e.message_ja, &e.message_en)),
    }
}

/// One access to check: what is done to which type, in which patient's compartment.
#[derive(Debug, Clone)]
pub struct Access {
    pub interaction: Interaction,
    pub resource_type: String,
    pub id: Option<String>,
    /// The patient whose compartment the request names (`Patient/x`, `Patient/x/Observation`).
    pub patient: Option<String>,
    /// The search/history/export parameters, for the audit log (`k=v&…`).
    pub query: Option<String>,
}

impl Access {
    pub fn new(interaction: Interaction, ty: &str) -> Access {
        Access {
            interaction,
            resource_type: ty.to_string(),
            id: None,
            patient: None,
            query: None,
        }
    }
    pub fn with_id(mut self, id: &str) -> Access {
        if self.resource_type == "Patient" {
            self.patient = Some(id.to_string());
        }
        self.id = Some(id.to_string());
        self
    }
}

/// Representative types of every data category: an export or system-wide search without
/// `_type` touches all of them, so the caller must be allowed on each.
const ALL_CATEGORIES: [&str; 5] = [
    "Patient",
    "Observation",
    "MedicationRequest",
    "Coverage",
    "Practitioner",
];

fn types_param(pairs: &[(String, String)]) -> Option<Vec<String>> {
    pairs.iter().find(|(k, _)| k == "_type").map(|(_, v)| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn all_types(interaction: Interaction, pairs: &[(String, String)]) -> Vec<Access> {
    match types_param(pairs) {
        Some(ts) if !ts.is_empty() => ts.iter().map(|t| Access::new(interaction, t)).collect(),
        _ => ALL_CATEGORIES
            .iter()
            .map(|t| Access::new(interaction, t))
            .collect(),
    }
}

/// The accesses a routed request performs (`segs` after the FHIR base). `None` for
/// requests that touch no data (`metadata`). Bundles are checked per entry by
/// [`bundle_accesses`].
pub fn route_accesses(
    method: &Method,
    segs: &[&str],
    pairs: &[(String, String)],
) -> Option<Vec<Access>> {
    use Interaction::*;
    let m = method.as_str();
    let v = match (m, segs) {
        ("GET", ["metadata"]) => return None,
        ("POST", []) => Vec::new(),
        ("GET", []) | ("POST", ["_search"]) => all_types(Search, pairs),
        ("GET", ["_history"]) => all_types(History, pairs),
        ("GET" | "POST", ["$export"]) => all_types(Export, pairs),
        (_, ["_export", ..]) => vec![Access::new(Export, "Patient")],
        ("GET" | "POST", ["Patient", "$export"]) | ("GET" | "POST", ["Group", _, "$export"]) => {
            all_types(Export, pairs)
        }
        ("GET", [ty]) | ("POST", [ty, "_search"]) => vec![Access::new(Search, ty)],
        ("POST", [ty]) => vec![Access::new(Create, ty)],
        ("PUT", [ty]) => vec![Access::new(Update, ty), Access::new(Search, ty)],
        ("PATCH", [ty]) => vec![Access::new(Update, ty), Access::new(Search, ty)],
        ("DELETE", [ty]) => vec![Access::new(Delete, ty), Access::new(Search, ty)],
        ("GET", [ty, "_history"]) => vec![Access::new(History, ty)],
        ("GET" | "HEAD", [ty, id]) => vec![Access::new(Read, ty).with_id(id)],
        ("PUT" | "PATCH", [ty, id]) => vec![Access::new(Update, ty).with_id(id)],
        ("DELETE", [ty, id]) => vec![Access::new(Delete, ty).with_id(id)],
        ("GET", [ty, id, "_history"]) => vec![Access::new(History, ty).with_id(id)],
        ("GET", [ty, id, "_history", _]) => vec![Access::new(Read, ty).with_id(id)],
        ("GET", [cty, cid, ty]) => {
            let mut a = Access::new(Search, ty);
            if *cty == "Patient" {
                a.patient = Some(cid.to_string());
            }
            vec![a]
        }
        _ => Vec::new(),
    };
    let mut v = v;
    if !pairs.is_empty() {
        let q = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        for a in v.iter_mut() {
            a.query = Some(q.clone());
        }
    }
    Some(v)
}

/// The accesses of each entry of a batch/transaction Bundle.
pub fn bundle_accesses(bundle: &Value) -> Vec<Access> {
    use Interaction::{Create, Delete};
    let mut out = Vec::new();
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for e in entries {
        let req = e.get("request");
        let method = req
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = req
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let pairs = iryo_search::query::split_query(query);
        let Ok(m) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        match route_accesses(&m, &segs, &pairs) {
            Some(v) if !v.is_empty() => out.extend(v),
            Some(_) => {
                // unknown entry shapes: most restrictive reading (the handler refuses them)
                let ty = e
                    .get("resource")
                    .and_then(|r| r.get("resourceType"))
                    .and_then(Value::as_str)
                    .unwrap_or("Bundle");
                out.push(Access::new(Create, ty));
                out.push(Access::new(Delete, ty));
            }
            None => {}
        }
    }
    out
}

/// Checks every access; logs each decision. Returns the patient the caller is restricted
/// to (if any), or the first refusal as 403.
pub fn check_accesses(
    sec: &Security,
    caller: &Caller,
    tenant: &str,
    accesses: &[Access],
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) -> Result<Option<String>, FhirError> {
    let Caller::Principal(p) = caller else {
        for a in accesses {
            let mut e = NewAuditEntry::new(
                now,
                tenant,
                "anonymous-loopback",
                action_of(a.interaction),
                AuditOutcome::Success,
            );
            e.source_ip = source_ip(peer);
            e.patient = a.patient.clone();
            e.resources = resource_refs(a);
            if let Some(q) = &a.query {
                e.details = serde_json::json!({ "query": q });
            }
            sec.audit.send(e);
        }
        return Ok(None);
    };
    let mut restrict = None;
    let mut refused = None;
    let mut entries = Vec::with_capacity(accesses.len());
    for a in accesses {
        let req = AccessRequest {
            tenant,
            interaction: a.interaction,
            resource_type: &a.resource_type,
            patient_compartment: a.patient.as_deref(),
            now,
        };
        let d = authorize(p, &req);
        let ip = source_ip(peer);
        let mut e = access_audit_entry(p, &req, &d, resource_refs(a), ip.as_deref());
        if let (Some(q), Some(obj)) = (&a.query, e.details.as_object_mut()) {
            obj.insert("query".into(), Value::String(q.clone()));
        }
        entries.push(e);
        match d {
            Decision::Allow(g) => {
                if g.restrict_to_patient.is_some() {
                    restrict = g.restrict_to_patient;
                }
            }
            Decision::Deny(r) => {
                if refused.is_none() {
                    refused = Some(forbidden(r.message_ja(), r.message_en()));
                }
            }
        }
    }
    for e in entries {
        sec.audit.send(e);
    }
    match refused {
        Some(e) => Err(e),
        None => Ok(restrict),
    }
}

fn resource_refs(a: &Access) -> Vec<String> {
    match &a.id {
        Some(id) => vec![format!("{}/{id}", a.resource_type)],
        None => Vec::new(),
    }
}

fn action_of(i: Interaction) -> AuditAction {
    match i {
        Interaction::Read => AuditAction::Read,
        Interaction::Search => AuditAction::Search,
        Interaction::Create => AuditAction::Create,
        Interaction::Update => AuditAction::Update,
        Interaction::Delete => AuditAction::Delete,
        Interaction::History => AuditAction::History,
        Interaction::Export => AuditAction::Export,
    }
}

/// Logs a refusal decided by the REST layer itself (e.g. an include for a patient user).
pub fn log_refusal(
    sec: &Security,
    caller: &Caller,
    tenant: &str,
    what: &str,
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) {
    let (actor, role) = match caller {
        Caller::Principal(p) => (p.subject.clone(), p.role.map(|r| r.code().to_string())),
        Caller::Open => ("anonymous-loopback".to_string(), None),
    };
    let mut e = NewAuditEntry::new(
        now,
        tenant,
        &actor,
        AuditAction::Search,
        AuditOutcome::Denied,
    );
    e.role = role;
    e.source_ip = source_ip(peer);
    e.patient = caller.patient().map(str::to_string);
    e.details = serde_json::json!({"reason": what});
    sec.audit.send(e);
}

/// Search parameters a patient-restricted caller may not use: they would reach resources
/// outside the compartment (`_include`, `_revinclude`, `_has`, `_contained`).
pub fn compartment_escape(pairs: &[(String, String)]) -> Option<String> {
    pairs
        .iter()
        .map(|(k, _)| k)
        .find(|k| {
            k.starts_with("_include")
                || k.starts_with("_revinclude")
                || k.starts_with("_has")
                || k.starts_with("_contained")
        })
        .cloned()
}

/// 403 for a compartment escape attempt.
pub fn outside_compartment(what: &str) -> FhirError {
    forbidden(
        &format!("患者本人のコンパートメント外に及ぶ操作はできません（{what}）"),
        &format!("not allowed outside the patient's own compartment ({what})"),
    )
}

/// `GET [base]/AuditEvent?date=ge…&agent=…&patient=…&action=…&_count=…`: the tenant's audit
/// log as BALP AuditEvents, for administrators (roles with read access to `AuditEvent`).
pub async fn audit_search(
    sec: &Security,
    caller: &Caller,
    ctx: &crate::handlers::Ctx,
    pairs: &[(String, String)],
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) -> Result<axum::response::Response, FhirError> {
    use axum::response::IntoResponse;
    use iryo_security::store::AuditQuery;
    let tenant = ctx.tenant_name.as_str();
    let Caller::Principal(p) = caller else {
        return Err(unauthorized(
            "監査ログの閲覧には認証が必要です",
            "reading the audit log requires authentication",
        ));
    };
    let access = Access::new(Interaction::Search, "AuditEvent");
    check_accesses(
        sec,
        caller,
        tenant,
        std::slice::from_ref(&access),
        peer,
        now,
    )?;
    if !p.is_admin && p.role.is_some_and(|r| r.is_clinical()) {
        return Err(forbidden(
            "監査ログは管理者のみ閲覧できます",
            "only administrators may read the audit log",
        ));
    }
    let mut q = AuditQuery::default();
    for (k, v) in pairs {
        let bad = || {
            FhirError::bad_request(
                format!("AuditEvent の検索条件 {k}={v} が正しくありません"),
                format!("invalid AuditEvent search parameter {k}={v}"),
            )
        };
        match k.as_str() {
            "date" => {
                let (prefix, rest) = match v.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let r = iryo_search::date::parse_range(rest).ok_or_else(bad)?;
                let lo = DateTime::<Utc>::from_timestamp_millis(r.lo).ok_or_else(bad)?;
                let hi = DateTime::<Utc>::from_timestamp_millis(r.hi).ok_or_else(bad)?;
                match prefix {
                    "ge" | "gt" => q.from = Some(lo),
                    "le" | "lt" => q.to = Some(hi),
                    _ => {
                        q.from = Some(lo);
                        q.to = Some(hi);
                    }
                }
            }
            "agent" | "agent-name" => q.actor = Some(v.clone()),
            "patient" | "entity" => {
                q.patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_string())
            }
            "action" | "subtype" => q.action = Some(v.parse().map_err(|_| bad())?),
            "_count" => q.limit = Some(v.parse().map_err(|_| bad())?),
            "_format" | "_pretty" => {}
            _ => return Err(bad()),
        }
    }
    sec.audit.flush();
    let store = sec.store.clone();
    let t = tenant.to_string();
    let records = tokio::task::spawn_blocking(move || store.search_audit(&t, &q))
        .await
        .map_err(|_| {
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "内部エラー",
                "internal error",
            )
        })?
        .map_err(|e| {
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                e.message_ja,
                e.message_en,
            )
        })?;
    let b = iryo_security::audit::to_fhir_bundle(&records, &ctx.base);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::FHIR_JSON)],
        crate::format::to_bytes(&b, ctx.pretty),
    )
        .into_response())
}

/// `iss` of the access tokens this server signs (shared by `iryo token issue` and the server).
pub const TOKEN_ISSUER: &str = "iryo";
/// `aud` of the access tokens: the FHIR API of this installation.
pub const TOKEN_AUDIENCE: &str = "iryo-fhir-api";

/// `[base]/.well-known/smart-configuration` (SMART App Launch 2.0 discovery). With web
/// login on, the standalone launch (authorization code + PKCE S256, public clients) is listed.
pub fn smart_configuration(sec: &Security, ctx: &crate::handlers::Ctx) -> Value {
    let authorize = format!("{}/auth/authorize", ctx.base);
    let mut v = iryo_security::token::smart_configuration(
        &ctx.base,
        &format!("{}/auth/token", ctx.base),
        sec.accounts.as_ref().map(|_| authorize.as_str()),
    );
    if sec.accounts.is_some() {
        let push = |v: &mut Value, key: &str, items: &[&str]| {
            if let Some(a) = v.get_mut(key).and_then(Value::as_array_mut) {
                a.extend(items.iter().map(|i| Value::String(i.to_string())));
            }
        };
        push(
            &mut v,
            "capabilities",
            &[
                "launch-standalone",
                "client-public",
                "context-standalone-patient",
            ],
        );
        push(&mut v, "token_endpoint_auth_methods_supported", &["none"]);
        push(&mut v, "scopes_supported", &["launch/patient"]);
    }
    v
}

pub(crate) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

/// Logs an attempt at the token endpoint: `login` when a token was issued, else `login-failed`.
pub(crate) fn log_token_attempt(
    sec: &Security,
    tenant: &str,
    actor: &str,
    ok: bool,
    details: Value,
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) {
    let (action, outcome) = if ok {
        (AuditAction::Login, AuditOutcome::Success)
    } else {
        (AuditAction::LoginFailed, AuditOutcome::Denied)
    };
    let mut e = NewAuditEntry::new(now, tenant, actor, action, outcome);
    e.source_ip = source_ip(peer);
    e.details = details;
    sec.audit.send(e);
}

/// The unverified `iss` of a JWT (only to find the client registration; the signature is
/// checked by [`iryo_security::token::client_credentials_grant`]).
fn jwt_issuer(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss").and_then(Value::as_str).map(str::to_string)
}

/// `POST [base]/auth/token`: SMART Backend Services `client_credentials` with a signed JWT
/// assertion (RS384/ES384), or `authorization_code` + PKCE for apps ([`crate::web`]).
/// Success and failure are logged.
pub async fn token_endpoint(
    sec: &Security,
    ctx: &crate::handlers::Ctx,
    body: &[u8],
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let tenant = ctx.tenant_name.as_str();
    let form = iryo_search::query::split_query(std::str::from_utf8(body).unwrap_or(""));
    let field = |n: &str| {
        form.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let log = |actor: &str, ok: bool, reason: &str| {
        let d = serde_json::json!({"channel": "smart-backend-services", "reason": reason});
        log_token_attempt(sec, tenant, actor, ok, d, peer, now);
    };
    if field("grant_type") == "authorization_code" && sec.accounts.is_some() {
        return crate::web::authorization_code_grant(sec, ctx, &form, peer, now).await;
    }
    if field("grant_type") != "client_credentials" {
        log("anonymous", false, "unsupported grant_type");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported / client_credentials のみ対応しています",
        );
    }
    if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        log("anonymous", false, "missing jwt-bearer client assertion");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion_type must be jwt-bearer / 署名付きJWTによるクライアント認証が必要です",
        );
    }
    let assertion = field("client_assertion");
    let Some(reg) = jwt_issuer(assertion).and_then(|iss| {
        sec.clients
            .iter()
            .find(|c| c.tenant == tenant && c.client_id == iss)
    }) else {
        log("anonymous", false, "unknown client");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client / 登録されていないクライアントです",
        );
    };
    let endpoint = format!("{}/auth/token", ctx.base);
    let (tokens, store, reg2) = (sec.tokens.clone(), sec.store.clone(), reg.clone());
    let (assertion, scope) = (assertion.to_string(), field("scope").to_string());
    // the jti is recorded in the (blocking) security store
    let granted = tokio::task::spawn_blocking(move || {
        iryo_security::token::client_credentials_grant(
            &tokens, &reg2, &assertion, &scope, &endpoint, now, &store,
        )
    })
    .await
    .unwrap_or_else(|_| {
        Err(iryo_security::SecurityError::new(
            iryo_security::ErrorKind::Storage,
            "内部エラー",
            "internal error",
        ))
    });
    match granted {
        Ok(t) => {
            log(&reg.client_id, true, "token issued");
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                serde_json::json!({"access_token": t.access_token, "token_type": "bearer",
                    "expires_in": t.expires_in, "scope": t.scope})
                .to_string(),
            )
                .into_response()
        }
        Err(e) => {
            log(&reg.client_id, false, &e.message_en);
            let (status, code) = match e.kind {
                iryo_security::ErrorKind::Forbidden => (StatusCode::BAD_REQUEST, "invalid_scope"),
                iryo_security::ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request"),
                _ => (StatusCode::UNAUTHORIZED, "invalid_client"),
            };
            oauth_error(
                status,
                code,
                &format!("{} / {}", e.message_en, e.message_ja),
            )
        }
    }
}
