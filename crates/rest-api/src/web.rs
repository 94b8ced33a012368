//! Web login and the browser side of security (issue 4): server-rendered Japanese HTML pages,
//! no JavaScript.
//!
//! Pages per tenant (`P` = `` for the tenant `default`, `/t/{tenant}` for the others):
//! - `P/login`: user name + password → the step the account needs: `P/login/password`
//!   (forced change: first login with the one-time password, or expired), `P/login/enrol`
//!   (TOTP enrolment: QR code as an inline PNG plus the secret text, confirmed with a code;
//!   the recovery codes are shown once), `P/login/verify` (TOTP or recovery code) → session.
//! - `P/account`: who is logged in; forms for logout (`P/account/logout`), sign-out everywhere
//!   (`P/account/sign-out-everywhere`), break-glass (`P/account/break-glass`); administrators
//!   see unreviewed break-glass grants at `P/account/admin` and review them there.
//! - `[base]/auth/authorize` (SMART standalone launch, authorization code + PKCE S256) with the
//!   consent page, `[base]/auth/token` `grant_type=authorization_code`, and
//!   `POST [base]/auth/break-glass` for bearer-token callers.
//!
//! State between the login steps is a short-lived cookie signed with the server key (so any
//! server sharing the database and key can continue the login). Every POST form carries a
//! CSRF token: before login an HMAC of a random pre-login cookie, during the steps an HMAC of
//! the step cookie, in a session the session's synchronizer token (stored hashed). Refusals
//! are logged (`login-failed`, with the reason and source address).

use crate::auth::{ct_eq, oauth_error, source_ip, Security};
use crate::handlers::Ctx;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use iryo_security::accounts::{Accounts, Actor, LoginStep, LoginTicket};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::authz::Principal;
use iryo_security::session::{derive_csrf_token, verify_csrf, CookieSettings};
use iryo_security::store::{NewAuditEntry, SecurityStore, SessionRecord, UserRecord};
use iryo_security::webauthn::RelyingParty;
use iryo_security::{ErrorKind, SecurityError};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The account service as the server holds it (on the shared security store).
pub type WebAccounts = Accounts<Arc<dyn SecurityStore>>;

/// How long the login steps after the password may take.
const STEP_LIFETIME: Duration = Duration::minutes(10);
/// Largest accepted form body.
const MAX_FORM: usize = 64 * 1024;

/// Routes of the web pages (the FHIR-base parts are routed by the FHIR handler).
pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for p in [
        "/login",
        "/login/{step}",
        "/account",
        "/account/{action}",
        "/t/{tenant}/login",
        "/t/{tenant}/login/{step}",
        "/t/{tenant}/account",
        "/t/{tenant}/account/{action}",
    ] {
        r = r.route(p, any(page));
    }
    r
}

// ---------------------------------------------------------------- HTML

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    html_script(status, title, body, None)
}

