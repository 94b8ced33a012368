//! The `iryo` binary: tenants, import (with its summary and rejections), serve's safety checks.

use std::path::Path;
use std::process::{Command, Output};

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

fn fixtures() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .display()
        .to_string()
}

#[test]
fn tenant_create_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let o = iryo(&["tenant", "create", "--data", &d, "clinic-a"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = iryo(&["tenant", "create", "--data", &d, "clinic-a"]);
    assert!(!o.status.success(), "duplicate must fail");
    let o = iryo(&["tenant", "create", "--data", &d, "bad name!"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("テナント名"), "{}", text(&o));
    let o = iryo(&["tenant", "list", "--data", &d]);
    let t = text(&o);
    assert!(
        t.contains("default") && t.contains("clinic-a") && t.contains("/t/clinic-a/fhir"),
        "{t}"
    );
}

#[test]
fn import_bundles_and_ndjson_then_query() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    assert!(iryo(&["tenant", "create", "--data", &d, "clinic-a"])
        .status
        .success());
    // a malformed line and an invalid resource are reported, the rest loads
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"resourceType\": \"Patient\", \"id\": \"ok1\"}\n{not json\n{\"resourceType\": \"Patient\", \"id\": \"x\", \"nope\": 1}\n").unwrap();
    let o = iryo(&[
        "import",
        "--data",
        &d,
        "--tenant",
        "clinic-a",
        &fixtures(),
        bad.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("取り込み完了"), "{t}");
    assert!(t.contains("2 件拒否"), "{t}");
    assert!(t.contains("nope"), "the rejection names the element: {t}");
    let loaded: u64 = t
        .split("取り込み完了 (import done): ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(loaded > 100, "{t}");

    // the data is there, in the tenant only
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = iryo_db::Store::open(&d).await.unwrap();
        let a = store.tenant_id("clinic-a").await.unwrap().unwrap();
        let q = iryo_search::query::parse_query(
            iryo_fhir_spec::r4(),
            Some("Patient"),
            "_summary=count",
            iryo_search::query::Handling::Strict,
        )
        .unwrap();
        let page = store
            .search(
                a,
                iryo_db::SearchRequest {
                    query: q.clone(),
                    page_token: None,
                    base_url: String::new(),
                },
            )
            .await
            .unwrap();
        // 2 Synthea patients + 5 clinosim + ok1
        assert_eq!(page.total, Some(8));
        let page = store
            .search(
                1,
                iryo_db::SearchRequest {
                    query: q,
                    page_token: None,
                    base_url: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, Some(0));
        // Synthea's urn:uuid references were resolved to literal references
        let q = iryo_search::query::parse_query(
            iryo_fhir_spec::r4(),
            Some("Observation"),
            "subject:Patient.gender=male,female&_summary=count",
            iryo_search::query::Handling::Strict,
        )
        .unwrap();
        let page = store
            .search(
                a,
                iryo_db::SearchRequest {
                    query: q,
                    page_token: None,
                    base_url: String::new(),
                },
            )
            .await
            .unwrap();
        assert!(page.total.unwrap() > 10, "{:?}", page.total);
    });

    // nothing importable → non-zero exit
    let empty = tempfile::tempdir().unwrap();
    let o = iryo(&["import", "--data", &d, empty.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let o = iryo(&["import", "--data", &d, "--tenant", "nope", &fixtures()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope"));
}

#[test]
fn serve_refuses_non_loopback_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let o = iryo(&["serve", "--data", &d, "--listen", "0.0.0.0:0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--api-token-file"), "{}", text(&o));
    let short = dir.path().join("token");
    std::fs::write(&short, "short").unwrap();
    let o = iryo(&[
        "serve",
        "--data",
        &d,
        "--listen",
        "0.0.0.0:0",
        "--api-token-file",
        short.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

/// `iryo serve` end to end: FHIR API with authentication, the sharing service mounted, first admin.
#[test]
fn serve_mounts_fhir_and_clins() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iryo"))
        .args(["serve", "--data", &d, "--listen", &listen])
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
    assert!(
        log.contains("初回パスワード"),
        "first start prints the one-time admin password: {log}"
    );
    let get = |path: &str, method: &str| -> String {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let meta = get("/fhir/metadata", "GET");
    assert!(meta.starts_with("HTTP/1.1 200"), "{meta}");
    let unauth = get("/fhir/Patient", "GET");
    assert!(
        unauth.starts_with("HTTP/1.1 401") && unauth.contains("OperationOutcome"),
        "{unauth}"
    );
    let clins = get("/clins/fhir/$register", "POST");
    assert!(
        clins.starts_with("HTTP/1.1 401") && clins.contains("OperationOutcome"),
        "the sharing service is mounted and needs a token: {clins}"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn unreachable_database_is_a_clear_error() {
    // nothing listens on port 1: the server must not start, and must say why
    let o = iryo(&[
        "tenant",
        "list",
        "--database",
        "postgres://iryo@127.0.0.1:1/none",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("エラー") && t.contains("opening the store"),
        "{t}"
    );
    // an unwritable data directory is refused the same way
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let o = iryo(&["tenant", "list", "--data", file.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("opening the store"), "{}", text(&o));
}
