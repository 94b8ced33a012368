//! Every example in tests/fixtures (a subset of the R4 spec examples) — and, when present,
//! every example in /work/shared/fhir-r4-examples — passes the structural check.

use std::path::Path;

fn check_dir(dir: &Path) -> usize {
    let m = iryo_fhir_spec::r4();
    let mut n = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let issues = m.check_structure(&v);
        if !issues.is_empty() {
            failures.push(format!("{}: {:#?}", p.display(), issues));
        }
        n += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    n
}

#[test]
fn fixtures_pass() {
    let n = check_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    assert!(n >= 25, "only {n} fixtures");
}

#[test]
fn shared_examples_pass() {
    let dir = Path::new("/work/shared/fhir-r4-examples");
    if !dir.exists() {
        println!("note: {} not found, skipped", dir.display());
        return;
    }
    let n = check_dir(dir);
    println!("{n} R4 examples checked");
}
