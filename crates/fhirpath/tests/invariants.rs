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

type Sds = std::collections::HashMap<String, Value>;

/// Evaluates `sd`'s invariants on `input` (a resource or, for type profiles, an
/// element), following type profiles (e.g. JP_MedicationDosage_eCS on
/// `dosageInstruction`); returns the number of evaluations.
#[allow(clippy::too_many_arguments)]
fn check_profile<'a>(
    sds: &Sds,
    sd: &Value,
    ctx: &iryo_fhirpath::Context<'a>,
    input: iryo_fhirpath::Item<'a>,
    label: &str,
    errors: &mut Vec<String>,
    violations: &mut Vec<String>,
    depth: usize,
) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for el in sd["snapshot"]["element"].as_array().into_iter().flatten() {
        let path = el["path"].as_str().unwrap().replace("[x]", "");
        let Ok(nodes) = parse(&path)
            .unwrap()
            .evaluate_items(ctx, vec![input.clone()])
        else {
            continue;
        };
        if depth < 3 && path.contains('.') {
            for t in el
                .get("type")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for p in t
                    .get("profile")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if let (Some(tsd), true) = (
                        sds.get(p.split('|').next().unwrap_or(p)),
                        seen.insert((path.clone(), p.to_string(), String::new())),
                    ) {
                        for node in &nodes {
                            n += check_profile(
                                sds,
                                tsd,
                                ctx,
                                node.clone(),
                                label,
                                errors,
                                violations,
                                depth + 1,
                            );
                        }
                    }
                }
            }
        }
        let Some(cs) = el.get("constraint").and_then(Value::as_array) else {
            continue;
        };
        for c in cs {
            let Some(src) = c.get("expression").and_then(Value::as_str) else {
                continue;
            };
            let key = c["key"].as_str().unwrap_or("?");
            if !seen.insert((path.clone(), key.to_string(), src.to_string())) {
                continue;
            }
            let expr = parse(src).unwrap();
            for node in &nodes {
                n += 1;
                match expr.evaluate_items(ctx, vec![node.clone()]) {
                    Err(e) => errors.push(format!("{label} {path} {key}: {src}: {e}")),
                    Ok(v) if v.len() == 1 && v[0].as_bool() == Some(false) => {
                        violations.push(format!(
                            "{label} {path} {key} ({}): {src}",
                            c.get("severity").and_then(Value::as_str).unwrap_or("?")
                        ))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    n
}

fn check_resource(
    sds: &Sds,
    sd: &Value,
    res: &Value,
    root: Option<&Value>,
    label: &str,
    errors: &mut Vec<String>,
    violations: &mut Vec<String>,
) -> usize {
    let mut ctx = iryo_fhirpath::Context::new(res);
    if let Some(r) = root {
        ctx = ctx.with_root_resource(r);
    }
    check_profile(
        sds,
        sd,
        &ctx,
        iryo_fhirpath::Item::resource(res),
        label,
        errors,
        violations,
        0,
    )
}

/// JP example instances (JP Core, JP-CLINS, eReferral) against the invariants of
/// the base R4 definitions and of the JP profiles they declare in `meta.profile`.
#[test]
fn jp_invariants_on_jp_examples() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jp-examples.json.zst");
    let raw = std::fs::read(path).unwrap();
    let files: Vec<Value> = serde_json::from_slice(&zstd::decode_all(&raw[..]).unwrap()).unwrap();
    let mut sds: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for sd in iryo_fhir_spec::r4_structure_definitions() {
        if let Some(u) = sd.get("url").and_then(Value::as_str) {
            sds.insert(u.to_string(), sd.clone());
        }
    }
    for (_, _, sd) in
        iryo_fhir_spec::jp_resources_where(|f| f.resource_type == "StructureDefinition")
    {
        if let Some(u) = sd.get("url").and_then(Value::as_str) {
            sds.insert(u.to_string(), sd.clone());
        }
    }
    let (mut evaluations, mut errors, mut violations) = (0, Vec::new(), Vec::new());
    for f in &files {
        let name = f["file"].as_str().unwrap();
        if name.contains("ErrorExample") {
            continue;
        }
        let Ok(doc) = serde_json::from_str::<Value>(f["text"].as_str().unwrap()) else {
            continue;
        };
        let mut targets: Vec<(&Value, Option<&Value>)> = vec![(&doc, None)];
        for e in doc
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("resource") {
                targets.push((r, Some(&doc)));
            }
        }
        for (res, root) in targets {
            let rt = res
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let mut urls = vec![format!("http://hl7.org/fhir/StructureDefinition/{rt}")];
            for p in res
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                urls.push(p.split('|').next().unwrap_or(p).to_string());
            }
            for u in urls {
                if let Some(sd) = sds.get(&u) {
                    let label = format!("{name} [{rt} {}]", u.rsplit('/').next().unwrap_or(""));
                    evaluations +=
                        check_resource(&sds, sd, res, root, &label, &mut errors, &mut violations);
                }
            }
        }
    }
    println!(
        "{evaluations} JP invariant evaluations, {} errors, {} violations",
        errors.len(),
        violations.len()
    );
    for v in &violations {
        println!("VIOLATION {v}");
    }
    for e in &errors {
        println!("ERROR {e}");
    }
    assert!(errors.is_empty(), "{} evaluation errors", errors.len());
    assert!(
        violations.iter().all(|v| v.contains("(warning)")),
        "valid JP examples violate error-level invariants"
    );

    // The intentionally invalid examples (their defects are structural, e.g. cardinality,
    // which is the validator's part) must evaluate without errors too.
    for f in files
        .iter()
        .filter(|f| f["file"].as_str().unwrap().contains("ErrorExample"))
    {
        let name = f["file"].as_str().unwrap();
        let doc: Value = serde_json::from_str(f["text"].as_str().unwrap()).unwrap();
        let rt = doc["resourceType"].as_str().unwrap();
        let mut errs = Vec::new();
        let mut viols = Vec::new();
        for p in doc
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(sd) = sds.get(p.split('|').next().unwrap_or(p)) {
                check_resource(
                    &sds,
                    sd,
                    &doc,
                    None,
                    &format!("{name} [{rt}]"),
                    &mut errs,
                    &mut viols,
                );
            }
        }
        println!("{name}: {viols:?}");
        assert!(errs.is_empty(), "{errs:?}");
    }
}

