//! Import of the official master files (CP932 CSV, no header, optionally zipped) into a
//! dated-version SQLite store. The store is built in a new file and renamed over the target
//! only when everything parsed, so a failed import keeps the previous store untouched.

use super::store::{self, SEP};
use super::{MasterKind, SPECS};
use crate::error::{FeeError, Result};
use crate::num::{day_before, parse_fixed, parse_master_date};
use crate::zipread::read_zip;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the importer is doing, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ImportPhase {
    /// Reading and checking one file (`done_files` of `total_files`).
    Reading,
    /// Writing the new store.
    Writing,
    /// Finished; the new store is in place.
    Done,
}

/// Progress report passed to the callback of [`import_masters`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportProgress {
    pub phase: ImportPhase,
    pub file: String,
    pub done_files: usize,
    pub total_files: usize,
    pub rows_read: u64,
}

/// One input file and what was done with it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    pub name: String,
    pub rows: u64,
    pub applied: bool,
    pub note: String,
}

/// Summary of an import.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub files: Vec<FileReport>,
    /// Number of codes and of dated versions per master letter (`S`, `Y`, …).
    pub codes: HashMap<char, (usize, usize)>,
    /// Rows per 電子点数表 table (`aux`, `inclusion`, `exclusion`, `inpatient`, `limit`).
    pub tables: HashMap<&'static str, usize>,
    /// Change rows that referred to a code absent from every earlier file (kept as given).
    pub orphan_changes: u64,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TableKind {
    Aux,
    Inclusion,
    Exclusion(u8),
    Inpatient,
    Limit,
}

#[derive(Debug)]
enum FileKind {
    Master {
        kind: MasterKind,
        date: u32,
        full_by_name: bool,
    },
    Table(TableKind),
}

struct InputFile {
    path: PathBuf,
    display: String,
    kind: FileKind,
}

fn classify(name: &str) -> Option<FileKind> {
    let lower = name.to_ascii_lowercase();
    let ext_ok = lower.ends_with(".csv") || lower.ends_with(".txt") || lower.ends_with(".zip");
    if !ext_ok {
        return None;
    }
    let b = name.as_bytes();
    if b.len() > 2 && b[1] == b'_' {
        if let Some(kind) = MasterKind::from_file_prefix(b[0] as char) {
            let rest = &name[2..];
            let full_by_name =
                rest.to_ascii_uppercase().starts_with("ALL") || lower.contains("full");
            let digits: String = rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .trim_start_matches('_')
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if digits.len() == 8 {
                if let Ok(Some(date)) = parse_master_date(&digits) {
                    return Some(FileKind::Master {
                        kind,
                        date,
                        full_by_name,
                    });
                }
            }
            return None;
        }
    }
    if lower.ends_with(".csv") {
        if name.starts_with("01") && name.contains("補助") {
            return Some(FileKind::Table(TableKind::Aux));
        }
        if name.starts_with("02") && name.contains("包括") {
            return Some(FileKind::Table(TableKind::Inclusion));
        }
        for (i, p) in ["03-1", "03-2", "03-3", "03-4"].iter().enumerate() {
            if name.starts_with(p) && name.contains("背反") {
                return Some(FileKind::Table(TableKind::Exclusion(i as u8 + 1)));
            }
        }
        if name.starts_with("04") && name.contains("入院基本料") {
            return Some(FileKind::Table(TableKind::Inpatient));
        }
        if name.starts_with("05") && name.contains("算定回数") {
            return Some(FileKind::Table(TableKind::Limit));
        }
    }
    None
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<InputFile>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| FeeError::io(dir, e))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, root, out)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            if let Some(kind) = classify(name) {
                let display = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push(InputFile {
                    path: p.clone(),
                    display,
                    kind,
                });
            }
        }
    }
    Ok(())
}

/// One CSV row held compactly: every field in one string, separated by [`SEP`] (the store's own
/// format), plus the end offset of each field. Two allocations per row instead of one per field.
#[derive(Clone, Default, Debug)]
pub(crate) struct Row {
    text: String,
    ends: Vec<u32>,
}

impl Row {
    fn with_capacity(bytes: usize, fields: usize) -> Row {
        Row {
            text: String::with_capacity(bytes + fields),
            ends: Vec::with_capacity(fields),
        }
    }

    fn from_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Row {
        let mut r = Row::default();
        for f in fields {
            r.push(f);
        }
        r
    }

