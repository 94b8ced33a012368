//! Robustness: thousands of random and mutated expressions (from the official
//! suite and all search parameters) must never panic, in the parser or the evaluator.

use iryo_fhirpath::{parse, Context};
use serde_json::Value;
use std::path::Path;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let raw = std::fs::read(dir.join("suite/tests-fhir-r4.json.zst")).unwrap();
    let suite: Value = serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap();
    let mut out = Vec::new();
    for g in suite["groups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            out.push(t["expression"].as_str().unwrap().to_string());
        }
    }
    let raw = std::fs::read(dir.join("searchparams/r4-search-parameters.json.zst")).unwrap();
    let sps: Vec<Value> = serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap();
    out.extend(
        sps.iter()
            .filter_map(|p| p["expression"].as_str())
            .filter(|e| e.len() < 400)
            .map(str::to_string),
    );
    out
}

fn inputs() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/suite");
    [
        "patient-example.json",
        "observation-example.json",
        "questionnaire-example.json",
        "valueset-example-expansion.json",
    ]
    .iter()
    .map(|f| serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap())
    .collect()
}

const PIECES: &[&str] = &[
    "(",
    ")",
    ".",
    "'",
    "`",
    "@",
    "%",
    "$this",
    "$index",
    "$total",
    "where(",
    "select(",
    "|",
    " and ",
    " or ",
    " implies ",
    "-",
    "+",
    "*",
    "/",
    " div ",
    " mod ",
    "&",
    "=",
    "!=",
    "~",
    "<=",
    ">",
    " is ",
    " as ",
    " in ",
    " contains ",
    "1.5",
    "0",
    "-1",
    "99999999999999999999",
    "'mg'",
    " days",
    "@2014-",
    "@T",
    "T",
    ":",
    "Z",
    "+14:00",
    "{}",
    "[0]",
    "[-1]",
    "//",
    "/*",
    "*/",
    "\\u12",
    "\\",
    "é",
    "山田",
    ",",
    "resolve()",
    "children()",
    "descendants()",
    "repeat($this)",
    "aggregate($this + $total, 0)",
    "ofType(Quantity)",
    "extension('x')",
    "toQuantity('kg')",
    "substring(-5, 99)",
    "matches('(')",
    "replaceMatches('a*', 'b')",
    "power(1000)",
    "exp()",
    "ln()",
    "log(0)",
    "sqrt()",
    "round(40)",
    "lowBoundary(99)",
    "sort(-$this)",
    "now()",
    "today()",
    "iif(",
    "combine($this)",
    "encode('hex')",
    "decode('base64')",
    "split('')",
    "join(',')",
    "toChars()",
    "%resource",
    "%context",
    "%`vs-x`",
    "convertsToDate()",
    "toDateTime()",
    "1 'a'",
    "1 year",
    "2147483647 * 2147483647 * 2147483647",
];

