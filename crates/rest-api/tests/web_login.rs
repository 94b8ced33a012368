//! Web login, sessions, TOTP, SMART authorization code + PKCE, break-glass over real HTTP
//! (issue 4), on SQLite and PostgreSQL security stores and two tenants. Browsers are reqwest
//! clients with a cookie store; every refusal is checked in the audit log.

use chrono::{Duration, Utc};
use iryo_rest_api::auth::{AuditSink, Security, TOKEN_AUDIENCE, TOKEN_ISSUER};
use iryo_rest_api::web::WebAccounts;
use iryo_rest_api::Config;
use iryo_security::accounts::{Accounts, Actor, NewUser, SecurityConfig};
use iryo_security::audit::{AuditAction, AuditOutcome, AuditRecord};
use iryo_security::roles::Role;
use iryo_security::scopes::ScopeSet;
use iryo_security::session::SessionPolicy;
use iryo_security::store::{AuditQuery, PgSecurityStore, SecurityStore, SqliteSecurityStore};
use iryo_security::token::{ClientKeys, ClientRegistration, TokenRequest, TokenService};
use iryo_testkit::TestServer;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: [u8; 32] = [9u8; 32];
const PW0: &str = "Kz8#tq2Lw!9vRm-initial";
const PW1: &str = "Yp4$hn7Qe@3xWd-changed";
const APP: &str = "https://app.example/callback";
const TENANTS: [&str; 2] = ["default", "clinic-b"];

async fn blk<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

use iryo_testkit::PgDb;

struct Env {
    srv: TestServer,
    store: Arc<dyn SecurityStore>,
    audit: AuditSink,
    acc: Arc<WebAccounts>,
    engine: &'static str,
    _pg: Option<PgDb>,
}

fn tokens() -> TokenService {
    TokenService::new(KEY, TOKEN_ISSUER, TOKEN_AUDIENCE)
}

fn clients() -> Vec<ClientRegistration> {
    TENANTS
        .iter()
        .map(|t| ClientRegistration {
            tenant: t.to_string(),
            client_id: "phr-app".into(),
            keys: ClientKeys::Public,
            allowed_scopes: ScopeSet::parse("patient/*.rs user/*.rs launch/patient").unwrap(),
            redirect_uris: vec![APP.into()],
        })
        .collect()
}

fn security(store: Arc<dyn SecurityStore>, session: SessionPolicy) -> (Security, Arc<WebAccounts>) {
    let acc = Arc::new(Accounts::new(
        store.clone(),
        SecurityConfig {
            secret_key: Some(KEY),
            session,
            ..Default::default()
        },
    ));
    let sec = Security {
        tokens: tokens(),
        audit: AuditSink::start(store.clone()),
        store,
        static_token: None,
        open_loopback: false,
        clients: clients(),
        accounts: Some(acc.clone()),
        secure_cookies: false,
    };
    (sec, acc)
}

async fn open_store(engine: &str) -> Option<(Arc<dyn SecurityStore>, Option<PgDb>)> {
    if engine == "sqlite" {
        return Some((
            Arc::new(SqliteSecurityStore::open_in_memory().expect("store")),
            None,
        ));
    }
    let db = PgDb::create("iryo_websec").await?;
    let url = db.url.clone();
    let s: Arc<dyn SecurityStore> =
        blk(move || Arc::new(PgSecurityStore::connect(&url).expect("pg store"))).await;
    // the blocking PostgreSQL client must not be dropped on an async thread (the server task
    // holding it is aborted there): keep it; the database is dropped WITH (FORCE) at the end
    std::mem::forget(s.clone());
    Some((s, Some(db)))
}

async fn envs_with(session: SessionPolicy) -> Vec<Env> {
    let mut out = Vec::new();
    for engine in ["sqlite", "postgres"] {
        let Some((store, pg)) = open_store(engine).await else {
            eprintln!(
                "SKIPPED: PostgreSQL security store ({} not set)",
                iryo_testkit::PG_ENV
            );
            continue;
        };
        let (sec, acc) = security(store.clone(), session);
        let audit = sec.audit.clone();
        let cfg = Config {
            security: Some(Arc::new(sec)),
            ..Default::default()
        };
        // the FHIR store follows the security store's engine
        let srv = if engine == "sqlite" {
            TestServer::sqlite_with(cfg).await
        } else {
            match TestServer::postgres_with(cfg).await {
                Some(s) => s,
                None => continue,
            }
        };
        srv.tenant("clinic-b").await;
        out.push(Env {
            srv,
            store,
            audit,
            acc,
            engine,
            _pg: pg,
        });
    }
    out
}

async fn envs() -> Vec<Env> {
    envs_with(SessionPolicy::default()).await
}

fn prefix(tenant: &str) -> String {
    if tenant == "default" {
        String::new()
    } else {
        format!("/t/{tenant}")
    }
}

fn base(tenant: &str) -> String {
    format!("{}/fhir", prefix(tenant))
}

/// A user ready to log in with [`PW1`]; staff get TOTP enrolled (the secret is returned).
struct User {
    username: String,
    user_id: String,
    secret: Option<Vec<u8>>,
}

impl Env {
    #[allow(clippy::too_many_arguments)]
    async fn user(
        &self,
        tenant: &str,
        username: &str,
        role: Role,
        admin: bool,
        patient: Option<&str>,
        ready: bool,
    ) -> User {
        let acc = self.acc.clone();
        let (t, u, p) = (
            tenant.to_string(),
            username.to_string(),
            patient.map(str::to_string),
        );
        blk(move || {
            let now = Utc::now();
            let c = acc
                .add_user(
                    Actor::Host("test"),
                    NewUser {
                        tenant: t.clone(),
                        username: u.clone(),
                        display_name: format!("試験 {u}"),
                        role,
                        is_admin: admin,
                        patient: p,
                        password: Some(PW0.into()),
                        expires_at: None,
                    },
                    now,
                )
                .expect("add user");
            let id = c.user.user_id.clone();
            let mut secret = None;
            if ready {
                acc.change_password(&t, &id, PW0, PW1, now)
                    .expect("change password");
                if role.is_staff() {
                    let e = acc.begin_totp_enrolment(&t, &id).expect("enrol");
                    let code = iryo_security::totp::code_at_step(
                        &e.secret,
                        iryo_security::totp::time_step(now),
                    )
                    .unwrap();
                    acc.confirm_totp(&t, &id, &code, now).expect("confirm");
                    secret = Some(e.secret);
                }
            }
            User {
                username: u,
                user_id: id,
                secret,
            }
        })
        .await
    }