    fn push(&mut self, field: &str) {
        if !self.ends.is_empty() {
            self.text.push(SEP);
        }
        self.text.push_str(field);
        self.ends.push(self.text.len() as u32);
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Field `i` (0-based).
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize + SEP.len_utf8()
        };
        Some(&self.text[start..end])
    }

    /// Column `n` (1-based) as text; empty when out of range.
    pub(crate) fn col(&self, n: usize) -> &str {
        n.checked_sub(1).and_then(|i| self.get(i)).unwrap_or("")
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// A copy with field `i` (0-based) replaced.
    fn with(&self, i: usize, value: &str) -> Row {
        Row::from_fields(
            self.iter()
                .enumerate()
                .map(|(j, f)| if j == i { value } else { f }),
        )
    }

    /// The fields joined by [`SEP`], as stored.
    pub(crate) fn joined(&self) -> &str {
        &self.text
    }
}

impl std::ops::Index<usize> for Row {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        self.get(i).unwrap_or("")
    }
}

/// Parsed rows of one text file: (line number, fields).
type Rows = Vec<(u64, Row)>;

fn parse_csv(display: &str, bytes: &[u8]) -> Result<Rows> {
    let (text, _, had_errors) = encoding_rs::SHIFT_JIS.decode(bytes);
    if had_errors {
        // Find the first bad line for the message.
        let line = bytes
            .split(|&b| b == b'\n')
            .position(|l| {
                encoding_rs::SHIFT_JIS
                    .decode_without_bom_handling_and_without_replacement(l)
                    .is_none()
            })
            .map(|p| p as u64 + 1)
            .unwrap_or(0);
        return Err(FeeError::MalformedRow {
            file: display.to_string(),
            line,
            reason: "not valid CP932 (Shift_JIS) text".into(),
        });
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut rec = csv::StringRecord::new();
    // Line numbers are counted here from byte offsets (the reader's own count is unreliable
    // with CRLF line ends).
    let (mut seen_byte, mut seen_line) = (0usize, 1u64);
    let tb = text.as_bytes();
    let mut line_at = |byte: usize| -> u64 {
        // A record may be reported as starting on the line end of the previous one.
        let mut byte = byte.min(tb.len());
        while byte < tb.len() && (tb[byte] == b'\r' || tb[byte] == b'\n') {
            byte += 1;
        }
        if byte > seen_byte {
            seen_line += tb[seen_byte..byte].iter().filter(|&&b| b == b'\n').count() as u64;
            seen_byte = byte;
        }
        seen_line
    };
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                let line = rec
                    .position()
                    .map(|p| line_at(p.byte() as usize))
                    .unwrap_or(0);
                if rec.len() == 1 && rec[0].trim().is_empty() {
                    continue;
                }
                let mut row = Row::with_capacity(rec.as_slice().len(), rec.len());
                for f in rec.iter() {
                    if f.contains(SEP) {
                        return Err(FeeError::MalformedRow {
                            file: display.to_string(),
                            line,
                            reason: "control character U+001F in a field".into(),
                        });
                    }
                    row.push(f);
                }
                rows.push((line, row));
            }
            Err(e) => {
                let line = e
                    .position()
                    .map(|p| line_at(p.byte() as usize))
                    .unwrap_or(0);
                return Err(FeeError::MalformedRow {
                    file: display.to_string(),
                    line,
                    reason: format!("CSV syntax: {e}"),
                });
            }
        }
    }
    Ok(rows)
}

/// Read a file (or every CSV/TXT inside a ZIP) into rows.
fn read_rows(f: &InputFile) -> Result<Vec<(String, Rows)>> {
    let bytes = std::fs::read(&f.path).map_err(|e| FeeError::io(&f.path, e))?;
    if f.display.to_ascii_lowercase().ends_with(".zip") {
        let mut out = Vec::new();
        for e in read_zip(&f.display, &bytes)? {
            let lower = e.name.to_ascii_lowercase();
            if lower.ends_with(".csv") || lower.ends_with(".txt") {
                let disp = format!("{}!{}", f.display, e.name);
                let rows = parse_csv(&disp, &e.data)?;
                out.push((disp, rows));
            }
        }
        Ok(out)
    } else {
        Ok(vec![(f.display.clone(), parse_csv(&f.display, &bytes)?)])
    }
}

