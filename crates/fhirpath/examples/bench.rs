//! Plain benchmark: `cargo run --release -p iryo-fhirpath --example bench`.
//! Prints the time per evaluation and per navigation step for typical
//! search-parameter and invariant expressions.

use iryo_fhirpath::{parse, Context};
use serde_json::json;
use std::time::Instant;

fn main() {
    // First evaluation loads the embedded R4 model (lazy, once per process).
    let t = Instant::now();
    let probe = json!({"resourceType": "Patient", "birthDate": "2000-01-01"});
    let _ = parse("Patient.birthDate")
        .unwrap()
        .evaluate(&Context::new(&probe), &probe)
        .unwrap();
    println!("first evaluation incl. R4 model load: {:?}", t.elapsed());

    let patient = json!({
        "resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": "2024-04-01T10:00:00+09:00", "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]},
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "00000010"}],
        "name": [
            {"use": "official", "family": "山田", "given": ["太郎"], "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}]},
            {"use": "usual", "family": "ヤマダ", "given": ["タロウ"], "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}]}
        ],
        "telecom": [{"system": "phone", "value": "03-1234-5678", "use": "home"}],
        "gender": "male", "birthDate": "1970-01-01",
        "address": [{"text": "東京都港区", "postalCode": "105-0001", "country": "JP"}]
    });
    let obs = json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-04-01T10:00:00+09:00",
        "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    });
    let cases: &[(&str, &serde_json::Value, usize)] = &[
        // (expression, resource, navigation steps per evaluation)
        ("Patient.birthDate", &patient, 2),
        ("Patient.name.family", &patient, 3),
        ("Patient.name.given", &patient, 3),
        ("Patient.identifier", &patient, 2),
        ("Patient.telecom.where(system='phone')", &patient, 2),
        ("Patient.name.where(extension('http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation').value.as(code)='SYL' and use='usual').text", &patient, 6),
        ("Observation.subject.where(resolve() is Patient)", &obs, 2),
        ("Observation.value", &obs, 2),
        ("(Observation.value as Quantity)", &obs, 2),
        ("Observation.effective", &obs, 2),
        ("Observation.code", &obs, 2),
        ("name.exists() and birthDate <= today()", &patient, 2),
    ];
    let n = 200_000;
    println!("{:<70} {:>10} {:>12}", "expression", "ns/eval", "ns/step");
    for (src, res, steps) in cases {
        let expr = parse(src).expect(src);
        let ctx = Context::new(res);
        // warm up (loads the R4 model once)
        let _ = expr.evaluate(&ctx, res).unwrap();
        let t = Instant::now();
        let mut count = 0usize;
        for _ in 0..n {
            count += expr.evaluate(&ctx, res).unwrap().len();
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let shown: String = src.chars().take(68).collect();
        println!(
            "{:<70} {:>10.0} {:>12.0}   ({} items)",
            shown,
            ns,
            ns / *steps as f64,
            count / n
        );
    }
    // Search indexing: every R4 SearchParameter expression whose base is the resource type.
    let spec = iryo_fhir_spec::r4();
    for res in [&patient, &obs] {
        let rt = res["resourceType"].as_str().unwrap();
        let exprs: Vec<_> = spec
            .search_params(rt)
            .iter()
            .filter_map(|p| p.expression_for(rt))
            .filter_map(|e| parse(&e).ok())
            .collect();
        let ctx = Context::new(res);
        let rounds = 20_000;
        let t = Instant::now();
        let mut items = 0;
        for _ in 0..rounds {
            for e in &exprs {
                items += e.evaluate(&ctx, res).map(|v| v.len()).unwrap_or(0);
            }
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        println!(
            "index all {} {rt} search parameters: {us:.1} µs per resource ({} items)",
            exprs.len(),
            items / rounds
        );
    }
    let t = Instant::now();
    let m = 20_000;
    for _ in 0..m {
        let _ = parse("Patient.name.where(extension('http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation').value.as(code)='SYL' and use='usual').text").unwrap();
    }
    println!(
        "parse (long expression): {:.0} ns",
        t.elapsed().as_nanos() as f64 / m as f64
    );
}