    async fn log_async(&self, tenant: &str) -> Vec<AuditRecord> {
        let (a, s, t) = (self.audit.clone(), self.store.clone(), tenant.to_string());
        blk(move || {
            a.flush();
            s.search_audit(&t, &AuditQuery::default()).expect("audit")
        })
        .await
    }

    fn browser(&self) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        Browser {
            client: reqwest::Client::builder()
                .cookie_provider(jar.clone())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar,
            base: self.srv.base.clone(),
        }
    }
}

/// Whether the log has a refusal whose details contain `needle`.
fn refused(log: &[AuditRecord], needle: &str) -> bool {
    log.iter().any(|r| {
        r.entry.action == AuditAction::LoginFailed
            && r.entry.outcome == AuditOutcome::Denied
            && r.entry.details.to_string().contains(needle)
    })
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    fn csrf(&self) -> String {
        between(&self.text, "name=\"csrf\" value=\"", "\"").expect("csrf field")
    }
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

fn between(s: &str, a: &str, b: &str) -> Option<String> {
    let i = s.find(a)? + a.len();
    let j = s[i..].find(b)? + i;
    Some(s[i..j].to_string())
}

struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    base: String,
}

impl Browser {
    async fn page(&self, rb: reqwest::RequestBuilder) -> Page {
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Page {
            status,
            headers,
            text: r.text().await.unwrap_or_default(),
        }
    }
    async fn get(&self, path: &str) -> Page {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.page(self.client.get(url)).await
    }
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.page(self.client.post(format!("{}{path}", self.base)).form(form))
            .await
    }
    fn set_cookie(&self, cookie: &str) {
        self.jar
            .add_cookie_str(cookie, &self.base.parse::<reqwest::Url>().unwrap());
    }

    /// Password step; returns the response to the login POST.
    async fn password(&self, tenant: &str, username: &str, pw: &str, next: &str) -> Page {
        let p = prefix(tenant);
        let form = self.get(&format!("{p}/login?next={}", urlenc(next))).await;
        assert_eq!(form.status, 200, "{}", form.text);
        self.post(
            &format!("{p}/login"),
            &[
                ("csrf", &form.csrf()),
                ("username", username),
                ("password", pw),
                ("next", next),
            ],
        )
        .await
    }

    /// Full login of a ready user (password, then TOTP at `step_offset` for staff).
    async fn login(&self, tenant: &str, u: &User, step_offset: u64) -> Page {
        let r = self.password(tenant, &u.username, PW1, "").await;
        assert_eq!(r.status, 303, "{}", r.text);
        let Some(secret) = &u.secret else {
            return r;
        };
        let p = prefix(tenant);
        assert_eq!(r.location(), format!("{p}/login/verify"));
        let v = self.get(&r.location()).await;
        assert_eq!(v.status, 200, "{}", v.text);
        let code = iryo_security::totp::code_at_step(
            secret,
            iryo_security::totp::time_step(Utc::now()) + step_offset,
        )
        .unwrap();
        self.post(
            &format!("{p}/login/verify"),
            &[("csrf", &v.csrf()), ("code", &code)],
        )
        .await
    }

    async fn account(&self, tenant: &str) -> Page {
        self.get(&format!("{}/account", prefix(tenant))).await
    }
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32"),
        } as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test]