fn bad(file: &str, line: u64, reason: impl Into<String>) -> FeeError {
    FeeError::MalformedRow {
        file: file.to_string(),
        line,
        reason: reason.into(),
    }
}

/// One dated version being built.
#[derive(Clone)]
struct Version {
    from: u32,
    abolished: u32,
    fields: Row,
}

/// One dated version ready to be written to the store.
pub(crate) struct StoredRecord {
    pub kind: MasterKind,
    pub code: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub row: Row,
}

/// Versions of every code of one master, keyed by code.
#[derive(Default)]
struct VersionSet {
    by_code: HashMap<String, Vec<Version>>,
}

impl VersionSet {
    /// Apply one checked row. `full` = the row carries every column (変更区分 0/3 or a full file).
    fn apply(
        &mut self,
        code: String,
        kubun: &str,
        from: Option<u32>,
        fields: Row,
        full: bool,
        spec: &super::KindSpec,
    ) -> bool {
        let versions = self.by_code.entry(code).or_default();
        let to_col = spec.to_col - 1;
        if kubun == "1" {
            // 抹消: the registration is withdrawn.
            match from {
                Some(f) if versions.iter().any(|v| v.from == f) => versions.retain(|v| v.from != f),
                _ => versions.clear(),
            }
            return true;
        }
        let base_idx = match from {
            Some(f) => versions.iter().rposition(|v| v.from <= f),
            None => versions.len().checked_sub(1),
        };
        let orphan = base_idx.is_none() && !full;
        let mut merged = match base_idx {
            Some(b) if !full => {
                // Empty fields of a change row mean "unchanged".
                let base = &versions[b].fields;
                let n = fields.len().max(base.len());
                Row::from_fields((0..n).map(|i| {
                    fields
                        .get(i)
                        .filter(|f| !f.is_empty())
                        .or_else(|| base.get(i))
                        .unwrap_or("")
                }))
            }
            _ => fields,
        };
        let new_from = from
            .or_else(|| base_idx.map(|i| versions[i].from))
            .unwrap_or(0);
        if merged.get(spec.from_col - 1).is_some_and(str::is_empty) && new_from != 0 {
            merged = merged.with(spec.from_col - 1, &format!("{new_from:08}"));
        }
        let abolished = merged
            .get(to_col)
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&v| v != 0)
            .unwrap_or(99999999);
        let v = Version {
            from: new_from,
            abolished,
            fields: merged,
        };
        match versions.binary_search_by_key(&new_from, |v| v.from) {
            Ok(i) => versions[i] = v,
            Err(i) => versions.insert(i, v),
        }
        !orphan
    }

    /// Add the version before each code's first known revision from its 旧点数/旧金額 columns
    /// (S cols 57/58, Y cols 24/25, T cols 17/18): the master states what the code was worth
    /// before its 変更年月日, so `price_on` can answer for earlier dates.
    fn add_old_amount_versions(&mut self, spec: &super::KindSpec) {
        let (old_kind_col, old_amount_col) = match spec.kind {
            MasterKind::Procedure => (57, 58),
            MasterKind::Drug => (24, 25),
            MasterKind::Material => (17, 18),
            _ => return,
        };
        for versions in self.by_code.values_mut() {
            let Some(first) = versions.first() else {
                continue;
            };
            let old_kind = first
                .fields
                .get(old_kind_col - 1)
                .map(|s| s.trim())
                .unwrap_or("");
            let old_amount = first
                .fields
                .get(old_amount_col - 1)
                .map(|s| s.trim())
                .unwrap_or("");
            if first.from == 0 || old_kind.is_empty() || old_kind == "0" || old_amount.is_empty() {
                continue;
            }
            let fields = Row::from_fields(first.fields.iter().enumerate().map(|(i, f)| match i {
                10 => old_kind,
                11 => old_amount,
                i if i == old_kind_col - 1 => "0",
                i if i == old_amount_col - 1 => "0.00",
                i if i == spec.from_col - 1 => "00000000",
                _ => f,
            }));
            let v = Version {
                from: 0,
                abolished: day_before(first.from),
                fields,
            };
            versions.insert(0, v);
        }
    }

    fn into_records(self, kind: MasterKind) -> Vec<StoredRecord> {
        let mut out = Vec::new();
        for (code, versions) in self.by_code {
            let next_from: Vec<Option<u32>> = versions
                .iter()
                .skip(1)
                .map(|v| Some(v.from))
                .chain([None])
                .collect();
            for (v, next) in versions.into_iter().zip(next_from) {
                let mut to = v.abolished;
                if let Some(n) = next {
                    to = to.min(day_before(n));
                }
                if to < v.from {
                    continue;
                }
                out.push(StoredRecord {
                    kind,
                    code: code.clone(),
                    valid_from: v.from,
                    valid_to: to,
                    row: v.fields,
                });
            }
        }
        out.sort_by(|a, b| (&a.code, a.valid_from).cmp(&(&b.code, b.valid_from)));
        out
    }
}

