//! Every invariant (`constraint.expression`) of the R4 core StructureDefinitions
//! and of the shipped JP profiles (JP Core, JP-CLINS, eCheckupReport) parses.

use iryo_fhirpath::parse;
use serde_json::Value;

fn constraints(sd: &Value, out: &mut Vec<(String, String)>) {
    let url = sd.get("url").and_then(Value::as_str).unwrap_or("?");
    for part in ["snapshot", "differential"] {
        for el in sd
            .get(part)
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for c in el
                .get("constraint")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(e) = c.get("expression").and_then(Value::as_str) {
                    let key = c.get("key").and_then(Value::as_str).unwrap_or("?");
                    out.push((format!("{url} {key}"), e.to_string()));
                }
            }
        }
    }
}

#[test]
fn all_r4_and_jp_invariants_parse() {
    let mut all = Vec::new();
    for sd in iryo_fhir_spec::r4_structure_definitions()
        .iter()
        .chain(iryo_fhir_spec::r4_extension_definitions().iter())
    {
        constraints(sd, &mut all);
    }
    let r4 = all.len();
    for (_, _, sd) in iryo_fhir_spec::jp_resources() {
        if sd.get("resourceType").and_then(Value::as_str) == Some("StructureDefinition") {
            constraints(&sd, &mut all);
        }
    }
    let mut failures = Vec::new();
    for (who, e) in &all {
        if let Err(err) = parse(e) {
            failures.push(format!("{who}: {e}: {err}"));
        }
    }
    failures.sort();
    failures.dedup();
    println!(
        "{} invariant expressions ({} R4), {} failures",
        all.len(),
        r4,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn examples() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/r4-examples.json.zst");
    let raw = std::fs::read(path).unwrap();
    serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap()
}

/// Evaluates every invariant of the base resource definitions on every element
/// of the official R4 examples, the way a validator does: no evaluation may
/// fail, and valid examples must satisfy them (except for the listed known
/// defects of R4 invariants or examples).
#[test]
fn r4_invariants_hold_on_official_examples() {
    let sds: std::collections::HashMap<String, Value> = iryo_fhir_spec::r4_structure_definitions()
        .into_iter()
        .filter(|sd| sd.get("kind").and_then(Value::as_str) == Some("resource"))
        .filter_map(|sd| Some((sd.get("type")?.as_str()?.to_string(), sd)))
        .collect();
    let mut evaluations = 0;
    let mut errors = Vec::new();
    let mut violations = Vec::new();
    for res in examples() {
        let rt = res["resourceType"].as_str().unwrap().to_string();
        let Some(sd) = sds.get(&rt) else { continue };
        let ctx = iryo_fhirpath::Context::new(&res);
        let id = res
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        for el in sd["snapshot"]["element"].as_array().unwrap() {
            let Some(cs) = el.get("constraint").and_then(Value::as_array) else {
                continue;
            };
            let path = el["path"].as_str().unwrap().replace("[x]", "");
            let nodes = parse(&path).unwrap().evaluate(&ctx, &res).unwrap();
            for c in cs {
                let Some(src) = c.get("expression").and_then(Value::as_str) else {
                    continue;
                };
                let key = c["key"].as_str().unwrap_or("?");
                let expr = parse(src).unwrap();
                for n in &nodes {
                    evaluations += 1;
                    match expr.evaluate_items(&ctx, vec![n.clone()]) {
                        Err(e) => errors.push(format!("{rt}/{id} {path} {key}: {src}: {e}")),
                        Ok(v) => {
                            if v.len() == 1 && v[0].as_bool() == Some(false) {
                                violations.push(format!("{rt}/{id} {path} {key}: {src}"));
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "{evaluations} invariant evaluations, {} errors, {} violations",
        errors.len(),
        violations.len()
    );
    for v in &violations {
        println!("VIOLATION {v}");
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
