//! Access tokens and SMART Backend Services client assertions, including
//! forged, expired, `alg=none`, wrong-algorithm, replayed and other-tenant
//! tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use iryo_security::authz::{authorize, AccessRequest};
use iryo_security::roles::{Interaction, Role};
use iryo_security::scopes::ScopeSet;
use iryo_security::store::SqliteSecurityStore;
use iryo_security::token::*;
use iryo_security::ErrorKind;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const ENDPOINT: &str = "https://iryo.example.jp/auth/token";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap()
}

fn service() -> TokenService {
    TokenService::new(
        [7u8; 32],
        "https://iryo.example.jp",
        "https://iryo.example.jp/fhir",
    )
}

fn nurse_request() -> TokenRequest {
    TokenRequest {
        tenant: "clinic-a".into(),
        subject: "nurse-1".into(),
        role: Some(Role::Nurse),
        is_admin: false,
        scopes: ScopeSet::parse("user/*.cruds openid").unwrap(),
        patient: None,
        lifetime: None,
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn issue_and_verify_round_trip() {
    let s = service();
    let t = s.issue_token(&nurse_request(), now()).unwrap();
    assert_eq!(t.expires_in, 300);
    assert_eq!(t.scope, "user/*.cruds openid");
    let p = s
        .verify(&t.access_token, "clinic-a", now() + Duration::seconds(10))
        .unwrap();
    assert_eq!(p.role, Some(Role::Nurse));
    assert_eq!(p.subject, "nurse-1");
    let req = AccessRequest {
        tenant: "clinic-a",
        interaction: Interaction::Create,
        resource_type: "Observation",
        patient_compartment: Some("p1"),
        now: now(),
    };
    assert!(authorize(&p, &req).is_allowed());
    // Lifetime bounds.
    let mut r = nurse_request();
    r.lifetime = Some(Duration::hours(2));
    assert!(s.issue_token(&r, now()).is_err());
    r.lifetime = Some(Duration::zero());
    assert!(s.issue_token(&r, now()).is_err());
}

#[test]
fn expired_and_not_yet_valid_tokens_refused() {
    let s = service();
    let t = s.issue_token(&nurse_request(), now()).unwrap();
    let e = s
        .verify(&t.access_token, "clinic-a", now() + Duration::minutes(5))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Expired);
    let e = s
        .verify(&t.access_token, "clinic-a", now() - Duration::minutes(2))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
}

#[test]
fn other_tenant_token_refused() {
    let s = service();
    let t = s.issue_token(&nurse_request(), now()).unwrap();
    let e = s.verify(&t.access_token, "clinic-b", now()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::WrongTenant);
    assert!(e.message_ja.contains("他の医療機関"));
}

fn split(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

#[test]
fn alg_none_forged_and_wrong_alg_refused() {
    let s = service();
    let t = s.issue_token(&nurse_request(), now()).unwrap();
    let (_, payload, sig) = split(&t.access_token);

    // alg=none with the original claims, empty signature.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    for token in [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}"),
    ] {
        let e = s.verify(&token, "clinic-a", now()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated, "{token}");
    }

    // Claims changed (privilege escalation) with the old signature.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
    claims["role"] = json!("physician");
    claims["admin"] = json!(true);
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let header = split(&t.access_token).0;
    let forged = format!("{header}.{forged_payload}.{sig}");
    assert_eq!(
        s.verify(&forged, "clinic-a", now()).unwrap_err().kind,
        ErrorKind::Unauthenticated
    );

    // Signed with another key.
    let other = TokenService::new(
        [8u8; 32],
        "https://iryo.example.jp",
        "https://iryo.example.jp/fhir",
    );
    let t2 = other.issue_token(&nurse_request(), now()).unwrap();
    assert!(s.verify(&t2.access_token, "clinic-a", now()).is_err());

    // Right key, other HMAC algorithm.
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &claims,
        &EncodingKey::from_secret(&[7u8; 32]),
    )
    .unwrap();
    assert!(s.verify(&hs384, "clinic-a", now()).is_err());

    // Wrong issuer / audience.
    let iss = TokenService::new(
        [7u8; 32],
        "https://evil.example",
        "https://iryo.example.jp/fhir",
    );
    let t3 = iss.issue_token(&nurse_request(), now()).unwrap();
    assert!(s.verify(&t3.access_token, "clinic-a", now()).is_err());
    let aud = TokenService::new(
        [7u8; 32],
        "https://iryo.example.jp",
        "https://other.example/fhir",
    );
    let t4 = aud.issue_token(&nurse_request(), now()).unwrap();
    assert!(s.verify(&t4.access_token, "clinic-a", now()).is_err());

    // Garbage and oversized input never panic.
    for junk in ["", ".", "..", "a.b.c", "\u{0}", &"A".repeat(10_000)] {
        assert!(s.verify(junk, "clinic-a", now()).is_err());
    }
}