/// A page with one inline script (WebAuthn ceremonies), allowed by a per-response CSP nonce.
fn html_script(status: StatusCode, title: &str, body: &str, script: Option<&str>) -> Response {
    let nonce = {
        let mut b = [0u8; 16];
        rand_fill(&mut b);
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let body = match script {
        Some(js) => format!("{body}<script nonce=\"{nonce}\">{js}</script>"),
        None => body.to_string(),
    };
    let doc = format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} - iryo</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}\
         label{{display:block;margin:.6em 0}}input[type=text],input[type=password]{{width:100%}}\
         .err{{color:#b00;font-weight:bold}}.flag{{background:#fee;padding:.5em}}\
         code{{font-size:1.1em}}</style></head><body><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    );
    let mut r = (status, doc).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let csp = format!(
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'{}",
        if script.is_some() {
            format!("; script-src 'nonce-{nonce}'")
        } else {
            String::new()
        }
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn err_p(msg: &str) -> String {
    if msg.is_empty() {
        String::new()
    } else {
        format!("<p class=\"err\" role=\"alert\">{}</p>", esc(msg))
    }
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn with_cookie(mut r: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn status_of(e: &SecurityError) -> StatusCode {
    match e.kind {
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unauthenticated | ErrorKind::Expired | ErrorKind::Replay => {
            StatusCode::UNAUTHORIZED
        }
        ErrorKind::Forbidden | ErrorKind::WrongTenant => StatusCode::FORBIDDEN,
        ErrorKind::Invalid | ErrorKind::WeakPassword | ErrorKind::Conflict => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn internal() -> SecurityError {
    SecurityError::new(ErrorKind::Storage, "内部エラーです", "internal error")
}

/// Runs blocking security-store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecurityError> + Send + 'static,
) -> Result<T, SecurityError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(internal()))
}

// ---------------------------------------------------------------- signing

fn mac(key: &[u8; 32], parts: &[&str]) -> String {
    // the session module's HMAC, keyed per purpose by the first part
    derive_csrf_token(key, &parts.join("\u{0}"))
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    iryo_search::query::split_query(std::str::from_utf8(body).unwrap_or(""))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| iryo_security::session::cookie_value(h, name))
}

/// A relative same-origin path to continue with after login (no open redirect).
fn safe_next(next: &str) -> Option<String> {
    (next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 4096
        && !next.contains('\\')
        && !next.chars().any(char::is_control))
    .then(|| next.to_string())
}

/// Everything but the RFC 3986 unreserved characters is percent-encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// The origin of a base URL (`https://host:8443/t/x/fhir` → `https://host:8443`).
fn origin_of(base: &str) -> String {
    let path = path_of(base);
    base.strip_suffix(path.as_str()).unwrap_or(base).to_string()
}

/// The WebAuthn relying-party id of an origin: its host, without port.
fn rp_id(origin: &str) -> String {
    let host = origin.split("://").nth(1).unwrap_or(origin);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    host.split(':').next().unwrap_or("").to_string()
}

/// The path of a base URL (`http://host/t/x/fhir` → `/t/x/fhir`).
fn path_of(base: &str) -> String {
    match base.splitn(4, '/').nth(3) {
        Some(p) => format!("/{p}"),
        None => String::new(),
    }
}

/// The web pages' path prefix of a tenant.
fn prefix_of(tenant: &str) -> String {
    if tenant == "default" {
        String::new()
    } else {
        format!("/t/{tenant}")
    }
}

// ---------------------------------------------------------------- context

/// One web request to a tenant.
struct Web {
    sec: Arc<Security>,
    acc: Arc<WebAccounts>,
    key: [u8; 32],
    tenant: String,
    prefix: String,
    ip: String,
    cookies: CookieSettings,
    now: DateTime<Utc>,
    /// WebAuthn relying party (host of the origin the browser sees).
    rp: RelyingParty,
}

/// The state between the login steps (signed cookie).
struct Pending {
    user_id: String,
    username: String,
    stage: String,
    next: String,
    raw: String,
}

impl Web {
    fn new(
        sec: &Arc<Security>,
        tenant: &str,
        origin: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Web, Response> {
        let unavailable = || {
            html(
                StatusCode::NOT_FOUND,
                "ウェブログインは利用できません",
                "<p>このサーバーではウェブログインが設定されていません (web login is not configured).</p>",
            )
        };
        let acc = sec.accounts.clone().ok_or_else(unavailable)?;
        let key = acc.config().secret_key.ok_or_else(unavailable)?;
        Ok(Web {
            sec: sec.clone(),
            acc,
            key,
            tenant: tenant.to_string(),
            prefix: prefix_of(tenant),
            ip: source_ip(peer).unwrap_or_else(|| "unknown".into()),
            cookies: CookieSettings {
                secure: sec.secure_cookies,
            },
            now: Utc::now(),
            rp: RelyingParty {
                id: rp_id(origin),
                origin: origin.to_string(),
            },
        })
    }

    fn session_cookie(&self) -> String {
        format!("iryo-session-{}", self.tenant)
    }
    fn pending_cookie(&self) -> String {
        format!("iryo-login-{}", self.tenant)
    }
    fn pre_cookie(&self) -> String {
        format!("iryo-pre-{}", self.tenant)
    }

    /// Logs a refusal of the web layer (CSRF, bad step cookie, SMART errors).
    fn log_refusal(&self, actor: &str, reason: &str, details: Value) {
        let mut e = NewAuditEntry::new(
            self.now,
            &self.tenant,
            actor,
            AuditAction::LoginFailed,
            AuditOutcome::Denied,
        );
        e.source_ip = Some(self.ip.clone());
        let mut d = json!({"reason": reason, "channel": "web"});
        if let (Some(o), Value::Object(extra)) = (d.as_object_mut(), details) {
            o.extend(extra);
        }
        e.details = d;
        self.sec.audit.send(e);
    }

    fn csrf_refused(&self, actor: &str, page: &str) -> Response {
        self.log_refusal(actor, "csrf", json!({"page": page}));
        html(
            StatusCode::FORBIDDEN,
            "不正なリクエスト",
            &format!(
                "<p class=\"err\">不正なリクエストです(CSRFトークンが一致しません)。CSRF token missing or wrong.</p>\
                 <p><a href=\"{}/login\">ログイン画面へ</a></p>",
                esc(&self.prefix)
            ),
        )
    }

    fn pending_value(&self, user: &UserRecord, stage: &str, next: &str) -> String {
        let payload = json!({
            "t": self.tenant, "u": user.user_id, "n": user.username, "s": stage, "x": next,
            "e": (self.now + STEP_LIFETIME).timestamp(),
        });
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
        let sig = mac(&self.key, &["iryo-login-step", &p]);
        format!("{p}.{sig}")
    }

    fn pending(&self, headers: &HeaderMap) -> Option<Pending> {
        let raw = cookie(headers, &self.cookies.name(&self.pending_cookie()))?;
        let (p, sig) = raw.split_once('.')?;
        if !ct_eq(
            mac(&self.key, &["iryo-login-step", p]).as_bytes(),
            sig.as_bytes(),
        ) {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        if s("t") != self.tenant || v.get("e").and_then(Value::as_i64)? <= self.now.timestamp() {
            return None;
        }
        Some(Pending {
            user_id: s("u"),
            username: s("n"),
            stage: s("s"),
            next: s("x"),
            raw: raw.to_string(),
        })
    }

    fn pending_csrf(&self, p: &Pending) -> String {
        mac(&self.key, &["iryo-login-step-csrf", &p.raw])
    }

    /// The logged-in session of this tenant, if valid (refreshes its idle timer).
    async fn session(&self, headers: &HeaderMap) -> Option<(String, SessionRecord, Principal)> {
        let id = cookie(headers, &self.cookies.name(&self.session_cookie()))?.to_string();
        let (acc, tenant, now, id2) = (self.acc.clone(), self.tenant.clone(), self.now, id.clone());
        let (rec, p) = blocking(move || acc.validate_session(&tenant, &id2, now))
            .await
            .ok()?;
        Some((id, rec, p))
    }

    /// Breaks the glass for `p` (checked, stored and logged by [`Accounts::break_glass`]).
    async fn break_glass(
        &self,
        p: &Principal,
        reason: String,
        patient: Option<String>,
        minutes: i64,
    ) -> Result<iryo_security::authz::BreakGlassGrant, SecurityError> {
        let (acc, ip, now, p) = (self.acc.clone(), self.ip.clone(), self.now, p.clone());
        blocking(move || {
            let d = Duration::minutes(minutes);
            acc.break_glass(&p, &reason, patient.as_deref(), d, &ip, now)
        })
        .await
    }

    fn session_csrf(&self, session_id: &str) -> String {
        derive_csrf_token(&self.key, session_id)
    }

    fn login_redirect(&self, next: &str) -> Response {
        redirect(&format!("{}/login?next={}", self.prefix, enc(next)))
    }

    fn clear(&self, base: &str) -> String {
        self.cookies.set(base, "", Duration::zero())
    }
}

// ---------------------------------------------------------------- pages

/// Every web page: `[/t/{tenant}]/login[/step]`, `[/t/{tenant}]/account[/action]`.
async fn page(State(st): State<AppState>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (tenant, rest) = match segs.as_slice() {
        ["t", name, rest @ ..] => (name.to_string(), rest.to_vec()),
        rest => ("default".to_string(), rest.to_vec()),
    };
    let not_found = || {
        html(
            StatusCode::NOT_FOUND,
            "ページがありません",
            "<p>このページはありません (not found).</p>",
        )
    };
    let Some(sec) = st.config.security.clone() else {
        return not_found();
    };
    match st.store.tenant_id(&tenant).await {
        Ok(Some(_)) => {}
        _ => return not_found(),
    }
    let origin = match &st.config.public_base {
        Some(b) => origin_of(&format!("{}/", b.trim_end_matches('/'))),
        None => format!(
            "{}://{}",
            if sec.secure_cookies { "https" } else { "http" },
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost")
        ),
    };
    let web = match Web::new(&sec, &tenant, &origin, peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(body, MAX_FORM).await {
        Ok(b) => b,
        Err(_) => {
            return html(
                StatusCode::PAYLOAD_TOO_LARGE,
                "入力が大きすぎます",
                "<p>送信された内容が大きすぎます (form too large).</p>",
            )
        }
    };
    let form = form_pairs(&body);
    let query = iryo_search::query::split_query(parts.uri.query().unwrap_or(""));
    let h = &parts.headers;
    let r = match (&parts.method, rest.as_slice()) {
        (&Method::GET, ["login"]) => login_form(&web, h, field(&query, "next"), "", StatusCode::OK),
        (&Method::POST, ["login"]) => login_post(&web, h, &form).await,
        (&Method::GET, ["login", stage]) => step_get(&web, h, stage).await,
        (&Method::POST, ["login", stage]) => step_post(&web, h, stage, &form).await,
        (&Method::GET, ["account"]) => account(&web, h, "").await,
        (&Method::POST, ["account", action]) => account_post(&web, h, action, &form).await,
        (&Method::GET, ["account", "admin"]) => admin(&web, h, "").await,
        (&Method::GET, ["account", "passkey"]) => passkey_page(&web, h, "").await,
        _ => return not_found(),
    };
    r
}

fn login_form(
    web: &Web,
    headers: &HeaderMap,
    next: &str,
    msg: &str,
    status: StatusCode,
) -> Response {
    let pre_name = web.cookies.name(&web.pre_cookie());
    let (nonce, fresh) = match cookie(headers, &pre_name) {
        Some(n) if n.len() <= 64 => (n.to_string(), false),
        _ => {
            let mut b = [0u8; 24];
            rand_fill(&mut b);
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
                true,
            )
        }
    };
    let csrf = mac(&web.key, &["iryo-pre-login", &web.tenant, &nonce]);
    let body = format!(
        "{}<form method=\"post\" action=\"{}/login\">{}{}\
         <label>利用者名 <input type=\"text\" name=\"username\" autocomplete=\"username\" required></label>\
         <label>パスワード <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">ログイン</button></form>\
         <p><small>医療機関: {}</small></p>",
        err_p(msg),
        esc(&web.prefix),
        hidden("csrf", &csrf),
        hidden("next", next),
        esc(&web.tenant)
    );
    let r = html(status, "ログイン", &body);
    if fresh {
        with_cookie(
            r,
            web.cookies
                .set(&web.pre_cookie(), &nonce, Duration::hours(12)),
        )
    } else {
        r
    }
}

fn rand_fill(b: &mut [u8]) {
    // uuid v4 uses the OS CSPRNG (getrandom); no extra dependency needed
    for chunk in b.chunks_mut(16) {
        let u = uuid::Uuid::new_v4().into_bytes();
        chunk.copy_from_slice(&u[..chunk.len()]);
    }
}

async fn login_post(web: &Web, headers: &HeaderMap, form: &[(String, String)]) -> Response {
    let next = field(form, "next");
    let username = field(form, "username").to_string();
    let pre = cookie(headers, &web.cookies.name(&web.pre_cookie())).unwrap_or("");
    let expected = mac(&web.key, &["iryo-pre-login", &web.tenant, pre]);
    if pre.is_empty() || !ct_eq(expected.as_bytes(), field(form, "csrf").as_bytes()) {
        return web.csrf_refused(&username, "login");
    }
    let (acc, tenant, ip, now) = (web.acc.clone(), web.tenant.clone(), web.ip.clone(), web.now);
    let pw = field(form, "password").to_string();
    let u2 = username.clone();
    match blocking(move || acc.login_password(&tenant, &u2, &pw, &ip, now)).await {
        Ok(l) => advance(web, headers, &l.user, l.step, l.ticket, next).await,
        Err(e) => login_form(web, headers, next, &e.message_ja, status_of(&e)),
    }
}

/// After a successful step: the next page, or the session when all steps are done.
async fn advance(
    web: &Web,
    headers: &HeaderMap,
    user: &UserRecord,
    step: LoginStep,
    ticket: Option<LoginTicket>,
    next: &str,
) -> Response {
    let stage = match step {
        LoginStep::ChangePassword => "password",
        LoginStep::EnrolSecondFactor => "enrol",
        LoginStep::SecondFactor => "verify",
        LoginStep::Complete => {
            return match ticket {
                Some(t) => start_session(web, headers, t, next, None).await,
                None => html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "エラー",
                    "<p>ログイン手続きが完了していません (login steps not completed).</p>",
                ),
            }
        }
    };
    let v = web.pending_value(user, stage, next);
    with_cookie(
        redirect(&format!("{}/login/{stage}", web.prefix)),
        web.cookies.set(&web.pending_cookie(), &v, STEP_LIFETIME),
    )
}

/// Starts the session: a fresh id (any id presented before is deleted), the cookie, and
/// either a redirect to `next` or, after TOTP enrolment, the page showing the recovery codes.
async fn start_session(
    web: &Web,
    headers: &HeaderMap,
    ticket: LoginTicket,
    next: &str,
    recovery_codes: Option<Vec<String>>,
) -> Response {
    let prev = cookie(headers, &web.cookies.name(&web.session_cookie())).map(str::to_string);
    let (acc, ip, now) = (web.acc.clone(), web.ip.clone(), web.now);
    let s = match blocking(move || acc.start_session(ticket, prev.as_deref(), &ip, now)).await {
        Ok(s) => s,
        Err(e) => return login_form(web, headers, "", &e.message_ja, status_of(&e)),
    };
    let next = safe_next(next).unwrap_or_else(|| format!("{}/account", web.prefix));
    let r = match recovery_codes {
        None => redirect(&next),
        Some(codes) => {
            let list: String = codes
                .iter()
                .map(|c| format!("<li><code>{}</code></li>", esc(c)))
                .collect();
            html(
                StatusCode::OK,
                "リカバリーコード",
                &format!(
                    "<p>二要素認証を設定しました。認証アプリが使えないときのためのリカバリーコードです。\
                     <strong>この画面でしか表示されません。</strong>安全な場所に保管してください(各コードは1回だけ使えます)。</p>\
                     <ul>{list}</ul><p><a href=\"{}\">続ける</a></p>",
                    esc(&next)
                ),
            )
        }
    };
    let policy = web.acc.config().session;
    let r = with_cookie(
        r,
        web.cookies
            .set(&web.session_cookie(), &s.id, policy.absolute_timeout),
    );
    with_cookie(r, web.clear(&web.pending_cookie()))
}

fn step_expired(web: &Web) -> Response {
    web.log_refusal(
        "anonymous",
        "login step cookie missing, invalid or expired",
        json!({}),
    );
    html(
        StatusCode::UNAUTHORIZED,
        "もう一度ログインしてください",
        &format!(
            "<p class=\"err\">ログイン手続きの有効期限が切れたか、正しくありません。</p>\
             <p><a href=\"{}/login\">ログイン画面へ</a></p>",
            esc(&web.prefix)
        ),
    )
}

fn password_page(web: &Web, p: &Pending, msg: &str, status: StatusCode) -> Response {
    html(
        status,
        "パスワードの変更",
        &format!(
            "<p>初回ログインまたは有効期限切れのため、パスワードを変更してください。\
             13文字以上、または英字・数字・記号を含む8文字以上にしてください。</p>{}\
             <form method=\"post\" action=\"{}/login/password\">{}\
             <label>現在のパスワード <input type=\"password\" name=\"current\" autocomplete=\"current-password\" required></label>\
             <label>新しいパスワード <input type=\"password\" name=\"new\" autocomplete=\"new-password\" required></label>\
             <label>新しいパスワード(確認) <input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" required></label>\
             <button type=\"submit\">変更する</button></form>",
            err_p(msg),
            esc(&web.prefix),
            hidden("csrf", &web.pending_csrf(p))
        ),
    )
}

fn code_form(web: &Web, p: &Pending, stage: &str, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}/login/{stage}\">{}\
         <label>{label} <input type=\"text\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label>\
         <button type=\"submit\">確認</button></form>",
        esc(&web.prefix),
        hidden("csrf", &web.pending_csrf(p))
    )
}

fn verify_page(web: &Web, p: &Pending, msg: &str, status: StatusCode) -> Response {
    verify_page_with(web, p, msg, status, None)
}

/// The second-factor page; with `passkeys` = (challenge, credential ids) also the passkey
/// button (one inline script calls `navigator.credentials.get`).
fn verify_page_with(
    web: &Web,
    p: &Pending,
    msg: &str,
    status: StatusCode,
    passkeys: Option<(String, Vec<String>)>,
) -> Response {
    let mut body = format!(
        "<p>認証アプリに表示されている6桁の確認コード、またはリカバリーコード(xxxx-xxxx-xxxx-xxxx)を入力してください。</p>{}{}",
        err_p(msg),
        code_form(web, p, "verify", "確認コード")
    );
    let Some((challenge, ids)) = passkeys else {
        return html(status, "二要素認証", &body);
    };
    body.push_str(&format!(
        "<h2>パスキー</h2><form method=\"post\" action=\"{}/login/passkey\">{}{}{}{}{}\
         <button type=\"submit\" id=\"pk\" data-challenge=\"{}\" data-rp=\"{}\" data-ids=\"{}\">パスキーでログイン</button>\
         <p id=\"pkerr\" class=\"err\"></p></form>",
        esc(&web.prefix),
        hidden("csrf", &web.pending_csrf(p)),
        hidden("credential_id", ""),
        hidden("client_data", ""),
        hidden("authenticator_data", ""),
        hidden("signature", ""),
        esc(&challenge),
        esc(&web.rp.id),
        esc(&ids.join(","))
    ));
    html_script(status, "二要素認証", &body, Some(PASSKEY_GET_JS))
}

const PASSKEY_GET_JS: &str = concat!(
    "const d=s=>Uint8Array.from(atob(s.replace(/-/g,'+').replace(/_/g,'/')),c=>c.charCodeAt(0));",
    "const e=a=>btoa(String.fromCharCode(...new Uint8Array(a))).replace(/\\+/g,'-').replace(/\\//g,'_').replace(/=+$/,'');",
    "const b=document.getElementById('pk'),f=b.form;",
    "b.addEventListener('click',async v=>{v.preventDefault();try{",
    "const c=await navigator.credentials.get({publicKey:{challenge:d(b.dataset.challenge),rpId:b.dataset.rp,",
    "allowCredentials:b.dataset.ids.split(',').map(i=>({type:'public-key',id:d(i)})),userVerification:'preferred',timeout:120000}});",
    "f.credential_id.value=e(c.rawId);f.client_data.value=e(c.response.clientDataJSON);",
    "f.authenticator_data.value=e(c.response.authenticatorData);f.signature.value=e(c.response.signature);f.submit();",
    "}catch(x){document.getElementById('pkerr').textContent='パスキーで確認できませんでした: '+x;}});"
);

const PASSKEY_CREATE_JS: &str = concat!(
    "const d=s=>Uint8Array.from(atob(s.replace(/-/g,'+').replace(/_/g,'/')),c=>c.charCodeAt(0));",
    "const e=a=>btoa(String.fromCharCode(...new Uint8Array(a))).replace(/\\+/g,'-').replace(/\\//g,'_').replace(/=+$/,'');",
    "const b=document.getElementById('pk'),f=b.form;",
    "b.addEventListener('click',async v=>{v.preventDefault();try{",
    "const c=await navigator.credentials.create({publicKey:{challenge:d(b.dataset.challenge),rp:{id:b.dataset.rp,name:'iryo'},",
    "user:{id:d(b.dataset.user),name:b.dataset.name,displayName:b.dataset.display},pubKeyCredParams:[{type:'public-key',alg:-7}],",
    "excludeCredentials:b.dataset.ids?b.dataset.ids.split(',').map(i=>({type:'public-key',id:d(i)})):[],",
    "attestation:'none',authenticatorSelection:{userVerification:'preferred'},timeout:120000}});",
    "f.client_data.value=e(c.response.clientDataJSON);f.attestation.value=e(c.response.attestationObject);f.submit();",
    "}catch(x){document.getElementById('pkerr').textContent='パスキーを登録できませんでした: '+x;}});"
);

async fn step_get(web: &Web, headers: &HeaderMap, stage: &str) -> Response {
    let Some(p) = web.pending(headers).filter(|p| p.stage == stage) else {
        return step_expired(web);
    };
    match stage {
        "password" => password_page(web, &p, "", StatusCode::OK),
        "verify" => {
            let (acc, tenant, uid, now) = (
                web.acc.clone(),
                web.tenant.clone(),
                p.user_id.clone(),
                web.now,
            );
            let passkeys = blocking(move || {
                let ids: Vec<String> = acc
                    .store()
                    .webauthn_credentials(&tenant, &uid)?
                    .into_iter()
                    .map(|c| c.credential.id)
                    .collect();
                if ids.is_empty() {
                    return Ok(None);
                }
                Ok(Some((
                    acc.webauthn_challenge(&tenant, &uid, "login", now)?,
                    ids,
                )))
            })
            .await
            .unwrap_or(None);
            verify_page_with(web, &p, "", StatusCode::OK, passkeys)
        }
        "enrol" => {
            let (acc, tenant, uid) = (web.acc.clone(), web.tenant.clone(), p.user_id.clone());
            match blocking(move || acc.begin_totp_enrolment(&tenant, &uid)).await {
                Ok(e) => html(
                    StatusCode::OK,
                    "二要素認証の設定",
                    &format!(
                        "<p>認証アプリ(Google Authenticator、Microsoft Authenticator など)でQRコードを読み取ってください。</p>\
                         <p><img alt=\"QRコード\" width=\"200\" height=\"200\" src=\"data:image/png;base64,{}\"></p>\
                         <p>読み取れない場合は次のキーを入力してください: <code>{}</code></p>{}",
                        esc(&e.qr_png_base64),
                        esc(&e.secret_base32),
                        code_form(web, &p, "enrol", "表示された6桁の確認コード")
                    ),
                ),
                Err(e) => html(status_of(&e), "エラー", &err_p(&e.message_ja)),
            }
        }
        _ => step_expired(web),
    }
}

async fn step_post(
    web: &Web,
    headers: &HeaderMap,
    stage: &str,
    form: &[(String, String)],
) -> Response {
    // the passkey answers the second-factor step
    let want = if stage == "passkey" { "verify" } else { stage };
    let Some(p) = web.pending(headers).filter(|p| p.stage == want) else {
        return step_expired(web);
    };
    if !ct_eq(
        web.pending_csrf(&p).as_bytes(),
        field(form, "csrf").as_bytes(),
    ) {
        return web.csrf_refused(&p.user_id, stage);
    }
    let (acc, tenant, ip, now) = (web.acc.clone(), web.tenant.clone(), web.ip.clone(), web.now);
    let uid = p.user_id.clone();
    match stage {
        "password" => {
            let (cur, new) = (
                field(form, "current").to_string(),
                field(form, "new").to_string(),
            );
            if new != field(form, "confirm") {
                return password_page(
                    web,
                    &p,
                    "新しいパスワードが確認欄と一致しません",
                    StatusCode::BAD_REQUEST,
                );
            }
            let uname = p.username.clone();
            let r = blocking(move || {
                acc.change_password_from(&tenant, &uid, &cur, &new, Some(&ip), now)?;
                acc.login_password(&tenant, &uname, &new, &ip, now)
            })
            .await;
            match r {
                Ok(l) => advance(web, headers, &l.user, l.step, l.ticket, &p.next).await,
                Err(e) => password_page(web, &p, &e.message_ja, status_of(&e)),
            }
        }
        "enrol" => {
            let code = field(form, "code").trim().to_string();
            match blocking(move || acc.confirm_totp_from(&tenant, &uid, &code, Some(&ip), now))
                .await
            {
                Ok((codes, ticket)) => {
                    start_session(web, headers, ticket, &p.next, Some(codes)).await
                }
                Err(e) => html(
                    status_of(&e),
                    "二要素認証の設定",
                    &format!(
                        "{}{}<p><a href=\"{}/login/enrol\">QRコードを表示し直す</a></p>",
                        err_p(&e.message_ja),
                        code_form(web, &p, "enrol", "表示された6桁の確認コード"),
                        esc(&web.prefix)
                    ),
                ),
            }
        }
        "verify" => {
            let code = field(form, "code").trim().to_string();
            let r = blocking(move || {
                if code.contains('-') {
                    acc.use_recovery_code(&tenant, &uid, &code, &ip, now)
                        .map(|(_, t)| t)
                } else {
                    acc.verify_totp(&tenant, &uid, &code, &ip, now)
                }
            })
            .await;
            match r {
                Ok(t) => start_session(web, headers, t, &p.next, None).await,
                Err(e) => verify_page(web, &p, &e.message_ja, status_of(&e)),
            }
        }
        "passkey" => {
            let rp = web.rp.clone();
            let dec = |k: &str| iryo_security::webauthn::decode_b64url(field(form, k));
            let (cd, ad, sig) = match (
                dec("client_data"),
                dec("authenticator_data"),
                dec("signature"),
            ) {
                (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                _ => {
                    return verify_page(
                        web,
                        &p,
                        "パスキーの応答の形式が正しくありません",
                        StatusCode::BAD_REQUEST,
                    )
                }
            };
            let cid = field(form, "credential_id").to_string();
            let r = blocking(move || {
                acc.verify_webauthn(&tenant, &uid, &rp, &cid, &cd, &ad, &sig, &ip, now)
            })
            .await;
            match r {
                Ok(t) => start_session(web, headers, t, &p.next, None).await,
                Err(e) => verify_page(web, &p, &e.message_ja, status_of(&e)),
            }
        }
        _ => step_expired(web),
    }
}

async fn user_of(web: &Web, p: &Principal) -> Option<UserRecord> {
    let (store, tenant, uid) = (web.sec.store.clone(), web.tenant.clone(), p.subject.clone());
    blocking(move || store.get_user(&tenant, &uid)).await.ok()?
}

async fn account(web: &Web, headers: &HeaderMap, msg: &str) -> Response {
    let Some((id, _, p)) = web.session(headers).await else {
        return web.login_redirect(&format!("{}/account", web.prefix));
    };
    let Some(u) = user_of(web, &p).await else {
        return web.login_redirect(&format!("{}/account", web.prefix));
    };
    let csrf = web.session_csrf(&id);
    let pre = esc(&web.prefix);
    let form = |action: &str, inner: &str, button: &str| {
        format!(
            "<form method=\"post\" action=\"{pre}/account/{action}\">{}{inner}<button type=\"submit\">{button}</button></form>",
            hidden("csrf", &csrf)
        )
    };
    let mut body = format!(
        "{}<p>{} さん({}、利用者名 {}){}</p>",
        err_p(msg),
        esc(&u.display_name),
        esc(u.role.label_ja()),
        esc(&u.username),
        if u.is_admin { "・管理者" } else { "" }
    );
    if let Some(g) = &p.break_glass {
        body.push_str(&format!(
            "<p class=\"flag\">非常時アクセス中: {} まで(理由: {})</p>",
            esc(&g.expires_at.to_rfc3339()),
            esc(&g.reason)
        ));
    }
    if u.is_admin {
        let (store, tenant) = (web.sec.store.clone(), web.tenant.clone());
        let n = blocking(move || store.unreviewed_break_glass(&tenant))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if n > 0 {
            body.push_str(&format!(
                "<p class=\"flag\">未確認の非常時アクセスが {n} 件あります。</p>"
            ));
        }
        body.push_str(&format!(
            "<p><a href=\"{pre}/account/admin\">非常時アクセスの確認(管理者)</a></p>"
        ));
    }
    body.push_str(&format!(
        "<p><a href=\"{pre}/account/passkey\">パスキー(WebAuthn)の登録</a></p>"
    ));
    body.push_str(&form("logout", "", "ログアウト"));
    body.push_str(&form(
        "sign-out-everywhere",
        "",
        "すべての端末からログアウト",
    ));
    if u.role.is_clinical() {
        body.push_str("<h2>非常時アクセス(ブレークグラス)</h2><p>緊急時に限り、通常の権限を超えて診療情報を参照・記録できます。すべての操作は記録され、管理者が確認します。</p>");
        body.push_str(&form(
            "break-glass",
            "<label>理由(必須) <input type=\"text\" name=\"reason\" required minlength=\"5\" maxlength=\"1000\"></label>\
             <label>患者ID(任意) <input type=\"text\" name=\"patient\"></label>\
             <label>時間(分、最大240) <input type=\"text\" name=\"minutes\" value=\"60\"></label>",
            "非常時アクセスを開始",
        ));
    }
    html(StatusCode::OK, "アカウント", &body)
}

async fn account_post(
    web: &Web,
    headers: &HeaderMap,
    action: &str,
    form: &[(String, String)],
) -> Response {
    let Some((id, rec, p)) = web.session(headers).await else {
        return web.login_redirect(&format!("{}/account", web.prefix));
    };
    if verify_csrf(&rec, Some(field(form, "csrf"))).is_err() {
        return web.csrf_refused(&p.subject, action);
    }
    let (acc, tenant, ip, now) = (web.acc.clone(), web.tenant.clone(), web.ip.clone(), web.now);
    let done = |title: &str, text: &str| {
        let r = html(
            StatusCode::OK,
            title,
            &format!(
                "<p>{}</p><p><a href=\"{}/login\">ログイン画面へ</a></p>",
                esc(text),
                esc(&web.prefix)
            ),
        );
        with_cookie(r, web.clear(&web.session_cookie()))
    };
    match action {
        "logout" => {
            let ip2 = ip.clone();
            match blocking(move || acc.logout_from(&tenant, &id, Some(&ip2), now)).await {
                Ok(()) => done("ログアウトしました", "ログアウトしました。"),
                Err(e) => html(status_of(&e), "エラー", &err_p(&e.message_ja)),
            }
        }
        "sign-out-everywhere" => {
            let p2 = p.clone();
            let r = blocking(move || {
                acc.revoke_all_sessions_from(Actor::User(&p2), &tenant, &p2.subject, Some(&ip), now)
            })
            .await;
            match r {
                Ok(n) => done(
                    "すべての端末からログアウトしました",
                    &format!("{n} 件のセッションを終了しました。"),
                ),
                Err(e) => html(status_of(&e), "エラー", &err_p(&e.message_ja)),
            }
        }
        "break-glass" => {
            let reason = field(form, "reason").trim().to_string();
            let patient = Some(field(form, "patient").trim().to_string()).filter(|s| !s.is_empty());
            let minutes: i64 = match field(form, "minutes").trim() {
                "" => 60,
                m => match m.parse() {
                    Ok(v) => v,
                    Err(_) => {
                        return account(web, headers, "時間は分単位の数字で入力してください").await
                    }
                },
            };
            match web.break_glass(&p, reason, patient, minutes).await {
                Ok(g) => html(
                    StatusCode::OK,
                    "非常時アクセスを開始しました",
                    &format!(
                        "<p class=\"flag\">非常時アクセスを {} まで許可しました(ID {})。この操作は管理者に通知され、記録されます。</p>\
                         <p><a href=\"{}/account\">アカウントへ戻る</a></p>",
                        esc(&g.expires_at.to_rfc3339()),
                        esc(&g.id),
                        esc(&web.prefix)
                    ),
                ),
                Err(e) => {
                    let mut r = account(web, headers, &e.message_ja).await;
                    *r.status_mut() = status_of(&e);
                    r
                }
            }
        }
        "passkey" => {
            let dec = |k: &str| iryo_security::webauthn::decode_b64url(field(form, k));
            let (cd, att) = match (dec("client_data"), dec("attestation")) {
                (Ok(a), Ok(b)) => (a, b),
                _ => {
                    return passkey_page(web, headers, "パスキーの応答の形式が正しくありません")
                        .await
                }
            };
            let label = match field(form, "label").trim() {
                "" => "パスキー".to_string(),
                l => l.to_string(),
            };
            let (rp, uid) = (web.rp.clone(), p.subject.clone());
            let r = blocking(move || {
                acc.register_webauthn(&tenant, &uid, &rp, &cd, &att, &label, &ip, now)
            })
            .await;
            match r {
                Ok(rec) => html(
                    StatusCode::OK,
                    "パスキーを登録しました",
                    &format!(
                        "<p>パスキー「{}」を登録しました。次回からログイン時に使えます。</p>\
                         <p><a href=\"{}/account\">アカウントへ戻る</a></p>",
                        esc(&rec.label),
                        esc(&web.prefix)
                    ),
                ),
                Err(e) => {
                    let mut r = passkey_page(web, headers, &e.message_ja).await;
                    *r.status_mut() = status_of(&e);
                    r
                }
            }
        }
        "review" => {
            if !p.is_admin {
                return html(
                    StatusCode::FORBIDDEN,
                    "権限がありません",
                    "<p class=\"err\">管理者のみ確認できます (administrators only).</p>",
                );
            }
            let grant = field(form, "grant_id").to_string();
            let (store, me) = (web.sec.store.clone(), p.subject.clone());
            let g2 = grant.clone();
            let r = blocking(move || store.review_break_glass(&tenant, &g2, &me, now)).await;
            let mut e = NewAuditEntry::new(
                now,
                &web.tenant,
                &p.subject,
                AuditAction::BreakGlass,
                AuditOutcome::Success,
            );
            e.role = p.role.map(|r| r.code().to_string());
            e.source_ip = Some(web.ip.clone());
            e.details = json!({"reviewed": grant});
            match r {
                Ok(true) => {
                    web.sec.audit.send(e);
                    admin(web, headers, "確認済みにしました").await
                }
                Ok(false) => admin(web, headers, "該当する未確認の記録がありません").await,
                Err(err) => html(status_of(&err), "エラー", &err_p(&err.message_ja)),
            }
        }
        _ => html(
            StatusCode::NOT_FOUND,
            "ページがありません",
            "<p>このページはありません (not found).</p>",
        ),
    }
}

/// Passkey registration page of the logged-in user (one inline script calls
/// `navigator.credentials.create`; ES256, attestation `none`).
async fn passkey_page(web: &Web, headers: &HeaderMap, msg: &str) -> Response {
    let Some((id, _, p)) = web.session(headers).await else {
        return web.login_redirect(&format!("{}/account/passkey", web.prefix));
    };
    let Some(u) = user_of(web, &p).await else {
        return web.login_redirect(&format!("{}/account/passkey", web.prefix));
    };
    let (acc, tenant, uid, now) = (
        web.acc.clone(),
        web.tenant.clone(),
        u.user_id.clone(),
        web.now,
    );
    let r = blocking(move || {
        let creds = acc.store().webauthn_credentials(&tenant, &uid)?;
        Ok((
            acc.webauthn_challenge(&tenant, &uid, "register", now)?,
            creds,
        ))
    })
    .await;
    let (challenge, creds) = match r {
        Ok(v) => v,
        Err(e) => return html(status_of(&e), "エラー", &err_p(&e.message_ja)),
    };
    let list: String = creds
        .iter()
        .map(|c| {
            format!(
                "<li>{} ({})</li>",
                esc(&c.label),
                esc(&c.created_at.format("%Y-%m-%d %H:%M UTC").to_string())
            )
        })
        .collect();
    let ids: Vec<&str> = creds.iter().map(|c| c.credential.id.as_str()).collect();
    let body = format!(
        "{}<p>登録済みのパスキー: {} 件</p><ul>{list}</ul>\
         <form method=\"post\" action=\"{}/account/passkey\">{}{}{}\
         <label>名前(例: 診察室のセキュリティキー) <input type=\"text\" name=\"label\" maxlength=\"100\"></label>\
         <button type=\"submit\" id=\"pk\" data-challenge=\"{}\" data-rp=\"{}\" data-user=\"{}\" data-name=\"{}\" data-display=\"{}\" data-ids=\"{}\">パスキーを登録</button>\
         <p id=\"pkerr\" class=\"err\"></p></form><p><a href=\"{}/account\">アカウントへ戻る</a></p>",
        err_p(msg),
        creds.len(),
        esc(&web.prefix),
        hidden("csrf", &web.session_csrf(&id)),
        hidden("client_data", ""),
        hidden("attestation", ""),
        esc(&challenge),
        esc(&web.rp.id),
        esc(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(u.user_id.as_bytes())),
        esc(&u.username),
        esc(&u.display_name),
        esc(&ids.join(",")),
        esc(&web.prefix)
    );
    html_script(
        StatusCode::OK,
        "パスキーの登録",
        &body,
        Some(PASSKEY_CREATE_JS),
    )
}

/// Administrators: unreviewed break-glass grants, each with a review button.
async fn admin(web: &Web, headers: &HeaderMap, msg: &str) -> Response {
    let Some((id, _, p)) = web.session(headers).await else {
        return web.login_redirect(&format!("{}/account/admin", web.prefix));
    };
    if !p.is_admin {
        return html(
            StatusCode::FORBIDDEN,
            "権限がありません",
            "<p class=\"err\">管理者のみ閲覧できます (administrators only).</p>",
        );
    }
    let (store, tenant) = (web.sec.store.clone(), web.tenant.clone());
    let rows = match blocking(move || {
        let grants = store.unreviewed_break_glass(&tenant)?;
        let names = store.list_users(&tenant)?;
        Ok((grants, names))
    })
    .await
    {
        Ok(v) => v,
        Err(e) => return html(status_of(&e), "エラー", &err_p(&e.message_ja)),
    };
    let csrf = web.session_csrf(&id);
    let mut table = String::from(
        "<table><tr><th>利用者</th><th>理由</th><th>患者</th><th>開始</th><th>終了</th><th></th></tr>",
    );
    for g in &rows.0 {
        let who = rows
            .1
            .iter()
            .find(|u| u.user_id == g.user_id)
            .map(|u| format!("{} ({})", u.display_name, u.username))
            .unwrap_or_else(|| g.user_id.clone());
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>\
             <form method=\"post\" action=\"{}/account/review\">{}{}<button type=\"submit\">確認済みにする</button></form></td></tr>",
            esc(&who),
            esc(&g.grant.reason),
            esc(g.grant.patient.as_deref().unwrap_or("(全患者)")),
            esc(&g.grant.granted_at.to_rfc3339()),
            esc(&g.grant.expires_at.to_rfc3339()),
            esc(&web.prefix),
            hidden("csrf", &csrf),
            hidden("grant_id", &g.grant.id)
        ));
    }
    table.push_str("</table>");
    html(
        StatusCode::OK,
        "非常時アクセスの確認",
        &format!(
            "{}<p>未確認の非常時アクセス: {} 件</p>{table}<p><a href=\"{}/account\">アカウントへ戻る</a></p>",
            if msg.is_empty() { String::new() } else { format!("<p>{}</p>", esc(msg)) },
            rows.0.len(),
            esc(&web.prefix)
        ),
    )
}

