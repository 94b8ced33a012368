//! Account lifecycle and login flow on the SQLite store, with the attacks of
//! issue 4 that apply at this level: password brute force, session fixation,
//! CSRF, cross-tenant use, replayed TOTP codes, reused passwords.

use chrono::{DateTime, Duration, TimeZone, Utc};
use iryo_security::accounts::*;
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::authz::{authorize, AccessRequest, Decision, DenyReason};
use iryo_security::password::{LoginThrottle, RateLimiter};
use iryo_security::roles::{Interaction, Role};
use iryo_security::session::{self, verify_csrf};
use iryo_security::store::{AccountStatus, AuditQuery, SecurityStore, SqliteSecurityStore};
use iryo_security::{totp, ErrorKind};

const IP: &str = "192.0.2.1";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
}

fn service() -> Accounts<SqliteSecurityStore> {
    Accounts::new(
        SqliteSecurityStore::open_in_memory().unwrap(),
        SecurityConfig::default(),
    )
}

fn code(secret: &[u8], now: DateTime<Utc>) -> String {
    totp::code_at_step(secret, totp::time_step(now)).unwrap()
}

/// Runs the first-login flow of a freshly created account: change password,
/// enrol TOTP, start a session. Returns (user id, TOTP secret, recovery codes).
fn first_login(
    a: &Accounts<SqliteSecurityStore>,
    tenant: &str,
    user: &str,
    otp: &str,
    new_pw: &str,
    now: DateTime<Utc>,
) -> (String, Vec<u8>, Vec<String>) {
    let r = a.login_password(tenant, user, otp, IP, now).unwrap();
    assert_eq!(r.step, LoginStep::ChangePassword);
    assert!(r.ticket.is_none());
    let uid = r.user.user_id.clone();
    a.change_password(tenant, &uid, otp, new_pw, now).unwrap();
    let r = a.login_password(tenant, user, new_pw, IP, now).unwrap();
    assert_eq!(r.step, LoginStep::EnrolSecondFactor);
    let e = a.begin_totp_enrolment(tenant, &uid).unwrap();
    assert!(e.otpauth_uri.starts_with("otpauth://totp/"));
    assert!(e.qr_png.starts_with(b"\x89PNG"));
    let (codes, ticket) = a
        .confirm_totp(tenant, &uid, &code(&e.secret, now), now)
        .unwrap();
    assert_eq!(codes.len(), totp::RECOVERY_CODE_COUNT);
    a.start_session(ticket, None, IP, now).unwrap();
    (uid, e.secret, codes)
}

