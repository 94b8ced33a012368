//! The master store: one SQLite file holding every dated version of every code and the
//! 電子点数表 tables. Lookups are cached in memory, so a calculation touches SQLite once per code.

use super::import::{ImportReport, StoredRecord, TableRow};
use super::views::{Comment, Disease, Drug, Material, Modifier, Procedure};
use super::{MasterKind, MasterRecord};
use crate::error::{FeeError, Result};
use crate::num::{date_key, format_fixed};
use chrono::NaiveDate;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE item(
  code TEXT NOT NULL, kind TEXT NOT NULL, valid_from INTEGER NOT NULL, valid_to INTEGER NOT NULL,
  name TEXT NOT NULL, amount TEXT NOT NULL, section TEXT NOT NULL, judge INTEGER NOT NULL, fields TEXT NOT NULL);
CREATE TABLE tensu(
  tbl TEXT NOT NULL, scope INTEGER NOT NULL, key TEXT NOT NULL, code TEXT NOT NULL,
  a INTEGER NOT NULL, b INTEGER NOT NULL, text TEXT NOT NULL,
  valid_from INTEGER NOT NULL, valid_to INTEGER NOT NULL);
CREATE TABLE source_file(name TEXT NOT NULL, rows INTEGER NOT NULL, applied INTEGER NOT NULL, note TEXT NOT NULL);
";

const INDEXES: &str = "
CREATE INDEX item_code ON item(code, valid_from);
CREATE INDEX item_section ON item(section) WHERE section <> '';
CREATE INDEX item_judge ON item(judge) WHERE judge <> 0;
CREATE INDEX tensu_key ON tensu(tbl, key);
CREATE INDEX tensu_code ON tensu(tbl, code);
";

/// Field separator inside `item.fields` (unit separator; never in master text).
pub(crate) const SEP: char = '\u{1f}';

/// Write a complete store to `path`: built in `path.tmp-<pid>`, then renamed over `path`.
pub(crate) fn write_store(
    path: &Path,
    records: &[StoredRecord],
    tables: &[TableRow],
    report: &ImportReport,
) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> Result<()> {
        let mut conn = Connection::open(&tmp)?;
        conn.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=8192; PRAGMA cache_size=-65536; PRAGMA locking_mode=EXCLUSIVE;")?;
        conn.execute_batch(SCHEMA)?;
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare("INSERT INTO item VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)")?;
            for r in records {
                let spec = r.kind.spec();
                let row = &r.row;
                let amount = spec.amount_col.map(|c| row.col(c).trim()).unwrap_or("");
                let (section, judge) = if r.kind == MasterKind::Procedure {
                    // 判断料 rows (col 50 = 2) are indexed by their 検査等実施判断グループ (col 51).
                    let num = |c: usize| row.col(c).trim().parse::<i64>().unwrap_or(0);
                    let judge = if num(50) == 2 { num(51) } else { 0 };
                    (
                        format!("{}{}", row.col(85).trim(), row.col(92).trim()),
                        judge,
                    )
                } else {
                    (String::new(), 0)
                };
                st.execute(params![
                    r.code,
                    r.kind.letter().to_string(),
                    r.valid_from,
                    r.valid_to,
                    row.col(spec.name_col),
                    amount,
                    section,
                    judge,
                    row.joined()
                ])?;
            }
            let mut st = tx.prepare("INSERT INTO tensu VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)")?;
            for t in tables {
                st.execute(params![
                    t.table, t.scope, t.key, t.code, t.a, t.b, t.text, t.from, t.to
                ])?;
            }
            let mut st = tx.prepare("INSERT INTO source_file VALUES (?1,?2,?3,?4)")?;
            for f in &report.files {
                st.execute(params![f.name, f.rows as i64, f.applied, f.note])?;
            }
            tx.execute(
                "INSERT INTO meta VALUES ('format', 'iryo-fee-masters-1'), ('imported_at', ?1)",
                params![chrono::Utc::now().to_rfc3339()],
            )?;
        }
        tx.commit()?;
        conn.execute_batch(INDEXES)?;
        drop(conn);
        let f = std::fs::File::open(&tmp).map_err(|e| FeeError::io(&tmp, e))?;
        f.sync_all().map_err(|e| FeeError::io(&tmp, e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| FeeError::io(path, e))
}