fn check_code(code: &str, len: usize) -> bool {
    code.len() == len && code.bytes().all(|b| b.is_ascii_digit())
}

/// Check a master row and return (code, 変更区分, effective date).
fn check_master_row(
    file: &str,
    line: u64,
    row: &mut Row,
    spec: &super::KindSpec,
) -> Result<(String, String, Option<u32>)> {
    if !spec.column_counts.contains(&row.len()) {
        return Err(bad(
            file,
            line,
            format!("{} columns, expected {:?}", row.len(), spec.column_counts),
        ));
    }
    let kubun = row[0].trim().to_string();
    if !matches!(kubun.as_str(), "0" | "1" | "2" | "3" | "5" | "9") {
        return Err(bad(
            file,
            line,
            format!("変更区分 {kubun:?} is not 0/1/2/3/5/9"),
        ));
    }
    if row[1].trim() != spec.letter.to_string() {
        return Err(bad(
            file,
            line,
            format!("master type {:?}, expected {:?}", &row[1], spec.letter),
        ));
    }
    if spec.kind == MasterKind::Comment && row[22].trim().is_empty() {
        // Change rows of the コメントマスター may leave the code empty: 8 + pattern + 一連番号.
        // Some published change files carry the 一連番号 without its leading zeros ("52"):
        // it is a 6-digit number, so it is zero-padded back.
        let serial = row[4].trim();
        let serial =
            if !serial.is_empty() && serial.len() < 6 && serial.bytes().all(|b| b.is_ascii_digit())
            {
                format!("{serial:0>6}")
            } else {
                serial.to_string()
            };
        let code = format!("{}{}{}", row[2].trim(), row[3].trim(), serial);
        *row = row.with(22, &code);
    }
    let code = row[spec.code_col - 1].trim().to_string();
    if !check_code(&code, spec.code_len) {
        return Err(bad(
            file,
            line,
            format!("code {code:?} is not {} digits", spec.code_len),
        ));
    }
    let from = parse_master_date(&row[spec.from_col - 1]).map_err(|e| bad(file, line, e))?;
    parse_master_date(&row[spec.to_col - 1]).map_err(|e| bad(file, line, e))?;
    if let Some(c) = spec.amount_col {
        let a = row[c - 1].trim();
        if !a.is_empty() && parse_fixed(a, 2).is_none() {
            return Err(bad(file, line, format!("amount {a:?} is not a decimal")));
        }
    }
    Ok((code, kubun, from))
}

/// A row of one of the 電子点数表 tables, normalised.
#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    pub table: &'static str,
    pub scope: u8,
    pub key: String,
    pub code: String,
    pub a: i64,
    pub b: i64,
    pub text: String,
    pub from: u32,
    pub to: u32,
}