#[test]
fn bootstrap_admin_once_with_one_time_password() {
    let a = service();
    let created = a
        .bootstrap_admin("clinic-a", t0())
        .unwrap()
        .expect("first start creates the admin");
    let otp = created.one_time_password.clone().unwrap();
    assert_eq!(created.user.username, "admin");
    assert!(created.user.is_admin);
    assert!(created.user.must_change_password);
    assert!(otp.len() >= 13);
    // Never again, and the password is not stored in clear.
    assert!(a.bootstrap_admin("clinic-a", t0()).unwrap().is_none());
    let stored = a
        .store()
        .find_user_by_name("clinic-a", "admin")
        .unwrap()
        .unwrap();
    assert!(!stored.password_hash.contains(&otp));
    // Each tenant gets its own.
    let b = a.bootstrap_admin("clinic-b", t0()).unwrap().unwrap();
    assert_ne!(b.one_time_password.unwrap(), otp);

    let (uid, secret, recovery) = first_login(
        &a,
        "clinic-a",
        "admin",
        &otp,
        "nagai-pasuwaado-desu-2026",
        t0(),
    );
    // Next login: password then TOTP.
    let later = t0() + Duration::minutes(10);
    let r = a
        .login_password("clinic-a", "ADMIN", "nagai-pasuwaado-desu-2026", IP, later)
        .unwrap();
    assert_eq!(r.step, LoginStep::SecondFactor);
    assert!(r.ticket.is_none());
    let ticket = a
        .verify_totp("clinic-a", &uid, &code(&secret, later), IP, later)
        .unwrap();
    assert!(ticket.second_factor());
    // The same code again (replay) is refused.
    let e = a
        .verify_totp("clinic-a", &uid, &code(&secret, later), IP, later)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Replay);
    let s = a.start_session(ticket, None, IP, later).unwrap();
    let (_, principal) = a.validate_session("clinic-a", &s.id, later).unwrap();
    assert_eq!(principal.role, Some(Role::SystemAdministrator));
    assert!(principal.is_admin);

    // Recovery codes are one-time.
    let (left, _t) = a
        .use_recovery_code("clinic-a", &uid, &recovery[0], IP, later)
        .unwrap();
    assert_eq!(left, 9);
    let e = a
        .use_recovery_code("clinic-a", &uid, &recovery[0], IP, later)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
    assert!(a
        .use_recovery_code("clinic-a", &uid, "aaaa-bbbb-cccc-dddd", IP, later)
        .is_err());

    // Every step is in the log and the chain verifies.
    assert!(a.store().verify_audit_chain("clinic-a").unwrap().is_ok());
    let logins = a
        .store()
        .search_audit(
            "clinic-a",
            &AuditQuery {
                action: Some(AuditAction::Login),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(logins.len(), 3);
}

#[test]
fn start_session_requires_completed_login() {
    let a = service();
    let admin = a.bootstrap_admin("t", t0()).unwrap().unwrap();
    let otp = admin.one_time_password.unwrap();
    let (_uid, _secret, _) = first_login(&a, "t", "admin", &otp, "nagai-pasuwaado-desu-2026", t0());
    // A patient account without TOTP completes with the password alone.
    let p = a
        .add_user(
            Actor::Host("op"),
            NewUser {
                tenant: "t".into(),
                username: "patient1".into(),
                display_name: "患者 一郎".into(),
                role: Role::Patient,
                is_admin: false,
                patient: Some("pat-1".into()),
                password: Some("kanja-no-pasuwaado-1".into()),
                expires_at: None,
            },
            t0(),
        )
        .unwrap();
    assert!(p.one_time_password.is_none());
    let r = a
        .login_password("t", "patient1", "kanja-no-pasuwaado-1", IP, t0())
        .unwrap();
    assert_eq!(r.step, LoginStep::ChangePassword);
    a.change_password(
        "t",
        &r.user.user_id,
        "kanja-no-pasuwaado-1",
        "atarashii-kanja-pw-2",
        t0(),
    )
    .unwrap();
    let r = a
        .login_password("t", "patient1", "atarashii-kanja-pw-2", IP, t0())
        .unwrap();
    assert_eq!(r.step, LoginStep::Complete);
    let s = a.start_session(r.ticket.unwrap(), None, IP, t0()).unwrap();
    let (_, principal) = a.validate_session("t", &s.id, t0()).unwrap();
    assert_eq!(principal.patient.as_deref(), Some("pat-1"));
    let req = AccessRequest {
        tenant: "t",
        interaction: Interaction::Read,
        resource_type: "Observation",
        patient_compartment: Some("pat-2"),
        now: t0(),
    };
    assert_eq!(
        authorize(&principal, &req),
        Decision::Deny(DenyReason::OutsideCompartment)
    );
    // Missing patient id for a patient account.
    let e = a
        .add_user(
            Actor::Host("op"),
            NewUser {
                tenant: "t".into(),
                username: "patient2".into(),
                display_name: "x".into(),
                role: Role::Patient,
                is_admin: false,
                patient: None,
                password: None,
                expires_at: None,
            },
            t0(),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
}

fn staff(a: &Accounts<SqliteSecurityStore>, tenant: &str, name: &str, role: Role) -> String {
    let c = a
        .add_user(
            Actor::Host("op"),
            NewUser {
                tenant: tenant.into(),
                username: name.into(),
                display_name: format!("{name} さん"),
                role,
                is_admin: false,
                patient: None,
                password: None,
                expires_at: None,
            },
            t0(),
        )
        .unwrap();
    c.one_time_password.unwrap()
}

#[test]
fn brute_force_locks_with_growing_delay_and_is_logged() {
    let a = service();
    let otp = staff(&a, "clinic-a", "nurse1", Role::Nurse);
    let mut now = t0();
    for i in 0..5 {
        let e = a
            .login_password("clinic-a", "nurse1", &format!("guess-{i}"), IP, now)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        assert_eq!(e.message_ja, "利用者名またはパスワードが正しくありません");
        now += Duration::seconds(1);
    }
    // Locked: even the right password is refused.
    let e = a
        .login_password("clinic-a", "nurse1", &otp, IP, now)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    // After 30 s the lock is over; one more failure locks for 60 s.
    now += Duration::seconds(31);
    a.login_password("clinic-a", "nurse1", "guess-x", IP, now)
        .unwrap_err();
    let u = a
        .store()
        .find_user_by_name("clinic-a", "nurse1")
        .unwrap()
        .unwrap();
    assert_eq!(u.failed_count, 6);
    assert_eq!(u.locked_until, Some(now + Duration::seconds(60)));
    now += Duration::seconds(61);
    let r = a
        .login_password("clinic-a", "nurse1", &otp, IP, now)
        .unwrap();
    assert_eq!(r.user.failed_count, 0);
    let failures = a
        .store()
        .search_audit(
            "clinic-a",
            &AuditQuery {
                action: Some(AuditAction::LoginFailed),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(failures.len(), 7);
    assert!(failures
        .iter()
        .all(|f| f.entry.outcome == AuditOutcome::Denied));
    assert_eq!(failures[0].entry.source_ip.as_deref(), Some(IP));
    // Unknown user: same message, also logged.
    let e = a
        .login_password("clinic-a", "nobody", "x", IP, now)
        .unwrap_err();
    assert_eq!(e.message_ja, "利用者名またはパスワードが正しくありません");
}

#[test]
fn rate_limit_per_source_address() {
    let a = service().with_throttle(LoginThrottle {
        per_account: RateLimiter::new(100, Duration::minutes(5)),
        per_source: RateLimiter::new(3, Duration::minutes(5)),
    });
    for n in ["a1", "a2", "a3"] {
        assert_eq!(
            a.login_password("t", n, "pw", "203.0.113.9", t0())
                .unwrap_err()
                .kind,
            ErrorKind::Unauthenticated
        );
    }
    let e = a
        .login_password("t", "a4", "pw", "203.0.113.9", t0())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    // Another address is not affected.
    assert_eq!(
        a.login_password("t", "a4", "pw", "203.0.113.10", t0())
            .unwrap_err()
            .kind,
        ErrorKind::Unauthenticated
    );
}

#[test]
fn sessions_fixation_timeouts_csrf_and_revocation() {
    let a = service();
    let otp = staff(&a, "clinic-a", "dr1", Role::Physician);
    let (uid, secret, _) =
        first_login(&a, "clinic-a", "dr1", &otp, "isha-no-nagai-pasuwaado", t0());
    a.store().delete_user_sessions("clinic-a", &uid).unwrap();

    // Attacker plants a session id of their own (fixation): it is deleted at login.
    let attacker = {
        let now = t0() + Duration::minutes(1);
        let r = a
            .login_password("clinic-a", "dr1", "isha-no-nagai-pasuwaado", IP, now)
            .unwrap();
        let t = a
            .verify_totp("clinic-a", &r.user.user_id, &code(&secret, now), IP, now)
            .unwrap();
        a.start_session(t, None, IP, now).unwrap()
    };
    let now = t0() + Duration::minutes(2);
    let r = a
        .login_password("clinic-a", "dr1", "isha-no-nagai-pasuwaado", IP, now)
        .unwrap();
    let t = a
        .verify_totp("clinic-a", &uid, &code(&secret, now), IP, now)
        .unwrap();
    let s = a.start_session(t, Some(&attacker.id), IP, now).unwrap();
    assert_ne!(s.id, attacker.id);
    assert!(a.validate_session("clinic-a", &attacker.id, now).is_err());
    assert_eq!(r.user.user_id, uid);

    // CSRF.
    let (rec, _) = a.validate_session("clinic-a", &s.id, now).unwrap();
    verify_csrf(&rec, Some(&s.csrf_token)).unwrap();
    assert_eq!(
        verify_csrf(&rec, Some(&attacker.csrf_token))
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    assert!(verify_csrf(&rec, None).is_err());

    // Cross-tenant use of a session id.
    assert_eq!(
        a.validate_session("clinic-b", &s.id, now).unwrap_err().kind,
        ErrorKind::Unauthenticated
    );

    // Idle timeout (activity refreshes it).
    a.validate_session("clinic-a", &s.id, now + Duration::minutes(14))
        .unwrap();
    a.validate_session("clinic-a", &s.id, now + Duration::minutes(28))
        .unwrap();
    let e = a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(44))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Expired);
    // The expired session is gone for good.
    assert!(a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(29))
        .is_err());

    // Absolute timeout despite activity.
    let now = t0() + Duration::minutes(50);
    a.login_password("clinic-a", "dr1", "isha-no-nagai-pasuwaado", IP, now)
        .unwrap();
    let t = a
        .verify_totp("clinic-a", &uid, &code(&secret, now), IP, now)
        .unwrap();
    let s = a.start_session(t, None, IP, now).unwrap();
    let mut at = now;
    while at < now + Duration::hours(8) - Duration::minutes(10) {
        at += Duration::minutes(10);
        a.validate_session("clinic-a", &s.id, at).unwrap();
    }
    at += Duration::minutes(10);
    assert_eq!(
        a.validate_session("clinic-a", &s.id, at).unwrap_err().kind,
        ErrorKind::Expired
    );

    // Revoke all sessions of the user.
    let now = t0() + Duration::hours(10);
    let mut ids = Vec::new();
    for i in 0..3 {
        let tm = now + Duration::minutes(i);
        a.login_password("clinic-a", "dr1", "isha-no-nagai-pasuwaado", IP, tm)
            .unwrap();
        let t = a
            .verify_totp("clinic-a", &uid, &code(&secret, tm), IP, tm)
            .unwrap();
        ids.push(a.start_session(t, None, IP, tm).unwrap().id);
    }
    let (_, me) = a
        .validate_session("clinic-a", &ids[0], now + Duration::minutes(3))
        .unwrap();
    assert_eq!(
        a.revoke_all_sessions(Actor::User(&me), "clinic-a", &uid, now)
            .unwrap(),
        3
    );
    for id in &ids {
        assert!(a
            .validate_session("clinic-a", id, now + Duration::minutes(3))
            .is_err());
    }
    // Another (non-admin) user cannot revoke someone else's sessions.
    let e = a
        .revoke_all_sessions(Actor::User(&me), "clinic-a", "someone-else", now)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    // Logout.
    let tm = now + Duration::minutes(5);
    a.login_password("clinic-a", "dr1", "isha-no-nagai-pasuwaado", IP, tm)
        .unwrap();
    let t = a
        .verify_totp("clinic-a", &uid, &code(&secret, tm), IP, tm)
        .unwrap();
    let s = a.start_session(t, None, IP, tm).unwrap();
    a.logout("clinic-a", &s.id, tm).unwrap();
    assert!(a.validate_session("clinic-a", &s.id, tm).is_err());
    assert!(session::session_cookie(&s.id, &a.config().session).contains("HttpOnly"));
}

#[test]
fn passwords_policy_history_and_common() {
    let a = service();
    let otp = staff(&a, "t", "clerk1", Role::MedicalClerk);
    let r = a.login_password("t", "clerk1", &otp, IP, t0()).unwrap();
    let uid = r.user.user_id;
    // Reusing the one-time password, weak, common and name-containing passwords.
    for (bad, kind) in [
        (otp.as_str(), ErrorKind::WeakPassword),
        ("short1!", ErrorKind::WeakPassword),
        ("iloveyou1234!", ErrorKind::WeakPassword),
        ("clerk1-no-pasuwaado", ErrorKind::WeakPassword),
    ] {
        assert_eq!(
            a.change_password("t", &uid, &otp, bad, t0())
                .unwrap_err()
                .kind,
            kind,
            "{bad}"
        );
    }
    // Wrong current password.
    assert_eq!(
        a.change_password("t", &uid, "wrong", "jimu-no-pasuwaado-1", t0())
            .unwrap_err()
            .kind,
        ErrorKind::Unauthenticated
    );
    let mut cur = "jimu-no-pasuwaado-1".to_string();
    a.change_password("t", &uid, &otp, &cur, t0()).unwrap();
    for i in 2..=6 {
        let next = format!("jimu-no-pasuwaado-{i}");
        a.change_password("t", &uid, &cur, &next, t0() + Duration::minutes(i))
            .unwrap();
        cur = next;
    }
    // The last 5 are refused, older ones allowed.
    let e = a
        .change_password(
            "t",
            &uid,
            &cur,
            "jimu-no-pasuwaado-3",
            t0() + Duration::hours(1),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::WeakPassword);
    a.change_password(
        "t",
        &uid,
        &cur,
        "jimu-no-pasuwaado-1",
        t0() + Duration::hours(1),
    )
    .unwrap();

    // 8-character mixed password without 2FA must be changed after 90 days.
    let cfg = SecurityConfig {
        require_totp_for_staff: false,
        ..Default::default()
    };
    let b = Accounts::new(SqliteSecurityStore::open_in_memory().unwrap(), cfg);
    let c = b
        .add_user(
            Actor::Host("op"),
            NewUser {
                tenant: "t".into(),
                username: "ph1".into(),
                display_name: "薬剤師".into(),
                role: Role::Pharmacist,
                is_admin: false,
                patient: None,
                password: None,
                expires_at: None,
            },
            t0(),
        )
        .unwrap();
    let uid = c.user.user_id.clone();
    b.change_password("t", &uid, &c.one_time_password.unwrap(), "Yk7#pQ2m", t0())
        .unwrap();
    assert_eq!(
        b.login_password("t", "ph1", "Yk7#pQ2m", IP, t0() + Duration::days(89))
            .unwrap()
            .step,
        LoginStep::Complete
    );
    assert_eq!(
        b.login_password("t", "ph1", "Yk7#pQ2m", IP, t0() + Duration::days(90))
            .unwrap()
            .step,
        LoginStep::ChangePassword
    );
}

#[test]
fn lifecycle_disable_expire_dormant_and_report() {
    let a = service();
    let admin = a.bootstrap_admin("clinic-a", t0()).unwrap().unwrap();
    let otp = admin.one_time_password.unwrap();
    let (admin_uid, admin_secret, _) =
        first_login(&a, "clinic-a", "admin", &otp, "kanrisha-no-nagai-pw", t0());
    let nurse_otp = staff(&a, "clinic-a", "nurse1", Role::Nurse);
    staff(&a, "clinic-a", "leaver", Role::Physician);

    // Admin actions need administrator rights.
    let now = t0() + Duration::days(1);
    let (_, nurse_login) = {
        let r = a
            .login_password("clinic-a", "nurse1", &nurse_otp, IP, now)
            .unwrap();
        (r.step, r.user)
    };
    let nurse_principal = iryo_security::authz::Principal {
        tenant: "clinic-a".into(),
        subject: nurse_login.user_id.clone(),
        role: Some(Role::Nurse),
        is_admin: false,
        scopes: None,
        patient: None,
        break_glass: None,
    };
    let e = a
        .disable_user(
            Actor::User(&nurse_principal),
            "clinic-a",
            "leaver",
            "退職",
            now,
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);

    a.login_password("clinic-a", "admin", "kanrisha-no-nagai-pw", IP, now)
        .unwrap();
    let t = a
        .verify_totp("clinic-a", &admin_uid, &code(&admin_secret, now), IP, now)
        .unwrap();
    let s = a.start_session(t, None, IP, now).unwrap();
    let (_, admin_p) = a.validate_session("clinic-a", &s.id, now).unwrap();
    // Other tenant: refused.
    assert_eq!(
        a.disable_user(Actor::User(&admin_p), "clinic-b", "leaver", "x", now)
            .unwrap_err()
            .kind,
        ErrorKind::WrongTenant
    );
    a.disable_user(Actor::User(&admin_p), "clinic-a", "leaver", "退職", now)
        .unwrap();
    let e = a
        .login_password("clinic-a", "leaver", "whatever", IP, now)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);

    // Expiry.
    a.set_expiry(
        Actor::User(&admin_p),
        "clinic-a",
        "nurse1",
        Some(now + Duration::days(1)),
        now,
    )
    .unwrap();
    a.login_password("clinic-a", "nurse1", &nurse_otp, IP, now)
        .unwrap();
    let e = a
        .login_password(
            "clinic-a",
            "nurse1",
            &nurse_otp,
            IP,
            now + Duration::days(2),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    a.set_expiry(Actor::User(&admin_p), "clinic-a", "nurse1", None, now)
        .unwrap();

    // Report before the dormancy sweep.
    let rows = a.account_report("clinic-a", now).unwrap();
    assert_eq!(rows.len(), 3);
    let admin_row = rows.iter().find(|r| r.username == "admin").unwrap();
    assert!(admin_row.is_admin && admin_row.two_factor);
    assert_eq!(admin_row.role_ja, "システム管理者");
    assert_eq!(admin_row.last_login_at, Some(now));
    let leaver = rows.iter().find(|r| r.username == "leaver").unwrap();
    assert_eq!(leaver.status, AccountStatus::Disabled);

    // 90 days later: nurse1 (never completed a login) is disabled, admin too
    // (last login day 1); nothing is disabled twice.
    let later = now + Duration::days(90);
    let mut done = a.disable_dormant("clinic-a", later).unwrap();
    done.sort();
    assert_eq!(done, vec!["admin".to_string(), "nurse1".to_string()]);
    assert!(a.disable_dormant("clinic-a", later).unwrap().is_empty());
    let rows = a.account_report("clinic-a", later).unwrap();
    assert!(rows.iter().all(|r| r.status == AccountStatus::Disabled));
    assert!(rows.iter().any(|r| r
        .status_reason
        .as_deref()
        .is_some_and(|s| s.contains("90日"))));
    // Re-enabled by a host operator.
    a.enable_user(Actor::Host("op"), "clinic-a", "admin", "復職", later)
        .unwrap();
}

#[test]
fn same_user_name_in_two_tenants_is_two_accounts() {
    let a = service();
    let pa = staff(&a, "clinic-a", "yamada", Role::Physician);
    let pb = staff(&a, "clinic-b", "yamada", Role::Nurse);
    assert!(a
        .login_password("clinic-a", "yamada", &pb, IP, t0())
        .is_err());
    assert!(a
        .login_password("clinic-b", "yamada", &pa, IP, t0())
        .is_err());
    let ua = a
        .login_password("clinic-a", "yamada", &pa, IP, t0())
        .unwrap()
        .user;
    let ub = a
        .login_password("clinic-b", "yamada", &pb, IP, t0())
        .unwrap()
        .user;
    assert_ne!(ua.user_id, ub.user_id);
    // User ids of one tenant do not resolve in another.
    assert!(a
        .store()
        .get_user("clinic-b", &ua.user_id)
        .unwrap()
        .is_none());
    assert_eq!(
        a.change_password("clinic-b", &ua.user_id, &pa, "tanin-no-pasuwaado-9", t0())
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    // Duplicate in the same tenant.
    let e = a
        .add_user(
            Actor::Host("op"),
            NewUser {
                tenant: "clinic-a".into(),
                username: "YAMADA".into(),
                display_name: "x".into(),
                role: Role::Nurse,
                is_admin: false,
                patient: None,
                password: None,
                expires_at: None,
            },
            t0(),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[test]
fn break_glass_flow_is_stored_logged_and_reviewable() {
    let a = service();
    let otp = staff(&a, "clinic-a", "nurse1", Role::Nurse);
    let (uid, secret, _) =
        first_login(&a, "clinic-a", "nurse1", &otp, "kangoshi-no-nagai-pw", t0());
    let now = t0() + Duration::minutes(5);
    a.login_password("clinic-a", "nurse1", "kangoshi-no-nagai-pw", IP, now)
        .unwrap();
    let t = a
        .verify_totp("clinic-a", &uid, &code(&secret, now), IP, now)
        .unwrap();
    let s = a.start_session(t, None, IP, now).unwrap();
    let (_, p) = a.validate_session("clinic-a", &s.id, now).unwrap();
    let req = |at| AccessRequest {
        tenant: "clinic-a",
        interaction: Interaction::Create,
        resource_type: "MedicationRequest",
        patient_compartment: Some("pat-9"),
        now: at,
    };
    assert!(!authorize(&p, &req(now)).is_allowed());
    assert!(a
        .break_glass(&p, "", Some("pat-9"), Duration::minutes(30), IP, now)
        .is_err());
    let g = a
        .break_glass(
            &p,
            "急変対応のため",
            Some("pat-9"),
            Duration::minutes(30),
            IP,
            now,
        )
        .unwrap();
    let (_, p2) = a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(1))
        .unwrap();
    match authorize(&p2, &req(now + Duration::minutes(1))) {
        Decision::Allow(grant) => assert_eq!(grant.break_glass.unwrap().id, g.id),
        d => panic!("{d:?}"),
    }
    // After expiry the session no longer carries the grant.
    let (_, p3) = a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(14))
        .unwrap();
    assert!(p3.break_glass.is_some());
    let (_, p4) = a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(28))
        .unwrap();
    assert!(p4.break_glass.is_some());
    let (_, p5) = a
        .validate_session("clinic-a", &s.id, now + Duration::minutes(40))
        .unwrap();
    assert!(p5.break_glass.is_none());
    // Logged (denied attempt + grant) and queued for review.
    let log = a
        .store()
        .search_audit(
            "clinic-a",
            &AuditQuery {
                action: Some(AuditAction::BreakGlass),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].entry.patient.as_deref(), Some("pat-9"));
    let pending = a.store().unreviewed_break_glass("clinic-a").unwrap();
    assert_eq!(pending.len(), 1);
    assert!(a
        .store()
        .review_break_glass("clinic-a", &g.id, "admin", now)
        .unwrap());
    assert!(!a
        .store()
        .review_break_glass("clinic-a", &g.id, "admin", now)
        .unwrap());
    assert!(a
        .store()
        .unreviewed_break_glass("clinic-a")
        .unwrap()
        .is_empty());
}

#[test]
fn totp_secrets_are_encrypted_at_rest() {
    let cfg = SecurityConfig {
        secret_key: Some([5u8; 32]),
        ..Default::default()
    };
    let store = SqliteSecurityStore::open_in_memory().unwrap();
    let a = Accounts::new(store, cfg);
    let otp = staff(&a, "t", "dr2", Role::Physician);
    let r = a.login_password("t", "dr2", &otp, IP, t0()).unwrap();
    let uid = r.user.user_id;
    a.change_password("t", &uid, &otp, "isha-no-nagai-pasuwaado", t0())
        .unwrap();
    let e = a.begin_totp_enrolment("t", &uid).unwrap();
    let stored = a
        .store()
        .get_user("t", &uid)
        .unwrap()
        .unwrap()
        .totp_secret
        .unwrap();
    assert_ne!(stored, e.secret);
    assert!(!stored
        .windows(e.secret.len())
        .any(|w| w == e.secret.as_slice()));
    let (_codes, t) = a
        .confirm_totp("t", &uid, &code(&e.secret, t0()), t0())
        .unwrap();
    a.start_session(t, None, IP, t0()).unwrap();
    let later = t0() + Duration::minutes(3);
    a.verify_totp("t", &uid, &code(&e.secret, later), IP, later)
        .unwrap();
    // A secret copied from another account does not open for this one.
    let otp3 = staff(&a, "t", "dr3", Role::Physician);
    let uid3 = a
        .login_password("t", "dr3", &otp3, IP, t0())
        .unwrap()
        .user
        .user_id;
    let mut u3 = a.store().get_user("t", &uid3).unwrap().unwrap();
    u3.totp_secret = Some(stored);
    u3.totp_enabled = true;
    a.store().update_user(&u3).unwrap();
    let e = a
        .verify_totp("t", &uid3, &code(&e.secret, later), IP, later)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Integrity);
}

#[test]
fn second_factor_brute_force_locks_the_account() {
    let a = service();
    let otp = staff(&a, "t", "ph1", Role::Pharmacist);
    let (uid, secret, recovery) = first_login(&a, "t", "ph1", &otp, "yakuzaishi-nagai-pw", t0());
    let mut now = t0() + Duration::minutes(5);
    a.login_password("t", "ph1", "yakuzaishi-nagai-pw", IP, now)
        .unwrap();
    let good = code(&secret, now);
    let mut tried = 0;
    for n in 0..1_000_000u32 {
        let guess = format!("{n:06}");
        if guess == good || tried == 5 {
            continue;
        }
        assert_eq!(
            a.verify_totp("t", &uid, &guess, IP, now).unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
        tried += 1;
        if tried == 5 {
            break;
        }
    }
    // Locked now: even the right code and a recovery code are refused.
    assert_eq!(
        a.verify_totp("t", &uid, &good, IP, now).unwrap_err().kind,
        ErrorKind::Throttled
    );
    assert_eq!(
        a.use_recovery_code("t", &uid, &recovery[1], IP, now)
            .unwrap_err()
            .kind,
        ErrorKind::Throttled
    );
    assert_eq!(
        a.login_password("t", "ph1", "yakuzaishi-nagai-pw", IP, now)
            .unwrap_err()
            .kind,
        ErrorKind::Throttled
    );
    now += Duration::seconds(31);
    a.verify_totp("t", &uid, &code(&secret, now), IP, now)
        .unwrap();
    assert_eq!(
        a.store().get_user("t", &uid).unwrap().unwrap().failed_count,
        0
    );
}

#[test]
fn admin_resets_a_lost_second_factor() {
    let a = service();
    let admin = a.bootstrap_admin("t", t0()).unwrap().unwrap();
    let otp = staff(&a, "t", "dr9", Role::Physician);
    let (uid, _secret, recovery) =
        first_login(&a, "t", "dr9", &otp, "isha-no-nagai-pasuwaado", t0());
    let e = a
        .reset_totp(
            Actor::Host("op"),
            "t",
            "dr9",
            "端末紛失",
            t0() + Duration::minutes(1),
        )
        .unwrap();
    assert!(!e.totp_enabled && e.totp_secret.is_none());
    assert_eq!(a.store().remaining_recovery_codes("t", &uid).unwrap(), 0);
    assert!(a
        .use_recovery_code("t", &uid, &recovery[0], IP, t0() + Duration::minutes(2))
        .is_err());
    let r = a
        .login_password(
            "t",
            "dr9",
            "isha-no-nagai-pasuwaado",
            IP,
            t0() + Duration::minutes(3),
        )
        .unwrap();
    assert_eq!(r.step, LoginStep::EnrolSecondFactor);
    assert_eq!(admin.user.username, "admin");
}

#[test]
fn housekeeping_sweeps_all_tenants() {
    let a = service();
    staff(&a, "clinic-a", "old1", Role::Nurse);
    staff(&a, "clinic-b", "old2", Role::Physician);
    let otp = staff(&a, "clinic-b", "fresh", Role::Nurse);
    let (_uid, _, _) = first_login(
        &a,
        "clinic-b",
        "fresh",
        &otp,
        "kangoshi-no-nagai-pw",
        t0() + Duration::days(80),
    );
    let (mut disabled, purged) = a.housekeeping(t0() + Duration::days(91)).unwrap();
    disabled.sort();
    assert_eq!(
        disabled,
        vec![
            ("clinic-a".to_string(), "old1".to_string()),
            ("clinic-b".to_string(), "old2".to_string())
        ]
    );
    // The session of "fresh" (started on day 80) is long idle.
    assert_eq!(purged, 1);
    let (again, purged) = a.housekeeping(t0() + Duration::days(91)).unwrap();
    assert!(again.is_empty());
    assert_eq!(purged, 0);
}
