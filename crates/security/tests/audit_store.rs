//! The audit log in the SQLite store: per-tenant chains, append-only guard,
//! detection of rows altered, deleted or inserted directly in the database,
//! concurrent appends, search (including injection attempts), FHIR view and
//! the checklist report.

use chrono::{DateTime, Duration, TimeZone, Utc};
use iryo_security::accounts::{Accounts, SecurityConfig};
use iryo_security::audit::{self, AuditAction, AuditOutcome, BreakKind, ChainBreak};
use iryo_security::report::{render_table, security_report, SYSTEM_TENANT};
use iryo_security::store::{AuditQuery, NewAuditEntry, SecurityStore, SqliteSecurityStore};
use iryo_security::{totp, ErrorKind};
use rusqlite::{params, Connection};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
}

fn entry(tenant: &str, i: i64, action: AuditAction) -> NewAuditEntry {
    let mut e = NewAuditEntry::new(
        t0() + Duration::seconds(i),
        tenant,
        "dr-1",
        action,
        AuditOutcome::Success,
    );
    e.role = Some("physician".into());
    e.patient = Some(format!("pat-{}", i % 3));
    e.resources = vec![format!("Observation/{i}")];
    e.source_ip = Some("192.0.2.7".into());
    e.details = json!({"query": format!("Observation?patient=pat-{}", i % 3)});
    e
}

fn fill(store: &SqliteSecurityStore, tenant: &str, n: i64) {
    for i in 1..=n {
        store
            .append_audit(entry(tenant, i, AuditAction::Search))
            .unwrap();
    }
}

