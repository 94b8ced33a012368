//! The same behaviour on both stores: embedded SQLite always, PostgreSQL
//! when `IRYO_TEST_POSTGRES` names a server (a fresh database is created and
//! dropped per test; without the variable the PostgreSQL part is skipped with
//! a message, as in the rest of the workspace).

use chrono::{DateTime, Duration, TimeZone, Utc};
use iryo_security::accounts::{Accounts, Actor, LoginStep, NewUser, SecurityConfig};
use iryo_security::audit::{AuditAction, AuditOutcome, BreakKind, ChainBreak};
use iryo_security::authz::request_break_glass;
use iryo_security::report::security_report;
use iryo_security::roles::Role;
use iryo_security::store::{
    AuditQuery, NewAuditEntry, PgSecurityStore, SecurityStore, SqliteSecurityStore,
};
use iryo_security::token::JtiRegistry;
use iryo_security::{totp, ErrorKind};

const PG_ENV: &str = "IRYO_TEST_POSTGRES";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
}

/// A fresh PostgreSQL database for one test, dropped on drop.
struct PgDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDb {
    fn create() -> Option<PgDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            eprintln!("SKIPPED: PostgreSQL part of this test ({PG_ENV} is not set)");
            return None;
        };
        let name = format!("iryo_sec_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut c = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("connect to IRYO_TEST_POSTGRES");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        // Replace the database part of the URL.
        let base = match admin_url.rfind('/') {
            Some(i) if admin_url[..i].contains("://") && i > admin_url.find("://").unwrap() + 2 => {
                &admin_url[..i]
            }
            _ => admin_url.as_str(),
        };
        let url = format!("{base}/{name}");
        Some(PgDb {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Runs `f` on a SQLite store and, when configured, on a PostgreSQL store.
fn on_both(f: impl Fn(&str, Box<dyn Fn() -> Box<dyn StoreUnderTest>>)) {
    f(
        "sqlite",
        Box::new(|| Box::new(SqliteSecurityStore::open_in_memory().unwrap())),
    );
    if let Some(db) = PgDb::create() {
        let url = db.url.clone();
        f(
            "postgres",
            Box::new(move || Box::new(PgSecurityStore::connect(&url).unwrap())),
        );
        drop(db);
    }
}

trait StoreUnderTest: SecurityStore + JtiRegistry {}
impl<T: SecurityStore + JtiRegistry> StoreUnderTest for T {}

fn add(store: &dyn StoreUnderTest, tenant: &str, name: &str) -> iryo_security::store::UserRecord {
    iryo_security::store::UserRecord {
        tenant: tenant.into(),
        user_id: format!("{name}-id"),
        username: name.into(),
        display_name: format!("{name} 様"),
        role: Role::Nurse,
        is_admin: false,
        patient: None,
        password_hash: "$argon2id$dummy".into(),
        password_changed_at: t0(),
        password_rotation: false,
        must_change_password: true,
        totp_secret: Some(vec![1, 2, 3]),
        totp_enabled: false,
        totp_last_step: None,
        status: iryo_security::store::AccountStatus::Active,
        status_reason: None,
        expires_at: Some(t0() + Duration::days(30)),
        failed_count: 0,
        locked_until: None,
        created_at: t0(),
        last_login_at: None,
    }
    .tap(|u| store.create_user(u).unwrap())
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}
impl<T> Tap for T {}

#[test]
fn store_conformance() {
    on_both(|engine, make| {
        let s = make();
        let s = s.as_ref();
        // Users.
        let u = add(s, "a", "yamada");
        add(s, "b", "yamada");
        assert_eq!(
            s.get_user("a", "yamada-id").unwrap().unwrap(),
            u,
            "{engine}"
        );
        assert_eq!(
            s.find_user_by_name("a", "YAMADA").unwrap().unwrap().user_id,
            "yamada-id"
        );
        assert_eq!(
            s.create_user(&u).unwrap_err().kind,
            ErrorKind::Conflict,
            "{engine}"
        );
        assert_eq!(s.list_users("a").unwrap().len(), 1);
        assert_eq!(
            s.list_tenants().unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        let mut u2 = u.clone();
        u2.is_admin = true;
        u2.totp_enabled = true;
        u2.last_login_at = Some(t0() + Duration::hours(1));
        s.update_user(&u2).unwrap();
        assert_eq!(s.get_user("a", "yamada-id").unwrap().unwrap(), u2);
        let mut ghost = u2.clone();
        ghost.user_id = "ghost".into();
        assert_eq!(s.update_user(&ghost).unwrap_err().kind, ErrorKind::NotFound);
        // Counters and TOTP steps.
        assert_eq!(s.record_login_failure("a", "yamada-id").unwrap(), 1);
        assert_eq!(s.record_login_failure("a", "yamada-id").unwrap(), 2);
        assert_eq!(
            s.get_user("b", "yamada-id").unwrap().unwrap().failed_count,
            0
        );
        s.set_locked_until("a", "yamada-id", Some(t0())).unwrap();
        assert_eq!(
            s.get_user("a", "yamada-id").unwrap().unwrap().locked_until,
            Some(t0())
        );
        assert!(s.advance_totp_step("a", "yamada-id", 10).unwrap());
        assert!(!s.advance_totp_step("a", "yamada-id", 10).unwrap());
        assert!(!s.advance_totp_step("a", "yamada-id", 9).unwrap());
        assert!(s.advance_totp_step("a", "yamada-id", 11).unwrap());
        // Password history.
        for i in 0..4 {
            s.add_password_history(
                "a",
                "yamada-id",
                &format!("h{i}"),
                t0() + Duration::minutes(i),
            )
            .unwrap();
        }
        assert_eq!(
            s.recent_password_hashes("a", "yamada-id", 2).unwrap(),
            vec!["h3", "h2"]
        );
        assert!(s
            .recent_password_hashes("b", "yamada-id", 5)
            .unwrap()
            .is_empty());
        // Recovery codes.
        s.replace_recovery_codes("a", "yamada-id", &["c1".into(), "c2".into()], t0())
            .unwrap();
        assert!(s.use_recovery_code("a", "yamada-id", "c1", t0()).unwrap());
        assert!(!s.use_recovery_code("a", "yamada-id", "c1", t0()).unwrap());
        assert!(!s.use_recovery_code("b", "yamada-id", "c2", t0()).unwrap());
        assert_eq!(s.remaining_recovery_codes("a", "yamada-id").unwrap(), 1);
        // Sessions.
        let pol = iryo_security::session::SessionPolicy::default();
        let n =
            iryo_security::session::new_session("a", "yamada-id", Some("192.0.2.1"), &pol, t0());
        s.insert_session(&n.record).unwrap();
        assert_eq!(
            s.get_session("a", &n.record.session_hash).unwrap().unwrap(),
            n.record
        );
        assert!(s
            .get_session("b", &n.record.session_hash)
            .unwrap()
            .is_none());
        s.touch_session("a", &n.record.session_hash, t0() + Duration::minutes(3))
            .unwrap();
        assert_eq!(
            s.get_session("a", &n.record.session_hash)
                .unwrap()
                .unwrap()
                .last_seen_at,
            t0() + Duration::minutes(3)
        );
        assert_eq!(s.count_user_sessions("a", "yamada-id").unwrap(), 1);
        assert_eq!(
            s.purge_sessions(t0() + Duration::minutes(5), t0()).unwrap(),
            0
        );
        assert_eq!(
            s.purge_sessions(t0() + Duration::minutes(5), t0() + Duration::minutes(4))
                .unwrap(),
            1
        );
        s.insert_session(&n.record).unwrap();
        assert_eq!(s.delete_user_sessions("a", "yamada-id").unwrap(), 1);
        assert!(!s.delete_session("a", &n.record.session_hash).unwrap());
        // Break-glass.
        let p = iryo_security::authz::Principal {
            tenant: "a".into(),
            subject: "yamada-id".into(),
            role: Some(Role::Nurse),
            is_admin: false,
            scopes: None,
            patient: None,
            break_glass: None,
        };
        let g = request_break_glass(
            &p,
            "救急搬送のため",
            Some("pat-1"),
            Duration::minutes(30),
            t0(),
        )
        .unwrap();
        s.insert_break_glass("a", "yamada-id", &g).unwrap();
        assert_eq!(
            s.active_break_glass("a", "yamada-id", t0() + Duration::minutes(1))
                .unwrap(),
            Some(g.clone())
        );
        assert_eq!(
            s.active_break_glass("a", "yamada-id", t0() + Duration::minutes(30))
                .unwrap(),
            None
        );
        assert_eq!(s.active_break_glass("b", "yamada-id", t0()).unwrap(), None);
        let q = s.unreviewed_break_glass("a").unwrap();
        assert_eq!((q.len(), q[0].user_id.as_str()), (1, "yamada-id"));
        assert!(s.review_break_glass("a", &g.id, "admin", t0()).unwrap());
        assert!(s.unreviewed_break_glass("a").unwrap().is_empty());
        // JTI.
        assert!(s.record_jti("a", "c", "j1", t0()).unwrap());
        assert!(!s.record_jti("a", "c", "j1", t0()).unwrap());
        assert!(s.record_jti("b", "c", "j1", t0()).unwrap());
        // Audit.
        for i in 0..12 {
            let mut e = NewAuditEntry::new(
                t0() + Duration::seconds(i),
                "a",
                "dr",
                AuditAction::Read,
                AuditOutcome::Success,
            );
            e.patient = Some(format!("pat-{}", i % 2));
            e.resources = vec![format!("Observation/{i}")];
            e.details = serde_json::from_str(r#"{"query": "x", "n": 1.50}"#).unwrap();
            s.append_audit(e).unwrap();
        }
        s.append_audit(NewAuditEntry::new(
            t0(),
            "b",
            "dr",
            AuditAction::Login,
            AuditOutcome::Success,
        ))
        .unwrap();
        assert_eq!(s.verify_audit_chain("a").unwrap(), Ok(12), "{engine}");
        // A batch (several tenants mixed) is one transaction and keeps the chains.
        let batch: Vec<_> = (0..5)
            .map(|i| {
                NewAuditEntry::new(
                    t0(),
                    if i % 2 == 0 { "c" } else { "d" },
                    "dr",
                    AuditAction::Search,
                    AuditOutcome::Success,
                )
            })
            .collect();
        let recs = s.append_audit_many(batch).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.entry.seq).collect::<Vec<_>>(),
            vec![1, 1, 2, 2, 3]
        );
        assert_eq!(s.verify_audit_chain("c").unwrap(), Ok(3));
        assert_eq!(s.verify_audit_chain("d").unwrap(), Ok(2));
        let mut bad = vec![NewAuditEntry::new(
            t0(),
            "c",
            "dr",
            AuditAction::Read,
            AuditOutcome::Success,
        )];
        bad.push(NewAuditEntry::new(
            t0(),
            "c",
            "dr",
            AuditAction::Read,
            AuditOutcome::Success,
        ));
        bad[1].details = serde_json::json!("not an object");
        assert!(s.append_audit_many(bad).is_err());
        assert_eq!(
            s.verify_audit_chain("c").unwrap(),
            Ok(3),
            "nothing of a refused batch is written"
        );
        assert_eq!(s.audit_tenants().unwrap(), vec!["a", "b", "c", "d"]);
        let r = s.audit_range("a", 5, 3).unwrap();
        assert_eq!(
            r.iter().map(|x| x.entry.seq).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(r[0].entry.details["n"].to_string(), "1.50");
        assert_eq!(s.audit_head("a").unwrap().unwrap().entry.seq, 12);
        let q = AuditQuery {
            patient: Some("pat-1".into()),
            from: Some(t0() + Duration::seconds(4)),
            ..Default::default()
        };
        assert_eq!(s.search_audit("a", &q).unwrap().len(), 4);
        let q = AuditQuery {
            patient: Some("pat-1' OR '1'='1".into()),
            ..Default::default()
        };
        assert!(s.search_audit("a", &q).unwrap().is_empty());
        assert!(s
            .last_audit_of("a", AuditAction::Read, AuditOutcome::Success)
            .unwrap()
            .is_some());
        assert!(s
            .last_audit_of("a", AuditAction::Backup, AuditOutcome::Success)
            .unwrap()
            .is_none());
    });
}

#[test]
fn postgres_append_only_and_tampering() {
    let Some(db) = PgDb::create() else { return };
    let s = PgSecurityStore::connect(&db.url).unwrap();
    for i in 0..6 {
        s.append_audit(NewAuditEntry::new(
            t0() + Duration::seconds(i),
            "a",
            "dr",
            AuditAction::Read,
            AuditOutcome::Success,
        ))
        .unwrap();
    }
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    assert!(c
        .execute("UPDATE sec_audit SET actor = 'x' WHERE seq = 2", &[])
        .is_err());
    assert!(c
        .execute("DELETE FROM sec_audit WHERE seq = 2", &[])
        .is_err());
    c.batch_execute("ALTER TABLE sec_audit DISABLE TRIGGER sec_audit_no_change")
        .unwrap();
    c.execute("UPDATE sec_audit SET actor = 'x' WHERE seq = 2", &[])
        .unwrap();
    assert_eq!(
        s.verify_audit_chain("a").unwrap(),
        Err(ChainBreak {
            seq: 2,
            kind: BreakKind::Altered
        })
    );
    c.execute("DELETE FROM sec_audit WHERE seq = 2", &[])
        .unwrap();
    assert_eq!(
        s.verify_audit_chain("a").unwrap(),
        Err(ChainBreak {
            seq: 2,
            kind: BreakKind::Deleted
        })
    );
    drop(c);
    drop(s);
    drop(db);
}

#[test]
fn postgres_concurrent_appends_keep_one_chain() {
    let Some(db) = PgDb::create() else { return };
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let s = PgSecurityStore::connect(&url).unwrap();
                for i in 0..20 {
                    s.append_audit(NewAuditEntry::new(
                        t0() + Duration::seconds(k * 100 + i),
                        "a",
                        "dr",
                        AuditAction::Read,
                        AuditOutcome::Success,
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = PgSecurityStore::connect(&db.url).unwrap();
    assert_eq!(s.verify_audit_chain("a").unwrap(), Ok(80));
    drop(s);
    drop(db);
}

fn login_flow<S: SecurityStore>(engine: &str, store: S) {
    let a = Accounts::new(
        store,
        SecurityConfig {
            secret_key: Some([1u8; 32]),
            ..Default::default()
        },
    );
    let admin = a.bootstrap_admin("clinic", t0()).unwrap().unwrap();
    let otp = admin.one_time_password.unwrap();
    let r = a
        .login_password("clinic", "admin", &otp, "127.0.0.1", t0())
        .unwrap();
    assert_eq!(r.step, LoginStep::ChangePassword, "{engine}");
    let uid = r.user.user_id;
    a.change_password("clinic", &uid, &otp, "kanrisha-no-nagai-pw", t0())
        .unwrap();
    let e = a.begin_totp_enrolment("clinic", &uid).unwrap();
    let code = totp::code_at_step(&e.secret, totp::time_step(t0())).unwrap();
    let (_, ticket) = a.confirm_totp("clinic", &uid, &code, t0()).unwrap();
    let s = a.start_session(ticket, None, "127.0.0.1", t0()).unwrap();
    let (_, p) = a
        .validate_session("clinic", &s.id, t0() + Duration::minutes(1))
        .unwrap();
    assert!(p.is_admin);
    a.add_user(
        Actor::User(&p),
        NewUser {
            tenant: "clinic".into(),
            username: "nurse1".into(),
            display_name: "看護 花子".into(),
            role: Role::Nurse,
            is_admin: false,
            patient: None,
            password: None,
            expires_at: None,
        },
        t0(),
    )
    .unwrap();
    for i in 0..5 {
        assert!(a
            .login_password("clinic", "nurse1", &format!("x{i}"), "127.0.0.1", t0())
            .is_err());
    }
    assert_eq!(
        a.login_password("clinic", "nurse1", "x", "127.0.0.1", t0())
            .unwrap_err()
            .kind,
        ErrorKind::Throttled
    );
    let rows = security_report(a.store(), a.config(), "clinic", t0()).unwrap();
    assert!(
        rows.iter().find(|r| r.id == "R7-LOG").unwrap().ok,
        "{engine}"
    );
    assert!(!rows.iter().find(|r| r.id == "R7-2FA").unwrap().ok);
    assert_eq!(a.account_report("clinic", t0()).unwrap().len(), 2);
}

#[test]
fn login_flow_on_both_stores() {
    login_flow("sqlite", SqliteSecurityStore::open_in_memory().unwrap());
    if let Some(db) = PgDb::create() {
        login_flow("postgres", PgSecurityStore::connect(&db.url).unwrap());
        drop(db);
    }
}
