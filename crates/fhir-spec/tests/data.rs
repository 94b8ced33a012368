//! Embedded raw definitions and the JP archive.

use std::path::Path;

#[test]
fn jp_archive_is_complete_and_unmodified() {
    let files = iryo_fhir_spec::jp_files();
    assert_eq!(files.len(), 592);
    let pkgs: std::collections::BTreeSet<&str> = files.iter().map(|f| f.package).collect();
    assert_eq!(
        pkgs.into_iter().collect::<Vec<_>>(),
        [
            "eCheckupReport-1.5.0",
            "jp-clins-1.10.0",
            "jp-core-1.1.2-clins"
        ]
    );
    let raw = iryo_fhir_spec::jp_raw_files();
    assert_eq!(raw.len(), 592);
    let shared = Path::new("/work/shared/fhir-jp/profiles");
    if shared.exists() {
        let mut compared = 0;
        for (f, bytes) in &raw {
            let a = shared.join(f.package).join(f.file_name);
            let b = shared.join(f.package).join("terminology").join(f.file_name);
            let original = std::fs::read(&a)
                .or_else(|_| std::fs::read(&b))
                .expect("file in shared");
            assert!(original == *bytes, "{} {} differs", f.package, f.file_name);
            compared += 1;
        }
        assert_eq!(compared, 592);
    } else {
        println!("note: /work/shared not found, byte comparison skipped");
    }
    let notice = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/jp/NOTICE.md");
    assert!(std::fs::read_to_string(notice)
        .unwrap()
        .contains("CC BY-ND 4.0"));
}

#[test]
fn jp_resources_parse() {
    let sds = iryo_fhir_spec::jp_resources_where(|f| {
        f.file_name.starts_with("StructureDefinition-jp-patient")
    });
    assert!(!sds.is_empty());
    let (pkg, name, v) = sds
        .iter()
        .find(|(_, n, _)| *n == "StructureDefinition-jp-patient.json")
        .unwrap();
    assert_eq!(*pkg, "jp-core-1.1.2-clins");
    assert_eq!(*name, "StructureDefinition-jp-patient.json");
    assert_eq!(
        v["url"],
        "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"
    );
    assert!(v["snapshot"]["element"].as_array().unwrap().len() > 10);
}

#[test]
fn jp_index_and_lookup_by_url() {
    let files = iryo_fhir_spec::jp_files();
    let count = |t: &str| files.iter().filter(|f| f.resource_type == t).count();
    assert_eq!(count("StructureDefinition"), 164);
    assert_eq!(count("ValueSet"), 253);
    assert_eq!(count("CodeSystem"), 122);
    assert_eq!(count("SearchParameter"), 8);
    let url = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient";
    let f = iryo_fhir_spec::jp_file_by_url(url).unwrap();
    assert_eq!(f.file_name, "StructureDefinition-jp-patient.json");
    assert!(iryo_fhir_spec::jp_file_by_url(&format!("{url}|{}", f.version)).is_some());
    assert!(iryo_fhir_spec::jp_file_by_url(&format!("{url}|0.0.0-nope")).is_none());
    assert!(iryo_fhir_spec::jp_file_by_url("http://example.org/nope").is_none());
    let jp = iryo_fhir_spec::JpArchive::open();
    let v = jp.by_url(url).unwrap();
    assert_eq!(v["url"], url);
    // JP Core search parameters load into the model.
    let sps: Vec<serde_json::Value> = files
        .iter()
        .filter(|f| f.resource_type == "SearchParameter")
        .map(|f| jp.parse(f).unwrap())
        .collect();
    let m = iryo_fhir_spec::r4().with_search_parameters(&sps).unwrap();
    assert!(m.all_search_params().len() > iryo_fhir_spec::r4().all_search_params().len());
    assert_eq!(sps, iryo_fhir_spec::jp_search_parameters());
    let jpm = iryo_fhir_spec::r4_jp();
    let kana = jpm.search_param("Patient", "jp-kana-sort").unwrap();
    assert_eq!(kana.kind, iryo_fhir_spec::SearchParamType::String);
    assert!(kana
        .expression_for("Patient")
        .unwrap()
        .starts_with("Patient.name.where("));
    assert!(jpm
        .search_param("Coverage", "jp-insured-personnumber")
        .is_some());
    assert!(iryo_fhir_spec::r4()
        .search_param("Patient", "jp-kana-sort")
        .is_none());
}

