//! Measures the start-up cost of the R4 model and the speed of the structural check.
//!
//! ```text
//! cargo run --release -p iryo-fhir-spec --example load_time [FILE_OR_DIR…]
//! ```
//!
//! Without arguments the check is timed on the crate's test fixtures. JSON files, NDJSON
//! files and directories (walked) are accepted; Bundles count as one resource.
//! Set `SKIP_JP=1` to skip the JP archive timings.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut es: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        es.sort();
        for e in es {
            collect(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "json" || e == "ndjson") {
        out.push(p.to_path_buf());
    }
}

fn main() {
    // Best of 5: the machine is shared, the minimum is the least disturbed figure.
    let mut load = std::time::Duration::MAX;
    let mut first = None;
    let mut model = None;
    for _ in 0..5 {
        let t = Instant::now();
        let m = iryo_fhir_spec::load_r4().expect("load");
        load = load.min(t.elapsed());
        first.get_or_insert(t.elapsed());
        model = Some(m);
    }
    println!(
        "load_r4 first (cold): {:.1} ms",
        first.unwrap_or_default().as_secs_f64() * 1e3
    );
    let Some(m) = model else { return };
    println!(
        "load_r4 (best of 5): {:.1} ms ({} types, {} resource types, {} search parameters)",
        load.as_secs_f64() * 1e3,
        m.types().count(),
        m.resource_types().len(),
        m.all_search_params().len()
    );
    let t = Instant::now();
    let term = iryo_fhir_spec::Terminology::r4();
    let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
    let ok = term.validate_code(gender, None, "male");
    println!(
        "terminology r4: built + first expansion in {:.1} ms ({ok:?})",
        t.elapsed().as_secs_f64() * 1e3
    );
    if std::env::var_os("SKIP_JP").is_none() {
        jp_timings();
        let t = Instant::now();
        let _ = iryo_fhir_spec::Terminology::r4_jp().expand(gender);
        println!(
            "terminology r4+jp: built in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    check_timings(&m);
}

fn jp_timings() {
    let t = Instant::now();
    let n = iryo_fhir_spec::jp_files().len();
    let sds =
        iryo_fhir_spec::jp_resources_where(|f| f.file_name.starts_with("StructureDefinition-"));
    println!(
        "jp: index of {n} files; {} StructureDefinitions decompressed+parsed in {:.1} ms",
        sds.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let all = iryo_fhir_spec::jp_resources();
    println!(
        "jp: all {} resources in {:.1} ms",
        all.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn check_timings(m: &iryo_fhir_spec::Model) {
    let mut args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if args.is_empty() {
        args.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    }
    let mut files = Vec::new();
    for a in &args {
        collect(a, &mut files);
    }
    let mut resources = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if f.extension().is_some_and(|e| e == "ndjson") {
            resources.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()),
            );
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            resources.push(v);
        }
    }
    let bytes: usize = resources
        .iter()
        .map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0))
        .sum();
    let mut errors = 0;
    for r in &resources {
        let is = m.check_structure(r);
        for i in is.iter().take(5) {
            println!("  {} {}: {}", r["resourceType"], i.expression, i.message_en);
        }
        errors += is.len();
    }
    let rounds = (2_000_000 / bytes.max(1)).clamp(1, 1000);
    let t = Instant::now();
    for _ in 0..rounds {
        for r in &resources {
            std::hint::black_box(m.check_structure(std::hint::black_box(r)));
        }
    }
    let el = t.elapsed().as_secs_f64();
    let per = el / (rounds * resources.len().max(1)) as f64;
    println!(
        "check_structure: {} documents ({} KB), {} issues; {:.1} µs per document, {:.0} MB/s",
        resources.len(),
        bytes / 1024,
        errors,
        per * 1e6,
        (bytes * rounds) as f64 / el / 1e6
    );
}