async fn first_login_password_change_totp_enrolment_session_logout() {
    for env in envs().await {
        for tenant in TENANTS {
            let p = prefix(tenant);
            let u = env
                .user(tenant, "doctor1", Role::Physician, false, None, false)
                .await;
            let b = env.browser();
            // one-time password → forced change
            let r = b.password(tenant, "doctor1", PW0, "").await;
            assert_eq!(r.status, 303, "{} {}", env.engine, r.text);
            assert_eq!(r.location(), format!("{p}/login/password"));
            let cp = b.get(&r.location()).await;
            assert_eq!(cp.status, 200);
            assert!(cp.text.contains("パスワードの変更"));
            // weak new password refused with a Japanese reason
            let weak = b
                .post(
                    &format!("{p}/login/password"),
                    &[
                        ("csrf", &cp.csrf()),
                        ("current", PW0),
                        ("new", "password"),
                        ("confirm", "password"),
                    ],
                )
                .await;
            assert_eq!(weak.status, 400, "{}", weak.text);
            assert!(weak.text.contains("class=\"err\""));
            let r = b
                .post(
                    &format!("{p}/login/password"),
                    &[
                        ("csrf", &cp.csrf()),
                        ("current", PW0),
                        ("new", PW1),
                        ("confirm", PW1),
                    ],
                )
                .await;
            assert_eq!(r.status, 303, "{}", r.text);
            assert_eq!(r.location(), format!("{p}/login/enrol"));
            // TOTP enrolment: QR code inline, secret as text
            let en = b.get(&r.location()).await;
            assert_eq!(en.status, 200);
            assert!(en.text.contains("src=\"data:image/png;base64,"));
            let secret = base32_decode(
                &between(&en.text, "入力してください: <code>", "</code>").expect("secret"),
            );
            // a wrong code is refused, the right one enrols
            let bad = b
                .post(
                    &format!("{p}/login/enrol"),
                    &[("csrf", &en.csrf()), ("code", "000000x")],
                )
                .await;
            assert_ne!(bad.status, 200);
            let code = iryo_security::totp::code_at_step(
                &secret,
                iryo_security::totp::time_step(Utc::now()),
            )
            .unwrap();
            let done = b
                .post(
                    &format!("{p}/login/enrol"),
                    &[("csrf", &en.csrf()), ("code", &code)],
                )
                .await;
            assert_eq!(done.status, 200, "{}", done.text);
            assert_eq!(
                done.text.matches("<li><code>").count(),
                10,
                "recovery codes shown"
            );
            let cookies = done.set_cookies().join("\n");
            let sc = format!("iryo-session-{tenant}=");
            assert!(cookies.contains(&sc), "{cookies}");
            let line = done
                .set_cookies()
                .into_iter()
                .find(|c| c.starts_with(&sc))
                .unwrap();
            for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
                assert!(line.contains(attr), "{line}");
            }
            assert!(!line.contains("Secure"), "no TLS in this test: {line}");
            // the session works in its tenant only
            let acct = b.account(tenant).await;
            assert_eq!(acct.status, 200, "{}", acct.text);
            assert!(acct.text.contains("試験 doctor1"));
            let other = if tenant == "default" {
                "clinic-b"
            } else {
                "default"
            };
            let o = b.account(other).await;
            assert_eq!(o.status, 303, "session of {tenant} refused in {other}");
            assert!(o.location().contains("/login?next="));
            // CSRF: without and with a wrong token → 403 and logged
            let no = b.post(&format!("{p}/account/logout"), &[]).await;
            assert_eq!(no.status, 403);
            let wrong = b
                .post(&format!("{p}/account/logout"), &[("csrf", "forged-token")])
                .await;
            assert_eq!(wrong.status, 403);
            assert!(wrong.text.contains("CSRF"));
            // the session survived the forged requests; logout with the token
            let acct = b.account(tenant).await;
            assert_eq!(acct.status, 200);
            let out = b
                .post(&format!("{p}/account/logout"), &[("csrf", &acct.csrf())])
                .await;
            assert_eq!(out.status, 200, "{}", out.text);
            assert!(out.text.contains("ログアウトしました"));
            assert_eq!(b.account(tenant).await.status, 303);
            // login without a CSRF token on the login form is refused too
            let nocsrf = b
                .post(
                    &format!("{p}/login"),
                    &[("username", "doctor1"), ("password", PW1)],
                )
                .await;
            assert_eq!(nocsrf.status, 403);
            let log = env.log_async(tenant).await;
            assert!(refused(&log, "\"csrf\""), "CSRF refusals logged");
            let logins: Vec<_> = log
                .iter()
                .filter(|r| {
                    r.entry.action == AuditAction::Login
                        && r.entry.outcome == AuditOutcome::Success
                        && r.entry.actor == u.user_id
                })
                .collect();
            assert!(!logins.is_empty());
            assert!(logins
                .iter()
                .all(|r| r.entry.source_ip.as_deref() == Some("127.0.0.1")));
            assert!(log.iter().any(|r| r.entry.action == AuditAction::Logout
                && r.entry.actor == u.user_id
                && r.entry.source_ip.as_deref() == Some("127.0.0.1")));
            for action in [AuditAction::TotpEnrol, AuditAction::PasswordChange] {
                assert!(log.iter().any(|r| r.entry.action == action
                    && r.entry.actor == u.user_id
                    && r.entry.source_ip.as_deref() == Some("127.0.0.1")));
            }
        }
    }
}

#[tokio::test]
async fn session_fixation_recovery_codes_and_sign_out_everywhere() {
    for env in envs().await {
        for tenant in TENANTS {
            let p = prefix(tenant);
            let u = env
                .user(tenant, "nurse1", Role::Nurse, false, None, true)
                .await;
            let b = env.browser();
            // an attacker-chosen id planted before login is not accepted after
            b.set_cookie(&format!("iryo-session-{tenant}=attacker-chosen-id; Path=/"));
            let r = b.login(tenant, &u, 1).await;
            assert_eq!(r.status, 303, "{}", r.text);
            assert_eq!(r.location(), format!("{p}/account"));
            let set = r.set_cookies().join("\n");
            assert!(!set.contains("attacker-chosen-id"));
            let first_id = between(&set, &format!("iryo-session-{tenant}="), ";").unwrap();
            assert_eq!(b.account(tenant).await.status, 200);
            let attacker = env.browser();
            attacker.set_cookie(&format!("iryo-session-{tenant}=attacker-chosen-id; Path=/"));
            assert_eq!(attacker.account(tenant).await.status, 303);
            // logging in again in the same browser replaces (and deletes) the old id
            let r = b.password(tenant, &u.username, PW1, "").await;
            let v = b.get(&r.location()).await;
            let recovery = {
                let acc = env.acc.clone();
                let (t, id) = (tenant.to_string(), u.user_id.clone());
                // fresh recovery codes (the enrolment's were not kept by the helper)
                blk(move || {
                    let store = acc.store();
                    let (codes, hashes) = iryo_security::totp::generate_recovery_codes();
                    store
                        .replace_recovery_codes(&t, &id, &hashes, Utc::now())
                        .unwrap();
                    codes
                })
                .await
            };
            let r2 = b
                .post(
                    &format!("{p}/login/verify"),
                    &[("csrf", &v.csrf()), ("code", &recovery[0])],
                )
                .await;
            assert_eq!(r2.status, 303, "{}", r2.text);
            let second_id = between(
                &r2.set_cookies().join("\n"),
                &format!("iryo-session-{tenant}="),
                ";",
            )
            .unwrap();
            assert_ne!(first_id, second_id);
            let old = env.browser();
            old.set_cookie(&format!("iryo-session-{tenant}={first_id}; Path=/"));
            assert_eq!(old.account(tenant).await.status, 303, "old id deleted");
            // a used recovery code is refused
            let c = env.browser();
            let r = c.password(tenant, &u.username, PW1, "").await;
            let v = c.get(&r.location()).await;
            let again = c
                .post(
                    &format!("{p}/login/verify"),
                    &[("csrf", &v.csrf()), ("code", &recovery[0])],
                )
                .await;
            assert_eq!(again.status, 401, "{}", again.text);
            // a second browser with the next recovery code, then sign out everywhere
            let ok = c
                .post(
                    &format!("{p}/login/verify"),
                    &[("csrf", &v.csrf()), ("code", &recovery[1])],
                )
                .await;
            assert_eq!(ok.status, 303, "{}", ok.text);
            assert_eq!(c.account(tenant).await.status, 200);
            let acct = b.account(tenant).await;
            assert_eq!(acct.status, 200);
            let out = b
                .post(
                    &format!("{p}/account/sign-out-everywhere"),
                    &[("csrf", &acct.csrf())],
                )
                .await;
            assert_eq!(out.status, 200, "{}", out.text);
            assert_eq!(b.account(tenant).await.status, 303);
            assert_eq!(
                c.account(tenant).await.status,
                303,
                "other browser signed out"
            );
            let log = env.log_async(tenant).await;
            assert!(log
                .iter()
                .any(|r| r.entry.action == AuditAction::SessionRevoke
                    && r.entry.source_ip.as_deref() == Some("127.0.0.1")));
            assert!(log
                .iter()
                .any(|r| r.entry.action == AuditAction::LoginFailed && r.entry.actor == u.user_id));
        }
    }
}