#[test]
fn r4_raw_definitions() {
    let sds = iryo_fhir_spec::r4_structure_definitions();
    assert_eq!(sds.len(), 212);
    let patient = sds.iter().find(|s| s["name"] == "Patient").unwrap();
    assert!(patient.get("text").is_none());
    assert!(patient["snapshot"]["element"].as_array().unwrap().len() > 30);
    let vs = iryo_fhir_spec::r4_value_sets();
    assert_eq!(vs.len(), 1167);
    assert!(vs
        .iter()
        .any(|v| v["url"] == "http://hl7.org/fhir/ValueSet/administrative-gender"));
    let ext = iryo_fhir_spec::r4_extension_definitions();
    assert_eq!(ext.len(), 396);
    assert!(ext
        .iter()
        .any(|v| v["url"] == "http://hl7.org/fhir/StructureDefinition/patient-birthTime"));
}

#[test]
fn model_is_shared_and_threadsafe() {
    let a = std::thread::spawn(|| iryo_fhir_spec::r4() as *const _ as usize);
    let b = std::thread::spawn(|| iryo_fhir_spec::r4() as *const _ as usize);
    assert_eq!(a.join().unwrap(), b.join().unwrap());
}

#[test]
fn shipped_conformance_resources_pass_the_structural_check() {
    // The JP packages (StructureDefinitions with ElementDefinition's many choice types,
    // ValueSets, CodeSystems, SearchParameters) and the stripped R4 definitions are valid R4.
    let m = iryo_fhir_spec::r4();
    let mut n = 0;
    let mut empty_texts = 0;
    for (pkg, name, v) in iryo_fhir_spec::jp_resources() {
        for i in m.check_structure(&v) {
            // Real defects of the published JP profiles: 32 element `comment`/`definition`
            // strings are "". Anything else would be a false positive of ours.
            let known = i.code == "value"
                && i.message_en.starts_with("Empty strings")
                && (i.expression.ends_with(".comment") || i.expression.ends_with(".definition"));
            assert!(known, "{pkg}/{name}: {i:#?}");
            empty_texts += 1;
        }
        n += 1;
    }
    assert_eq!(n, 592);
    assert_eq!(empty_texts, 32);
    for v in iryo_fhir_spec::r4_structure_definitions()
        .iter()
        .chain(iryo_fhir_spec::r4_extension_definitions().iter())
        .chain(iryo_fhir_spec::r4_value_sets().iter())
    {
        let issues = m.check_structure(v);
        assert!(
            issues.is_empty(),
            "{}: {:#?}",
            v["url"],
            &issues[..issues.len().min(5)]
        );
    }
}

#[test]
fn r4_definition_by_url_matches_the_full_lists() {
    let mut all = std::collections::HashMap::new();
    for sd in iryo_fhir_spec::r4_structure_definitions()
        .into_iter()
        .chain(iryo_fhir_spec::r4_extension_definitions())
    {
        let url = sd["url"].as_str().unwrap().to_string();
        all.insert(url, sd);
    }
    assert!(all.len() > 300, "{}", all.len());
    for (url, sd) in &all {
        assert_eq!(
            iryo_fhir_spec::r4_definition_by_url(url).as_ref(),
            Some(sd),
            "{url}"
        );
    }
    assert!(iryo_fhir_spec::r4_definition_by_url("http://example.org/none").is_none());
    let ext = iryo_fhir_spec::r4_definition_by_url(
        "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
    )
    .unwrap();
    assert_eq!(ext["type"], "Extension");
}
