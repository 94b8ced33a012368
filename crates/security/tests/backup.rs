//! Encrypted backup containers: round trip, key files, and refusal of
//! tampered, truncated and wrong-key inputs before anything is written.

use chrono::{TimeZone, Utc};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::backup::*;
use iryo_security::store::{NewAuditEntry, SecurityStore, SqliteSecurityStore};
use iryo_security::ErrorKind;
use std::fs;
use std::path::Path;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 3, 0, 0).unwrap()
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("db/wal")).unwrap();
    fs::write(
        root.join("db/main.sqlite"),
        vec![0xABu8; 3 * CHUNK_SIZE + 12345],
    )
    .unwrap();
    fs::write(root.join("db/wal/0001.log"), b"write-ahead").unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("日本語.json"), "{\"患者\":\"山田\"}").unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    for rel in [
        "db/main.sqlite",
        "db/wal/0001.log",
        "empty.txt",
        "日本語.json",
    ] {
        assert_eq!(
            fs::read(a.join(rel)).unwrap(),
            fs::read(b.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn key_file_created_0600_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("backup.key");
    let k = generate_key_file(&p).unwrap();
    assert_eq!(read_key_file(&p).unwrap(), k);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_key_file(&p).unwrap_err().kind, ErrorKind::Forbidden);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Never overwritten.
    assert_eq!(generate_key_file(&p).unwrap_err().kind, ErrorKind::Conflict);
    let short = d.path().join("short.key");
    fs::write(&short, [1u8; 16]).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(read_key_file(&short).unwrap_err().kind, ErrorKind::Invalid);
    assert_eq!(
        read_key_file(&d.path().join("missing")).unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn round_trip_with_manifest() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_tree(&src);
    let key = [42u8; 32];
    let out = d.path().join(backup_file_name(now()));
    let m = encrypt_dir(&src, &out, &key, now()).unwrap();
    assert_eq!(m.files.len(), 4);
    assert_eq!(m.files[0].path, "db/main.sqlite");
    assert_eq!(
        m.total_size,
        (3 * CHUNK_SIZE + 12345 + 11 + "{\"患者\":\"山田\"}".len()) as u64
    );
    // The container does not contain the plaintext.
    let raw = fs::read(&out).unwrap();
    assert!(!raw.windows(11).any(|w| w == b"write-ahead"));
    assert_eq!(verify_backup(&out, &key).unwrap(), m);
    let dest = d.path().join("restored");
    let m2 = decrypt_to(&out, &dest, &key).unwrap();
    assert_eq!(m, m2);
    assert_same_tree(&src, &dest);
    // Restoring over a non-empty directory is refused.
    assert_eq!(
        decrypt_to(&out, &dest, &key).unwrap_err().kind,
        ErrorKind::Conflict
    );
    // An empty existing directory is fine.
    let empty = d.path().join("empty-dest");
    fs::create_dir(&empty).unwrap();
    decrypt_to(&out, &empty, &key).unwrap();
    assert_same_tree(&src, &empty);
}

fn no_partial_output(parent: &Path, dest: &Path) {
    assert!(!dest.exists(), "destination must not be created");
    let leftovers: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn tampered_truncated_and_wrong_key_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_tree(&src);
    let key = [42u8; 32];
    let good = d.path().join("good.ibk");
    encrypt_dir(&src, &good, &key, now()).unwrap();
    let bytes = fs::read(&good).unwrap();
    let dest = d.path().join("dest");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bit flip in first chunk", {
            let mut b = bytes.clone();
            b[100] ^= 1;
            b
        }),
        ("bit flip in last chunk", {
            let mut b = bytes.clone();
            let n = b.len();
            b[n - 5] ^= 0x80;
            b
        }),
        ("header changed", {
            let mut b = bytes.clone();
            b[33] ^= 1;
            b
        }),
        ("truncated at end", bytes[..bytes.len() - 1].to_vec()),
        ("final chunk dropped", {
            // Keep header + the three full chunks only.
            let full = 4 + CHUNK_SIZE + 16;
            bytes[..40 + 3 * full].to_vec()
        }),
        ("truncated in the middle", bytes[..bytes.len() / 2].to_vec()),
        ("only header", bytes[..40].to_vec()),
        ("empty file", Vec::new()),
        ("trailing garbage", {
            let mut b = bytes.clone();
            b.extend_from_slice(b"junk");
            b
        }),
        ("chunks swapped", {
            let full = 4 + CHUNK_SIZE + 16;
            let mut b = bytes[..40].to_vec();
            b.extend_from_slice(&bytes[40 + full..40 + 2 * full]);
            b.extend_from_slice(&bytes[40..40 + full]);
            b.extend_from_slice(&bytes[40 + 2 * full..]);
            b
        }),
    ];
    for (name, data) in cases {
        let p = d.path().join("bad.ibk");
        fs::write(&p, &data).unwrap();
        let e = decrypt_to(&p, &dest, &key).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Integrity, "{name}: {e}");
        no_partial_output(d.path(), &dest);
    }
    // Wrong key.
    let e = decrypt_to(&good, &dest, &[43u8; 32]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
    assert!(e.message_ja.contains("鍵"));
    no_partial_output(d.path(), &dest);
    // A chunk from another backup made with the same key (splicing).
    let other = d.path().join("other.ibk");
    encrypt_dir(&src, &other, &key, now()).unwrap();
    let ob = fs::read(&other).unwrap();
    let mut spliced = bytes[..40 + 4 + CHUNK_SIZE + 16].to_vec();
    spliced.extend_from_slice(&ob[40 + 4 + CHUNK_SIZE + 16..]);
    let p = d.path().join("spliced.ibk");
    fs::write(&p, spliced).unwrap();
    assert_eq!(
        decrypt_to(&p, &dest, &key).unwrap_err().kind,
        ErrorKind::Integrity
    );
    no_partial_output(d.path(), &dest);
}