#[tokio::test]
async fn idle_and_absolute_timeouts() {
    let policy = SessionPolicy {
        idle_timeout: Duration::seconds(3),
        absolute_timeout: Duration::seconds(5),
    };
    for env in envs_with(policy).await {
        let tenant = "clinic-b";
        let u = env
            .user(
                tenant,
                "patient1",
                Role::Patient,
                false,
                Some("pat-1"),
                true,
            )
            .await;
        // idle
        let b = env.browser();
        assert_eq!(b.login(tenant, &u, 0).await.status, 303);
        assert_eq!(b.account(tenant).await.status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(4200)).await;
        assert_eq!(b.account(tenant).await.status, 303, "idle timeout");
        // absolute: active every second (never idle for 3 s), still ended after 5 s; the
        // cookie is sent without Max-Age, so that the server, not the client, ends it
        let b = env.browser();
        let r = b.login(tenant, &u, 0).await;
        assert_eq!(r.status, 303);
        let id = between(
            &r.set_cookies().join("\n"),
            &format!("iryo-session-{tenant}="),
            ";",
        )
        .unwrap();
        let c = env.browser();
        c.set_cookie(&format!("iryo-session-{tenant}={id}; Path=/"));
        let start = std::time::Instant::now();
        let mut last = 0;
        while start.elapsed() < std::time::Duration::from_millis(6200) {
            let early = start.elapsed() < std::time::Duration::from_millis(3900);
            last = c.account(tenant).await.status;
            if early {
                assert_eq!(last, 200, "active session before the absolute timeout");
            }
            tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        }
        assert_eq!(last, 303, "absolute timeout while active");
    }
}

#[tokio::test]
async fn brute_force_lockout_and_rate_limit() {
    for env in envs().await {
        for tenant in TENANTS {
            let u = env
                .user(
                    tenant,
                    "patient2",
                    Role::Patient,
                    false,
                    Some("pat-2"),
                    true,
                )
                .await;
            let b = env.browser();
            for _ in 0..5 {
                let r = b
                    .password(tenant, &u.username, "wrong-password-1!", "")
                    .await;
                assert_eq!(r.status, 401);
                assert!(r
                    .text
                    .contains("利用者名またはパスワードが正しくありません"));
            }
            // locked: even the right password is refused for now
            let r = b.password(tenant, &u.username, PW1, "").await;
            assert_eq!(r.status, 429, "{}", r.text);
            // unknown users get the same answer as wrong passwords
            let r = b.password(tenant, "nobody-here", "whatever-Pw1!", "").await;
            assert_eq!(r.status, 401);
            // more attempts hit the per-account rate limit
            let mut last = 0;
            for _ in 0..6 {
                last = b.password(tenant, &u.username, PW1, "").await.status;
            }
            assert_eq!(last, 429);
            let log = env.log_async(tenant).await;
            let reasons: Vec<String> = log
                .iter()
                .filter(|r| r.entry.action == AuditAction::LoginFailed)
                .map(|r| r.entry.details["reason"].as_str().unwrap_or("").to_string())
                .collect();
            assert_eq!(reasons.iter().filter(|r| *r == "wrong-password").count(), 5);
            assert!(reasons.iter().any(|r| r == "locked"));
            assert!(reasons.iter().any(|r| r == "rate-limited"));
            assert!(reasons.iter().any(|r| r == "unknown-user"));
            assert!(log
                .iter()
                .filter(|r| r.entry.action == AuditAction::LoginFailed)
                .all(|r| r.entry.source_ip.as_deref() == Some("127.0.0.1")));
        }
    }
}

fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = iryo_security::oauth::pkce_challenge(&verifier);
    (verifier, challenge)
}

fn authorize_url(env: &Env, tenant: &str, challenge: &str, redirect: &str) -> String {
    format!(
        "{}/auth/authorize?response_type=code&client_id=phr-app&redirect_uri={}&scope={}&state=xyz&aud={}&code_challenge={challenge}&code_challenge_method=S256",
        base(tenant),
        urlenc(redirect),
        urlenc("patient/*.rs launch/patient openid user/*.cruds system/*.rs"),
        urlenc(&format!("{}{}", env.srv.base, base(tenant)))
    )
}

