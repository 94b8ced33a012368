//! Randomised mutation of valid resources: the structural check must never panic,
//! and every issue it reports must be well-formed.

use serde_json::{json, Map, Value};
use std::path::Path;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn random_leaf(r: &mut Rng) -> Value {
    match r.below(16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(1.5),
        5 => serde_json::from_str("1e400").unwrap_or(json!(1)),
        6 => json!(99999999999999999999u128 as f64),
        7 => json!(""),
        8 => json!(" "),
        9 => json!("2024-02-30T25:61:00Z"),
        10 => json!("山田\u{3000}太郎\u{0B}"),
        11 => json!([]),
        12 => json!({}),
        13 => json!([null]),
        14 => json!({"resourceType": "Patient", "id": "x"}),
        _ => json!("urn:oid:1..2"),
    }
}

/// Collects JSON pointers of every node.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutate(v: &mut Value, r: &mut Rng) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = ps[r.below(ps.len())].clone();
    let Some(target) = v.pointer_mut(&p) else {
        return;
    };
    match r.below(8) {
        0 | 1 => *target = random_leaf(r),
        2 => {
            // rename a key: add/remove '_', change a suffix, or garble
            if let Value::Object(m) = target {
                if let Some(k) = m.keys().nth(r.below(m.len())).cloned() {
                    let val = m.shift_remove(&k).unwrap_or(Value::Null);
                    let nk = match r.below(4) {
                        0 => format!("_{k}"),
                        1 => k.trim_start_matches('_').to_string(),
                        2 => format!("{k}String"),
                        _ => format!("{k}Bogus"),
                    };
                    m.insert(nk, val);
                }
            }
        }
        3 => {
            let t = target.take();
            *target = Value::Array(vec![t]);
        }
        4 => {
            if let Value::Array(a) = target {
                if let Some(first) = a.first().cloned() {
                    *target = first;
                }
            }
        }
        5 => {
            if let Value::Object(m) = target {
                if let Some(k) = m.keys().nth(r.below(m.len())).cloned() {
                    m.shift_remove(&k);
                }
            }
        }
        6 => {
            // deep nesting
            let mut x = Value::Null;
            for _ in 0..r.below(400) {
                let mut m = Map::new();
                m.insert("extension".into(), Value::Array(vec![x]));
                x = Value::Object(m);
            }
            *target = x;
        }
        _ => {
            if let Value::Object(m) = target {
                m.insert("resourceType".into(), json!("Bundle"));
                m.insert("entry".into(), json!([{"resource": random_leaf(r)}]));
            }
        }
    }
}

#[test]
fn mutated_resources_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seeds = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            seeds.push(serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()).unwrap());
        }
    }
    seeds.sort_by_key(|v| v.to_string().len());
    seeds.truncate(20);
    let m = iryo_fhir_spec::r4();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut with_issues = 0;
    let rounds = 1500;
    for i in 0..rounds {
        let mut v = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut v, &mut rng);
        }
        let issues = m.check_structure(&v);
        for is in &issues {
            assert!(!is.message_en.is_empty() && !is.message_ja.is_empty());
            assert!(!is.code.is_empty());
        }
        if !issues.is_empty() {
            with_issues += 1;
        }
    }
    // Most mutations break something; the checker must notice.
    assert!(
        with_issues > rounds / 2,
        "only {with_issues} of {rounds} mutants reported"
    );
}

#[test]
fn arbitrary_values_never_panic() {
    let m = iryo_fhir_spec::r4();
    let mut rng = Rng(42);
    for _ in 0..800 {
        let mut v =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        for _ in 0..6 {
            mutate(&mut v, &mut rng);
        }
        let _ = m.check_structure(&v);
        let _ = m.check_value("HumanName", &v, "x");
    }
}
