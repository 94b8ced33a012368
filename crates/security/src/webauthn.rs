//! WebAuthn (passkeys, security keys) as a second factor: registration and authentication
//! ceremonies for ES256 credentials with attestation `none` (W3C Web Authentication Level 2,
//! §7.1 and §7.2, the checks a relying party must make).
//!
//! Challenges are stateless: `exp ‖ nonce ‖ HMAC(server key, purpose, tenant, user, exp ‖
//! nonce)`, valid [`CHALLENGE_LIFETIME`]; the caller records each used challenge (as a `jti`)
//! so it works once, also across servers sharing the database. CBOR is read with `ciborium`,
//! signatures are verified with `ring` (ECDSA P-256 SHA-256, ASN.1 DER).

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use ciborium::Value as Cbor;
use sha2::Digest;

use crate::error::{ErrorKind, Result, SecurityError};

/// How long a challenge may be answered.
pub const CHALLENGE_LIFETIME: Duration = Duration::minutes(5);
/// COSE algorithm ES256.
pub const COSE_ES256: i64 = -7;

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// The relying party: `id` is the host name (no scheme, no port), `origin` the exact origin
/// the browser reports (`https://host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    pub id: String,
    pub origin: String,
}

/// A registered credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Credential id, base64url without padding.
    pub id: String,
    /// Uncompressed P-256 point (`04 ‖ x ‖ y`, 65 bytes).
    pub public_key: Vec<u8>,
    pub sign_count: u32,
    /// Whether the authenticator verified the user (PIN, biometrics) at registration.
    pub user_verified: bool,
}

/// A stored credential with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub tenant: String,
    pub user_id: String,
    pub credential: Credential,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

fn fail(en: impl Into<String>) -> SecurityError {
    SecurityError::new(
        ErrorKind::Unauthenticated,
        "パスキーの確認に失敗しました",
        format!("WebAuthn: {}", en.into()),
    )
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// base64url (padding tolerated), as WebAuthn JSON and forms carry binary values.
pub fn decode_b64url(s: &str) -> Result<Vec<u8>> {
    b64()
        .decode(s.trim().trim_end_matches('='))
        .map_err(|_| fail("value is not base64url"))
}

fn challenge_mac(
    key: &[u8; 32],
    purpose: &str,
    tenant: &str,
    user_id: &str,
    body: &[u8],
) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for part in [
        b"iryo-webauthn".as_slice(),
        purpose.as_bytes(),
        tenant.as_bytes(),
        user_id.as_bytes(),
    ] {
        m.update(part);
        m.update(&[0]);
    }
    m.update(body);
    m.finalize().into_bytes()[..16].to_vec()
}

/// A new challenge for `purpose` (`register` or `login`) of a user.
pub fn new_challenge(
    key: &[u8; 32],
    purpose: &str,
    tenant: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> String {
    let mut body = (now + CHALLENGE_LIFETIME)
        .timestamp()
        .to_be_bytes()
        .to_vec();
    let mut nonce = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    body.extend_from_slice(&nonce);
    let mac = challenge_mac(key, purpose, tenant, user_id, &body);
    body.extend_from_slice(&mac);
    b64().encode(body)
}

/// Checks a challenge made by [`new_challenge`] for the same purpose, tenant and user, not
/// expired. Returns its expiry (to record it as used until then).
pub fn check_challenge(
    key: &[u8; 32],
    purpose: &str,
    tenant: &str,
    user_id: &str,
    challenge: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    let raw = decode_b64url(challenge)?;
    if raw.len() != 40 {
        return Err(fail("challenge of the wrong length"));
    }
    let (body, mac) = raw.split_at(24);
    if !crate::ct_eq(&challenge_mac(key, purpose, tenant, user_id, body), mac) {
        return Err(fail("challenge not issued by this server for this user"));
    }
    let exp = i64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
    let exp = DateTime::<Utc>::from_timestamp(exp, 0).ok_or_else(|| fail("bad challenge"))?;
    if now >= exp {
        return Err(SecurityError::new(
            ErrorKind::Expired,
            "パスキーの確認の有効期限が切れました。もう一度お試しください",
            "WebAuthn: challenge expired",
        ));
    }
    Ok(exp)
}

/// Checks `clientDataJSON` (type, origin, not cross-origin) and returns its challenge.
fn client_data(rp: &RelyingParty, json: &[u8], ty: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| fail("clientDataJSON is not JSON"))?;
    let s = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
    if s("type") != ty {
        return Err(fail(format!("clientData type must be {ty}")));
    }
    if s("origin") != rp.origin {
        return Err(fail(format!("origin {} is not {}", s("origin"), rp.origin)));
    }
    if v.get("crossOrigin").and_then(serde_json::Value::as_bool) == Some(true) {
        return Err(fail("cross-origin ceremony refused"));
    }
    Ok(s("challenge").to_string())
}