/// What a code was worth on a date: the answer of [`MasterStore::price_on`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PriceOn {
    pub code: String,
    /// `S`, `Y` or `T`.
    pub master: char,
    pub name: String,
    /// Decimal text as in the master (`"291.00"`).
    pub amount: String,
    /// `点` for procedures priced in points, `円` for drugs, materials and 金額 procedures,
    /// `%` for percentage additions.
    pub unit: &'static str,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
}

/// When a 背反 pair applies (電子点数表 03-1…03-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ExclusionScope {
    SameDay,
    SameMonth,
    SameTime,
    SameWeek,
}

/// One 背反 row seen from `code`: `other` cannot be billed with it within `scope`.
#[derive(Debug, Clone)]
pub struct Exclusion {
    pub scope: ExclusionScope,
    pub other: String,
    /// 背反区分: 1 = bill `code` (this one), 2 = bill `other`, 3 = either one.
    pub keep: u8,
    /// 特例条件 (true = a special condition the table does not encode).
    pub special: bool,
    valid_from: u32,
    valid_to: u32,
}

/// One 算定回数 row: at most `max` per `unit` (算定単位コード: 121 日, 131 月, 138 週, …).
#[derive(Debug, Clone)]
pub struct CountLimit {
    pub unit: u16,
    pub unit_name: String,
    pub max: u32,
    pub special: bool,
    valid_from: u32,
    valid_to: u32,
}

/// Table rows with a validity window (`yyyymmdd` from, to).
trait Dated: Clone {
    fn window(&self) -> (u32, u32);
}

impl Dated for Exclusion {
    fn window(&self) -> (u32, u32) {
        (self.valid_from, self.valid_to)
    }
}

/// 包括 groups of a code from the 補助マスターテーブル: the code (parent) includes every child listed
/// under `group` in the 包括テーブル, within `unit` (1 同一日, 2 同一月内, 3 同時, 5 手術前1週間,
/// 6 1手術につき).
#[derive(Debug, Clone)]
pub struct InclusionGroup {
    pub unit: u8,
    pub group: String,
    valid_from: u32,
    valid_to: u32,
}

/// A child of a 包括 group: billed within the parent's unit it is included (not billable).
#[derive(Debug, Clone)]
pub struct InclusionChild {
    pub code: String,
    /// 特例条件 (a condition the table does not encode).
    pub special: bool,
    valid_from: u32,
    valid_to: u32,
}

impl Dated for InclusionGroup {
    fn window(&self) -> (u32, u32) {
        (self.valid_from, self.valid_to)
    }
}

impl Dated for InclusionChild {
    fn window(&self) -> (u32, u32) {
        (self.valid_from, self.valid_to)
    }
}

impl Dated for CountLimit {
    fn window(&self) -> (u32, u32) {
        (self.valid_from, self.valid_to)
    }
}

#[derive(Default)]
struct Caches {
    records: HashMap<String, Arc<Vec<MasterRecord>>>,
    procedures: HashMap<(String, u32), Arc<Procedure>>,
    sections: HashMap<String, Arc<Vec<String>>>,
    judges: HashMap<i64, Arc<Vec<String>>>,
    exclusions: HashMap<String, Arc<Vec<Exclusion>>>,
    limits: HashMap<String, Arc<Vec<CountLimit>>>,
    groups: HashMap<String, Arc<Vec<InclusionGroup>>>,
    children: HashMap<String, Arc<Vec<InclusionChild>>>,
}