fn table_row(file: &str, line: u64, t: TableKind, row: &Row) -> Result<Option<TableRow>> {
    let (cols, name, scope) = match t {
        TableKind::Aux => (27, "aux", 0),
        TableKind::Inclusion => (7, "inclusion", 0),
        TableKind::Exclusion(s) => (10, "exclusion", s),
        TableKind::Inpatient => (8, "inpatient", 0),
        TableKind::Limit => (14, "limit", 0),
    };
    if row.len() != cols {
        return Err(bad(
            file,
            line,
            format!("{} columns, expected {cols}", row.len()),
        ));
    }
    let kubun = row[0].trim();
    if kubun == "1" || kubun == "9" && row[cols - 1].trim().is_empty() {
        return Ok(None);
    }
    let date = |i: usize| -> Result<u32> {
        Ok(parse_master_date(&row[i - 1])
            .map_err(|e| bad(file, line, e))?
            .unwrap_or(0))
    };
    let int = |i: usize| -> Result<i64> {
        let s = row[i - 1].trim();
        if s.is_empty() {
            return Ok(0);
        }
        s.parse()
            .map_err(|_| bad(file, line, format!("column {i} {s:?} is not a number")))
    };
    let code_at = |i: usize| -> Result<String> {
        let c = row[i - 1].trim();
        if check_code(c, 9) {
            Ok(c.to_string())
        } else {
            Err(bad(
                file,
                line,
                format!("code {c:?} in column {i} is not 9 digits"),
            ))
        }
    };
    // (key, code, a, b, text, 新設 column, 廃止 column) per table layout.
    let (key, code, a, b, text, from_col, to_col) = match t {
        TableKind::Aux => {
            // 包括単位/グループ ①-③, 背反 flags, 入院基本料識別 kept as text.
            let text = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 20]
                .iter()
                .map(|&i| row[i - 1].trim())
                .collect::<Vec<_>>()
                .join(",");
            (String::new(), code_at(2)?, int(21)?, 0, text, 26, 27)
        }
        TableKind::Inclusion => (
            row[1].trim().to_string(),
            code_at(3)?,
            int(5)?,
            0,
            String::new(),
            6,
            7,
        ),
        TableKind::Exclusion(_) => (
            code_at(2)?,
            code_at(4)?,
            int(6)?,
            int(7)?,
            String::new(),
            9,
            10,
        ),
        TableKind::Inpatient => (
            row[1].trim().to_string(),
            code_at(3)?,
            int(5)?,
            0,
            String::new(),
            7,
            8,
        ),
        TableKind::Limit => (
            String::new(),
            code_at(2)?,
            int(4)?,
            int(6)?,
            format!("{}\u{1f}{}", row[4].trim(), int(7)?),
            13,
            14,
        ),
    };
    let r = TableRow {
        table: name,
        scope,
        key,
        code,
        a,
        b,
        text,
        from: date(from_col)?,
        to: date(to_col)?,
    };
    Ok(Some(TableRow {
        to: if r.to == 0 { 99999999 } else { r.to },
        ..r
    }))
}

