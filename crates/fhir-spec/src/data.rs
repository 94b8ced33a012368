//! The embedded data files (see README.md for how they are made).

use crate::model::{build_core, Model};
use crate::raw::RawCore;
use crate::search::{convert, SearchIndex};
use crate::SpecError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

static R4_CORE: &[u8] = include_bytes!("../data/r4-core.json.zst");
static R4_VALUESETS: &[u8] = include_bytes!("../data/r4-valuesets.json.zst");
static R4_EXTENSIONS: &[u8] = include_bytes!("../data/r4-extensions.json.zst");
static JP_ARCHIVE: &[u8] = include_bytes!("../data/jp/jp-profiles.bin");

fn unzstd(bytes: &[u8], what: &str) -> Result<Vec<u8>, SpecError> {
    zstd::decode_all(bytes).map_err(|e| SpecError::Data(format!("{what}: {e}")))
}

/// Builds the R4 model from the embedded data (what [`crate::r4`] does once).
pub fn load_r4() -> Result<Model, SpecError> {
    let json = unzstd(R4_CORE, "r4-core")?;
    let raw: RawCore =
        serde_json::from_slice(&json).map_err(|e| SpecError::Data(format!("r4-core: {e}")))?;
    let mut compartments: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    for c in raw.compartments {
        let m = compartments.entry(c.code).or_default();
        for r in c.resource {
            m.insert(r.code, r.param);
        }
    }
    let core = build_core(&raw.structure_definitions, compartments)?;
    let mut search = SearchIndex::default();
    for sp in raw.search_parameters {
        search.add(convert(sp).map_err(SpecError::Data)?);
    }
    Ok(Model {
        core: Arc::new(core),
        search: Arc::new(search),
    })
}

fn json_array(bytes: &[u8], what: &str) -> Result<Vec<Value>, SpecError> {
    let json = unzstd(bytes, what)?;
    match serde_json::from_slice(&json) {
        Ok(Value::Array(v)) => Ok(v),
        Ok(_) => Err(SpecError::Data(format!("{what}: not an array"))),
        Err(e) => Err(SpecError::Data(format!("{what}: {e}"))),
    }
}

/// The R4 StructureDefinitions of datatypes and resources as FHIR JSON, with narrative,
/// mappings, the differential and descriptive element text removed (snapshots complete
/// otherwise). Parsed on each call.
pub fn r4_structure_definitions() -> Vec<Value> {
    let Ok(json) = unzstd(R4_CORE, "r4-core") else {
        return Vec::new();
    };
    match serde_json::from_slice::<Value>(&json) {
        Ok(mut v) => match v.get_mut("structureDefinitions").map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

/// The R4 ValueSets and CodeSystems (valuesets.json, narrative removed). Parsed on each call.
pub fn r4_value_sets() -> Vec<Value> {
    json_array(R4_VALUESETS, "r4-valuesets").unwrap_or_default()
}

/// The R4 core extension definitions (StructureDefinitions of type Extension, stripped like
/// [`r4_structure_definitions`]). Parsed on each call.
pub fn r4_extension_definitions() -> Vec<Value> {
    json_array(R4_EXTENSIONS, "r4-extensions").unwrap_or_default()
}

/// One file of the JP archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpFile {
    /// "jp-core-1.1.2-clins", "jp-clins-1.10.0" or "eCheckupReport-1.5.0".
    pub package: &'static str,
    /// File name as published, e.g. "StructureDefinition-jp-patient.json".
    pub file_name: &'static str,
    offset: usize,
    len: usize,
}

struct JpIndex {
    files: Vec<JpFile>,
    data_start: usize,
}

fn jp_index() -> &'static JpIndex {
    static INDEX: OnceLock<JpIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        parse_jp_index(JP_ARCHIVE).unwrap_or(JpIndex {
            files: Vec::new(),
            data_start: JP_ARCHIVE.len(),
        })
    })
}

fn parse_jp_index(bytes: &'static [u8]) -> Option<JpIndex> {
    let end = bytes.windows(2).position(|w| w == b"\n\n")?;
    let header = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = header.lines();
    if lines.next()? != "IRYO-JP-ARCHIVE 1" {
        return None;
    }
    let mut files = Vec::new();
    let mut offset = 0usize;
    for line in lines {
        let mut parts = line.split('\t');
        let package = parts.next()?;
        let file_name = parts.next()?;
        let len: usize = parts.next()?.parse().ok()?;
        files.push(JpFile {
            package,
            file_name,
            offset,
            len,
        });
        offset += len;
    }
    Some(JpIndex {
        files,
        data_start: end + 2,
    })
}

/// The files in the JP archive (cheap: reads only the uncompressed index).
pub fn jp_files() -> &'static [JpFile] {
    &jp_index().files
}

/// The JP Core 1.1.2 / JP-CLINS 1.10.0 / eCheckupReport 1.5.0 conformance resources,
/// byte-identical to the published package files (CC BY-ND 4.0, see data/jp/NOTICE.md),
/// parsed as JSON. Decompressed on each call; nothing is kept in memory.
pub fn jp_resources() -> Vec<(&'static str, &'static str, Value)> {
    jp_resources_where(|_| true)
}

/// Like [`jp_resources`], but parses only the files `keep` accepts
/// (e.g. only StructureDefinitions: `|f| f.file_name.starts_with("StructureDefinition-")`).
pub fn jp_resources_where(
    keep: impl Fn(&JpFile) -> bool,
) -> Vec<(&'static str, &'static str, Value)> {
    let idx = jp_index();
    let Ok(blob) = unzstd(&JP_ARCHIVE[idx.data_start..], "jp archive") else {
        return Vec::new();
    };
    idx.files
        .iter()
        .filter(|f| keep(f))
        .filter_map(|f| {
            let bytes = blob.get(f.offset..f.offset + f.len)?;
            let v = serde_json::from_slice(bytes).ok()?;
            Some((f.package, f.file_name, v))
        })
        .collect()
}

/// The raw bytes of every JP file (as published), for checksums or re-export.
pub fn jp_raw_files() -> Vec<(JpFile, Vec<u8>)> {
    let idx = jp_index();
    let Ok(blob) = unzstd(&JP_ARCHIVE[idx.data_start..], "jp archive") else {
        return Vec::new();
    };
    idx.files
        .iter()
        .filter_map(|f| Some((*f, blob.get(f.offset..f.offset + f.len)?.to_vec())))
        .collect()
}