// ---------------------------------------------------------------- SMART

/// The parameters of an authorization request.
struct AuthzRequest {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    aud: String,
    challenge: String,
}

fn authz_error_redirect(
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: &str,
) -> Response {
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    redirect(&format!(
        "{redirect_uri}{sep}error={}&error_description={}&state={}",
        enc(error),
        enc(description),
        enc(state)
    ))
}

/// `GET|POST [base]/auth/authorize`: SMART standalone launch. Needs a web session of the
/// tenant (otherwise: login and back), shows the consent page (GET) and, when the user
/// allows (POST with the session's CSRF token), redirects with a single-use code.
pub async fn authorize(
    sec: &Arc<Security>,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: &[u8],
    peer: Option<SocketAddr>,
) -> Response {
    let web = match Web::new(sec, &ctx.tenant_name, &origin_of(&ctx.base), peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let form_body;
    let params: &[(String, String)] = if method == Method::POST {
        form_body = form_pairs(body);
        &form_body
    } else {
        query
    };
    let req = AuthzRequest {
        client_id: field(params, "client_id").to_string(),
        redirect_uri: field(params, "redirect_uri").to_string(),
        scope: field(params, "scope").to_string(),
        state: field(params, "state").to_string(),
        aud: field(params, "aud").to_string(),
        challenge: field(params, "code_challenge").to_string(),
    };
    // client and redirect URI first: errors about them must not redirect (RFC 6749 4.1.2.1)
    let Some(client) = sec
        .clients
        .iter()
        .find(|c| c.tenant == web.tenant && c.client_id == req.client_id)
    else {
        web.log_refusal(
            "anonymous",
            "smart authorize: unknown client",
            json!({"client_id": req.client_id}),
        );
        return html(
            StatusCode::BAD_REQUEST,
            "認可エラー",
            "<p class=\"err\">登録されていないクライアントです (unknown client_id).</p>",
        );
    };
    if !client.redirect_uris.iter().any(|u| *u == req.redirect_uri) {
        web.log_refusal(
            "anonymous",
            "smart authorize: redirect_uri not registered",
            json!({"client_id": req.client_id, "redirect_uri": req.redirect_uri}),
        );
        return html(
            StatusCode::BAD_REQUEST,
            "認可エラー",
            "<p class=\"err\">redirect_uri が登録されたものと一致しません (redirect_uri not registered for this client).</p>",
        );
    }
    let refuse = |error: &str, description: &str| {
        web.log_refusal(
            "anonymous",
            &format!("smart authorize: {error}: {description}"),
            json!({"client_id": req.client_id}),
        );
        authz_error_redirect(&req.redirect_uri, error, description, &req.state)
    };
    if field(params, "response_type") != "code" {
        return refuse("unsupported_response_type", "response_type must be code");
    }
    if field(params, "code_challenge_method") != iryo_security::oauth::PKCE_METHOD
        || !iryo_security::oauth::valid_challenge(&req.challenge)
    {
        return refuse(
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        );
    }
    if req.aud.trim_end_matches('/') != ctx.base {
        return refuse("invalid_request", "aud must be this FHIR server's base URL");
    }
    let Ok(requested) = iryo_security::scopes::ScopeSet::parse(&req.scope) else {
        return refuse("invalid_scope", "malformed scope");
    };
    // the user
    let here = {
        let qs: String = params
            .iter()
            .filter(|(k, _)| k != "csrf" && k != "decision")
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        format!("{}/auth/authorize?{qs}", path_of(&ctx.base))
    };
    let Some((sid, rec, p)) = web.session(headers).await else {
        return web.login_redirect(&here);
    };
    let Some(user) = user_of(&web, &p).await else {
        return web.login_redirect(&here);
    };
    let granted = iryo_security::oauth::grantable_scopes(&requested, client, &user);
    if granted.scopes.is_empty() {
        return refuse(
            "invalid_scope",
            "none of the requested scopes can be granted to this user and client",
        );
    }
    if method == Method::GET {
        let list: String = granted
            .scopes
            .iter()
            .map(|s| {
                format!(
                    "<li><code>{}</code> {}</li>",
                    esc(&s.to_string()),
                    esc(&scope_ja(s))
                )
            })
            .collect();
        let keep: String = params.iter().map(|(k, v)| hidden(k, v)).collect();
        let body = format!(
            "<p>アプリ <strong>{}</strong> が、{} さんとして次の権限を求めています。</p><ul>{list}</ul>\
             <form method=\"post\" action=\"{}/auth/authorize\">{keep}{}\
             <button type=\"submit\" name=\"decision\" value=\"allow\">許可する</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">拒否する</button></form>",
            esc(&client.client_id),
            esc(&user.display_name),
            esc(&path_of(&ctx.base)),
            hidden("csrf", &web.session_csrf(&sid))
        );
        return html(StatusCode::OK, "アクセスの許可", &body);
    }
    if verify_csrf(&rec, Some(field(params, "csrf"))).is_err() {
        return web.csrf_refused(&p.subject, "smart-consent");
    }
    if field(params, "decision") != "allow" {
        return refuse("access_denied", "the user denied the request");
    }
    let (store, tenant, now) = (web.sec.store.clone(), web.tenant.clone(), web.now);
    let (cid, ruri, chal, g2, u2) = (
        req.client_id.clone(),
        req.redirect_uri.clone(),
        req.challenge.clone(),
        granted.clone(),
        user.clone(),
    );
    let code = blocking(move || {
        iryo_security::oauth::issue_code(&*store, &tenant, &cid, &ruri, &u2, &g2, &chal, now)
    })
    .await;
    match code {
        Ok(c) => {
            let mut e = NewAuditEntry::new(
                web.now,
                &web.tenant,
                &p.subject,
                AuditAction::Login,
                AuditOutcome::Success,
            );
            e.role = p.role.map(|r| r.code().to_string());
            e.source_ip = Some(web.ip.clone());
            e.details = json!({"channel": "smart-authorize", "client_id": req.client_id,
                "scope": granted.to_string()});
            web.sec.audit.send(e);
            let sep = if req.redirect_uri.contains('?') {
                '&'
            } else {
                '?'
            };
            redirect(&format!(
                "{}{sep}code={}&state={}",
                req.redirect_uri,
                enc(&c.code),
                enc(&req.state)
            ))
        }
        Err(e) => refuse("server_error", &e.message_en),
    }
}

fn scope_ja(s: &iryo_security::scopes::Scope) -> String {
    use iryo_security::scopes::{Scope, ScopeContext};
    match s {
        Scope::Other(o) if o == "launch/patient" => "患者の選択(ご本人)".into(),
        Scope::Other(o) => o.clone(),
        Scope::Resource(r) => {
            let who = match r.context {
                ScopeContext::Patient => "ご本人の",
                ScopeContext::User => "権限の範囲の",
                ScopeContext::System => "",
            };
            let what = r.resource_type.as_deref().unwrap_or("すべての情報");
            let p = &r.permissions;
            let mut ops = Vec::new();
            if p.read {
                ops.push("参照");
            }
            if p.search {
                ops.push("検索");
            }
            if p.create {
                ops.push("作成");
            }
            if p.update {
                ops.push("更新");
            }
            if p.delete {
                ops.push("削除");
            }
            format!("{who}{what}の{}", ops.join("・"))
        }
    }
}

fn token_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// `POST [base]/auth/token` with `grant_type=authorization_code`: public clients prove the
/// code with the PKCE verifier. Refusals (unknown/reused/expired code, wrong verifier, wrong
/// redirect URI, code of another tenant or client) are `invalid_grant` and logged.
pub async fn authorization_code_grant(
    sec: &Security,
    ctx: &Ctx,
    form: &[(String, String)],
    peer: Option<SocketAddr>,
    now: DateTime<Utc>,
) -> Response {
    let tenant = ctx.tenant_name.clone();
    let log = |actor: &str, ok: bool, reason: &str| {
        let d = json!({"channel": "smart-app-launch", "reason": reason,
            "client_id": field(form, "client_id")});
        crate::auth::log_token_attempt(sec, &tenant, actor, ok, d, peer, now);
    };
    let client_id = field(form, "client_id").to_string();
    if !sec
        .clients
        .iter()
        .any(|c| c.tenant == tenant && c.client_id == client_id)
    {
        log("anonymous", false, "unknown client");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client / 登録されていないクライアントです",
        );
    }
    let store = sec.store.clone();
    let (t2, code, ruri, ver) = (
        tenant.clone(),
        field(form, "code").to_string(),
        field(form, "redirect_uri").to_string(),
        field(form, "code_verifier").to_string(),
    );
    let cid = client_id.clone();
    let r = blocking(move || {
        let c = iryo_security::oauth::redeem_code(&*store, &t2, &code, &cid, &ruri, &ver, now)?;
        let u = store.get_user(&t2, &c.user_id)?;
        let grant = store.active_break_glass(&t2, &c.user_id, now)?;
        Ok((c, u, grant))
    })
    .await;
    let (c, user, grant) = match r {
        Ok(v) => v,
        Err(e) => {
            log("anonymous", false, &e.message_en);
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                &format!("{} / {}", e.message_en, e.message_ja),
            );
        }
    };
    let Some(user) = user.filter(|u| u.status == iryo_security::store::AccountStatus::Active)
    else {
        log(&c.user_id, false, "account missing or disabled");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "account disabled / このアカウントは無効です",
        );
    };
    let scopes = match iryo_security::scopes::ScopeSet::parse(&c.scope) {
        Ok(s) => s,
        Err(e) => {
            log(&user.user_id, false, &e.message_en);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &e.message_en);
        }
    };
    let req = iryo_security::token::TokenRequest {
        tenant: tenant.clone(),
        subject: user.user_id.clone(),
        role: Some(user.role),
        is_admin: user.is_admin,
        scopes,
        patient: c.patient.clone(),
        lifetime: None,
    };
    let grant = grant.filter(|_| user.role.is_clinical());
    match sec
        .tokens
        .issue_token_with_break_glass(&req, grant.as_ref(), now)
    {
        Ok(t) => {
            log(&user.user_id, true, "token issued (authorization_code)");
            let mut v = json!({"access_token": t.access_token, "token_type": "Bearer",
                "expires_in": t.expires_in, "scope": t.scope});
            if let (Some(pid), Some(o)) = (&c.patient, v.as_object_mut()) {
                o.insert("patient".into(), json!(pid));
            }
            token_json(v)
        }
        Err(e) => {
            log(&user.user_id, false, &e.message_en);
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &e.message_en)
        }
    }
}