fn assertion(alg: Algorithm, pem: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let key = match alg {
        Algorithm::RS384 | Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    encode(&h, &claims, &key).unwrap()
}

fn claims(jti: &str) -> serde_json::Value {
    json!({
        "iss": "lab-system",
        "sub": "lab-system",
        "aud": ENDPOINT,
        "exp": (now() + Duration::minutes(4)).timestamp(),
        "iat": now().timestamp(),
        "jti": jti,
    })
}

fn registration(keys: ClientKeys) -> ClientRegistration {
    ClientRegistration {
        tenant: "clinic-a".into(),
        client_id: "lab-system".into(),
        keys,
        allowed_scopes: ScopeSet::parse("system/Observation.cru system/Patient.rs").unwrap(),
        redirect_uris: Vec::new(),
    }
}

fn jwks_registration() -> ClientRegistration {
    registration(ClientKeys::Jwks(
        ClientRegistration::parse_jwks(&fixture("client_jwks.json")).unwrap(),
    ))
}

#[test]
fn rs384_and_es384_assertions_against_jwks() {
    let reg = jwks_registration();
    let jtis = MemoryJtiRegistry::default();
    let a = assertion(
        Algorithm::RS384,
        &fixture("rsa_private.pem"),
        Some("rsa-key-1"),
        claims("j1"),
    );
    let c = verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).unwrap();
    assert_eq!(c.iss, "lab-system");
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_private.pem"),
        Some("ec-key-1"),
        claims("j2"),
    );
    verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).unwrap();
    // Without kid: every registered key is tried.
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_private.pem"),
        None,
        claims("j3"),
    );
    verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).unwrap();
}

#[test]
fn assertions_against_pem_keys() {
    let jtis = MemoryJtiRegistry::default();
    let reg = registration(ClientKeys::Pem {
        algorithm: Algorithm::ES384,
        pem: fixture("ec_public.pem"),
    });
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_private.pem"),
        None,
        claims("p1"),
    );
    verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).unwrap();
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_other_private.pem"),
        None,
        claims("p2"),
    );
    assert!(verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).is_err());
    let reg = registration(ClientKeys::Pem {
        algorithm: Algorithm::RS384,
        pem: fixture("rsa_public.pem"),
    });
    let a = assertion(
        Algorithm::RS384,
        &fixture("rsa_private.pem"),
        None,
        claims("p3"),
    );
    verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).unwrap();
    // Registered RS384, presented ES384.
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_private.pem"),
        None,
        claims("p4"),
    );
    assert!(verify_client_assertion(&a, &reg, ENDPOINT, now(), &jtis).is_err());
}

