//! Access tokens and SMART Backend Services client assertions.
//!
//! * Our own access tokens are short-lived JWTs signed with HS256 and a
//!   32-byte server key. Verification pins the algorithm (a token with
//!   `alg=none` or any other algorithm is refused), checks the signature,
//!   `iss`, `aud`, `exp`, `nbf`, `iat` and the tenant.
//! * Backend clients authenticate with a JWT assertion signed RS384 or ES384
//!   (RFC 7523, SMART `client-confidential-asymmetric`), checked against the
//!   client's registered JWKS or PEM public key, with `iss = sub = client_id`,
//!   `aud` = our token endpoint, `exp` at most 5 minutes ahead and a `jti`
//!   that was never seen before.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

use crate::authz::{BreakGlassGrant, Principal};
use crate::error::{ErrorKind, Result, SecurityError};
use crate::roles::Role;
use crate::scopes::{ResourceScope, Scope, ScopeContext, ScopeSet};

/// Default lifetime of an access token.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::minutes(5);
/// Longest lifetime an access token may be issued with.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::hours(1);
/// Tolerated clock skew for `nbf` and `iat`.
pub const CLOCK_SKEW: Duration = Duration::seconds(30);
/// Longest accepted token (guards against oversized headers).
pub const MAX_TOKEN_LEN: usize = 8192;

/// Claims of an iryo access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// Tenant (medical institution).
    pub tenant: String,
    /// Role code; absent for backend systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// Space-separated SMART scopes.
    pub scope: String,
    /// Patient in context (patient users, `patient/` scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Active break-glass grant of the user when the token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btg: Option<BreakGlassGrant>,
}

/// What to put in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub tenant: String,
    pub subject: String,
    pub role: Option<Role>,
    pub is_admin: bool,
    pub scopes: ScopeSet,
    pub patient: Option<String>,
    /// `None` = [`DEFAULT_TOKEN_LIFETIME`].
    pub lifetime: Option<Duration>,
}

/// An issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry (OAuth `expires_in`).
    pub expires_in: i64,
    pub jti: String,
    pub scope: String,
}