/// `POST [base]/auth/break-glass` with `Authorization: Bearer`: a clinical professional asks
/// for emergency access (`reason`, optional `patient`, `minutes`; JSON or form). Answers the
/// grant and a new access token carrying it (`btg` claim); refusals are OperationOutcomes.
pub async fn break_glass_api(
    sec: &Arc<Security>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
    peer: Option<SocketAddr>,
) -> Response {
    let now = Utc::now();
    let web = match Web::new(sec, &ctx.tenant_name, &origin_of(&ctx.base), peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    let principal = match sec.tokens.verify(bearer, &web.tenant, now) {
        Ok(p) => p,
        Err(e) => {
            web.log_refusal(
                "anonymous",
                &format!("break-glass: {}", e.message_en),
                json!({}),
            );
            return crate::auth::unauthorized(&e.message_ja, &e.message_en).into_response();
        }
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let (reason, patient, minutes) = if json_body {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return crate::FhirError::bad_request(
                    format!("JSON の形式が正しくありません: {e}"),
                    format!("invalid JSON: {e}"),
                )
                .into_response()
            }
        };
        (
            v.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            v.get("patient").and_then(Value::as_str).map(str::to_string),
            v.get("minutes").and_then(Value::as_i64).unwrap_or(60),
        )
    } else {
        let f = form_pairs(body);
        (
            field(&f, "reason").to_string(),
            Some(field(&f, "patient").to_string()).filter(|s| !s.is_empty()),
            field(&f, "minutes").parse().unwrap_or(60),
        )
    };
    let g = match web.break_glass(&principal, reason, patient, minutes).await {
        Ok(g) => g,
        Err(e) => {
            return crate::FhirError::new(status_of(&e), "forbidden", e.message_ja, e.message_en)
                .into_response()
        }
    };
    let req = iryo_security::token::TokenRequest {
        tenant: principal.tenant.clone(),
        subject: principal.subject.clone(),
        role: principal.role,
        is_admin: principal.is_admin,
        scopes: principal.scopes.clone().unwrap_or_default(),
        patient: principal.patient.clone(),
        lifetime: None,
    };
    match sec.tokens.issue_token_with_break_glass(&req, Some(&g), now) {
        Ok(t) => token_json(json!({
            "grant_id": g.id, "reason": g.reason, "patient": g.patient,
            "expires_at": g.expires_at.to_rfc3339(),
            "access_token": t.access_token, "token_type": "Bearer", "expires_in": t.expires_in,
            "scope": t.scope,
        })),
        Err(e) => crate::FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            e.message_ja,
            e.message_en,
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iryo_security::session::hash_secret;

    #[test]
    fn escaping_and_next() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            safe_next("/fhir/auth/authorize?x=1").as_deref(),
            Some("/fhir/auth/authorize?x=1")
        );
        assert_eq!(safe_next("//evil.example/"), None);
        assert_eq!(safe_next("https://evil.example/"), None);
        assert_eq!(safe_next("/\\evil"), None);
    }

    #[test]
    fn hash_of_session_ids_is_not_the_csrf_token() {
        let k = [7u8; 32];
        assert_ne!(derive_csrf_token(&k, "abc"), hash_secret("abc"));
    }
}
