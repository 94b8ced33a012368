//! Regenerates the embedded data files in `crates/fhir-spec/data/` from the
//! FHIR R4 definitions and the JP profiles.
//!
//! ```text
//! cargo run -p iryo-fhir-spec --example pack -- /work/shared
//! ```
//!
//! The argument is the folder holding `fhir-r4/` and `fhir-jp/profiles/`; add `--jp-only`
//! after it to rebuild only the JP archive.
//! R4 content (CC0) is stripped of narrative, mappings and descriptive text.
//! JP content (CC BY-ND 4.0) is stored byte-identical inside `data/jp/jp-profiles.bin`.

use serde_json::{Map, Value};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

const ZSTD_LEVEL: i32 = 19;

fn main() {
    let shared = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/work/shared".into()),
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let r4 = shared.join("fhir-r4");
    if std::env::args().nth(2).as_deref() == Some("--jp-only") {
        pack_jp(&shared.join("fhir-jp").join("profiles"), &out.join("jp"));
        return;
    }

    let types = bundle_resources(&read_json(&r4.join("profiles-types.json")));
    let resources = bundle_resources(&read_json(&r4.join("profiles-resources.json.gz")));
    let search = bundle_resources(&read_json(&r4.join("search-parameters.json")));

    let mut sds = Vec::new();
    for r in types.iter().chain(resources.iter()) {
        if r["resourceType"] == "StructureDefinition" {
            sds.push(strip_structure_definition(r));
        }
    }
    let params: Vec<Value> = search.iter().map(strip_search_parameter).collect();
    let mut compartments = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(r4.join("compartments"))
        .expect("compartments dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    for p in names {
        let c = read_json(&p);
        let mut m = Map::new();
        for k in ["resourceType", "url", "code", "search", "resource"] {
            if let Some(v) = c.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        compartments.push(Value::Object(m));
    }
    // The model blob: only what `Model` needs, constraints deduplicated into a table.
    let mut constraints: Vec<Value> = Vec::new();
    let mut constraint_ids: std::collections::HashMap<String, usize> = Default::default();
    let lean: Vec<Value> = sds
        .iter()
        .map(|sd| lean_structure_definition(sd, &mut constraints, &mut constraint_ids))
        .collect();
    let mut model = Map::new();
    model.insert("constraints".into(), Value::Array(constraints));
    model.insert("structureDefinitions".into(), Value::Array(lean));
    model.insert("searchParameters".into(), Value::Array(params));
    model.insert("compartments".into(), Value::Array(compartments));
    write_zst(&out.join("r4-model.json.zst"), &Value::Object(model));
    // The stripped StructureDefinitions in FHIR shape, for the validator.
    write_zst(
        &out.join("r4-structure-definitions.json.zst"),
        &Value::Array(sds),
    );

    let valuesets: Vec<Value> = bundle_resources(&read_json(&r4.join("valuesets.json.gz")))
        .iter()
        .map(|r| strip_keys(r, &["text"]))
        .collect();
    write_zst(&out.join("r4-valuesets.json.zst"), &Value::Array(valuesets));
    let exts: Vec<Value> = bundle_resources(&read_json(&r4.join("extension-definitions.json.gz")))
        .iter()
        .map(strip_structure_definition)
        .collect();
    write_zst(&out.join("r4-extensions.json.zst"), &Value::Array(exts));

    pack_jp(&shared.join("fhir-jp").join("profiles"), &out.join("jp"));
}

fn read_json(p: &Path) -> Value {
    let mut bytes = Vec::new();
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    if p.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut bytes)
            .expect("gunzip");
    } else {
        f.read_to_end(&mut bytes).expect("read");
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

fn bundle_resources(b: &Value) -> Vec<Value> {
    b["entry"]
        .as_array()
        .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

fn strip_keys(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Keeps the computable part of a StructureDefinition: drops narrative, mappings,
/// the differential and descriptive element text.
fn strip_structure_definition(sd: &Value) -> Value {
    let mut sd = strip_keys(
        sd,
        &[
            "text",
            "mapping",
            "differential",
            "contact",
            "description",
            "purpose",
            "publisher",
        ],
    );
    if let Some(els) = sd
        .pointer_mut("/snapshot/element")
        .and_then(Value::as_array_mut)
    {
        for el in els.iter_mut() {
            *el = strip_keys(
                el,
                &[
                    "mapping",
                    "definition",
                    "comment",
                    "requirements",
                    "alias",
                    "example",
                    "isModifierReason",
                    "meaningWhenMissing",
                    "orderMeaning",
                    "short",
                ],
            );
            if let Some(cs) = el.get_mut("constraint").and_then(Value::as_array_mut) {
                for c in cs.iter_mut() {
                    *c = strip_keys(c, &["xpath"]);
                }
            }
            if let Some(b) = el.get_mut("binding") {
                *b = strip_keys(b, &["extension", "description"]);
            }
        }
    }
    sd
}

/// Keeps only the element fields the type model reads; `constraint` becomes `c`, a list
/// of indices into the shared constraint table.
fn lean_structure_definition(
    sd: &Value,
    table: &mut Vec<Value>,
    ids: &mut std::collections::HashMap<String, usize>,
) -> Value {
    let mut out = Map::new();
    for k in [
        "name",
        "url",
        "kind",
        "abstract",
        "type",
        "baseDefinition",
        "derivation",
    ] {
        if let Some(v) = sd.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut elements = Vec::new();
    for el in sd
        .pointer("/snapshot/element")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut e = Map::new();
        for k in [
            "path",
            "sliceName",
            "min",
            "max",
            "contentReference",
            "binding",
        ] {
            if let Some(v) = el.get(k) {
                e.insert(k.into(), v.clone());
            }
        }
        for k in ["isSummary", "isModifier"] {
            if el.get(k) == Some(&Value::Bool(true)) {
                e.insert(k.into(), Value::Bool(true));
            }
        }
        if let Some(b) = el.get("base") {
            if b.get("path") != el.get("path") || b.get("max") != el.get("max") {
                let mut bm = Map::new();
                bm.insert("path".into(), b["path"].clone());
                bm.insert("max".into(), b["max"].clone());
                e.insert("base".into(), Value::Object(bm));
            }
        }
        if let Some(Value::Array(types)) = el.get("type") {
            let types: Vec<Value> = types
                .iter()
                .map(|t| {
                    let mut t = t.clone();
                    if let Some(Value::Array(exts)) = t.get_mut("extension") {
                        exts.retain(|x| {
                            x["url"] == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
                        });
                    }
                    if t.get("extension").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                        t.as_object_mut().map(|m| m.remove("extension"));
                    }
                    t
                })
                .collect();
            e.insert("type".into(), Value::Array(types));
        }
        if let Some(Value::Array(cs)) = el.get("constraint") {
            let refs: Vec<Value> = cs
                .iter()
                .map(|c| {
                    let key = c.to_string();
                    let id = *ids.entry(key).or_insert_with(|| {
                        table.push(c.clone());
                        table.len() - 1
                    });
                    Value::from(id)
                })
                .collect();
            e.insert("c".into(), Value::Array(refs));
        }
        elements.push(Value::Object(e));
    }
    let mut snap = Map::new();
    snap.insert("element".into(), Value::Array(elements));
    out.insert("snapshot".into(), Value::Object(snap));
    Value::Object(out)
}

fn strip_search_parameter(sp: &Value) -> Value {
    let mut m = Map::new();
    for k in [
        "resourceType",
        "id",
        "url",
        "name",
        "code",
        "base",
        "type",
        "description",
        "expression",
        "xpathUsage",
        "target",
        "multipleOr",
        "multipleAnd",
        "comparator",
        "modifier",
        "chain",
        "component",
    ] {
        if let Some(v) = sp.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    Value::Object(m)
}

fn write_zst(path: &Path, v: &Value) {
    let json = serde_json::to_vec(v).expect("serialize");
    let z = zstd::encode_all(&json[..], ZSTD_LEVEL).expect("zstd");
    fs::write(path, &z).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!(
        "{}: {} bytes json -> {} bytes zstd",
        path.display(),
        json.len(),
        z.len()
    );
}

/// JP archive: a plain-text index followed by zstd frames holding every
/// file's bytes, unmodified, in index order.
///
/// ```text
/// IRYO-JP-ARCHIVE 3\n
/// frames\t<compressed size of frame 0>\t<… frame 1>\t<… frame 2>\n
/// <package>\t<file name>\t<byte length>\t<resourceType>\t<url>\t<version>\t<frame>\n   (one line per file)
/// \n
/// <zstd frames: each the concatenated bytes of its files, in index order>
/// ```
fn pack_jp(src: &Path, out: &Path) {
    fs::create_dir_all(out).expect("mkdir data/jp");
    let mut packages: Vec<PathBuf> = fs::read_dir(src)
        .expect("fhir-jp/profiles")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    packages.sort();
    // (frame, package, name, bytes, resourceType, url, version)
    let mut entries = Vec::new();
    for pkg in &packages {
        let pkg_name = pkg.file_name().unwrap().to_str().unwrap().to_string();
        let mut files = Vec::new();
        collect_files(pkg, &mut files);
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut seen = std::collections::HashSet::new();
        for f in files {
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            if !name.ends_with(".json") {
                continue;
            }
            assert!(
                seen.insert(name.clone()),
                "duplicate file name {name} in {pkg_name}"
            );
            let bytes = fs::read(&f).expect("read jp file");
            let v: Value = serde_json::from_slice(&bytes).expect("jp file is JSON");
            let field = |k: &str| {
                let s = v.get(k).and_then(Value::as_str).unwrap_or("");
                assert!(
                    !s.contains(['\t', '\n']),
                    "{name}: {k} contains a tab or newline"
                );
                s.to_string()
            };
            let rt = field("resourceType");
            let frame = jp_frame(&rt);
            let (url, version) = (field("url"), field("version"));
            entries.push((frame, pkg_name.clone(), name, bytes, rt, url, version));
        }
    }
    // Stable: by frame, then package and file name as collected.
    entries.sort_by_key(|e| e.0);
    let mut index = String::new();
    let mut frames: Vec<Vec<u8>> = vec![Vec::new(); JP_FRAMES];
    for (frame, pkg, name, bytes, rt, url, version) in &entries {
        index.push_str(&format!(
            "{pkg}\t{name}\t{}\t{rt}\t{url}\t{version}\t{frame}\n",
            bytes.len()
        ));
        frames[*frame].extend_from_slice(bytes);
    }
    let mut compressed = Vec::new();
    for raw in &frames {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).expect("zstd");
        enc.long_distance_matching(true).expect("ldm");
        enc.window_log(27).expect("window");
        std::io::Write::write_all(&mut enc, raw).expect("compress");
        compressed.push(enc.finish().expect("zstd finish"));
    }
    let sizes: Vec<String> = compressed.iter().map(|c| c.len().to_string()).collect();
    let mut file =
        format!("IRYO-JP-ARCHIVE 3\nframes\t{}\n{index}\n", sizes.join("\t")).into_bytes();
    for c in &compressed {
        file.extend_from_slice(c);
    }
    fs::write(out.join("jp-profiles.bin"), &file).expect("write jp archive");
    fs::copy(src.join("SOURCES.md"), out.join("SOURCES.md")).expect("copy SOURCES.md");
    let total: usize = frames.iter().map(Vec::len).sum();
    println!(
        "jp: {} files, {total} bytes -> {} bytes (frames {})",
        entries.len(),
        file.len(),
        sizes.join(", ")
    );
}

/// Files are grouped into zstd frames so a reader decompresses only what it needs:
/// 0 = SearchParameter/NamingSystem/other small resources, 1 = StructureDefinition,
/// 2 = ValueSet/CodeSystem.
const JP_FRAMES: usize = 3;

fn jp_frame(resource_type: &str) -> usize {
    match resource_type {
        "StructureDefinition" => 1,
        "ValueSet" | "CodeSystem" => 2,
        _ => 0,
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}