/// Import every master file found under `dir` (recursively) into a new store at `store_path`.
///
/// Files are recognised by name: `s_`/`y_`/`t_`/`c_`/`b_`/`z_` + `yyyymmdd` (`ALL`/`full` marks a
/// full file; a file holding `0` rows is also treated as full), `.csv`, `.txt` or `.zip`; and the
/// 電子点数表 tables `01補助…`, `02包括…`, `03-1…03-4背反…`, `04入院基本料…`, `05算定回数…`.
/// Per master, files are applied in date order (full before change files of the same date);
/// change files older than the first full file are skipped (the full file already contains them).
/// Any malformed row aborts the import with its file and line; the previous store is kept.
pub fn import_masters(
    dir: &Path,
    store_path: &Path,
    progress: &mut dyn FnMut(&ImportProgress),
) -> Result<ImportReport> {
    let started = Instant::now();
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    if files.is_empty() {
        return Err(FeeError::NoMasters(dir.to_path_buf()));
    }
    // Masters by kind, then date, full files first.
    files.sort_by(|a, b| {
        let key = |f: &InputFile| match &f.kind {
            FileKind::Master {
                kind,
                date,
                full_by_name,
            } => (0, *kind as u8, *date, !*full_by_name, f.display.clone()),
            FileKind::Table(t) => (1, 0, 0, false, format!("{t:?}{}", f.display)),
        };
        key(a).cmp(&key(b))
    });
    let total = files.len();
    let mut report = ImportReport::default();
    let mut sets: HashMap<MasterKind, VersionSet> = HashMap::new();
    let mut have_full: HashMap<MasterKind, bool> = HashMap::new();
    let mut tables: Vec<TableRow> = Vec::new();
    let mut rows_read = 0u64;
    // Decoding and CSV parsing run on a second thread, one file ahead of the (ordered) apply step.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(String, Rows)>>>(2);
    let files_ref = &files;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for f in files_ref.iter() {
                if tx.send(read_rows(f)).is_err() {
                    break;
                }
            }
        });
        for (i, f) in files.iter().enumerate() {
            progress(&ImportProgress {
                phase: ImportPhase::Reading,
                file: f.display.clone(),
                done_files: i,
                total_files: total,
                rows_read,
            });
            let parsed = rx.recv().map_err(|_| FeeError::Zip {
                file: f.display.clone(),
                reason: "reader thread stopped".into(),
            })??;
            for (disp, mut rows) in parsed {
                rows_read += rows.len() as u64;
                match &f.kind {
                    FileKind::Master {
                        kind, full_by_name, ..
                    } => {
                        let spec = kind.spec();
                        let is_full = *full_by_name
                            || rows
                                .iter()
                                .any(|(_, r)| r.get(0).map(|s| s.trim()) == Some("0"));
                        let mut checked = Vec::with_capacity(rows.len());
                        for (line, row) in rows.iter_mut() {
                            let (code, kubun, from) = check_master_row(&disp, *line, row, spec)?;
                            checked.push((code, kubun, from, std::mem::take(row)));
                        }
                        if !is_full && !have_full.get(kind).copied().unwrap_or(false) {
                            report.files.push(FileReport {
                            name: disp,
                            rows: checked.len() as u64,
                            applied: false,
                            note: "change file older than the first full file: already contained in it".into(),
                        });
                            continue;
                        }
                        if is_full {
                            have_full.insert(*kind, true);
                        }
                        let set = sets.entry(*kind).or_default();
                        let n_rows = checked.len() as u64;
                        for (code, kubun, from, row) in checked {
                            let full_row = is_full || kubun == "0" || kubun == "3";
                            if !set.apply(code, &kubun, from, row, full_row, spec) {
                                report.orphan_changes += 1;
                            }
                        }
                        report.files.push(FileReport {
                            name: disp,
                            rows: n_rows,
                            applied: true,
                            note: if is_full {
                                "full".into()
                            } else {
                                "changes".into()
                            },
                        });
                    }
                    FileKind::Table(t) => {
                        let n = rows.len() as u64;
                        for (line, row) in rows.iter() {
                            if let Some(r) = table_row(&disp, *line, *t, row)? {
                                tables.push(r);
                            }
                        }
                        report.files.push(FileReport {
                            name: disp,
                            rows: n,
                            applied: true,
                            note: "電子点数表".into(),
                        });
                    }
                }
            }
        }
        drop(rx);
        Ok(())
    })?;
    if sets.is_empty() {
        return Err(FeeError::NoMasters(dir.to_path_buf()));
    }
    progress(&ImportProgress {
        phase: ImportPhase::Writing,
        file: store_path.display().to_string(),
        done_files: total,
        total_files: total,
        rows_read,
    });
    let mut records = Vec::new();
    for spec in SPECS.iter() {
        if let Some(mut set) = sets.remove(&spec.kind) {
            set.add_old_amount_versions(spec);
            let codes = set.by_code.values().filter(|v| !v.is_empty()).count();
            let recs = set.into_records(spec.kind);
            report.codes.insert(spec.letter, (codes, recs.len()));
            records.extend(recs);
        }
    }
    for t in &tables {
        *report.tables.entry(t.table).or_default() += 1;
    }
    store::write_store(store_path, &records, &tables, &report)?;
    // Freeing a few million strings takes a noticeable moment: do it off the caller's path.
    std::thread::spawn(move || drop((records, tables)));
    report.elapsed_ms = started.elapsed().as_millis();
    progress(&ImportProgress {
        phase: ImportPhase::Done,
        file: store_path.display().to_string(),
        done_files: total,
        total_files: total,
        rows_read,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_classified() {
        assert!(matches!(
            classify("s_ALL20240531.csv"),
            Some(FileKind::Master {
                kind: MasterKind::Procedure,
                date: 20240531,
                full_by_name: true
            })
        ));
        assert!(matches!(
            classify("y_20240417.csv"),
            Some(FileKind::Master {
                kind: MasterKind::Drug,
                date: 20240417,
                full_by_name: false
            })
        ));
        assert!(matches!(
            classify("t_20251128_full_horirinn.csv"),
            Some(FileKind::Master {
                full_by_name: true,
                ..
            })
        ));
        assert!(matches!(
            classify("03-2背反テーブル2.csv"),
            Some(FileKind::Table(TableKind::Exclusion(2)))
        ));
        assert!(classify("ck_ALL_20250901.csv").is_none());
        assert!(classify("R06rec1.pdf").is_none());
    }
}
#[cfg(test)]
mod line_tests {
    #[test]
    fn csv_line_numbers() {
        let rows = super::parse_csv("x", b"\"a\",\"b\"\r\n\"c\",\"d\"\r\n\"e\",\"f\"\r\n").unwrap();
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 2, 3]);
    }
}
