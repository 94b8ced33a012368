//! The embedded data files (see README.md for how they are made).

use crate::hash::FastMap;
use crate::model::{build_core, Model};
use crate::raw::RawCore;
use crate::search::{convert, SearchIndex};
use crate::SpecError;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

static R4_MODEL: &[u8] = include_bytes!("../data/r4-model.json.zst");
static R4_SDS: &[u8] = include_bytes!("../data/r4-structure-definitions.json.zst");
static R4_VALUESETS: &[u8] = include_bytes!("../data/r4-valuesets.json.zst");
static R4_EXTENSIONS: &[u8] = include_bytes!("../data/r4-extensions.json.zst");
static JP_ARCHIVE: &[u8] = include_bytes!("../data/jp/jp-profiles.bin");

fn unzstd(bytes: &[u8], what: &str) -> Result<Vec<u8>, SpecError> {
    zstd::decode_all(bytes).map_err(|e| SpecError::Data(format!("{what}: {e}")))
}

/// Builds the R4 model from the embedded data (what [`crate::r4`] does once).
pub fn load_r4() -> Result<Model, SpecError> {
    let json = unzstd(R4_MODEL, "r4-model")?;
    let raw: RawCore =
        serde_json::from_slice(&json).map_err(|e| SpecError::Data(format!("r4-model: {e}")))?;
    let mut compartments: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    for c in raw.compartments {
        let m = compartments.entry(c.code).or_default();
        for r in c.resource {
            m.insert(r.code, r.param);
        }
    }
    let core = build_core(&raw.structure_definitions, &raw.constraints, compartments)?;
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
    json_array(R4_SDS, "r4-structure-definitions").unwrap_or_default()
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

/// The R4 StructureDefinition (datatype, resource or core extension) with this canonical URL,
/// parsed on each call; `None` if there is none. Only the requested definition is parsed:
/// the embedded arrays are decompressed once and indexed by URL (a byte scan, no JSON
/// tree), which is much cheaper than [`r4_structure_definitions`] when only a few are
/// needed. Where both arrays have the URL, the extension definition wins (as when both
/// lists are loaded in order).
pub fn r4_definition_by_url(url: &str) -> Option<Value> {
    static INDEX: OnceLock<(Vec<u8>, Vec<u8>, FastMap<String, (bool, usize, usize)>)> =
        OnceLock::new();
    let (sds, exts, index) = INDEX.get_or_init(|| {
        let sds = unzstd(R4_SDS, "r4-structure-definitions").unwrap_or_default();
        let exts = unzstd(R4_EXTENSIONS, "r4-extensions").unwrap_or_default();
        let mut index = FastMap::default();
        for (ext, bytes) in [(false, &sds), (true, &exts)] {
            for (u, a, b) in index_array(bytes) {
                index.insert(u, (ext, a, b));
            }
        }
        (sds, exts, index)
    });
    let &(ext, a, b) = index.get(url)?;
    let bytes = if ext { exts } else { sds };
    serde_json::from_slice(bytes.get(a..b)?).ok()
}

/// The index after the string starting at `i` (`bytes[i]` is the opening quote).
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// (url, start, end) of each object of a JSON array of resources: the byte range of the
/// object and the string value of its top-level `url` member (objects without one are left
/// out). Escaped URLs are decoded by serde.
fn index_array(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let (mut depth, mut i, mut start) = (0usize, 0usize, 0usize);
    let mut url: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let s = i;
                i = skip_string(bytes, i);
                if depth == 2 && url.is_none() && &bytes[s..i] == b"\"url\"" {
                    let j = skip_ws(bytes, i);
                    if bytes.get(j) == Some(&b':') {
                        let k = skip_ws(bytes, j + 1);
                        if bytes.get(k) == Some(&b'"') {
                            let e = skip_string(bytes, k);
                            url = serde_json::from_slice::<String>(&bytes[k..e]).ok();
                            i = e;
                        }
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 2 && bytes[i] == b'{' {
                    start = i;
                    url = None;
                }
            }
            b'}' | b']' => {
                if depth == 2 && bytes[i] == b'}' {
                    if let Some(u) = url.take() {
                        out.push((u, start, i + 1));
                    }
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// One file of the JP archive (from the uncompressed index; no decompression needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpFile {
    /// "jp-core-1.1.2-clins", "jp-clins-1.10.0" or "eCheckupReport-1.5.0".
    pub package: &'static str,
    /// File name as published, e.g. "StructureDefinition-jp-patient.json".
    pub file_name: &'static str,
    /// "StructureDefinition", "ValueSet", "CodeSystem", "NamingSystem", "SearchParameter".
    pub resource_type: &'static str,
    /// Canonical URL ("" when the resource has none).
    pub url: &'static str,
    /// Business version ("" when the resource has none).
    pub version: &'static str,
    frame: usize,
    offset: usize,
    len: usize,
}

struct JpIndex {
    files: Vec<JpFile>,
    /// Compressed byte ranges of the frames inside the archive.
    frames: Vec<(usize, usize)>,
    /// Decompressed size of each frame.
    frame_sizes: Vec<usize>,
}

fn jp_index() -> &'static JpIndex {
    static INDEX: OnceLock<JpIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        parse_jp_index(JP_ARCHIVE).unwrap_or(JpIndex {
            files: Vec::new(),
            frames: Vec::new(),
            frame_sizes: Vec::new(),
        })
    })
}

fn parse_jp_index(bytes: &'static [u8]) -> Option<JpIndex> {
    let end = bytes.windows(2).position(|w| w == b"\n\n")?;
    let header = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = header.lines();
    if lines.next()? != "IRYO-JP-ARCHIVE 3" {
        return None;
    }
    let mut frame_line = lines.next()?.split('\t');
    if frame_line.next()? != "frames" {
        return None;
    }
    let mut frames = Vec::new();
    let mut at = end + 2;
    for len in frame_line {
        let len: usize = len.parse().ok()?;
        frames.push((at, at.checked_add(len)?));
        at += len;
    }
    if at != bytes.len() {
        return None;
    }
    let mut frame_sizes = vec![0usize; frames.len()];
    let mut files = Vec::new();
    for line in lines {
        let mut parts = line.split('\t');
        let package = parts.next()?;
        let file_name = parts.next()?;
        let len: usize = parts.next()?.parse().ok()?;
        let resource_type = parts.next()?;
        let url = parts.next()?;
        let version = parts.next()?;
        let frame: usize = parts.next()?.parse().ok()?;
        let offset = *frame_sizes.get(frame)?;
        frame_sizes[frame] += len;
        files.push(JpFile {
            package,
            file_name,
            resource_type,
            url,
            version,
            frame,
            offset,
            len,
        });
    }
    Some(JpIndex {
        files,
        frames,
        frame_sizes,
    })
}

/// The files in the JP archive (cheap: reads only the uncompressed index).
pub fn jp_files() -> &'static [JpFile] {
    &jp_index().files
}