/// The parsed authenticator data.
struct AuthData<'a> {
    flags: u8,
    sign_count: u32,
    /// (credential id, COSE key bytes and what follows) when the AT flag is set.
    attested: Option<(&'a [u8], &'a [u8])>,
}

fn auth_data<'a>(rp: &RelyingParty, d: &'a [u8]) -> Result<AuthData<'a>> {
    if d.len() < 37 {
        return Err(fail("authenticator data too short"));
    }
    let rp_hash = sha2::Sha256::digest(rp.id.as_bytes());
    if d[..32] != rp_hash[..] {
        return Err(fail("rpIdHash is not the hash of this relying party id"));
    }
    let flags = d[32];
    if flags & FLAG_UP == 0 {
        return Err(fail("user presence flag not set"));
    }
    let sign_count = u32::from_be_bytes(d[33..37].try_into().expect("4 bytes"));
    let attested = if flags & FLAG_AT != 0 {
        if d.len() < 55 {
            return Err(fail("attested credential data too short"));
        }
        let n = u16::from_be_bytes([d[53], d[54]]) as usize;
        if n == 0 || n > 1023 || d.len() < 55 + n {
            return Err(fail("credential id length out of range"));
        }
        Some((&d[55..55 + n], &d[55 + n..]))
    } else {
        None
    };
    Ok(AuthData {
        flags,
        sign_count,
        attested,
    })
}

fn int_key(k: &Cbor) -> Option<i64> {
    k.as_integer().and_then(|i| i64::try_from(i).ok())
}

/// The ES256 public key of a COSE_Key (kty EC2, alg -7, crv P-256) as an uncompressed point.
fn cose_es256(bytes: &[u8]) -> Result<Vec<u8>> {
    let key: Cbor =
        ciborium::de::from_reader(bytes).map_err(|_| fail("credential public key is not CBOR"))?;
    let map = key.as_map().ok_or_else(|| fail("COSE key is not a map"))?;
    let get = |label: i64| {
        map.iter()
            .find(|(k, _)| int_key(k) == Some(label))
            .map(|(_, v)| v)
    };
    let int = |label: i64| get(label).and_then(int_key);
    if int(1) != Some(2) || int(3) != Some(COSE_ES256) || int(-1) != Some(1) {
        return Err(fail(
            "only ES256 keys on P-256 (COSE kty 2, alg -7, crv 1) are accepted",
        ));
    }
    let coord = |label: i64| {
        get(label)
            .and_then(Cbor::as_bytes)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| fail("COSE key coordinates missing"))
    };
    let mut point = vec![4u8];
    point.extend_from_slice(coord(-2)?);
    point.extend_from_slice(coord(-3)?);
    // a point not on the curve never verifies (ring checks it at each verification)
    Ok(point)
}

