//! `iryo clins …` against a running `iryo serve`: bindings of users, clients and tenants to
//! 医療機関番号 / 保険者番号 take effect on the server's /clins/fhir without a restart, and a
//! clinic tenant's physician submits with `$clins-submit` through the server's access policy.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output};

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

fn ok(args: &[&str]) -> String {
    let o = iryo(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = iryo(args);
    assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
    text(&o)
}

struct Server {
    child: Child,
    listen: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iryo"))
        .args(["serve", "--data", data, "--listen", &listen])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.contains("FHIR R4 API at") && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        log.push_str(&line);
    }
    assert!(log.contains("FHIR R4 API at"), "{log}");
    // keep draining stderr so that the server never blocks on a full pipe
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    Server { child, listen }
}

/// `GET path` with a bearer token: (status line, body).
fn get(srv: &Server, path: &str, token: &str) -> (String, String) {
    http(srv, "GET", path, token, "")
}

/// Any request with a bearer token and a FHIR JSON body: (status line, body).
fn http(srv: &Server, method: &str, path: &str, token: &str, body: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(&srv.listen).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        srv.listen,
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or("").to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn token(data: &str, who: &[&str]) -> String {
    token_for(data, "clins-platform", who)
}

fn token_for(data: &str, tenant: &str, who: &[&str]) -> String {
    let mut args = vec![
        "token",
        "issue",
        "--data",
        data,
        "--tenant",
        tenant,
        "--scopes",
        "user/*.cruds",
    ];
    args.extend_from_slice(who);
    let out = ok(&args);
    out.split_whitespace()
        .find(|w| w.matches('.').count() == 2 && w.len() > 40)
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string()
}

#[test]
fn bind_institutions_and_insurers_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let srv = serve(&d);

    // a backend client of hospital A: refused until bound, then acts as institution A
    let tok_a = token(&d, &["--client", "hosp-a"]);
    let (s, body) = get(&srv, "/clins/fhir/$referrals", &tok_a);
    assert!(
        s.contains("403") && body.contains("CLINS-UNBOUND-CLIENT"),
        "{s} {body}"
    );
    let out = ok(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--client",
        "hosp-a",
        "--institution",
        "1318814790",
    ]);
    assert!(out.contains("1318814790"), "{out}");
    let (s, body) = get(&srv, "/clins/fhir/$referrals", &tok_a);
    assert!(
        s.contains("200") && body.contains("searchset"),
        "{s} {body}"
    );

    // an insurer account of the platform tenant
    ok(&[
        "user",
        "add",
        "--data",
        &d,
        "--tenant",
        "clins-platform",
        "--username",
        "kenpo1",
        "--name",
        "テスト健保 担当",
        "--role",
        "insurer",
    ]);
    let tok_i = token(&d, &["--user", "kenpo1"]);
    let (s, _) = get(&srv, "/clins/fhir/$checkup-reports", &tok_i);
    assert!(s.contains("403"), "unbound insurer: {s}");
    ok(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--user",
        "kenpo1",
        "--insurer",
        "06123456",
    ]);
    let (s, body) = get(&srv, "/clins/fhir/$checkup-reports", &tok_i);
    assert!(
        s.contains("200") && body.contains("searchset"),
        "{s} {body}"
    );
    // the insurer account is not an institution
    let (s, body) = get(&srv, "/clins/fhir/$referrals", &tok_i);
    assert!(
        s.contains("403") && body.contains("CLINS-FORBIDDEN"),
        "{s} {body}"
    );

    // a clinic tenant (for $clins-submit in process) and a remote platform setting
    ok(&["tenant", "create", "--data", &d, "clinic-b"]);
    ok(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--tenant",
        "clinic-b",
        "--institution",
        "1311234567",
    ]);
    let tf = dir.path().join("platform.token");
    std::fs::write(&tf, "a-platform-token\n").unwrap();
    let tfs = tf.display().to_string();
    ok(&[
        "clins",
        "remote",
        "--data",
        &d,
        "--tenant",
        "clinic-b",
        "--url",
        "https://clins.example.jp/clins/fhir",
        "--token-file",
        &tfs,
    ]);
    ok(&[
        "clins", "remote", "--data", &d, "--tenant", "clinic-b", "--clear",
    ]);

    // $clins-submit through the running server, with the access policy on: a physician of
    // clinic-b sends a patient's allergy list; a physician of clinic-a cannot reach clinic-b
    ok(&[
        "user",
        "add",
        "--data",
        &d,
        "--tenant",
        "clinic-b",
        "--username",
        "dr-b",
        "--name",
        "医師B",
        "--role",
        "physician",
    ]);
    let tok_b = token_for(&d, "clinic-b", &["--user", "dr-b"]);
    let fixtures = format!(
        "{}/../../crates/clins/tests/fixtures",
        env!("CARGO_MANIFEST_DIR")
    );
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/{f}")).unwrap()).unwrap()
    };
    let example = read("Bundle-Bundle-CLINS-Observations-Example-01.json");
    let mut patient = example["entry"][0]["resource"].clone();
    patient["id"] = serde_json::json!("pb");
    let (s, body) = http(
        &srv,
        "PUT",
        "/t/clinic-b/fhir/Patient/pb",
        &tok_b,
        &patient.to_string(),
    );
    assert!(s.contains(" 20"), "{s} {body}");
    let mut al = read("AllergyIntolerance-Example-JP-AllergyIntolerance-eCS-01.json");
    al["id"] = serde_json::json!("al1");
    al["patient"] = serde_json::json!({"reference": "Patient/pb"});
    let (s, body) = http(
        &srv,
        "PUT",
        "/t/clinic-b/fhir/AllergyIntolerance/al1",
        &tok_b,
        &al.to_string(),
    );
    assert!(s.contains(" 20"), "{s} {body}");
    let submit = "/t/clinic-b/fhir/Patient/pb/$clins-submit?type=AllergyIntolerance";
    let (s, body) = http(&srv, "POST", submit, &tok_b, "");
    assert!(
        s.contains("200") && body.contains("\"completed\""),
        "{s} {body}"
    );
    ok(&[
        "user",
        "add",
        "--data",
        &d,
        "--tenant",
        "clinic-c",
        "--username",
        "dr-c",
        "--name",
        "医師C",
        "--role",
        "physician",
    ]);
    let tok_c = token_for(&d, "clinic-c", &["--user", "dr-c"]);
    let (s, body) = http(&srv, "POST", submit, &tok_c, "");
    assert!(
        s.contains("401") && body.contains("他の医療機関"),
        "another tenant's user: {s} {body}"
    );

    let list = ok(&["clins", "list", "--data", &d]);
    for want in [
        "client:hosp-a",
        "1318814790",
        "insurer",
        "06123456",
        "tenant:clinic-b",
        "1311234567",
    ] {
        assert!(list.contains(want), "{want} missing in {list}");
    }

    // bad input: clear messages, non-zero exit, nothing changed
    let e = fails(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--client",
        "x",
        "--institution",
        "123",
    ]);
    assert!(e.contains("不正") || e.contains("invalid"), "{e}");
    let e = fails(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--user",
        "nobody",
        "--institution",
        "1318814790",
    ]);
    assert!(e.contains("nobody"), "{e}");
    let e = fails(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--tenant",
        "no-such",
        "--institution",
        "1318814790",
    ]);
    assert!(e.contains("no-such"), "{e}");
    let e = fails(&[
        "clins",
        "bind",
        "--data",
        &d,
        "--tenant",
        "clinic-b",
        "--insurer",
        "06123456",
    ]);
    assert!(e.contains("tenant"), "{e}");
    fails(&["clins", "bind", "--data", &d, "--client", "x"]);
    let e = fails(&[
        "clins",
        "remote",
        "--data",
        &d,
        "--tenant",
        "clinic-b",
        "--url",
        "http://clins.example.jp/clins/fhir",
        "--token-file",
        &tfs,
    ]);
    assert!(e.contains("https"), "{e}");
    let e = fails(&["clins", "unbind", "--data", &d, "--client", "never-bound"]);
    assert!(e.contains("never-bound"), "{e}");
    assert_eq!(ok(&["clins", "list", "--data", &d]), list);

    // unbinding ends the access (within the server's binding cache time)
    ok(&["clins", "unbind", "--data", &d, "--client", "hosp-a"]);
    assert!(!ok(&["clins", "list", "--data", &d]).contains("client:hosp-a"));
    std::thread::sleep(std::time::Duration::from_secs(11));
    let (s, body) = get(&srv, "/clins/fhir/$referrals", &tok_a);
    assert!(
        s.contains("403") && body.contains("CLINS-UNBOUND-CLIENT"),
        "{s} {body}"
    );

    // the changes are in the access log (the chain verifies)
    let v = ok(&["audit", "verify", "--data", &d]);
    assert!(!v.is_empty());
}
