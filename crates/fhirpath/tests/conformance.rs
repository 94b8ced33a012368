//! Runs HL7's official FHIRPath R4 test suite (935 tests) and fails below 95 % passing.
//! Every failing test is printed with the reason (see CONFORMANCE.md).

use iryo_fhirpath::{parse, Context, Item};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/suite")
}

fn load_suite() -> Value {
    let raw = std::fs::read(fixtures().join("tests-fhir-r4.json.zst")).unwrap();
    let json = zstd::decode_all(&raw[..]).unwrap();
    serde_json::from_slice(&json).unwrap()
}

fn load_input(cache: &mut HashMap<String, Value>, name: &str) -> Value {
    let json_name = name.replace(".xml", ".json");
    cache
        .entry(json_name.clone())
        .or_insert_with(|| {
            let text = std::fs::read_to_string(fixtures().join(&json_name))
                .unwrap_or_else(|_| panic!("missing input {json_name}"));
            serde_json::from_str(&text).unwrap()
        })
        .clone()
}

/// (type, value) of a result item in the suite's notation.
fn describe(it: &Item<'_>) -> (String, String) {
    let ty = it.type_name().to_string();
    let v = match it {
        Item::Node { value, .. } if value.is_object() || value.is_array() => value.to_string(),
        _ => it.to_fhirpath_string().unwrap_or_default(),
    };
    (ty, v)
}

fn values_match(expected: &str, actual: &str) -> bool {
    let e = expected
        .strip_prefix("@T")
        .or_else(|| expected.strip_prefix('@'))
        .unwrap_or(expected);
    if e == actual {
        return true;
    }
    if let (Ok(a), Ok(b)) = (Decimal::from_str(e), Decimal::from_str(actual)) {
        return a == b && a.scale() == b.scale();
    }
    false
}

fn types_match(expected: Option<&str>, actual: &str) -> bool {
    match expected {
        None => true,
        Some(e) => e.eq_ignore_ascii_case(actual),
    }
}

pub struct Outcome {
    pub name: String,
    pub expression: String,
    pub passed: bool,
    pub reason: String,
}

fn run_test(t: &Value, cache: &mut HashMap<String, Value>) -> Outcome {
    let name = t["name"].as_str().unwrap_or("?").to_string();
    let expression = t["expression"].as_str().unwrap_or("").to_string();
    let invalid = t
        .get("expression_invalid")
        .and_then(Value::as_str)
        .is_some();
    let strict = t.get("mode").and_then(Value::as_str) == Some("strict")
        || t.get("expression_mode").and_then(Value::as_str) == Some("strict");
    let predicate = t.get("predicate").and_then(Value::as_str) == Some("true");
    let ordered = t.get("ordered").and_then(Value::as_str) != Some("false");
    let expected: Vec<(Option<String>, String)> = t["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o.get("type").and_then(Value::as_str).map(str::to_string),
                        o["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let outcome = |passed: bool, reason: String| Outcome {
        name: name.clone(),
        expression: expression.clone(),
        passed,
        reason,
    };

    // An error passes exactly when the test expects the expression to be invalid.
    let on_error = |what: &str, e: &dyn std::fmt::Display| {
        outcome(
            invalid,
            if invalid {
                String::new()
            } else {
                format!("{what} error: {e}")
            },
        )
    };
    let expr = match parse(&expression) {
        Ok(e) => e,
        Err(e) => return on_error("parse", &e),
    };
    let input = match t.get("inputfile").and_then(Value::as_str) {
        Some(f) => load_input(cache, f),
        None => Value::Object(Default::default()),
    };
    let ctx = Context::new(&input).strict(strict);
    let result = expr.evaluate(&ctx, &input);
    let items = match result {
        Err(e) => return on_error("evaluation", &e),
        Ok(v) => v,
    };
    if invalid {
        return outcome(
            false,
            format!("expected an error, got {} item(s)", items.len()),
        );
    }
    let mut actual: Vec<(String, String)> = if predicate {
        vec![("boolean".into(), (!items.is_empty()).to_string())]
    } else {
        items.iter().map(describe).collect()
    };
    let mut exp = expected.clone();
    if !ordered {
        actual.sort_by(|a, b| a.1.cmp(&b.1));
        exp.sort_by(|a, b| a.1.cmp(&b.1));
    }
    let ok = actual.len() == exp.len()
        && actual
            .iter()
            .zip(&exp)
            .all(|(a, e)| types_match(e.0.as_deref(), &a.0) && values_match(&e.1, &a.1));
    if ok {
        outcome(true, String::new())
    } else {
        let fmt_e: Vec<String> = exp
            .iter()
            .map(|(t, v)| format!("{}:{}", t.as_deref().unwrap_or("?"), v))
            .collect();
        let fmt_a: Vec<String> = actual.iter().map(|(t, v)| format!("{t}:{v}")).collect();
        outcome(
            false,
            format!(
                "expected [{}], got [{}]",
                fmt_e.join(", "),
                fmt_a.join(", ")
            ),
        )
    }
}

#[test]
fn official_fhirpath_r4_suite() {
    let suite = load_suite();
    let mut cache = HashMap::new();
    let mut total = 0usize;
    let mut passed = 0usize;
    let mut failures = Vec::new();
    for g in suite["groups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            total += 1;
            let o =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_test(t, &mut cache)))
                    .unwrap_or_else(|_| Outcome {
                        name: t["name"].as_str().unwrap_or("?").into(),
                        expression: t["expression"].as_str().unwrap_or("").into(),
                        passed: false,
                        reason: "PANIC".into(),
                    });
            if o.passed {
                passed += 1;
            } else {
                failures.push((g["name"].as_str().unwrap_or("?").to_string(), o));
            }
        }
    }
    for (g, f) in &failures {
        println!(
            "FAIL [{g}] {}: `{}` — {}",
            f.name,
            f.expression.replace('\n', " "),
            f.reason
        );
    }
    let pct = passed as f64 * 100.0 / total as f64;
    println!("FHIRPath R4 suite: {passed}/{total} passed ({pct:.1}%)");
    assert!(
        failures.iter().all(|(_, f)| f.reason != "PANIC"),
        "a test panicked"
    );
    assert!(pct >= 95.0, "conformance below 95%: {passed}/{total}");
}