/// Registration (`navigator.credentials.create`): checks `clientDataJSON` (type
/// `webauthn.create`, origin, challenge via `check`), the attestation object (format `none`,
/// empty statement), the authenticator data (rpIdHash, user presence, attested credential)
/// and the COSE key (ES256). Returns the credential to store.
pub fn verify_registration(
    rp: &RelyingParty,
    client_data_json: &[u8],
    attestation_object: &[u8],
    check: impl FnOnce(&str) -> Result<()>,
) -> Result<Credential> {
    check(&client_data(rp, client_data_json, "webauthn.create")?)?;
    let att: Cbor = ciborium::de::from_reader(attestation_object)
        .map_err(|_| fail("attestationObject is not CBOR"))?;
    let map = att
        .as_map()
        .ok_or_else(|| fail("attestationObject is not a map"))?;
    let get = |k: &str| {
        map.iter()
            .find(|(key, _)| key.as_text() == Some(k))
            .map(|(_, v)| v)
    };
    if get("fmt").and_then(Cbor::as_text) != Some("none") {
        return Err(fail("only attestation format none is accepted"));
    }
    if !get("attStmt")
        .and_then(Cbor::as_map)
        .is_some_and(|m| m.is_empty())
    {
        return Err(fail("attestation statement of format none must be empty"));
    }
    let ad_bytes = get("authData")
        .and_then(Cbor::as_bytes)
        .ok_or_else(|| fail("authData missing"))?;
    let ad = auth_data(rp, ad_bytes)?;
    let (cred_id, key) = ad
        .attested
        .ok_or_else(|| fail("attested credential data missing"))?;
    Ok(Credential {
        id: b64().encode(cred_id),
        public_key: cose_es256(key)?,
        sign_count: ad.sign_count,
        user_verified: ad.flags & FLAG_UV != 0,
    })
}

/// Authentication (`navigator.credentials.get`) with a stored credential: checks
/// `clientDataJSON` (type `webauthn.get`, origin, challenge via `check`), the authenticator
/// data (rpIdHash, user presence), the ES256 signature over `authenticatorData ‖
/// SHA-256(clientDataJSON)`, and the signature counter (must grow unless both are 0; a
/// counter that does not grow means a cloned authenticator). Returns the new counter.
pub fn verify_assertion(
    rp: &RelyingParty,
    credential: &Credential,
    client_data_json: &[u8],
    authenticator_data: &[u8],
    signature: &[u8],
    check: impl FnOnce(&str) -> Result<()>,
) -> Result<u32> {
    check(&client_data(rp, client_data_json, "webauthn.get")?)?;
    let ad = auth_data(rp, authenticator_data)?;
    let mut signed = authenticator_data.to_vec();
    signed.extend_from_slice(&sha2::Sha256::digest(client_data_json));
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &credential.public_key,
    )
    .verify(&signed, signature)
    .map_err(|_| fail("signature does not verify with the registered key"))?;
    if (ad.sign_count != 0 || credential.sign_count != 0) && ad.sign_count <= credential.sign_count
    {
        return Err(SecurityError::new(
            ErrorKind::Replay,
            "パスキーの署名カウンターが増えていません(認証器が複製された可能性があります)",
            "WebAuthn: signature counter did not increase (cloned authenticator?)",
        ));
    }
    Ok(ad.sign_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_bound_and_expire() {
        let k = [3u8; 32];
        let t0 = Utc::now();
        let c = new_challenge(&k, "login", "a", "u1", t0);
        assert!(check_challenge(&k, "login", "a", "u1", &c, t0).is_ok());
        assert!(check_challenge(&k, "register", "a", "u1", &c, t0).is_err());
        assert!(check_challenge(&k, "login", "b", "u1", &c, t0).is_err());
        assert!(check_challenge(&k, "login", "a", "u2", &c, t0).is_err());
        assert!(check_challenge(&[4u8; 32], "login", "a", "u1", &c, t0).is_err());
        assert!(check_challenge(&k, "login", "a", "u1", &c, t0 + CHALLENGE_LIFETIME).is_err());
        assert!(check_challenge(&k, "login", "a", "u1", "AAAA", t0).is_err());
    }
}