/// Read access to an imported master store. Thread-safe; lookups are cached.
pub struct MasterStore {
    conn: Mutex<Connection>,
    cache: Mutex<Caches>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MasterStore {
    /// Open a store written by [`crate::import_masters`] (read-only).
    pub fn open(path: &Path) -> Result<MasterStore> {
        if !path.exists() {
            return Err(FeeError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no master store"),
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let format: String = conn
            .query_row("SELECT value FROM meta WHERE key='format'", [], |r| {
                r.get(0)
            })
            .map_err(FeeError::Store)?;
        if format != "iryo-fee-masters-1" {
            return Err(FeeError::input(
                "store",
                format!("unknown store format {format}"),
            ));
        }
        Ok(MasterStore {
            conn: Mutex::new(conn),
            cache: Mutex::new(Caches::default()),
        })
    }

    /// Every dated version of a code, oldest first (empty when unknown).
    pub fn versions(&self, code: &str) -> Result<Arc<Vec<MasterRecord>>> {
        if let Some(v) = lock(&self.cache).records.get(code) {
            return Ok(v.clone());
        }
        let conn = lock(&self.conn);
        let mut st = conn.prepare_cached(
            "SELECT kind, valid_from, valid_to, fields FROM item WHERE code=?1 ORDER BY valid_from",
        )?;
        let rows = st.query_map([code], |r| {
            let kind: String = r.get(0)?;
            let fields: String = r.get(3)?;
            Ok((kind, r.get::<_, u32>(1)?, r.get::<_, u32>(2)?, fields))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, from, to, fields) = row?;
            let Some(kind) = kind.chars().next().and_then(MasterKind::from_letter) else {
                continue;
            };
            out.push(MasterRecord {
                kind,
                code: code.to_string(),
                valid_from: from,
                valid_to: to,
                fields: fields.split(SEP).map(str::to_string).collect(),
            });
        }
        drop(st);
        drop(conn);
        let v = Arc::new(out);
        lock(&self.cache)
            .records
            .insert(code.to_string(), v.clone());
        Ok(v)
    }

    /// The version of `code` valid on `date`.
    pub fn record_on(&self, code: &str, date: NaiveDate) -> Result<Option<MasterRecord>> {
        let k = date_key(date);
        Ok(self.versions(code)?.iter().find(|r| r.valid_on(k)).cloned())
    }

    /// What `code` (診療行為, 医薬品 or 特定器材) was worth on `date`.
    pub fn price_on(&self, code: &str, date: NaiveDate) -> Result<Option<PriceOn>> {
        let Some(r) = self.record_on(code, date)? else {
            return Ok(None);
        };
        let unit = match r.kind {
            MasterKind::Procedure => match r.num(11) {
                1 => "円",
                5 | 6 => "%",
                _ => "点",
            },
            MasterKind::Drug | MasterKind::Material => "円",
            _ => return Ok(None),
        };
        let (from, to) = r.window();
        Ok(Some(PriceOn {
            code: r.code.clone(),
            master: r.kind.letter(),
            name: r.col(r.kind.spec().name_col).to_string(),
            amount: format_fixed(r.amount(12), 2),
            unit,
            valid_from: from,
            valid_to: to,
        }))
    }

    fn typed<T>(
        &self,
        code: &str,
        date: NaiveDate,
        kind: MasterKind,
        f: fn(&MasterRecord) -> T,
    ) -> Result<Option<T>> {
        let k = date_key(date);
        Ok(self
            .versions(code)?
            .iter()
            .find(|r| r.kind == kind && r.valid_on(k))
            .map(f))
    }

    /// 医科診療行為 valid on `date`.
    pub fn procedure(&self, code: &str, date: NaiveDate) -> Result<Option<Arc<Procedure>>> {
        let k = date_key(date);
        let versions = self.versions(code)?;
        let Some(r) = versions
            .iter()
            .find(|r| r.kind == MasterKind::Procedure && r.valid_on(k))
        else {
            return Ok(None);
        };
        let key = (code.to_string(), r.valid_from);
        if let Some(p) = lock(&self.cache).procedures.get(&key) {
            return Ok(Some(p.clone()));
        }
        let p = Arc::new(Procedure::from_record(r));
        lock(&self.cache).procedures.insert(key, p.clone());
        Ok(Some(p))
    }

    /// 医薬品 valid on `date`.
    pub fn drug(&self, code: &str, date: NaiveDate) -> Result<Option<Drug>> {
        self.typed(code, date, MasterKind::Drug, Drug::from_record)
    }

    /// 特定器材 valid on `date`.
    pub fn material(&self, code: &str, date: NaiveDate) -> Result<Option<Material>> {
        self.typed(code, date, MasterKind::Material, Material::from_record)
    }

    /// コメント valid on `date`.
    pub fn comment(&self, code: &str, date: NaiveDate) -> Result<Option<Comment>> {
        self.typed(code, date, MasterKind::Comment, Comment::from_record)
    }

    /// 傷病名 valid on `date`.
    pub fn disease(&self, code: &str, date: NaiveDate) -> Result<Option<Disease>> {
        self.typed(code, date, MasterKind::Disease, Disease::from_record)
    }

    /// 修飾語 valid on `date`.
    pub fn modifier(&self, code: &str, date: NaiveDate) -> Result<Option<Modifier>> {
        self.typed(code, date, MasterKind::Modifier, Modifier::from_record)
    }

    fn codes_where(&self, sql: &str, key: &dyn rusqlite::ToSql) -> Result<Arc<Vec<String>>> {
        let conn = lock(&self.conn);
        let mut st = conn.prepare_cached(sql)?;
        let codes: Vec<String> = st
            .query_map([key], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(Arc::new(codes))
    }

    /// Every 診療行為 of a コード表用番号 section (e.g. `A001`) valid on `date`.
    pub fn section_procedures(
        &self,
        section: &str,
        date: NaiveDate,
    ) -> Result<Vec<Arc<Procedure>>> {
        let cached = lock(&self.cache).sections.get(section).cloned();
        let codes = match cached {
            Some(c) => c,
            None => {
                let c = self.codes_where(
                    "SELECT DISTINCT code FROM item WHERE section=?1 ORDER BY code",
                    &section,
                )?;
                lock(&self.cache)
                    .sections
                    .insert(section.to_string(), c.clone());
                c
            }
        };
        self.procedures_of(&codes, date)
    }

    /// The 判断料 items (col 50 = 2) of a 検査等実施判断グループ (col 51), valid on `date`.
    pub fn judgement_procedures(&self, group: u8, date: NaiveDate) -> Result<Vec<Arc<Procedure>>> {
        let g = i64::from(group);
        let cached = lock(&self.cache).judges.get(&g).cloned();
        let codes = match cached {
            Some(c) => c,
            None => {
                let c = self.codes_where(
                    "SELECT DISTINCT code FROM item WHERE judge=?1 ORDER BY code",
                    &g,
                )?;
                lock(&self.cache).judges.insert(g, c.clone());
                c
            }
        };
        self.procedures_of(&codes, date)
    }

    fn procedures_of(&self, codes: &[String], date: NaiveDate) -> Result<Vec<Arc<Procedure>>> {
        let mut out = Vec::new();
        for c in codes.iter() {
            if let Some(p) = self.procedure(c, date)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Rows of a 電子点数表 table for one code, loaded once and cached by `pick`.
    fn table_rows<T: Dated>(
        &self,
        pick: fn(&mut Caches) -> &mut HashMap<String, Arc<Vec<T>>>,
        sql: &str,
        code: &str,
        date: NaiveDate,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let cached = pick(&mut lock(&self.cache)).get(code).cloned();
        let all = match cached {
            Some(a) => a,
            None => {
                let conn = lock(&self.conn);
                let mut st = conn.prepare_cached(sql)?;
                let v: Vec<T> = st
                    .query_map([code], row)?
                    .collect::<std::result::Result<_, _>>()?;
                drop(st);
                drop(conn);
                let a = Arc::new(v);
                pick(&mut lock(&self.cache)).insert(code.to_string(), a.clone());
                a
            }
        };
        let k = date_key(date);
        Ok(all
            .iter()
            .filter(|e| e.window().0 <= k && k <= e.window().1)
            .cloned()
            .collect())
    }

    /// 背反 rows involving `code`, valid on `date`.
    pub fn exclusions(&self, code: &str, date: NaiveDate) -> Result<Vec<Exclusion>> {
        self.table_rows(
            |c| &mut c.exclusions,
            "SELECT scope, code, a, b, valid_from, valid_to FROM tensu WHERE tbl='exclusion' AND key=?1",
            code,
            date,
            |r| {
                let scope = match r.get::<_, i64>(0)? {
                    1 => ExclusionScope::SameDay,
                    2 => ExclusionScope::SameMonth,
                    3 => ExclusionScope::SameTime,
                    _ => ExclusionScope::SameWeek,
                };
                Ok(Exclusion {
                    scope,
                    other: r.get(1)?,
                    keep: r.get::<_, i64>(2)? as u8,
                    special: r.get::<_, i64>(3)? != 0,
                    valid_from: r.get(4)?,
                    valid_to: r.get(5)?,
                })
            },
        )
    }

    /// 算定回数 limits of `code`, valid on `date`.
    pub fn count_limits(&self, code: &str, date: NaiveDate) -> Result<Vec<CountLimit>> {
        self.table_rows(
            |c| &mut c.limits,
            "SELECT a, b, text, valid_from, valid_to FROM tensu WHERE tbl='limit' AND code=?1",
            code,
            date,
            |r| {
                let text: String = r.get(2)?;
                let (name, special) = text.split_once('\u{1f}').unwrap_or((&text, "0"));
                Ok(CountLimit {
                    unit: r.get::<_, i64>(0)? as u16,
                    unit_name: name.to_string(),
                    max: r.get::<_, i64>(1)? as u32,
                    special: special != "0",
                    valid_from: r.get(3)?,
                    valid_to: r.get(4)?,
                })
            },
        )
    }

    /// 包括 groups (補助マスターテーブル 包括単位/グループ ①-③) of `code` as a parent, valid on `date`.
    pub fn inclusion_groups(&self, code: &str, date: NaiveDate) -> Result<Vec<InclusionGroup>> {
        let rows = self.table_rows(
            |c| &mut c.groups,
            "SELECT text, valid_from, valid_to FROM tensu WHERE tbl='aux' AND code=?1",
            code,
            date,
            |r| {
                // text = 包括単位①,グループ①,包括単位②,グループ②,包括単位③,グループ③,…
                let text: String = r.get(0)?;
                Ok(InclusionGroup {
                    unit: 0,
                    group: text,
                    valid_from: r.get(1)?,
                    valid_to: r.get(2)?,
                })
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let f: Vec<&str> = row.group.split(',').collect();
            for k in 0..3 {
                let unit = f
                    .get(2 * k)
                    .and_then(|u| u.trim().parse::<u8>().ok())
                    .unwrap_or(0);
                let group = f.get(2 * k + 1).map(|g| g.trim()).unwrap_or("");
                if unit != 0 && !group.is_empty() && group != "0" {
                    out.push(InclusionGroup {
                        unit,
                        group: group.to_string(),
                        ..row.clone()
                    });
                }
            }
        }
        Ok(out)
    }

    /// Children of a 包括 group (包括テーブル), valid on `date`.
    pub fn inclusion_children(&self, group: &str, date: NaiveDate) -> Result<Vec<InclusionChild>> {
        self.table_rows(
            |c| &mut c.children,
            "SELECT code, a, valid_from, valid_to FROM tensu WHERE tbl='inclusion' AND key=?1",
            group,
            date,
            |r| {
                Ok(InclusionChild {
                    code: r.get(0)?,
                    special: r.get::<_, i64>(1)? != 0,
                    valid_from: r.get(2)?,
                    valid_to: r.get(3)?,
                })
            },
        )
    }

    /// Store facts: counts per master and table, import time, and the source files.
    pub fn summary(&self) -> Result<serde_json::Value> {
        let conn = lock(&self.conn);
        let mut items = serde_json::Map::new();
        let mut st =
            conn.prepare("SELECT kind, COUNT(DISTINCT code), COUNT(*) FROM item GROUP BY kind")?;
        for row in st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (k, codes, versions) = row?;
            items.insert(k, serde_json::json!({"codes": codes, "versions": versions}));
        }
        let mut tables = serde_json::Map::new();
        let mut st = conn.prepare("SELECT tbl, COUNT(*) FROM tensu GROUP BY tbl")?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (t, n) = row?;
            tables.insert(t, n.into());
        }
        let imported: String =
            conn.query_row("SELECT value FROM meta WHERE key='imported_at'", [], |r| {
                r.get(0)
            })?;
        Ok(serde_json::json!({"masters": items, "tables": tables, "imported_at": imported}))
    }
}