#[test]
fn container_inside_source_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_tree(&src);
    let e = encrypt_dir(&src, &src.join("db/x.ibk"), &[1u8; 32], now()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(!src.join("db/x.ibk").exists());
}

#[test]
fn symlinks_refused() {
    #[cfg(unix)]
    {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let out = d.path().join("x.ibk");
        assert!(encrypt_dir(&src, &out, &[1u8; 32], now()).is_err());
        assert!(!out.exists());
    }
}

#[test]
fn generations_rotate() {
    let d = tempfile::tempdir().unwrap();
    for day in 1..=5 {
        let t = Utc.with_ymd_and_hms(2026, 11, day, 3, 0, 0).unwrap();
        fs::write(d.path().join(backup_file_name(t)), b"x").unwrap();
    }
    fs::write(d.path().join("notes.txt"), b"keep me").unwrap();
    let removed = rotate_generations(d.path(), 3).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed[0].ends_with("iryo-backup-20261101T030000Z.ibk"));
    assert!(d.path().join("iryo-backup-20261105T030000Z.ibk").exists());
    assert!(d.path().join("notes.txt").exists());
    assert!(rotate_generations(d.path(), 3).unwrap().is_empty());
    assert!(rotate_generations(d.path(), 0).is_err());
}

#[test]
fn live_sqlite_store_backup_and_restore() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("security.db");
    let store = SqliteSecurityStore::open(&db).unwrap();
    for i in 0..20 {
        let mut e = NewAuditEntry::new(
            now(),
            "clinic-a",
            "dr-1",
            AuditAction::Read,
            AuditOutcome::Success,
        );
        e.resources = vec![format!("Observation/{i}")];
        store.append_audit(e).unwrap();
    }
    let snap_dir = d.path().join("snap");
    fs::create_dir(&snap_dir).unwrap();
    store.snapshot_to(&snap_dir.join("security.db")).unwrap();
    // The live store keeps working during and after the snapshot.
    store
        .append_audit(NewAuditEntry::new(
            now(),
            "clinic-a",
            "dr-1",
            AuditAction::Logout,
            AuditOutcome::Success,
        ))
        .unwrap();
    let key = [9u8; 32];
    let ibk = d.path().join(backup_file_name(now()));
    encrypt_dir(&snap_dir, &ibk, &key, now()).unwrap();
    let restored = d.path().join("restored");
    decrypt_to(&ibk, &restored, &key).unwrap();
    let r = SqliteSecurityStore::open(&restored.join("security.db")).unwrap();
    assert!(r.integrity_check().unwrap());
    assert_eq!(r.verify_audit_chain("clinic-a").unwrap(), Ok(20));
}
