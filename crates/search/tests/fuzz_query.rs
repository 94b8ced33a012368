//! Randomized robustness test of the search-parameter parser: thousands of mutated queries,
//! none may panic; each either parses or returns an error naming a parameter.

use iryo_search::query::{parse_query, Handling};

const SEEDS: &[&str] = &[
    "name=yamada&birthdate=ge1980-01-01&_count=10",
    "subject:Patient.name.family=x&code=http://loinc.org|1234-5,5678-9",
    "_has:Observation:patient:_has:AuditEvent:entity:agent=1",
    "value-quantity=ap5.4|http://unitsofmeasure.org|mg&_sort=-date,_id",
    "_include=Observation:subject:Patient&_revinclude:iterate=Provenance:target",
    "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123&_total=accurate",
    "code-value-quantity=http://loinc.org|8480-6$gt100&_summary=count&_elements=id,code",
    "date=2024-03-05T10:00:00+09:00&_lastUpdated=lt2025&_id=a,b\\,c",
    "family:exact=Müller&given:contains=ta%20ro&address=東京都",
    "url:below=http://example.org/fhir&subject:missing=true&gender:not=male",
];

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

const ALPHABET: &[&str] = &[
    "=",
    "&",
    ":",
    ".",
    "|",
    "$",
    ",",
    "\\",
    "%",
    "%2",
    "%ZZ",
    "_has:",
    "_include",
    "ge",
    "ap",
    "-",
    "+",
    "e",
    "9",
    "T",
    "Z",
    "+09:00",
    "\u{0}",
    "日",
    "ｱ",
    " ",
    "*",
    "?",
    "/",
    "Patient",
    "subject",
    ":iterate",
    "\u{10FFFF}",
];

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..1 + rng.below(6) {
        let pos = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 if !chars.is_empty() => {
                let end = (pos + rng.below(8)).min(chars.len());
                chars.drain(pos.min(chars.len())..end);
            }
            1 => {
                let ins = ALPHABET[rng.below(ALPHABET.len())];
                for (k, c) in ins.chars().enumerate() {
                    chars.insert((pos + k).min(chars.len()), c);
                }
            }
            2 if !chars.is_empty() => {
                let a = rng.below(chars.len());
                let b = rng.below(chars.len());
                chars.swap(a, b);
            }
            _ => {
                let other = SEEDS[rng.below(SEEDS.len())];
                chars.push('&');
                chars.extend(other.chars().take(rng.below(other.len() + 1)));
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_queries_never_panic() {
    let model = iryo_search::model();
    let types = ["Patient", "Observation", "Encounter", "Bundle", "ValueSet"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ok = 0;
    let mut errors = 0;
    for i in 0..20_000 {
        let seed = SEEDS[i % SEEDS.len()];
        let q = mutate(&mut rng, seed);
        let ty = types[rng.below(types.len())];
        for handling in [Handling::Strict, Handling::Lenient] {
            match parse_query(model, Some(ty), &q, handling) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(
                        !e.message_ja.is_empty() && !e.message_en.is_empty(),
                        "{q}: {e:?}"
                    );
                    errors += 1;
                }
            }
        }
    }
    // both outcomes are exercised
    assert!(ok > 1000 && errors > 1000, "ok={ok} errors={errors}");
}

#[test]
fn date_and_number_parsers_never_panic() {
    let mut rng = Rng(42);
    let seeds = [
        "2024-03-05T10:00:00.123+09:00",
        "1.50e-3",
        "2024",
        "-0.0",
        "9999-12-31T23:59:59Z",
    ];
    for i in 0..50_000 {
        let s = mutate(&mut rng, seeds[i % seeds.len()]);
        let _ = iryo_search::date::parse_range(&s);
        let _ = iryo_search::query::number_range(&s);
        let _ = iryo_search::normalize::normalize_string(&s);
    }
}
