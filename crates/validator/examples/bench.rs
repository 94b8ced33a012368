//! Timing: first validation of a JP-CLINS Bundle (profiles loaded lazily, included), then the
//! steady state for a ~50-resource 5情報 Bundle, single-threaded.
//! `cargo run --release -p iryo-validator --example bench`
//!
//! For instruction counts (repeatable on a loaded machine):
//! `valgrind --tool=callgrind --toggle-collect='*steady_loop*' target/release/examples/bench
//! --steady 10` (counts only 10 steady-state validations) or `--startup` (only the first validation).
use iryo_validator::Validator;
use serde_json::{json, Value};
use std::time::Instant;

/// Validation on write in `base` mode (R4 structure, invariants, required bindings): time per
/// resource for the fixtures and the Bundle's entries (`--base` runs only this).
fn base_mode(v: &Validator) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut resources = Vec::new();
    for name in [
        "Patient-Example-JP-Patient-eCS-MAKINO.json",
        "Condition-Example-JP-Condition-eCS-01.json",
        "MedicationRequest-Example-JP-MedReq-PO-TID-2days.json",
        "Observation-ErrorExample-ObsLabo-eGFR.json",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{name}")).expect("fixture");
        resources.push(serde_json::from_str::<Value>(&text).expect("json"));
    }
    for r in &resources {
        let _ = v.validate_base(r);
    }
    let n = 200;
    for r in &resources {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            std::hint::black_box(v.validate_base(std::hint::black_box(r)));
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "base mode, {} ({} bytes): median {:?}, min {:?}",
            r["resourceType"].as_str().unwrap_or("?"),
            r.to_string().len(),
            times[n / 2],
            times[0]
        );
    }
}

/// The steady-state part alone (`valgrind --tool=callgrind --toggle-collect='*steady_loop*'`).
#[inline(never)]
fn steady_loop(v: &Validator, bundle: &Value, n: usize) {
    for _ in 0..n {
        std::hint::black_box(v.validate(std::hint::black_box(bundle), &[]));
    }
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/Bundle-Bundle-CLINS-Observations-Example-01.json"
    );
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let v = Validator::new();
    if args.iter().any(|a| a == "--base") {
        base_mode(&v);
        return;
    }
    let t = Instant::now();
    let out = v.validate(&bundle, &[]);
    println!(
        "first validation incl. loading: {:?} ({} errors)",
        t.elapsed(),
        out.errors().count()
    );
    if args.iter().any(|a| a == "--startup") {
        return;
    }
    let steady: Option<usize> = args
        .iter()
        .position(|a| a == "--steady")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());

    // 49 Observations + the Patient: the 4 Observations repeated with fresh fullUrls.
    let mut big = bundle.clone();
    let entries = bundle["entry"].as_array().expect("entries");
    let mut list = vec![entries[0].clone()];
    for i in 0..49 {
        let mut e = entries[1 + i % (entries.len() - 1)].clone();
        e["fullUrl"] = json!(format!("urn:uuid:00000000-0000-4000-8000-{:012}", i));
        list.push(e);
    }
    big["entry"] = Value::Array(list);
    let out = v.validate(&big, &[]);
    println!(
        "50-entry bundle: {} errors, {} issues",
        out.errors().count(),
        out.issues.len()
    );
    if let Some(n) = steady {
        let t = Instant::now();
        steady_loop(&v, &big, n);
        println!(
            "{n} steady-state validations: {:?} each",
            t.elapsed() / n as u32
        );
        return;
    }
    let n = 50;
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let _ = v.validate(&big, &[]);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "steady state, 50-resource Bundle: median {:?}, min {:?}, max {:?}",
        times[n / 2],
        times[0],
        times[n - 1]
    );
    base_mode(&v);
    let t = Instant::now();
    let k = v.preload();
    println!(
        "preload of all {k} JP StructureDefinitions (after the above): {:?}",
        t.elapsed()
    );
}