/// Consent and code for a logged-in browser.
async fn code_for(b: &Browser, env: &Env, tenant: &str, challenge: &str) -> String {
    let consent = b.get(&authorize_url(env, tenant, challenge, APP)).await;
    assert_eq!(consent.status, 200, "{}", consent.text);
    let mut form: Vec<(String, String)> = Vec::new();
    let mut rest = consent.text.as_str();
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + 27..];
        let name = rest[..rest.find('"').unwrap()].to_string();
        let v = between(rest, "value=\"", "\"")
            .unwrap()
            .replace("&amp;", "&")
            .replace("&#39;", "'")
            .replace("&quot;", "\"");
        form.push((name, v));
    }
    form.push(("decision".into(), "allow".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = b
        .post(&format!("{}/auth/authorize", base(tenant)), &pairs)
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let loc = r.location();
    assert!(loc.starts_with(&format!("{APP}?code=")), "{loc}");
    assert!(loc.ends_with("&state=xyz"));
    between(&loc, "code=", "&").unwrap()
}

async fn token(
    env: &Env,
    tenant: &str,
    code: &str,
    verifier: &str,
    redirect: &str,
) -> (u16, Value) {
    let (s, _, v) = env
        .srv
        .request(
            "POST",
            &format!("{}/auth/token", base(tenant)),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!(
                "grant_type=authorization_code&code={code}&redirect_uri={}&client_id=phr-app&code_verifier={verifier}",
                urlenc(redirect)
            )
            .into_bytes(),
        )
        .await;
    (s, v)
}

fn staff_token(tenant: &str, role: Role, subject: &str) -> String {
    tokens()
        .issue_token(
            &TokenRequest {
                tenant: tenant.into(),
                subject: subject.into(),
                role: Some(role),
                is_admin: false,
                scopes: ScopeSet::parse("user/*.cruds").unwrap(),
                patient: None,
                lifetime: None,
            },
            Utc::now(),
        )
        .unwrap()
        .access_token
}

#[tokio::test]
async fn smart_standalone_launch_authorization_code_pkce() {
    for env in envs().await {
        for tenant in TENANTS {
            let bt = base(tenant);
            // discovery
            let (s, _, conf) = env
                .srv
                .get(&format!("{bt}/.well-known/smart-configuration"))
                .await;
            assert_eq!(s, 200);
            assert!(conf["authorization_endpoint"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{bt}/auth/authorize")));
            assert_eq!(conf["code_challenge_methods_supported"], json!(["S256"]));
            let supported = conf["scopes_supported"].as_array().unwrap();
            assert!(
                !supported.contains(&json!("openid")),
                "OpenID Connect is not offered"
            );
            for c in [
                "launch-standalone",
                "client-public",
                "context-standalone-patient",
                "permission-v2",
            ] {
                assert!(
                    conf["capabilities"].as_array().unwrap().contains(&json!(c)),
                    "{c}"
                );
            }
            // the patient's record, written by a physician
            let doc = staff_token(tenant, Role::Physician, "dr-x");
            let pid = format!("pat-{tenant}");
            let (s, _, _) = env
                .srv
                .request(
                    "PUT",
                    &format!("{bt}/Patient/{pid}"),
                    &[
                        ("content-type", "application/fhir+json"),
                        ("authorization", &format!("Bearer {doc}")),
                    ],
                    json!({"resourceType": "Patient", "id": pid, "name": [{"family": "山田"}]})
                        .to_string()
                        .into_bytes(),
                )
                .await;
            assert!(s == 201 || s == 200, "{s}");
            let u = env
                .user(tenant, "yamada", Role::Patient, false, Some(&pid), true)
                .await;
            let b = env.browser();
            let (verifier, challenge) = pkce();
            // not logged in: to the login page and back
            let r = b.get(&authorize_url(&env, tenant, &challenge, APP)).await;
            assert_eq!(r.status, 303);
            let login = r.location();
            assert!(
                login.starts_with(&format!("{}/login?next=", prefix(tenant))),
                "{login}"
            );
            let next = reqwest::Url::parse(&format!("http://x{login}"))
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "next")
                .unwrap()
                .1
                .to_string();
            let r = b.password(tenant, &u.username, PW1, &next).await;
            assert_eq!(r.status, 303, "{}", r.text);
            assert_eq!(r.location(), next);
            let consent = b.get(&next).await;
            assert_eq!(consent.status, 200, "{}", consent.text);
            assert!(consent.text.contains("patient/*.rs"));
            assert!(consent.text.contains("launch/patient"));
            let listed = between(&consent.text, "<ul>", "</ul>").unwrap();
            assert!(listed.contains("patient/*.rs"));
            assert!(
                !listed.contains("system/"),
                "system scopes are never granted"
            );
            assert!(
                !listed.contains("user/*.cruds"),
                "patient users get patient scopes"
            );
            assert!(!listed.contains("openid"), "no OpenID Connect here");
            let code = code_for(&b, &env, tenant, &challenge).await;
            let (s, t) = token(&env, tenant, &code, &verifier, APP).await;
            assert_eq!(s, 200, "{t}");
            assert_eq!(t["patient"], json!(pid));
            assert_eq!(t["token_type"], "Bearer");
            assert!(t["expires_in"].as_i64().unwrap() > 0);
            let scope = t["scope"].as_str().unwrap();
            assert!(
                scope.contains("patient/*.rs") && scope.contains("launch/patient"),
                "{scope}"
            );
            let at = t["access_token"].as_str().unwrap().to_string();
            let auth = format!("Bearer {at}");
            let (s, _, pat) = env
                .srv
                .get_with(&format!("{bt}/Patient/{pid}"), &[("authorization", &auth)])
                .await;
            assert_eq!(s, 200, "{pat}");
            // reused code
            let (s, e) = token(&env, tenant, &code, &verifier, APP).await;
            assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
            // wrong verifier (the code is spent by the attempt)
            let code = code_for(&b, &env, tenant, &challenge).await;
            let (wrong, _) = pkce();
            let (s, e) = token(&env, tenant, &code, &wrong, APP).await;
            assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
            let (s, _) = token(&env, tenant, &code, &verifier, APP).await;
            assert_eq!(s, 400);
            // wrong redirect_uri at the token endpoint
            let code = code_for(&b, &env, tenant, &challenge).await;
            let (s, e) = token(&env, tenant, &code, &verifier, "https://app.example/other").await;
            assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
            // code of another tenant
            let other = if tenant == "default" {
                "clinic-b"
            } else {
                "default"
            };
            let code = code_for(&b, &env, tenant, &challenge).await;
            let (s, e) = token(&env, other, &code, &verifier, APP).await;
            assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
            // and the code still works in its own tenant (the other tenant did not consume it)
            let (s, _) = token(&env, tenant, &code, &verifier, APP).await;
            assert_eq!(s, 200);
            // unregistered redirect_uri at the authorization endpoint: no redirect
            let r = b
                .get(&authorize_url(
                    &env,
                    tenant,
                    &challenge,
                    "https://evil.example/cb",
                ))
                .await;
            assert_eq!(r.status, 400);
            assert!(r.location().is_empty());
            // plain PKCE refused (redirect with the error)
            let plain = authorize_url(&env, tenant, &challenge, APP).replace("S256", "plain");
            let r = b.get(&plain).await;
            assert_eq!(r.status, 303);
            assert!(r.location().contains("error=invalid_request"));
            // consent POST without the CSRF token
            let r = b
                .post(
                    &format!("{bt}/auth/authorize"),
                    &[
                        ("response_type", "code"),
                        ("client_id", "phr-app"),
                        ("redirect_uri", APP),
                        ("scope", "patient/*.rs"),
                        ("state", "s"),
                        ("aud", &format!("{}{bt}", env.srv.base)),
                        ("code_challenge", &challenge),
                        ("code_challenge_method", "S256"),
                        ("decision", "allow"),
                    ],
                )
                .await;
            assert_eq!(r.status, 403);
            let log = env.log_async(tenant).await;
            assert!(refused(&log, "already used"), "reuse logged");
            assert!(refused(&log, "code_verifier"), "wrong verifier logged");
            assert!(
                refused(&log, "redirect_uri differs"),
                "wrong redirect logged"
            );
            assert!(refused(&log, "redirect_uri not registered"));
            assert!(refused(&log, "smart-consent"));
            let other_log = env.log_async(other).await;
            assert!(
                refused(&other_log, "unknown or already used"),
                "foreign code logged"
            );
            assert!(log.iter().any(|r| r.entry.action == AuditAction::Login
                && r.entry.details["channel"] == "smart-app-launch"
                && r.entry.outcome == AuditOutcome::Success));
        }
    }
}

#[tokio::test]
async fn break_glass_over_http_and_admin_review() {
    for env in envs().await {
        for tenant in TENANTS {
            let bt = base(tenant);
            let p = prefix(tenant);
            let nurse = staff_token(tenant, Role::Nurse, "nurse-bg");
            let med = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/pat-bg"},
                "medicationCodeableConcept": {"text": "アセトアミノフェン"}});
            let post_med = |tok: String| {
                let body = med.to_string().into_bytes();
                let path = format!("{bt}/MedicationRequest");
                let srv = &env.srv;
                async move {
                    srv.request(
                        "POST",
                        &path,
                        &[
                            ("content-type", "application/fhir+json"),
                            ("authorization", &format!("Bearer {tok}")),
                        ],
                        body,
                    )
                    .await
                    .0
                }
            };
            let doc = staff_token(tenant, Role::Physician, "dr-bg");
            let (s, _, _) = env
                .srv
                .request(
                    "PUT",
                    &format!("{bt}/Patient/pat-bg"),
                    &[
                        ("content-type", "application/fhir+json"),
                        ("authorization", &format!("Bearer {doc}")),
                    ],
                    json!({"resourceType": "Patient", "id": "pat-bg"})
                        .to_string()
                        .into_bytes(),
                )
                .await;
            assert!(s == 200 || s == 201, "{s}");
            assert_eq!(
                post_med(nurse.clone()).await,
                403,
                "nurses do not prescribe"
            );
            let bg = |tok: &str, body: Value| {
                let srv = &env.srv;
                let auth = format!("Bearer {tok}");
                let path = format!("{bt}/auth/break-glass");
                async move {
                    let (s, _, v) = srv
                        .request(
                            "POST",
                            &path,
                            &[
                                ("content-type", "application/json"),
                                ("authorization", &auth),
                            ],
                            body.to_string().into_bytes(),
                        )
                        .await;
                    (s, v)
                }
            };
            // refused: no token, too short a reason, a clerk
            assert_eq!(
                bg("not-a-token", json!({"reason": "心肺停止の患者対応"}))
                    .await
                    .0,
                401
            );
            assert_eq!(bg(&nurse, json!({"reason": "急"})).await.0, 400);
            let clerk = staff_token(tenant, Role::MedicalClerk, "clerk-bg");
            assert_eq!(
                bg(&clerk, json!({"reason": "心肺停止の患者対応"})).await.0,
                403
            );
            let (s, g) = bg(
                &nurse,
                json!({"reason": "心肺停止の患者対応のため", "minutes": 30}),
            )
            .await;
            assert_eq!(s, 200, "{g}");
            assert!(g["grant_id"].as_str().is_some());
            let tok = g["access_token"].as_str().unwrap().to_string();
            assert_eq!(
                post_med(tok).await,
                201,
                "break-glass token allows the emergency write"
            );
            // web: a physician breaks the glass with the form; the admin sees and reviews it
            let dr = env
                .user(tenant, "doctor-bg", Role::Physician, false, None, true)
                .await;
            let b = env.browser();
            assert_eq!(b.login(tenant, &dr, 1).await.status, 303);
            let acct = b.account(tenant).await;
            assert!(acct.text.contains("非常時アクセス"));
            let no_csrf = b
                .post(
                    &format!("{p}/account/break-glass"),
                    &[("reason", "救急搬送の患者対応")],
                )
                .await;
            assert_eq!(no_csrf.status, 403);
            let r = b
                .post(
                    &format!("{p}/account/break-glass"),
                    &[
                        ("csrf", &acct.csrf()),
                        ("reason", "救急搬送の患者対応"),
                        ("patient", "pat-bg"),
                        ("minutes", "20"),
                    ],
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert!(b.account(tenant).await.text.contains("非常時アクセス中"));
            let admin = env
                .user(
                    tenant,
                    "admin-bg",
                    Role::SystemAdministrator,
                    true,
                    None,
                    true,
                )
                .await;
            let a = env.browser();
            assert_eq!(a.login(tenant, &admin, 1).await.status, 303);
            let home = a.account(tenant).await;
            assert!(
                home.text.contains("未確認の非常時アクセスが 2 件"),
                "{}",
                home.text
            );
            let page = a.get(&format!("{p}/account/admin")).await;
            assert_eq!(page.status, 200);
            assert!(page.text.contains("救急搬送の患者対応"));
            assert!(page.text.contains("心肺停止の患者対応のため"));
            // the physician may not open the admin page
            assert_eq!(b.get(&format!("{p}/account/admin")).await.status, 403);
            let grant = between(&page.text, "name=\"grant_id\" value=\"", "\"").unwrap();
            let r = a
                .post(
                    &format!("{p}/account/review"),
                    &[("csrf", &page.csrf()), ("grant_id", &grant)],
                )
                .await;
            assert_eq!(r.status, 200);
            assert!(
                r.text.contains("未確認の非常時アクセス: 1 件"),
                "{}",
                r.text
            );
            let log = env.log_async(tenant).await;
            let bgs: Vec<_> = log
                .iter()
                .filter(|r| r.entry.action == AuditAction::BreakGlass)
                .collect();
            assert!(
                bgs.iter()
                    .filter(|r| r.entry.outcome == AuditOutcome::Success)
                    .count()
                    >= 3
            );
            assert!(bgs.iter().any(|r| r.entry.outcome == AuditOutcome::Denied));
        }
        // tenant isolation of the review queue
        let (s, t) = (env.store.clone(), "default");
        let n = blk(move || s.unreviewed_break_glass(t).unwrap().len()).await;
        assert_eq!(n, 1);
    }
}

fn assertion(jti: &str, aud: &str) -> String {
    let now = Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384),
        &json!({"iss": "lab-system", "sub": "lab-system", "aud": aud, "exp": now + 240, "iat": now, "jti": jti}),
        &jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("fixtures/ec_private.pem")).unwrap(),
    )
    .unwrap()
}