/// HS256 signer/verifier of iryo access tokens.
#[derive(Clone)]
pub struct TokenService {
    key: [u8; 32],
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn unauth(ja: &str, en: impl Into<String>) -> SecurityError {
    SecurityError::new(ErrorKind::Unauthenticated, ja, en)
}

fn invalid_token(en: impl Into<String>) -> SecurityError {
    unauth("アクセストークンが無効です", en)
}

impl TokenService {
    /// `key`: the 32-byte server key (see [`crate::backup::read_key_file`]),
    /// `issuer`: our base URL, `audience`: the FHIR base URL.
    pub fn new(key: [u8; 32], issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        TokenService {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Signs a new access token.
    pub fn issue_token(&self, req: &TokenRequest, now: DateTime<Utc>) -> Result<IssuedToken> {
        self.issue_token_with_break_glass(req, None, now)
    }

    /// Signs a new access token carrying the user's active break-glass grant
    /// (claim `btg`), so every server verifying it applies the grant without
    /// a database lookup. The token never outlives the grant.
    pub fn issue_token_with_break_glass(
        &self,
        req: &TokenRequest,
        btg: Option<&BreakGlassGrant>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken> {
        let mut lifetime = req.lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        if let Some(g) = btg {
            lifetime = lifetime.min(g.expires_at - now);
        }
        if lifetime <= Duration::zero() || lifetime > MAX_TOKEN_LIFETIME {
            return Err(SecurityError::invalid(
                "トークンの有効期間は1時間以内にしてください",
                "token lifetime must be positive and at most one hour",
            ));
        }
        if req.tenant.is_empty() || req.subject.is_empty() {
            return Err(SecurityError::invalid(
                "医療機関と利用者の指定が必要です",
                "tenant and subject are required",
            ));
        }
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let jti = hex::encode(jti);
        let exp = now + lifetime;
        let scope = req.scopes.to_string();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: req.subject.clone(),
            aud: self.audience.clone(),
            exp: exp.timestamp(),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: jti.clone(),
            tenant: req.tenant.clone(),
            role: req.role.map(|r| r.code().to_string()),
            admin: req.is_admin,
            scope: scope.clone(),
            patient: req.patient.clone(),
            btg: btg.cloned(),
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .map_err(SecurityError::crypto)?;
        Ok(IssuedToken {
            access_token: token,
            expires_at: exp,
            expires_in: lifetime.num_seconds(),
            jti,
            scope,
        })
    }

    /// Verifies a token presented to `tenant` at `now` and returns its claims.
    pub fn verify_claims(
        &self,
        token: &str,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid_token("token too long"));
        }
        let header = decode_header(token).map_err(|e| invalid_token(format!("bad header: {e}")))?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid_token(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = decode::<AccessClaims>(token, &DecodingKey::from_secret(&self.key), &v)
            .map_err(|e| invalid_token(format!("rejected: {e}")))?;
        let c = data.claims;
        if c.iss != self.issuer {
            return Err(invalid_token("wrong issuer"));
        }
        if c.aud != self.audience {
            return Err(invalid_token("wrong audience"));
        }
        check_times(c.exp, Some(c.nbf), Some(c.iat), now)?;
        if c.tenant != tenant {
            return Err(SecurityError::new(
                ErrorKind::WrongTenant,
                "このアクセストークンは他の医療機関のものです",
                "token issued for another tenant",
            ));
        }
        Ok(c)
    }

    /// Verifies a token and turns it into a [`Principal`] for
    /// [`crate::authz::authorize`].
    pub fn verify(&self, token: &str, tenant: &str, now: DateTime<Utc>) -> Result<Principal> {
        let c = self.verify_claims(token, tenant, now)?;
        let role = c.role.as_deref().map(str::parse::<Role>).transpose()?;
        Ok(Principal {
            tenant: c.tenant,
            subject: c.sub,
            role,
            is_admin: c.admin && role.is_some(),
            scopes: Some(ScopeSet::parse(&c.scope)?),
            patient: c.patient,
            // only clinical staff can hold a grant; authorize checks its times
            break_glass: c.btg.filter(|_| role.is_some_and(Role::is_clinical)),
        })
    }
}

fn check_times(exp: i64, nbf: Option<i64>, iat: Option<i64>, now: DateTime<Utc>) -> Result<()> {
    let t = now.timestamp();
    if exp <= t {
        return Err(SecurityError::new(
            ErrorKind::Expired,
            "アクセストークンの有効期限が切れています",
            "token expired",
        ));
    }
    if nbf.is_some_and(|n| n > t + CLOCK_SKEW.num_seconds()) {
        return Err(invalid_token("token not yet valid (nbf)"));
    }
    if iat.is_some_and(|i| i > t + CLOCK_SKEW.num_seconds()) {
        return Err(invalid_token("token issued in the future (iat)"));
    }
    Ok(())
}

/// Public keys registered for a backend client.
#[derive(Debug, Clone)]
pub enum ClientKeys {
    /// A JWKS (keys selected by `kid`).
    Jwks(JwkSet),
    /// A single PEM public key with its algorithm (RS384 or ES384).
    Pem { algorithm: Algorithm, pem: String },
    /// A public client (SMART App Launch, browser or native app): no secret,
    /// authorization code + PKCE only.
    Public,
}

/// A registered SMART Backend Services client.
#[derive(Debug, Clone)]
pub struct ClientRegistration {
    pub tenant: String,
    pub client_id: String,
    pub keys: ClientKeys,
    /// Scopes this client may be granted (`system/...` for backend services,
    /// `user/`/`patient/` and `launch/patient` for apps).
    pub allowed_scopes: ScopeSet,
    /// Registered redirect URIs (authorization code flow), compared exactly.
    pub redirect_uris: Vec<String>,
}

impl ClientRegistration {
    /// Parses a JWKS document (`{"keys":[...]}`).
    pub fn parse_jwks(json: &str) -> Result<JwkSet> {
        serde_json::from_str(json).map_err(|e| {
            SecurityError::invalid(
                "公開鍵セット(JWKS)の形式が正しくありません",
                format!("invalid JWKS: {e}"),
            )
        })
    }
}

/// Claims of a client assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: serde_json::Value,
    pub exp: i64,
    pub jti: String,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
}

/// Remembers client-assertion ids until they expire, to refuse replays.
pub trait JtiRegistry {
    /// Records `jti` for (`tenant`, `client_id`). Returns `Ok(false)` when it
    /// was already recorded.
    fn record_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool>;
}

/// Every security store records `jti`s in `sec_jti`, so servers sharing a
/// PostgreSQL database refuse a replay seen by any of them.
impl<T: crate::store::SecurityStore + ?Sized> JtiRegistry for T {
    fn record_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        self.record_assertion_jti(tenant, client_id, jti, expires_at)
    }
}

/// In-memory [`JtiRegistry`] (single process).
#[derive(Debug, Default)]
pub struct MemoryJtiRegistry {
    seen: Mutex<HashMap<(String, String, String), DateTime<Utc>>>,
}

impl JtiRegistry for MemoryJtiRegistry {
    fn record_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Ids expiring well before this one belong to assertions that `exp`
        // refuses anyway.
        m.retain(|_, exp| *exp > expires_at - Duration::minutes(30));
        let key = (tenant.to_string(), client_id.to_string(), jti.to_string());
        if m.contains_key(&key) {
            return Ok(false);
        }
        m.insert(key, expires_at);
        Ok(true)
    }
}

