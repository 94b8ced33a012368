//! The security commands of the `iryo` binary: first administrator, users, tokens against a
//! running server, audit verification, the checklist report, encrypted backup and restore.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn iryo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iryo"))
        .args(args)
        .output()
        .expect("run iryo")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iryo serve` and returns it with the lines it printed up to the "API at" line.
fn serve(data: &str, port: u16) -> (Server, Vec<String>) {
    serve_with(data, port, &[])
}

fn serve_with(data: &str, port: u16, extra: &[&str]) -> (Server, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iryo"))
        .args([
            "serve",
            "--data",
            data,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = l.contains("FHIR R4 API at");
        lines.push(l);
        if done {
            break;
        }
    }
    (Server(child), lines)
}

/// A raw HTTP/1.1 GET; returns the status code (0 when the server answered no HTTP).
fn http_get(port: u16, path: &str, token: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn users_tokens_audit_report_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let port = free_port();
    let (srv, lines) = serve(&d, port);
    let all = lines.join("\n");
    assert!(all.contains("初回パスワード"), "{all}");
    assert!(all.contains("admin"), "{all}");

    // users are managed while the server runs
    let o = iryo(&[
        "user",
        "add",
        "--data",
        &d,
        "--username",
        "doc",
        "--name",
        "医師 太郎",
        "--role",
        "physician",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("one-time password"));
    let o = iryo(&[
        "user",
        "add",
        "--data",
        &d,
        "--username",
        "x",
        "--name",
        "x",
        "--role",
        "wizard",
    ]);
    assert!(!o.status.success());
    let o = iryo(&["user", "list", "--data", &d]);
    let t = text(&o);
    assert!(
        t.contains("doc") && t.contains("医師") && t.contains("admin"),
        "{t}"
    );

    let o = iryo(&[
        "token",
        "issue",
        "--data",
        &d,
        "--user",
        "doc",
        "--scopes",
        "user/*.cruds",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(http_get(port, "/fhir/Patient", Some(&token)), 200);
    assert_eq!(http_get(port, "/fhir/Patient", None), 401);
    assert_eq!(http_get(port, "/fhir/Patient", Some("not.a.token")), 401);
    // metadata is public
    assert_eq!(http_get(port, "/fhir/metadata", None), 200);
    drop(srv);

    let o = iryo(&["audit", "verify", "--data", &d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("default: 正常"), "{}", text(&o));

    let o = iryo(&["security", "report", "--data", &d, "--tenant", "default"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("はい") || t.contains("いいえ"), "{t}");

    let o = iryo(&["user", "disable", "--data", &d, "--username", "doc"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&[
        "token",
        "issue",
        "--data",
        &d,
        "--user",
        "doc",
        "--scopes",
        "user/*.rs",
    ]);
    assert!(!o.status.success(), "a disabled user gets no token");
    let o = iryo(&[
        "token",
        "issue",
        "--data",
        &d,
        "--user",
        "doc",
        "--scopes",
        "user/*.rs",
        "--lifetime",
        "7200",
    ]);
    assert!(!o.status.success());
}

#[test]
fn backup_and_restore_verify_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let b = dir.path().join("backups").display().to_string();
    let key = dir.path().join("backup.key").display().to_string();
    let o = iryo(&["tenant", "create", "--data", &d, "clinic-a"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&[
        "user",
        "add",
        "--data",
        &d,
        "--username",
        "nurse1",
        "--name",
        "看護 花子",
        "--role",
        "nurse",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for _ in 0..3 {
        let o = iryo(&[
            "backup", "--data", &d, "--to", &b, "--key", &key, "--keep", "2",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let containers: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ibk"))
        .collect();
    assert_eq!(containers.len(), 2, "two generations kept");

    // wrong key: refused, data untouched
    let wrong = dir.path().join("wrong.key").display().to_string();
    let o = iryo(&[
        "backup",
        "--data",
        &d,
        "--to",
        dir.path().join("other").to_str().unwrap(),
        "--key",
        &wrong,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&["restore", "--data", &d, "--from", &b, "--key", &wrong]);
    assert!(!o.status.success());
    // tampered container: refused
    let mut newest: Vec<_> = containers.iter().map(|e| e.path()).collect();
    newest.sort();
    let victim = newest[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let tampered = dir.path().join("tampered.ibk");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = iryo(&[
        "restore",
        "--data",
        &d,
        "--from",
        tampered.to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert!(!o.status.success());
    // a good restore replaces the data and keeps the previous directory
    let o = iryo(&["restore", "--data", &d, "--from", &b, "--key", &key]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&["user", "list", "--data", &d]);
    assert!(text(&o).contains("nurse1"), "{}", text(&o));
    let o = iryo(&["tenant", "list", "--data", &d]);
    assert!(text(&o).contains("clinic-a"), "{}", text(&o));
    // the restore test shows in the report
    let o = iryo(&["security", "report", "--data", &d, "--tenant", "default"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn serve_checks_the_smart_clients_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let bad = dir.path().join("clients.json");
    std::fs::write(&bad, r#"[{"tenant": "default", "client_id": "lab"}]"#).unwrap();
    let o = iryo(&[
        "serve",
        "--data",
        &d,
        "--listen",
        "127.0.0.1:0",
        "--smart-clients",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("scopes"), "{}", text(&o));
    let o = iryo(&["serve", "--data", &d, "--listen", "0.0.0.0:0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--behind-proxy"), "{}", text(&o));
}

#[test]
fn serve_over_tls_13_and_12_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let Ok(o) = o else {
        eprintln!("SKIPPED: openssl is not installed");
        return;
    };
    assert!(o.status.success(), "{}", text(&o));
    let port = free_port();
    let (srv, lines) = serve_with(
        &d,
        port,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(lines.join("\n").contains("https://"), "{lines:?}");
    let url = format!("https://127.0.0.1:{port}/fhir/metadata");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Ok(code) = curl(&["--tlsv1.3"]) else {
        eprintln!("SKIPPED: curl is not installed");
        return;
    };
    assert_eq!(code, "200");
    assert_eq!(curl(&["--tlsv1.2", "--tls-max", "1.2"]).unwrap(), "200");
    assert_ne!(curl(&["--tlsv1.1", "--tls-max", "1.1"]).unwrap(), "200");
    // plain HTTP to the TLS port gets no answer
    assert_eq!(http_get(port, "/fhir/metadata", None), 0);
    drop(srv);
    // a wrong key file is refused at start
    let o = iryo(&[
        "serve",
        "--data",
        &d,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

/// A PostgreSQL store is backed up from one snapshot (FHIR and security tables) and restored
/// in one transaction, after the container is verified; a tampered container changes nothing.
#[test]
fn postgres_backup_and_restore() {
    let Ok(admin) = std::env::var("IRYO_TEST_POSTGRES") else {
        eprintln!("SKIPPED: PostgreSQL part of this test (IRYO_TEST_POSTGRES is not set)");
        return;
    };
    let name = format!("iryo_backup_{}", std::process::id());
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .expect("drop old db");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create db");
    let url = match admin.rsplit_once('/') {
        Some((base, _)) if base.contains("://") && base.len() > base.find("://").unwrap() + 3 => {
            format!("{base}/{name}")
        }
        _ => format!("{admin}/{name}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let b = dir.path().join("backups").display().to_string();
    let key = dir.path().join("backup.key").display().to_string();
    let ndjson = |id: &str| {
        let p = dir.path().join(format!("{id}.ndjson"));
        std::fs::write(
            &p,
            format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\",\"gender\":\"female\"}}\n"),
        )
        .unwrap();
        p.display().to_string()
    };
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--database", url.as_str(), "--data", d.as_str()]);
        let o = iryo(&a);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        o
    };
    run(&["tenant", "create", "clinic-a"]);
    run(&[
        "user",
        "add",
        "--username",
        "nurse1",
        "--name",
        "看護 花子",
        "--role",
        "nurse",
    ]);
    run(&["import", &ndjson("p1")]);
    run(&["backup", "--to", &b, "--key", &key]);
    // changes after the backup
    run(&["import", &ndjson("p2")]);
    run(&["tenant", "create", "clinic-b"]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("connect db");
    let mut count = |id: &str| -> i64 {
        db.query_one("SELECT count(*) FROM resource WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    assert_eq!(count("p2"), 1);
    // a tampered container is refused before anything is touched
    let container = std::fs::read_dir(&b)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ibk"))
        .expect("container");
    let mut bytes = std::fs::read(&container).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let tampered = dir.path().join("tampered.ibk");
    std::fs::write(&tampered, &bytes).unwrap();
    let mut a = vec![
        "restore",
        "--from",
        tampered.to_str().unwrap(),
        "--key",
        key.as_str(),
    ];
    a.extend(["--database", url.as_str(), "--data", d.as_str()]);
    assert!(!iryo(&a).status.success());
    assert_eq!(count("p2"), 1, "nothing replaced");
    // a SQLite restore of a PostgreSQL backup is refused
    let o = iryo(&[
        "restore",
        "--data",
        &dir.path().join("other").display().to_string(),
        "--from",
        &b,
        "--key",
        &key,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    // a load that fails half-way (a table no longer has the backup's columns) rolls back:
    // the tables emptied before it are as they were, the data directory is not swapped
    let mut admin_db = postgres::Client::connect(&url, postgres::NoTls).expect("connect db");
    admin_db
        .batch_execute("ALTER TABLE tenant ADD COLUMN extra BIGINT")
        .unwrap();
    let mut a = vec!["restore", "--from", b.as_str(), "--key", key.as_str()];
    a.extend(["--database", url.as_str(), "--data", d.as_str()]);
    let o = iryo(&a);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(count("p2"), 1, "rolled back: {}", text(&o));
    assert!(!std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("before-restore")));
    admin_db
        .batch_execute("ALTER TABLE tenant DROP COLUMN extra")
        .unwrap();
    // the good restore: the state of the backup
    run(&["restore", "--from", &b, "--key", &key]);
    assert_eq!(count("p1"), 1);
    assert_eq!(count("p2"), 0);
    let o = run(&["tenant", "list"]);
    assert!(
        text(&o).contains("clinic-a") && !text(&o).contains("clinic-b"),
        "{}",
        text(&o)
    );
    let o = run(&["user", "list"]);
    assert!(text(&o).contains("nurse1"), "{}", text(&o));
    // the sequences came back too: new writes get fresh keys
    run(&["import", &ndjson("p3")]);
    run(&["import", &ndjson("p2")]);
    assert_eq!(count("p3") + count("p2"), 2);
    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// `iryo serve` disables dormant accounts by itself (at start, then hourly): with
/// `--dormant-days 0` every active account counts as unused, so the nurse added before the
/// start is disabled without anyone running a command.
#[test]
fn serve_disables_dormant_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    let o = iryo(&[
        "user",
        "add",
        "--data",
        &d,
        "--username",
        "nurse1",
        "--name",
        "看護 花子",
        "--role",
        "nurse",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&["user", "list", "--data", &d]);
    let line = |t: &str| {
        t.lines()
            .find(|l| l.contains("nurse1"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(!line(&text(&o)).contains("disabled"), "{}", text(&o));
    let port = free_port();
    let (srv, lines) = serve_with(&d, port, &["--dormant-days", "0"]);
    let mut disabled = false;
    for _ in 0..50 {
        let o = iryo(&["user", "list", "--data", &d]);
        if line(&text(&o)).contains("disabled") {
            disabled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(srv);
    assert!(
        disabled,
        "nurse1 still active; serve printed: {}",
        lines.join("\n")
    );
    // the disabling is in the access log, which still verifies
    let o = iryo(&["audit", "verify", "--data", &d]);
    assert!(o.status.success(), "{}", text(&o));
}

/// `iryo audit export` writes every entry of every chain as a FHIR AuditEvent per line, in
/// chain order, and prints each chain's head for the off-host checkpoint.
#[test]
fn audit_export_for_review() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data").display().to_string();
    for name in ["nurse1", "clerk1"] {
        let o = iryo(&[
            "user",
            "add",
            "--data",
            &d,
            "--username",
            name,
            "--name",
            "職員",
            "--role",
            "nurse",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = iryo(&["user", "disable", "--data", &d, "--username", "clerk1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.path().join("audit.ndjson");
    let o = iryo(&[
        "audit",
        "export",
        "--data",
        &d,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report = text(&o);
    assert!(report.contains("chain head seq"), "{report}");
    let body = std::fs::read_to_string(&out).unwrap();
    let events: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON AuditEvent per line"))
        .collect();
    assert!(events.len() >= 3, "{body}");
    assert!(events.iter().all(|e| e["resourceType"] == "AuditEvent"));
    // the printed counts add up to the lines written
    let printed: u64 = report
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert_eq!(printed, events.len() as u64, "{report}");
    // the export itself is logged, and the chains still verify
    let o = iryo(&["audit", "verify", "--data", &d]);
    assert!(o.status.success(), "{}", text(&o));
}