/// The index entry for a canonical URL, optionally with `|version`.
pub fn jp_file_by_url(canonical: &str) -> Option<&'static JpFile> {
    let (url, version) = match canonical.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (canonical, None),
    };
    jp_files()
        .iter()
        .find(|f| !f.url.is_empty() && f.url == url && version.is_none_or(|v| v == f.version))
}

/// Access to the JP files. The archive is split in frames (SearchParameter/NamingSystem,
/// StructureDefinition, ValueSet/CodeSystem); a frame is decompressed the first time one
/// of its files is read and kept until the `JpArchive` is dropped. Keep it while loading
/// what you need, then drop it.
///
/// ```
/// let jp = iryo_fhir_spec::JpArchive::open();
/// let sd = jp.by_url("http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient").unwrap();
/// assert_eq!(sd["type"], "Patient");
/// ```
pub struct JpArchive {
    frames: Vec<OnceLock<Vec<u8>>>,
}

impl JpArchive {
    /// Cheap: nothing is decompressed yet.
    pub fn open() -> JpArchive {
        JpArchive {
            frames: (0..jp_index().frames.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The index (same as [`jp_files`]).
    pub fn files(&self) -> &'static [JpFile] {
        jp_files()
    }

    fn frame(&self, i: usize) -> &[u8] {
        let idx = jp_index();
        let Some(cell) = self.frames.get(i) else {
            return &[];
        };
        cell.get_or_init(|| {
            let (a, b) = idx.frames[i];
            match unzstd(&JP_ARCHIVE[a..b], "jp archive") {
                Ok(v) if v.len() == idx.frame_sizes[i] => v,
                _ => Vec::new(),
            }
        })
    }

    /// The file's bytes exactly as published (empty if the archive is damaged).
    pub fn bytes(&self, f: &JpFile) -> &[u8] {
        self.frame(f.frame)
            .get(f.offset..f.offset + f.len)
            .unwrap_or(&[])
    }

    /// The file parsed as JSON.
    pub fn parse(&self, f: &JpFile) -> Result<Value, SpecError> {
        serde_json::from_slice(self.bytes(f))
            .map_err(|e| SpecError::Data(format!("{}/{}: {e}", f.package, f.file_name)))
    }

    /// The resource with this canonical URL (optionally `url|version`), parsed.
    pub fn by_url(&self, canonical: &str) -> Option<Value> {
        self.parse(jp_file_by_url(canonical)?).ok()
    }
}

/// The JP Core 1.1.2 / JP-CLINS 1.10.0 / eCheckupReport 1.5.0 conformance resources,
/// byte-identical to the published package files (CC BY-ND 4.0, see data/jp/NOTICE.md),
/// parsed as JSON: (package, file name, resource). Decompressed on each call; nothing is
/// kept in memory. Parsing everything takes a while (35 MB of snapshots): prefer
/// [`jp_resources_where`] or [`JpArchive`] to load only what is needed.
pub fn jp_resources() -> Vec<(&'static str, &'static str, Value)> {
    jp_resources_where(|_| true)
}

/// Like [`jp_resources`], but parses only the files `keep` accepts (only their frames are
/// decompressed), e.g. `|f| f.resource_type == "StructureDefinition"`.
pub fn jp_resources_where(
    keep: impl Fn(&JpFile) -> bool,
) -> Vec<(&'static str, &'static str, Value)> {
    let archive = JpArchive::open();
    archive
        .files()
        .iter()
        .filter(|f| keep(f))
        .filter_map(|f| Some((f.package, f.file_name, archive.parse(f).ok()?)))
        .collect()
}

/// The JP Core SearchParameter resources (8), for [`crate::Model::with_search_parameters`].
pub fn jp_search_parameters() -> Vec<Value> {
    jp_resources_where(|f| f.resource_type == "SearchParameter")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

/// The raw bytes of every JP file (as published), for checksums or re-export.
pub fn jp_raw_files() -> Vec<(JpFile, Vec<u8>)> {
    let archive = JpArchive::open();
    archive
        .files()
        .iter()
        .map(|f| (*f, archive.bytes(f).to_vec()))
        .collect()
}
