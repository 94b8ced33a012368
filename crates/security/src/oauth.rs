//! SMART App Launch (standalone launch): authorization code + PKCE (S256).
//!
//! The web layer authenticates the user (session), shows the consent page and
//! calls [`issue_code`]; the token endpoint calls [`redeem_code`]. Codes are
//! random 256-bit values stored only as SHA-256 in the security store
//! (`sec_auth_code`), single use (removed atomically when redeemed), valid
//! [`CODE_LIFETIME`], bound to the tenant, client, redirect URI and PKCE
//! challenge.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use sha2::Digest;

use crate::error::{ErrorKind, Result, SecurityError};
use crate::roles::{role_permits, Interaction, Role};
use crate::scopes::{Scope, ScopeContext, ScopeSet};
use crate::store::{AuthCodeRecord, SecurityStore, UserRecord};
use crate::token::{covers, ClientRegistration};

/// How long an authorization code may be exchanged.
pub const CODE_LIFETIME: Duration = Duration::seconds(60);

/// The only `code_challenge_method` accepted.
pub const PKCE_METHOD: &str = "S256";

/// `BASE64URL(SHA256(verifier))`, the S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636: 43–128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A challenge is the base64url encoding of 32 bytes: 43 characters.
pub fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn grant_error(en: &str) -> SecurityError {
    SecurityError::new(
        ErrorKind::Unauthenticated,
        "認可コードが無効です",
        format!("invalid_grant: {en}"),
    )
}

/// Scopes to grant: the requested ones that the client registration covers and
/// that the user's role can use. `patient/` scopes and `launch/patient` only for
/// patient users (who have a patient in context); `system/` scopes never.
pub fn grantable_scopes(
    requested: &ScopeSet,
    client: &ClientRegistration,
    user: &UserRecord,
) -> ScopeSet {
    let patient_user = user.patient.is_some();
    let scopes = requested
        .scopes
        .iter()
        .filter(|s| match s {
            Scope::Other(o) => {
                o == "launch/patient" && patient_user && client.allowed_scopes.contains_other(o)
            }
            Scope::Resource(r) => {
                let ctx_ok = match r.context {
                    ScopeContext::System => false,
                    ScopeContext::Patient => patient_user,
                    ScopeContext::User => user.role != Role::Patient || patient_user,
                };
                let role_ok = match &r.resource_type {
                    None => true,
                    Some(t) => Interaction::ALL
                        .iter()
                        .any(|i| r.permissions.allows(*i) && role_permits(user.role, *i, t)),
                };
                ctx_ok
                    && role_ok
                    && client
                        .allowed_scopes
                        .resource_scopes()
                        .any(|a| covers(a, r))
            }
        })
        .cloned()
        .collect();
    ScopeSet { scopes }
}

/// A code to give to the client, and where it was stored.
#[derive(Debug, Clone)]
pub struct IssuedCode {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// Stores a new single-use authorization code for `user` and returns it.
#[allow(clippy::too_many_arguments)]
pub fn issue_code(
    store: &dyn SecurityStore,
    tenant: &str,
    client_id: &str,
    redirect_uri: &str,
    user: &UserRecord,
    scope: &ScopeSet,
    code_challenge: &str,
    now: DateTime<Utc>,
) -> Result<IssuedCode> {
    if !valid_challenge(code_challenge) {
        return Err(SecurityError::invalid(
            "code_challenge の形式が正しくありません",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        ));
    }
    let code = crate::random_token(32);
    let expires_at = now + CODE_LIFETIME;
    store.insert_auth_code(&AuthCodeRecord {
        tenant: tenant.to_string(),
        code_hash: crate::sha256_hex(code.as_bytes()),
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        user_id: user.user_id.clone(),
        scope: scope.to_string(),
        patient: user.patient.clone(),
        code_challenge: code_challenge.to_string(),
        expires_at,
    })?;
    Ok(IssuedCode { code, expires_at })
}

/// Redeems a code at the token endpoint of `tenant`: it must exist in this
/// tenant, not be used or expired, belong to `client_id` and `redirect_uri`,
/// and `verifier` must match its S256 challenge. The code is consumed even
/// when a later check fails (a code is tried once).
pub fn redeem_code(
    store: &dyn SecurityStore,
    tenant: &str,
    code: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
    now: DateTime<Utc>,
) -> Result<AuthCodeRecord> {
    if code.is_empty() || code.len() > 128 {
        return Err(grant_error("code missing"));
    }
    let Some(c) = store.take_auth_code(tenant, &crate::sha256_hex(code.as_bytes()), now)? else {
        return Err(grant_error("unknown or already used code"));
    };
    if now >= c.expires_at {
        return Err(grant_error("code expired"));
    }
    if c.client_id != client_id {
        return Err(grant_error("code issued to another client"));
    }
    if c.redirect_uri != redirect_uri {
        return Err(grant_error(
            "redirect_uri differs from the authorization request",
        ));
    }
    if !valid_verifier(verifier)
        || !crate::ct_eq(
            pkce_challenge(verifier).as_bytes(),
            c.code_challenge.as_bytes(),
        )
    {
        return Err(grant_error(
            "code_verifier does not match the code_challenge",
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_verifier("short"));
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c+"
        ));
    }
}