fn mutate(rng: &mut Rng, base: &str, other: &str) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    let n = 1 + rng.below(4);
    for _ in 0..n {
        let len = chars.len();
        match rng.below(6) {
            0 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                chars.drain(a..b);
            }
            1 | 2 => {
                let at = rng.below(len + 1);
                let piece = PIECES[rng.below(PIECES.len())];
                for (k, c) in piece.chars().enumerate() {
                    chars.insert(at + k, c);
                }
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(20)).min(len);
                let dup: Vec<char> = chars[a..b].to_vec();
                let at = rng.below(len + 1);
                for (k, c) in dup.into_iter().enumerate() {
                    chars.insert(at + k, c);
                }
            }
            4 => {
                let oc: Vec<char> = other.chars().collect();
                let cut = rng.below(len + 1);
                let ocut = rng.below(oc.len() + 1);
                chars.truncate(cut);
                chars.extend_from_slice(&oc[ocut..]);
            }
            _ if len > 0 => {
                let at = rng.below(len);
                chars[at] = char::from_u32(32 + rng.below(95) as u32).unwrap_or('x');
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn exercise(src: &str, inputs: &[Value]) {
    if let Ok(e) = parse(src) {
        for input in inputs {
            let ctx = Context::new(input);
            let _ = e.evaluate(&ctx, input);
            let _ = e.evaluate_bool(&ctx, input);
        }
    }
}

#[test]
fn mutated_expressions_never_panic() {
    let corpus = corpus();
    let inputs = inputs();
    // FHIRPATH_FUZZ_ROUNDS / FHIRPATH_FUZZ_SEED allow longer local runs.
    let seed = std::env::var("FHIRPATH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let mut rng = Rng(seed);
    let mut parsed = 0;
    let rounds = std::env::var("FHIRPATH_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000);
    for i in 0..rounds {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let src = mutate(&mut rng, base, other);
        let r = std::panic::catch_unwind(|| exercise(&src, &inputs));
        assert!(r.is_ok(), "panic on mutated expression #{i}: {src:?}");
        if parse(&src).is_ok() {
            parsed += 1;
        }
    }
    // the mutations must still produce a good share of valid expressions to exercise the evaluator
    assert!(
        parsed > rounds / 10,
        "only {parsed} mutated expressions parsed"
    );
}

#[test]
fn random_token_soup_never_panics() {
    let inputs = inputs();
    let mut rng = Rng(12345);
    for _ in 0..3000 {
        let n = 1 + rng.below(12);
        let src: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let r = std::panic::catch_unwind(|| exercise(&src, &inputs));
        assert!(r.is_ok(), "panic on {src:?}");
    }
}

#[test]
fn pathological_inputs_are_rejected_or_bounded() {
    let inputs = inputs();
    let cases = [
        "(".repeat(100_000),
        format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!("{}1", "-".repeat(100_000)),
        format!("name{}", ".given".repeat(50_000)),
        format!("1{}", "+1".repeat(50_000)),
        format!("name{}", ".first()".repeat(20_000)),
        format!("name{}", "[0]".repeat(20_000)),
        format!("{}1{}", "where(".repeat(2_000), ")".repeat(2_000)),
        "'a'.repeat($this & $this)".to_string(),
        "'ab'.replace('', 'abababababababababababababababab').replace('', 'abababababababababababababababab').replace('', 'abababababababababababababababab')".to_string(),
        "(1|2|3).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this).combine($this)".to_string(),
        "'x'.matches('(a+)+$')".to_string(),
        "@9999-12-31 + 1 day".to_string(),
        "@0001-01-01 - 1 year".to_string(),
        "9223372036854775807 + 1".to_string(),
        "(-9223372036854775807 - 1) div -1".to_string(),
        "(-9223372036854775807 - 1).abs()".to_string(),
        "79228162514264337593543950335.0 * 10".to_string(),
        "1e5".to_string(),
        "'\u{0}'.length()".to_string(),
        "@2000-01-01T00:00:00 + (-9223372036854775807 - 1) 'ms'".to_string(),
        "@2000-01-01T00:00:00 + 9223372036854775807 'ms'".to_string(),
        "@2000-01-01 + 9223372036854775807 years".to_string(),
        "@T10:00 + (-9223372036854775807 - 1) 'ms'".to_string(),
    ];
    for src in &cases {
        // run on a thread with the default 2 MiB test stack
        let s = src.clone();
        let inp = inputs.clone();
        let h = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || exercise(&s, &inp))
            .unwrap();
        assert!(h.join().is_ok(), "panic on {:?}", &src[..src.len().min(60)]);
    }
}

fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    let junk = |rng: &mut Rng| -> Value {
        match rng.below(10) {
            0 => Value::Null,
            1 => Value::Bool(true),
            2 => serde_json::from_str("1.50").unwrap(),
            3 => Value::String("2024-13-45T99:99".into()),
            4 => Value::Array(vec![Value::Null]),
            5 => serde_json::json!({"extension": [{"url": 5}]}),
            6 => serde_json::json!([{"value": "x"}, 3, null]),
            7 => serde_json::from_str("123456789012345678901234567890").unwrap(),
            8 => serde_json::json!({"resourceType": 7}),
            _ => Value::String("山田".into()),
        }
    };
    match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                match rng.below(12) {
                    0 => {
                        o.insert(k.clone(), junk(rng));
                    }
                    1 => {
                        o.insert(format!("_{k}"), junk(rng));
                    }
                    _ => {
                        if depth < 20 {
                            if let Some(x) = o.get_mut(&k) {
                                mutate_json(rng, x, depth + 1);
                            }
                        }
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                if rng.below(8) == 0 {
                    *x = junk(rng);
                } else if depth < 20 {
                    mutate_json(rng, x, depth + 1);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn malformed_resources_never_panic() {
    let corpus = corpus();
    let exprs: Vec<_> = corpus.iter().filter_map(|s| parse(s).ok()).collect();
    let inputs = inputs();
    let mut rng = Rng(0xDEAD_BEEF);
    for _ in 0..300 {
        let mut res = inputs[rng.below(inputs.len())].clone();
        mutate_json(&mut rng, &mut res, 0);
        for _ in 0..60 {
            let e = &exprs[rng.below(exprs.len())];
            let r = std::panic::catch_unwind(|| {
                let ctx = Context::new(&res);
                let _ = e.evaluate(&ctx, &res);
            });
            assert!(r.is_ok(), "panic on {} with {}", e.source(), res);
        }
    }
}
