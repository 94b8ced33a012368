//! Verdict regression aid: validates every shipped example and fixture, and deterministic
//! mutations of each (keys removed, strings and codes changed, array items duplicated or
//! dropped), with `validate` and `validate_base`, and prints every issue one per line.
//! Diff the output before and after a change to the validator to prove verdicts unchanged:
//! `cargo run --release -p iryo-validator --example golden > before.txt`.
mod common;
use common::files;
use iryo_validator::{Outcome, Validator};
use serde_json::{json, Value};
use std::path::Path;

/// JSON pointers of every node below `v` (objects' keys and arrays' items).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

fn parent_and_last(p: &str) -> (&str, String) {
    let i = p.rfind('/').unwrap_or(0);
    (&p[..i], p[i + 1..].replace("~1", "/").replace("~0", "~"))
}

/// Mutation `kind` at pointer `p`; `None` when it does not apply.
fn mutate(v: &Value, p: &str, kind: usize) -> Option<Value> {
    let mut m = v.clone();
    let (parent, last) = parent_and_last(p);
    let target = m.pointer(p)?.clone();
    match kind {
        // remove the node
        0 => match m.pointer_mut(parent)? {
            Value::Object(o) => {
                o.remove(&last);
            }
            Value::Array(a) => {
                let i: usize = last.parse().ok()?;
                a.remove(i);
            }
            _ => return None,
        },
        // change a primitive
        1 => {
            let new = match &target {
                Value::String(s) if s.chars().count() > 1 => {
                    let half: String = s.chars().take(s.chars().count() / 2).collect();
                    json!(format!("{half}x"))
                }
                Value::String(_) => json!("zz"),
                Value::Bool(b) => json!(!b),
                Value::Number(_) => json!(-1),
                _ => return None,
            };
            *m.pointer_mut(p)? = new;
        }
        // duplicate an array item
        2 => {
            let Value::Array(a) = m.pointer_mut(parent)? else {
                return None;
            };
            a.push(target);
        }
        // replace by an empty object / wrong kind
        _ => {
            *m.pointer_mut(p)? = match target {
                Value::Object(_) => json!("x"),
                _ => json!({}),
            };
        }
    }
    Some(m)
}

fn print(label: &str, out: &Outcome) {
    println!("== {label}: {} issues", out.issues.len());
    for i in &out.issues {
        println!(
            "{} {} {} {:?} | {} | {}",
            i.severity.as_str(),
            i.code,
            i.expression,
            i.key,
            i.message_ja,
            i.message_en
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let per_file: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--mutations="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut list = Vec::new();
    for d in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"),
        "/work/shared/fhir-jp/examples",
        "/work/shared/fhir-r4-examples",
    ] {
        files(Path::new(d), &mut list);
    }
    let v = Validator::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for f in &list {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let Ok(res) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let name = f.display().to_string();
        print(&format!("{name} profiles"), &v.validate(&res, &[]));
        print(&format!("{name} base"), &v.validate_base(&res));
        let mut ptrs = Vec::new();
        pointers(&res, String::new(), &mut ptrs);
        if ptrs.is_empty() {
            continue;
        }
        for _ in 0..per_file {
            let p = &ptrs[(rnd() % ptrs.len() as u64) as usize];
            let kind = (rnd() % 4) as usize;
            let Some(m) = mutate(&res, p, kind) else {
                continue;
            };
            print(
                &format!("{name} {p} #{kind} profiles"),
                &v.validate(&m, &[]),
            );
            print(&format!("{name} {p} #{kind} base"), &v.validate_base(&m));
        }
    }
}