fn raw(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

#[test]
fn chains_are_per_tenant_and_verify() {
    let s = SqliteSecurityStore::open_in_memory().unwrap();
    fill(&s, "clinic-a", 10);
    fill(&s, "clinic-b", 4);
    assert_eq!(s.verify_audit_chain("clinic-a").unwrap(), Ok(10));
    assert_eq!(s.verify_audit_chain("clinic-b").unwrap(), Ok(4));
    assert_eq!(s.verify_audit_chain("clinic-c").unwrap(), Ok(0));
    let head = s.audit_head("clinic-b").unwrap().unwrap();
    assert_eq!(head.entry.seq, 4);
    let all = s.audit_range("clinic-a", 1, 100).unwrap();
    assert_eq!(all[0].prev_hash, audit::GENESIS_HASH);
    audit::verify(&all).unwrap();
    // Details must be an object.
    let mut bad = entry("clinic-a", 1, AuditAction::Read);
    bad.details = json!([1]);
    assert_eq!(s.append_audit(bad).unwrap_err().kind, ErrorKind::Invalid);
}

#[test]
fn append_only_guard_and_direct_tampering_detected() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sec.db");
    let s = SqliteSecurityStore::open(&path).unwrap();
    fill(&s, "clinic-a", 10);
    fill(&s, "clinic-b", 3);
    let c = raw(&path);
    // The guard refuses changes through SQL.
    assert!(c
        .execute("UPDATE sec_audit SET outcome = 'denied' WHERE seq = 5", [])
        .is_err());
    assert!(c
        .execute("DELETE FROM sec_audit WHERE seq = 5", [])
        .is_err());

    // An attacker with full database access removes the guard …
    c.execute_batch("DROP TRIGGER sec_audit_no_update; DROP TRIGGER sec_audit_no_delete;")
        .unwrap();

    // … alters an entry: detected.
    c.execute(
        "UPDATE sec_audit SET patient_ref = 'pat-x' WHERE tenant = 'clinic-a' AND seq = 5",
        [],
    )
    .unwrap();
    assert_eq!(
        s.verify_audit_chain("clinic-a").unwrap(),
        Err(ChainBreak {
            seq: 5,
            kind: BreakKind::Altered
        })
    );
    // The other tenant's chain is intact.
    assert_eq!(s.verify_audit_chain("clinic-b").unwrap(), Ok(3));
    c.execute(
        "UPDATE sec_audit SET patient_ref = 'pat-2' WHERE tenant = 'clinic-a' AND seq = 5",
        [],
    )
    .unwrap();
    assert_eq!(s.verify_audit_chain("clinic-a").unwrap(), Ok(10));

    // … alters the time by one microsecond: detected.
    let t: String = c
        .query_row(
            "SELECT recorded FROM sec_audit WHERE tenant='clinic-a' AND seq=2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "UPDATE sec_audit SET recorded = $1 WHERE tenant='clinic-a' AND seq=2",
        params![t.replace(".000000Z", ".000001Z")],
    )
    .unwrap();
    assert_eq!(
        s.verify_audit_chain("clinic-a").unwrap().unwrap_err().seq,
        2
    );
    c.execute(
        "UPDATE sec_audit SET recorded = $1 WHERE tenant='clinic-a' AND seq=2",
        params![t],
    )
    .unwrap();

    // … deletes an entry: detected.
    let saved: Vec<(String, String)> = {
        let mut st = c
            .prepare("SELECT prev_hash, hash FROM sec_audit WHERE tenant='clinic-a' AND seq=7")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(saved.len(), 1);
    c.execute(
        "DELETE FROM sec_audit WHERE tenant = 'clinic-a' AND seq = 7",
        [],
    )
    .unwrap();
    assert_eq!(
        s.verify_audit_chain("clinic-a").unwrap(),
        Err(ChainBreak {
            seq: 7,
            kind: BreakKind::Deleted
        })
    );
    // … and renumbers the rest to hide it: still detected as a deletion.
    c.execute(
        "UPDATE sec_audit SET seq = seq - 1 WHERE tenant = 'clinic-a' AND seq > 7",
        [],
    )
    .unwrap();
    assert_eq!(
        s.verify_audit_chain("clinic-a").unwrap(),
        Err(ChainBreak {
            seq: 7,
            kind: BreakKind::Deleted
        })
    );
}

#[test]
fn inserted_rows_detected() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sec.db");
    let s = SqliteSecurityStore::open(&path).unwrap();
    fill(&s, "clinic-a", 8);
    let c = raw(&path);
    c.execute_batch("DROP TRIGGER sec_audit_no_update; DROP TRIGGER sec_audit_no_delete;")
        .unwrap();
    // Make room at seq 4 and insert a forged row that links correctly to seq 3.
    c.execute(
        "UPDATE sec_audit SET seq = seq + 1000 WHERE tenant='clinic-a' AND seq >= 4",
        [],
    )
    .unwrap();
    c.execute(
        "UPDATE sec_audit SET seq = seq - 999 WHERE tenant='clinic-a' AND seq > 1000",
        [],
    )
    .unwrap();
    let prev = s.audit_range("clinic-a", 3, 1).unwrap().remove(0);
    let mut forged = entry("clinic-a", 4, AuditAction::Delete).clone();
    forged.actor = "intruder".into();
    let e = audit::AuditEntry {
        seq: 4,
        time: prev.entry.time,
        tenant: forged.tenant,
        actor: forged.actor,
        role: forged.role,
        action: forged.action,
        source_ip: forged.source_ip,
        patient: forged.patient,
        resources: forged.resources,
        outcome: forged.outcome,
        details: forged.details,
    };
    let rec = audit::seal(e, Some(&prev));
    c.execute(
        "INSERT INTO sec_audit (tenant, seq, recorded, actor, role, action, source_ip, patient_ref, resources, outcome, details, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
        params![
            rec.entry.tenant,
            4i64,
            audit::format_time(rec.entry.time),
            rec.entry.actor,
            rec.entry.role,
            rec.entry.action.code(),
            rec.entry.source_ip,
            rec.entry.patient,
            serde_json::to_string(&rec.entry.resources).unwrap(),
            rec.entry.outcome.code(),
            rec.entry.details.to_string(),
            rec.prev_hash,
            rec.hash
        ],
    )
    .unwrap();
    assert_eq!(
        s.verify_audit_chain("clinic-a").unwrap(),
        Err(ChainBreak {
            seq: 4,
            kind: BreakKind::Inserted
        })
    );
    // A row that cannot even be read is an integrity error, not a panic.
    c.execute(
        "UPDATE sec_audit SET details = 'not json' WHERE tenant='clinic-a' AND seq = 2",
        [],
    )
    .unwrap();
    let e = s.verify_audit_chain("clinic-a").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Integrity);
}

