//! Validates JSON files or directories and prints the issues (development aid):
//! `cargo run --release -p iryo-validator --example check -- FILE|DIR… [--all]`.
mod common;
use common::files;
use iryo_validator::Validator;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.iter().any(|a| a == "--all");
    let mut list = Vec::new();
    for a in args.iter().filter(|a| !a.starts_with("--")) {
        files(Path::new(a), &mut list);
    }
    let v = Validator::new();
    for f in list {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let t = Instant::now();
        let out = v.validate(&json, &[]);
        let dt = t.elapsed();
        let errs = out.errors().count();
        println!(
            "{} errors={} issues={} {:?}",
            f.display(),
            errs,
            out.issues.len(),
            dt
        );
        for i in &out.issues {
            if all || errs > 0 && matches!(i.severity, iryo_validator::Severity::Error) {
                println!(
                    "   {} {} {:?} {}",
                    i.severity.as_str(),
                    i.expression,
                    i.key,
                    i.message_en
                );
            }
        }
    }
}