/// Two servers sharing one security store: a client assertion replayed at the other server
/// is refused (the `jti` is recorded in `sec_jti`, not in process memory).
#[tokio::test]
async fn jti_replay_refused_across_servers() {
    for engine in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let (stores, _pg): (Vec<Arc<dyn SecurityStore>>, Option<PgDb>) = if engine == "sqlite" {
            let path = dir.path().join("security.db");
            let v = blk(move || {
                (0..2)
                    .map(|_| {
                        Arc::new(SqliteSecurityStore::open(&path).unwrap())
                            as Arc<dyn SecurityStore>
                    })
                    .collect()
            })
            .await;
            (v, None)
        } else {
            let Some(db) = PgDb::create("iryo_websec").await else {
                continue;
            };
            let url = db.url.clone();
            let v = blk(move || {
                (0..2)
                    .map(|_| {
                        let s = Arc::new(PgSecurityStore::connect(&url).unwrap())
                            as Arc<dyn SecurityStore>;
                        std::mem::forget(s.clone()); // see open_store
                        s
                    })
                    .collect()
            })
            .await;
            (v, Some(db))
        };
        let mut servers = Vec::new();
        for st in stores {
            let (mut sec, _) = security(st, SessionPolicy::default());
            sec.clients.push(ClientRegistration {
                tenant: "default".into(),
                client_id: "lab-system".into(),
                keys: ClientKeys::Pem {
                    algorithm: jsonwebtoken::Algorithm::ES384,
                    pem: include_str!("fixtures/ec_public.pem").into(),
                },
                allowed_scopes: ScopeSet::parse("system/Observation.rs").unwrap(),
                redirect_uris: Vec::new(),
            });
            let cfg = Config {
                security: Some(Arc::new(sec)),
                public_base: Some("https://iryo.example".into()),
                ..Default::default()
            };
            servers.push(TestServer::sqlite_with(cfg).await);
        }
        let a = assertion("shared-jti-1", "https://iryo.example/fhir/auth/token");
        let form = format!("grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}&scope=system%2FObservation.rs");
        async fn post(srv: &TestServer, form: &str) -> u16 {
            let h = [("content-type", "application/x-www-form-urlencoded")];
            srv.request("POST", "/fhir/auth/token", &h, form.as_bytes().to_vec())
                .await
                .0
        }
        assert_eq!(post(&servers[0], &form).await, 200, "{engine}");
        assert_eq!(
            post(&servers[1], &form).await,
            401,
            "{engine}: replay at the other server"
        );
        assert_eq!(
            post(&servers[0], &form).await,
            401,
            "{engine}: replay at the same server"
        );
    }
}

