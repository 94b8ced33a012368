//! Every example in ../shared/fhir-jp/examples and ../shared/fhir-r4-examples validates
//! without errors, except the intentionally invalid ones and a documented list of JP-CLINS
//! 1.5.2-era instances that the 1.10.0 profiles reject (checked for exactly that reason).
//! Skipped with a note when /work/shared is absent; the fixtures always run.

use iryo_validator::Validator;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn load(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Files that fail against the 1.10.0 profiles, with the only kind of error allowed.
const KNOWN: &[(&str, &str)] = &[
    // JP-CLINS 1.10.0 requires clinicalStatus/verificationStatus coding.display (1..1);
    // these 1.5.2 examples omit it.
    (
        "AllergyIntolerance-Example-JP-Allergy-eCS-01.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "AllergyIntolerance-Example-JP-Allergy-eCS-02.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Bundle-Bundle-CLINS-PCS-Example-01.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Bundle-Bundle-CLINS-Referral-Example-01.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Condition-Example-JP-Condition-eCS-ABDPAIN.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Condition-Example-JP-Condition-eCS-ANGINA.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Condition-Example-JP-Condition-eCS-Fx.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Condition-Example-JP-Condition-eCS-cc1-Referral01.json",
        ".coding.display: minimum required = 1",
    ),
    (
        "Condition-Example-JP-Condition-eCS-cc2-Referral01.json",
        ".coding.display: minimum required = 1",
    ),
    // eReferral draft of 2024-02: code.text is an empty string (invalid JSON FHIR).
    (
        "Condition-piReferralExample01.json",
        "Empty strings are not allowed",
    ),
    // eReferral draft of 2024-02: section and category code systems renamed since.
    ("Composition-compositionReferralExample01.json", ""),
];

fn check_dir(v: &Validator, dir: &Path) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut n = 0;
    for f in json_files(dir) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.contains("ErrorExample") {
            continue;
        }
        n += 1;
        let out = v.validate(&load(&f), &[]);
        let errors: Vec<String> = out
            .errors()
            .map(|i| format!("{} {}", i.expression, i.message_en))
            .collect();
        match KNOWN.iter().find(|(k, _)| *k == name) {
            Some((_, why)) => {
                if errors.is_empty() {
                    failures.push(format!("{name}: listed as failing but passes"));
                }
                if let Some(e) = errors.iter().find(|e| !e.contains(why)) {
                    failures.push(format!("{name}: unexpected error {e}"));
                }
            }
            None => {
                if !errors.is_empty() {
                    failures.push(format!("{name}: {errors:#?}"));
                }
            }
        }
    }
    (n, failures)
}

/// All examples below a shared folder (skipped with a note when absent).
fn check_shared(dir: &str) {
    let dir = Path::new(dir);
    if !dir.exists() {
        eprintln!("skip: {} not present", dir.display());
        return;
    }
    let (n, failures) = check_dir(&Validator::new(), dir);
    assert!(n > 100, "only {n} examples");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shared_jp_examples() {
    check_shared("/work/shared/fhir-jp/examples");
}

#[test]
fn shared_r4_examples() {
    check_shared("/work/shared/fhir-r4-examples");
}

#[test]
fn fixtures_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (n, failures) = check_dir(&Validator::new(), &dir);
    assert!(n >= 4);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
