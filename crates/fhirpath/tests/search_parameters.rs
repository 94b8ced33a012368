//! Every R4 and JP Core SearchParameter expression parses, and evaluates
//! without error on a resource of each base type.

use iryo_fhirpath::{parse, Context};
use serde_json::{json, Value};
use std::path::Path;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/searchparams")
}

fn all_params() -> Vec<Value> {
    let raw = std::fs::read(dir().join("r4-search-parameters.json.zst")).unwrap();
    let mut params: Vec<Value> =
        serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap();
    for e in std::fs::read_dir(dir().join("jp")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        params.push(serde_json::from_str(&text).unwrap());
    }
    params
}

#[test]
fn every_search_parameter_expression_parses_and_evaluates() {
    let params = all_params();
    let mut parsed = 0;
    let mut failures = Vec::new();
    for p in &params {
        let Some(src) = p.get("expression").and_then(Value::as_str) else {
            continue;
        };
        match parse(src) {
            Ok(expr) => {
                parsed += 1;
                // Evaluate on a minimal resource of every base type: must not error.
                for base in p["base"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let res = json!({"resourceType": base, "id": "x"});
                    let ctx = Context::new(&res);
                    if let Err(e) = expr.evaluate(&ctx, &res) {
                        failures.push(format!("{}: {src}: {e}", p["id"]));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {src}: {e}", p["id"])),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(parsed > 1300, "only {parsed} expressions");
}

/// Every search parameter evaluates without error on every official R4 example of its base type.
#[test]
fn search_parameters_evaluate_on_official_examples() {
    let raw = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples.json.zst"),
    )
    .unwrap();
    let examples: Vec<Value> =
        serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap();
    let params = all_params();
    let mut evaluations = 0;
    let mut items = 0;
    let mut failures = Vec::new();
    for p in &params {
        let Some(src) = p.get("expression").and_then(Value::as_str) else {
            continue;
        };
        let expr = parse(src).unwrap();
        let bases: Vec<&str> = p["base"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for res in examples.iter().filter(|r| {
            bases.contains(&r["resourceType"].as_str().unwrap_or("")) || bases.contains(&"Resource")
        }) {
            evaluations += 1;
            match expr.evaluate(&Context::new(res), res) {
                Ok(v) => items += v.len(),
                Err(e) => failures.push(format!(
                    "{} on {}/{}: {e}",
                    p["id"], res["resourceType"], res["id"]
                )),
            }
        }
    }
    println!("{evaluations} evaluations, {items} items");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(items > 1000);
}