/// A software authenticator: an ES256 key pair, as a security key or passkey holds it.
struct Authenticator {
    key: ring::signature::EcdsaKeyPair,
    id: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

fn b64u(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

impl Authenticator {
    fn new() -> Authenticator {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING as ALG};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
        Authenticator {
            key: EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap(),
            id: uuid::Uuid::new_v4().as_bytes().to_vec(),
            rng,
        }
    }

    fn auth_data(rp_id: &str, flags: u8, count: u32) -> Vec<u8> {
        use sha2::Digest;
        let mut d = sha2::Sha256::digest(rp_id.as_bytes()).to_vec();
        d.push(flags);
        d.extend_from_slice(&count.to_be_bytes());
        d
    }

    /// `navigator.credentials.create`: (clientDataJSON, attestationObject).
    fn create(&self, rp_id: &str, origin: &str, challenge: &str) -> (Vec<u8>, Vec<u8>) {
        use ciborium::Value as V;
        use ring::signature::KeyPair;
        let cd = json!({"type": "webauthn.create", "challenge": challenge, "origin": origin,
            "crossOrigin": false})
        .to_string()
        .into_bytes();
        let pk = self.key.public_key().as_ref();
        let cose = V::Map(vec![
            (V::Integer(1.into()), V::Integer(2.into())),
            (V::Integer(3.into()), V::Integer((-7).into())),
            (V::Integer((-1).into()), V::Integer(1.into())),
            (V::Integer((-2).into()), V::Bytes(pk[1..33].to_vec())),
            (V::Integer((-3).into()), V::Bytes(pk[33..65].to_vec())),
        ]);
        let mut ad = Self::auth_data(rp_id, 0x45, 0);
        ad.extend_from_slice(&[0u8; 16]);
        ad.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        ad.extend_from_slice(&self.id);
        ad.extend_from_slice(&cbor(&cose));
        let att = V::Map(vec![
            (V::Text("fmt".into()), V::Text("none".into())),
            (V::Text("attStmt".into()), V::Map(vec![])),
            (V::Text("authData".into()), V::Bytes(ad)),
        ]);
        (cd, cbor(&att))
    }

    /// `navigator.credentials.get`: (clientDataJSON, authenticatorData, signature).
    fn get(
        &self,
        rp_id: &str,
        origin: &str,
        challenge: &str,
        count: u32,
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use sha2::Digest;
        let cd = json!({"type": "webauthn.get", "challenge": challenge, "origin": origin})
            .to_string()
            .into_bytes();
        let ad = Self::auth_data(rp_id, 0x05, count);
        let mut signed = ad.clone();
        signed.extend_from_slice(&sha2::Sha256::digest(&cd));
        let sig = self.key.sign(&self.rng, &signed).unwrap().as_ref().to_vec();
        (cd, ad, sig)
    }
}

async fn post_passkey(br: &Browser, tenant: &str, f: Vec<(&'static str, String)>) -> Page {
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    br.post(&format!("{}/login/passkey", prefix(tenant)), &f)
        .await
}

fn data_attr(page: &str, name: &str) -> String {
    between(page, &format!("data-{name}=\""), "\"").unwrap_or_default()
}

#[tokio::test]
async fn passkey_registration_and_second_factor() {
    for env in envs().await {
        for tenant in TENANTS {
            let p = prefix(tenant);
            let origin = env.srv.base.clone();
            let rp = "127.0.0.1";
            let u = env
                .user(tenant, "doctor-pk", Role::Physician, false, None, true)
                .await;
            let b = env.browser();
            assert_eq!(b.login(tenant, &u, 1).await.status, 303);
            let reg = b.get(&format!("{p}/account/passkey")).await;
            assert_eq!(reg.status, 200, "{}", reg.text);
            let csp = reg.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(csp.contains("script-src 'nonce-"), "{csp}");
            assert_eq!(data_attr(&reg.text, "rp"), rp);
            let challenge = data_attr(&reg.text, "challenge");
            let auth = Authenticator::new();
            // a response for another origin is refused
            let (cd, att) = auth.create(rp, "https://evil.example", &challenge);
            let bad = b
                .post(
                    &format!("{p}/account/passkey"),
                    &[
                        ("csrf", &reg.csrf()),
                        ("client_data", &b64u(&cd)),
                        ("attestation", &b64u(&att)),
                    ],
                )
                .await;
            assert_eq!(bad.status, 401, "{}", bad.text);
            // the right one registers; its challenge cannot be used again
            let reg = b.get(&format!("{p}/account/passkey")).await;
            let challenge = data_attr(&reg.text, "challenge");
            let (cd, att) = auth.create(rp, &origin, &challenge);
            let form = [
                ("csrf", reg.csrf()),
                ("client_data", b64u(&cd)),
                ("attestation", b64u(&att)),
                ("label", "診察室のキー".to_string()),
            ];
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let ok = b.post(&format!("{p}/account/passkey"), &form).await;
            assert_eq!(ok.status, 200, "{}", ok.text);
            assert!(ok.text.contains("診察室のキー"));
            let again = b.post(&format!("{p}/account/passkey"), &form).await;
            assert_eq!(again.status, 401, "challenge used once: {}", again.text);
            // login with the passkey as second factor
            let c = env.browser();
            let r = c.password(tenant, &u.username, PW1, "").await;
            assert_eq!(r.location(), format!("{p}/login/verify"));
            let v = c.get(&r.location()).await;
            assert_eq!(data_attr(&v.text, "ids"), b64u(&auth.id));
            let (cd, ad, sig) = auth.get(rp, &origin, &data_attr(&v.text, "challenge"), 1);
            let assertion = |csrf: String, cd: &[u8], ad: &[u8], sig: &[u8]| {
                vec![
                    ("csrf", csrf),
                    ("credential_id", b64u(&auth.id)),
                    ("client_data", b64u(cd)),
                    ("authenticator_data", b64u(ad)),
                    ("signature", b64u(sig)),
                ]
            };
            let done = post_passkey(&c, tenant, assertion(v.csrf(), &cd, &ad, &sig)).await;
            assert_eq!(done.status, 303, "{}", done.text);
            assert_eq!(c.account(tenant).await.status, 200);
            // another browser: the replayed assertion, a counter that does not grow and a
            // signature of another key are refused; then a good one
            let d = env.browser();
            let r = d.password(tenant, &u.username, PW1, "").await;
            let v = d.get(&r.location()).await;
            let replay = post_passkey(&d, tenant, assertion(v.csrf(), &cd, &ad, &sig)).await;
            assert_eq!(replay.status, 401, "{}", replay.text);
            let ch = data_attr(&v.text, "challenge");
            let (cd2, ad2, sig2) = auth.get(rp, &origin, &ch, 1);
            let stale = post_passkey(&d, tenant, assertion(v.csrf(), &cd2, &ad2, &sig2)).await;
            assert_eq!(stale.status, 401, "counter must grow: {}", stale.text);
            let v = d.get(&format!("{p}/login/verify")).await;
            let ch = data_attr(&v.text, "challenge");
            let other = Authenticator::new();
            let (cd3, ad3, sig3) = other.get(rp, &origin, &ch, 5);
            let forged = post_passkey(&d, tenant, assertion(v.csrf(), &cd3, &ad3, &sig3)).await;
            assert_eq!(forged.status, 401, "{}", forged.text);
            let v = d.get(&format!("{p}/login/verify")).await;
            let ch = data_attr(&v.text, "challenge");
            let (cd4, ad4, sig4) = auth.get(rp, &origin, &ch, 2);
            let good = post_passkey(&d, tenant, assertion(v.csrf(), &cd4, &ad4, &sig4)).await;
            assert_eq!(good.status, 303, "{}", good.text);
            let log = env.log_async(tenant).await;
            assert!(log.iter().any(|r| r.entry.action == AuditAction::TotpEnrol
                && r.entry.outcome == AuditOutcome::Success
                && r.entry.details["second_factor"] == "webauthn"));
            assert!(refused(&log, "already used"));
            assert!(refused(&log, "counter did not increase"));
            assert!(refused(&log, "signature does not verify"));
            assert!(log.iter().any(|r| r.entry.action == AuditAction::TotpEnrol
                && r.entry.outcome == AuditOutcome::Denied
                && r.entry.details.to_string().contains("origin")));
        }
    }
}