/// Resources that break specific R4 invariants get exactly those violations.
#[test]
fn broken_resources_violate_the_expected_invariants() {
    let mut sds: Sds = Sds::new();
    for sd in iryo_fhir_spec::r4_structure_definitions() {
        if let Some(u) = sd.get("url").and_then(Value::as_str) {
            sds.insert(u.to_string(), sd.clone());
        }
    }
    let cases = [
        (
            serde_json::json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}, "contact": [{"gender": "male"}]}),
            "pat-1",
        ),
        (
            serde_json::json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "unreferenced"}]}),
            "dom-3",
        ),
        (
            serde_json::json!({"resourceType": "Observation", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}, "status": "final",
                "code": {"text": "x"}, "valueString": "v", "dataAbsentReason": {"text": "unknown"}}),
            "obs-6",
        ),
        (
            serde_json::json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                "extension": [{"url": "http://example.org/e", "valueString": "a", "extension": [{"url": "x", "valueString": "b"}]}]}),
            "ext-1",
        ),
    ];
    for (res, key) in &cases {
        let rt = res["resourceType"].as_str().unwrap();
        let sd = &sds[&format!("http://hl7.org/fhir/StructureDefinition/{rt}")];
        let (mut errors, mut violations) = (Vec::new(), Vec::new());
        check_resource(&sds, sd, res, None, rt, &mut errors, &mut violations);
        assert!(errors.is_empty(), "{errors:?}");
        let keys: Vec<&str> = violations
            .iter()
            .filter_map(|v| v.split_whitespace().nth(2))
            .collect();
        assert_eq!(keys, [*key], "{violations:?}");
    }
    // Data-type invariants (here per-1 from the Period definition) apply to typed elements.
    let period_sd = &sds["http://hl7.org/fhir/StructureDefinition/Period"];
    let per1 = period_sd["snapshot"]["element"][0]["constraint"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "per-1")
        .unwrap()["expression"]
        .as_str()
        .unwrap();
    let res = serde_json::json!({"resourceType": "Patient", "identifier": [{"period": {"start": "2024-02-01", "end": "2024-01-01"}}]});
    let ctx = iryo_fhirpath::Context::new(&res);
    let period = &res["identifier"][0]["period"];
    let r = parse(per1)
        .unwrap()
        .evaluate_typed(&ctx, period, "Period")
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].as_bool(), Some(false), "{per1}");
}