/// Longest `exp - now` accepted for an assertion (SMART: 5 minutes).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::minutes(5);

fn bad_assertion(en: impl Into<String>) -> SecurityError {
    unauth("クライアント認証に失敗しました", en)
}

/// Verifies a client assertion for `reg` presented at `token_endpoint`.
pub fn verify_client_assertion(
    assertion: &str,
    reg: &ClientRegistration,
    token_endpoint: &str,
    now: DateTime<Utc>,
    jtis: &dyn JtiRegistry,
) -> Result<AssertionClaims> {
    if assertion.len() > MAX_TOKEN_LEN {
        return Err(bad_assertion("assertion too long"));
    }
    let header = decode_header(assertion).map_err(|e| bad_assertion(format!("bad header: {e}")))?;
    if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
        return Err(bad_assertion(format!(
            "algorithm {:?} not accepted (RS384/ES384 only)",
            header.alg
        )));
    }
    let keys: Vec<DecodingKey> = match &reg.keys {
        ClientKeys::Pem { algorithm, pem } => {
            if *algorithm != header.alg {
                return Err(bad_assertion("algorithm differs from the registered key"));
            }
            let k = match algorithm {
                Algorithm::RS384 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                _ => return Err(bad_assertion("registered algorithm not accepted")),
            }
            .map_err(|e| bad_assertion(format!("registered key unusable: {e}")))?;
            vec![k]
        }
        ClientKeys::Public => {
            return Err(bad_assertion(
                "public client: no key registered for client credentials",
            ))
        }
        ClientKeys::Jwks(set) => {
            let candidates: Vec<_> = match &header.kid {
                Some(kid) => set.find(kid).into_iter().collect(),
                None => set.keys.iter().collect(),
            };
            candidates
                .into_iter()
                .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
                .collect()
        }
    };
    if keys.is_empty() {
        return Err(bad_assertion("no registered key matches the assertion"));
    }
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let mut last_err = None;
    let mut claims = None;
    for k in &keys {
        match decode::<AssertionClaims>(assertion, k, &v) {
            Ok(d) => {
                claims = Some(d.claims);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(c) = claims else {
        return Err(bad_assertion(format!(
            "signature rejected: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )));
    };
    if c.iss != reg.client_id || c.sub != reg.client_id {
        return Err(bad_assertion("iss and sub must be the client id"));
    }
    let aud_ok = match &c.aud {
        serde_json::Value::String(s) => s == token_endpoint,
        serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(token_endpoint)),
        _ => false,
    };
    if !aud_ok {
        return Err(bad_assertion("aud must be the token endpoint"));
    }
    check_times(c.exp, c.nbf, c.iat, now)?;
    if c.exp - now.timestamp() > MAX_ASSERTION_LIFETIME.num_seconds() {
        return Err(bad_assertion("assertion lifetime exceeds 5 minutes"));
    }
    if c.jti.is_empty() || c.jti.len() > 256 {
        return Err(bad_assertion("jti missing or too long"));
    }
    let exp = DateTime::<Utc>::from_timestamp(c.exp, 0).unwrap_or(now + MAX_ASSERTION_LIFETIME);
    if !jtis.record_jti(&reg.tenant, &reg.client_id, &c.jti, exp)? {
        return Err(SecurityError::new(
            ErrorKind::Replay,
            "クライアント認証情報が再利用されました",
            "client assertion jti replayed",
        ));
    }
    Ok(c)
}

pub(crate) fn covers(reg: &ResourceScope, req: &ResourceScope) -> bool {
    let p = &reg.permissions;
    let q = &req.permissions;
    reg.context == req.context
        && (reg.resource_type.is_none() || reg.resource_type == req.resource_type)
        && (!q.create || p.create)
        && (!q.read || p.read)
        && (!q.update || p.update)
        && (!q.delete || p.delete)
        && (!q.search || p.search)
        && reg.constraints.iter().all(|c| req.constraints.contains(c))
}

/// SMART Backend Services `client_credentials` grant: verifies the assertion
/// and issues an access token for the requested `system/` scopes that the
/// registration allows (others are dropped; none left is an error).
pub fn client_credentials_grant(
    tokens: &TokenService,
    reg: &ClientRegistration,
    assertion: &str,
    requested_scope: &str,
    token_endpoint: &str,
    now: DateTime<Utc>,
    jtis: &dyn JtiRegistry,
) -> Result<IssuedToken> {
    verify_client_assertion(assertion, reg, token_endpoint, now, jtis)?;
    let requested = ScopeSet::parse(requested_scope)?;
    let granted: Vec<Scope> = requested
        .scopes
        .into_iter()
        .filter(|s| match s {
            Scope::Resource(r) => {
                r.context == ScopeContext::System
                    && reg.allowed_scopes.resource_scopes().any(|a| covers(a, r))
            }
            Scope::Other(_) => false,
        })
        .collect();
    if granted.is_empty() {
        return Err(SecurityError::new(
            ErrorKind::Forbidden,
            "要求されたスコープは許可されていません",
            "invalid_scope: none of the requested scopes is allowed for this client",
        ));
    }
    tokens.issue_token(
        &TokenRequest {
            tenant: reg.tenant.clone(),
            subject: reg.client_id.clone(),
            role: None,
            is_admin: false,
            scopes: ScopeSet { scopes: granted },
            patient: None,
            lifetime: None,
        },
        now,
    )
}

/// `/.well-known/smart-configuration` document for the SMART Backend
/// Services part implemented here. `authorization_endpoint` is listed when
/// the server offers the interactive launch (then its capabilities are added
/// by the caller).
pub fn smart_configuration(
    issuer: &str,
    token_endpoint: &str,
    authorization_endpoint: Option<&str>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.rs", "system/*.cruds", "user/*.rs", "user/*.cruds", "patient/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2", "permission-patient", "permission-user"],
    });
    if let (Some(a), Some(obj)) = (authorization_endpoint, v.as_object_mut()) {
        obj.insert("authorization_endpoint".into(), serde_json::json!(a));
        obj.insert(
            "response_types_supported".into(),
            serde_json::json!(["code"]),
        );
        obj.insert(
            "code_challenge_methods_supported".into(),
            serde_json::json!(["S256"]),
        );
        if let Some(g) = obj
            .get_mut("grant_types_supported")
            .and_then(|g| g.as_array_mut())
        {
            g.push(serde_json::json!("authorization_code"));
        }
    }
    v
}
