//! Randomized bad input over HTTP: mutated resources, broken JSON, odd paths and search values.
//! The server must always answer with a 2xx or a 4xx OperationOutcome — never 5xx, never crash.

use iryo_testkit::TestServer;
use serde_json::{json, Value};

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

fn mutate(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(6) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    let x = m.remove(&k).unwrap_or(Value::Null);
                    m.insert(format!("{k}X"), x);
                }
                2 => {
                    m.insert(k, json!(rng.next() as i64));
                }
                3 => {
                    m.insert(k, json!([]));
                }
                4 => {
                    m.insert(k, json!("２０２４-１３-９９"));
                }
                _ if depth < 6 => {
                    if let Some(x) = m.get_mut(&k) {
                        mutate(rng, x, depth + 1);
                    }
                }
                _ => {}
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            if rng.below(3) == 0 {
                a[i] = Value::Null;
            } else {
                mutate(rng, &mut a[i], depth + 1);
            }
        }
        Value::String(s) => {
            *s = match rng.below(3) {
                0 => String::new(),
                1 => format!("{s}\u{0}\u{202e}"),
                _ => "x".repeat(rng.below(5000)),
            }
        }
        _ => *v = json!({"unexpected": true}),
    }
}

fn acceptable(st: u16, body: &Value) -> bool {
    match st {
        200..=299 => true,
        400..=499 => body["resourceType"] == "OperationOutcome",
        _ => false,
    }
}

#[tokio::test]
async fn mutated_resources_and_broken_requests() {
    let seeds = vec![
        json!({"resourceType": "Patient", "id": "x", "name": [{"family": "山田", "given": ["太郎"]}], "birthDate": "1980-05-01",
               "telecom": [{"system": "phone", "value": "03"}], "contact": [{"name": {"family": "y"}}]}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "1"}]},
               "valueQuantity": {"value": 1.5, "unit": "kg"}, "subject": {"reference": "Patient/x"}, "effectivePeriod": {"start": "2024"}}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}),
    ];
    for srv in TestServer::all().await {
        let e = srv.engine;
        let mut rng = Rng(0xDEAD_BEEF_1234_5678);
        for i in 0..300 {
            let mut v = seeds[i % seeds.len()].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut v, 0);
            }
            let path = match v["resourceType"].as_str() {
                Some("Bundle") => "/fhir".to_string(),
                Some(t) if i % 2 == 0 => format!("/fhir/{t}"),
                _ => "/fhir/Patient".to_string(),
            };
            let (st, _, body) = srv.post(&path, &v).await;
            assert!(acceptable(st, &body), "{e}: POST {path} {v} -> {st} {body}");
        }
        // broken bytes
        for body in [
            &b"\xff\xfe\x00"[..],
            b"[]",
            b"null",
            b"{\"resourceType\":1}",
            b"{\"resourceType\":\"Patient\",\"id\":\"../../etc\"}",
            b"{{{{",
        ] {
            let (st, _, out) = srv
                .request(
                    "POST",
                    "/fhir/Patient",
                    &[("content-type", "application/fhir+json")],
                    body.to_vec(),
                )
                .await;
            assert!(acceptable(st, &out) && st >= 400, "{e}: {st} {out}");
        }
        // odd paths and search values
        for p in [
            "/fhir/Patient/%00",
            "/fhir/Patient/a/_history/x",
            "/fhir/Patient?birthdate=ge2024-02-30",
            "/fhir/Patient?_sort=nope",
            "/fhir/Observation?value-quantity=1e999",
            "/fhir/Observation?subject:Nope.name=x",
            "/fhir/Patient?_has:Nope:x:y=1",
            "/fhir/Patient?_include=Nope:x",
            "/fhir/Patient?_count=99999999999999999999",
            "/fhir/_history?_since=yesterday",
            "/fhir/Patient/x/Nope",
            "/fhir/$export",
            "/t/%2e%2e/fhir/Patient",
            "/nothing",
        ] {
            let (st, _, out) = srv.get(p).await;
            assert!(acceptable(st, &out), "{e}: GET {p} -> {st} {out}");
        }
        let (st, _, _) = srv.get("/fhir/metadata").await;
        assert_eq!(st, 200, "{e}: still serving");
    }
}