#[test]
fn concurrent_appends_from_two_connections_keep_one_chain() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sec.db");
    let a = Arc::new(SqliteSecurityStore::open(&path).unwrap());
    let b = Arc::new(SqliteSecurityStore::open(&path).unwrap());
    let mut handles = Vec::new();
    for (k, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        handles.push(std::thread::spawn(move || {
            for i in 0..25 {
                store
                    .append_audit(entry("clinic-a", (k * 100 + i) as i64, AuditAction::Read))
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(a.verify_audit_chain("clinic-a").unwrap(), Ok(100));
}

#[test]
fn search_is_parameterised_and_renders_fhir() {
    let s = SqliteSecurityStore::open_in_memory().unwrap();
    fill(&s, "clinic-a", 9);
    fill(&s, "clinic-b", 9);
    let q = AuditQuery {
        patient: Some("pat-1".into()),
        ..Default::default()
    };
    let r = s.search_audit("clinic-a", &q).unwrap();
    assert_eq!(r.len(), 3);
    assert!(r
        .iter()
        .all(|x| x.entry.tenant == "clinic-a" && x.entry.patient.as_deref() == Some("pat-1")));
    let q = AuditQuery {
        from: Some(t0() + Duration::seconds(3)),
        to: Some(t0() + Duration::seconds(6)),
        ..Default::default()
    };
    let r = s.search_audit("clinic-a", &q).unwrap();
    assert_eq!(
        r.iter().map(|x| x.entry.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let q = AuditQuery {
        limit: Some(2),
        actor: Some("dr-1".into()),
        action: Some(AuditAction::Search),
        ..Default::default()
    };
    assert_eq!(s.search_audit("clinic-a", &q).unwrap().len(), 2);
    // Injection attempts are plain values.
    for evil in [
        "pat-1' OR '1'='1",
        "x'); DROP TABLE sec_audit; --",
        "%",
        "pat-1\" OR 1=1 --",
    ] {
        let q = AuditQuery {
            patient: Some(evil.into()),
            actor: Some(evil.into()),
            ..Default::default()
        };
        assert!(s.search_audit("clinic-a", &q).unwrap().is_empty(), "{evil}");
        assert!(s
            .search_audit(evil, &AuditQuery::default())
            .unwrap()
            .is_empty());
    }
    assert_eq!(s.verify_audit_chain("clinic-a").unwrap(), Ok(9));
    let ev =
        audit::to_fhir_audit_event(&s.search_audit("clinic-a", &AuditQuery::default()).unwrap()[0]);
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert_eq!(
        ev["meta"]["profile"][0],
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery"
    );
    assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/pat-1");
}

#[test]
fn checklist_report() {
    let a = Accounts::new(
        SqliteSecurityStore::open_in_memory().unwrap(),
        SecurityConfig::default(),
    );
    let admin = a.bootstrap_admin("clinic-a", t0()).unwrap().unwrap();
    let otp = admin.one_time_password.unwrap();
    let cfg = a.config().clone();
    let get = |rows: &[iryo_security::report::ReportRow], id: &str| {
        rows.iter().find(|r| r.id == id).unwrap().clone()
    };

    // Fresh install: admin without 2FA, no backup yet.
    let rows = security_report(a.store(), &cfg, "clinic-a", t0()).unwrap();
    assert!(!get(&rows, "R7-2FA").ok);
    assert!(get(&rows, "R7-ADMIN").ok);
    assert!(get(&rows, "R7-ADMIN")
        .evidence_ja
        .contains("admin(システム管理者)"));
    assert!(get(&rows, "R7-⑦").ok);
    assert!(!get(&rows, "R7-BACKUP").ok);
    assert!(!get(&rows, "R7-RESTORE").ok);
    assert!(get(&rows, "R7-LOG").ok, "{:?}", get(&rows, "R7-LOG"));

    // Complete the first login with TOTP; log a backup and a restore test.
    let r = a
        .login_password("clinic-a", "admin", &otp, "127.0.0.1", t0())
        .unwrap();
    let uid = r.user.user_id;
    a.change_password("clinic-a", &uid, &otp, "kanrisha-no-nagai-pw", t0())
        .unwrap();
    let e = a.begin_totp_enrolment("clinic-a", &uid).unwrap();
    let code = totp::code_at_step(&e.secret, totp::time_step(t0())).unwrap();
    let (_, ticket) = a.confirm_totp("clinic-a", &uid, &code, t0()).unwrap();
    a.start_session(ticket, None, "127.0.0.1", t0()).unwrap();
    a.store()
        .append_audit(NewAuditEntry::new(
            t0(),
            SYSTEM_TENANT,
            "host:backup",
            AuditAction::Backup,
            AuditOutcome::Success,
        ))
        .unwrap();
    a.store()
        .append_audit(NewAuditEntry::new(
            t0(),
            "clinic-a",
            "host:restore-test",
            AuditAction::Restore,
            AuditOutcome::Success,
        ))
        .unwrap();
    let rows = security_report(a.store(), &cfg, "clinic-a", t0() + Duration::days(1)).unwrap();
    for id in [
        "R7-2FA",
        "R7-⑦",
        "R7-⑧",
        "R7-ROLE",
        "R7-ADMIN",
        "R7-ACCOUNT",
        "R7-LOG",
        "R7-BACKUP",
        "R7-RESTORE",
        "GL6-BREAKGLASS",
    ] {
        assert!(get(&rows, id).ok, "{id}: {:?}", get(&rows, id));
        assert_eq!(get(&rows, id).answer_ja(), "はい");
    }
    assert!(get(&rows, "R7-BACKUP")
        .evidence_ja
        .contains("2026-11-25 09:00 JST"));
    let table = render_table(&rows);
    assert!(table.starts_with("| 項目 | 内容 | 回答 | 根拠 |"));
    assert_eq!(table.lines().count(), rows.len() + 2);

    // Time passes: the backup is stale and the admin account dormant.
    let rows = security_report(a.store(), &cfg, "clinic-a", t0() + Duration::days(100)).unwrap();
    assert!(!get(&rows, "R7-BACKUP").ok);
    assert!(!get(&rows, "R7-ACCOUNT").ok);
    assert_eq!(get(&rows, "R7-ACCOUNT").answer_ja(), "いいえ");
}