#[test]
fn bad_assertions_refused() {
    let reg = jwks_registration();
    let jtis = MemoryJtiRegistry::default();
    let rsa = fixture("rsa_private.pem");
    let check = |a: &str| verify_client_assertion(a, &reg, ENDPOINT, now(), &jtis);

    // Key not registered (same kid, other key): forged signature.
    let a = assertion(
        Algorithm::RS384,
        &fixture("rsa_other_private.pem"),
        Some("rsa-key-1"),
        claims("b1"),
    );
    assert_eq!(check(&a).unwrap_err().kind, ErrorKind::Unauthenticated);
    // RS256 is not accepted.
    let a = assertion(Algorithm::RS256, &rsa, Some("rsa-key-1"), claims("b2"));
    assert!(check(&a).is_err());
    // HS256 signed with the public key text (algorithm confusion).
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-key-1".into());
    let a = encode(
        &h,
        &claims("b3"),
        &EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes()),
    )
    .unwrap();
    assert!(check(&a).is_err());
    // alg=none.
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("b4")).unwrap());
    let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
    assert!(check(&none).is_err());
    // Wrong audience, issuer, subject.
    let mut c = claims("b5");
    c["aud"] = json!("https://evil.example/token");
    assert!(check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c)).is_err());
    let mut c = claims("b6");
    c["iss"] = json!("someone-else");
    assert!(check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c)).is_err());
    let mut c = claims("b7");
    c["aud"] = json!([ENDPOINT, "x"]);
    check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c)).unwrap();
    // Expired, too long-lived, missing jti.
    let mut c = claims("b8");
    c["exp"] = json!((now() - Duration::seconds(1)).timestamp());
    assert_eq!(
        check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c))
            .unwrap_err()
            .kind,
        ErrorKind::Expired
    );
    let mut c = claims("b9");
    c["exp"] = json!((now() + Duration::minutes(30)).timestamp());
    assert!(check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c)).is_err());
    let mut c = claims("");
    c.as_object_mut().unwrap().remove("jti");
    assert!(check(&assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), c)).is_err());
    // Replay of a used jti.
    let a = assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), claims("once"));
    check(&a).unwrap();
    assert_eq!(check(&a).unwrap_err().kind, ErrorKind::Replay);
}

#[test]
fn jti_replay_is_refused_by_the_sqlite_store_too() {
    let store = SqliteSecurityStore::open_in_memory().unwrap();
    let reg = jwks_registration();
    let a = assertion(
        Algorithm::ES384,
        &fixture("ec_private.pem"),
        Some("ec-key-1"),
        claims("db-1"),
    );
    verify_client_assertion(&a, &reg, ENDPOINT, now(), &store).unwrap();
    let e = verify_client_assertion(&a, &reg, ENDPOINT, now(), &store).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Replay);
}

#[test]
fn client_credentials_grant_narrows_scopes() {
    let s = service();
    let reg = jwks_registration();
    let jtis = MemoryJtiRegistry::default();
    let rsa = fixture("rsa_private.pem");
    let a = assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), claims("g1"));
    let t = client_credentials_grant(
        &s,
        &reg,
        &a,
        "system/Observation.rs system/Patient.rs system/*.cruds user/*.rs",
        ENDPOINT,
        now(),
        &jtis,
    )
    .unwrap();
    // Observation.rs is not covered (registered Observation.cru lacks s).
    assert_eq!(t.scope, "system/Patient.rs");
    let p = s.verify(&t.access_token, "clinic-a", now()).unwrap();
    assert_eq!(p.role, None);
    let req = AccessRequest {
        tenant: "clinic-a",
        interaction: Interaction::Search,
        resource_type: "Patient",
        patient_compartment: None,
        now: now(),
    };
    assert!(authorize(&p, &req).is_allowed());
    let a = assertion(Algorithm::RS384, &rsa, Some("rsa-key-1"), claims("g2"));
    let e = client_credentials_grant(&s, &reg, &a, "system/*.cruds", ENDPOINT, now(), &jtis)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
}

#[test]
fn smart_configuration_document() {
    let c = smart_configuration("https://iryo.example.jp", ENDPOINT, None);
    assert_eq!(c["token_endpoint"], ENDPOINT);
    assert_eq!(
        c["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    assert!(c.get("authorization_endpoint").is_none());
    let c = smart_configuration(
        "https://iryo.example.jp",
        ENDPOINT,
        Some("https://iryo.example.jp/auth/authorize"),
    );
    assert_eq!(
        c["grant_types_supported"],
        json!(["client_credentials", "authorization_code"])
    );
    assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
}

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let s = service();
    let reg = jwks_registration();
    let jtis = MemoryJtiRegistry::default();
    let alphabet: Vec<char> = "abcXYZ019-_.=/*?&|{}\":, \u{0}é日".chars().collect();
    for _ in 0..2000 {
        let n = rng.gen_range(0..80);
        let text: String = (0..n)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        let _ = ScopeSet::parse(&text);
        let _ = s.verify(&text, "clinic-a", now());
        let _ = verify_client_assertion(&text, &reg, ENDPOINT, now(), &jtis);
        let b64 = |x: &str| URL_SAFE_NO_PAD.encode(x.as_bytes());
        let _ = s.verify(
            &format!("{}.{}.{}", b64(&text), b64(&text), b64(&text)),
            "clinic-a",
            now(),
        );
    }
}
