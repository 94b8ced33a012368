//! Applying writes: new versions, the current-version pointer and index rows, in one transaction.

use crate::sql::{Sql, P};
use crate::store::{type_code, BodyCodec};
use crate::DbError;
use iryo_search::{index::param_key, Extractor, IndexEntry, IndexValue};
use serde_json::{Map, Value};
use std::sync::Arc;

/// One write of a request. A request's writes are applied all-or-nothing.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create or update (update-as-create) the resource with its `resourceType` and `id`.
    Put {
        resource: Value,
        /// `If-Match`: the version the client expects to replace.
        if_match: Option<i64>,
        /// Refuse when a live resource with that id exists (create with a fresh id).
        create_only: bool,
    },
    Delete {
        ty: String,
        id: String,
        if_match: Option<i64>,
    },
}

impl WriteOp {
    pub fn put(resource: Value) -> Self {
        WriteOp::Put {
            resource,
            if_match: None,
            create_only: false,
        }
    }
    pub fn create(resource: Value) -> Self {
        WriteOp::Put {
            resource,
            if_match: None,
            create_only: true,
        }
    }
}

/// The result of one write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub ty: String,
    pub id: String,
    /// The new version (for a delete of something absent: 0).
    pub version: i64,
    pub last_updated: i64,
    pub created: bool,
    pub deleted: bool,
    /// The stored JSON (with server-managed meta), for `Prefer: return=representation`.
    pub body: Option<Arc<Vec<u8>>>,
}

/// A write with its index entries extracted and, when its version can be foreseen, its body
/// already serialized and compressed — outside the writer, in parallel with it.
pub(crate) struct Prepared {
    pub op: WriteOp,
    pub entries: Vec<IndexEntry>,
    /// (assumed version, stored JSON, compressed body)
    pub body: Option<(i64, Arc<Vec<u8>>, Vec<u8>)>,
}

/// Extract index entries and pre-encode the body for the version the write will most likely get
/// (1 for a new resource, If-Match + 1 for a conditional update). The writer checks the guess.
pub(crate) fn prepare(
    op: WriteOp,
    extractor: &Extractor,
    codec: &BodyCodec,
    now: i64,
) -> Result<Prepared, DbError> {
    match &op {
        WriteOp::Put {
            resource, if_match, ..
        } => {
            let entries = extractor.extract(resource);
            let version = if_match.map(|v| v + 1).unwrap_or(1);
            let lu = iryo_search::date::format_instant(now);
            let json = json_with_meta(resource, version, &lu)?;
            let body = codec.encode(&json)?;
            Ok(Prepared {
                op,
                entries,
                body: Some((version, Arc::new(json), body)),
            })
        }
        WriteOp::Delete { .. } => Ok(Prepared {
            op,
            entries: vec![],
            body: None,
        }),
    }
}

/// Allocation of resource keys and transaction numbers.
pub(crate) trait Alloc {
    fn rid(&mut self, c: &mut dyn Sql) -> Result<i64, DbError>;
    fn tx(&mut self, c: &mut dyn Sql) -> Result<i64, DbError>;
}

pub(crate) struct WriteCtx<'a> {
    pub extractor: &'a Extractor,
    pub codec: &'a BodyCodec,
}

/// The stored JSON of a version: the resource with server-managed `meta.versionId` and
/// `meta.lastUpdated`, `resourceType`, `id` and `meta` first (as the spec's examples), the rest
/// in the client's order. Serialized straight from the borrowed resource (no copy of it).
fn json_with_meta(resource: &Value, version: i64, last_updated: &str) -> Result<Vec<u8>, DbError> {
    let err = |e: serde_json::Error| DbError::Other(e.to_string());
    let Value::Object(map) = resource else {
        return serde_json::to_vec(resource).map_err(err);
    };
    let mut meta = match map.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(last_updated.to_string()),
    );
    let meta = Value::Object(meta);
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    let mut first = true;
    let mut field = |out: &mut Vec<u8>, k: &str, v: &Value| -> Result<(), DbError> {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *out, k).map_err(err)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, v).map_err(err)
    };
    for k in ["resourceType", "id"] {
        if let Some(v) = map.get(k) {
            field(&mut out, k, v)?;
        }
    }
    field(&mut out, "meta", &meta)?;
    for (k, v) in map {
        if !matches!(k.as_str(), "resourceType" | "id" | "meta") {
            field(&mut out, k, v)?;
        }
    }
    out.push(b'}');
    Ok(out)
}

/// Apply one request's writes inside an open transaction.
pub(crate) fn apply(
    c: &mut dyn Sql,
    ctx: &WriteCtx<'_>,
    alloc: &mut dyn Alloc,
    tenant: i64,
    ops: Vec<Prepared>,
    now: i64,
) -> Result<Vec<WriteOutcome>, DbError> {
    let tx = alloc.tx(c)?;
    let lu = iryo_search::date::format_instant(now);
    let mut out = Vec::with_capacity(ops.len());
    for p in ops {
        let (ty, id) = match &p.op {
            WriteOp::Put { resource, .. } => (
                resource
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                resource
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            WriteOp::Delete { ty, id, .. } => (ty.clone(), id.clone()),
        };
        let tcode = type_code(&ty)
            .ok_or_else(|| DbError::Invalid(format!("unknown resource type {ty}")))?;
        if id.is_empty() {
            return Err(DbError::Invalid("resource without id".into()));
        }
        let (cur, claimed) = current_for_write(c, alloc, tenant, tcode, &id, &p.op, tx, now)?;
        let if_match = match &p.op {
            WriteOp::Put { if_match, .. } | WriteOp::Delete { if_match, .. } => *if_match,
        };
        if let Some(expected) = if_match {
            let current = cur.map(|c| c.1).unwrap_or(0);
            if current != expected {
                return Err(DbError::VersionConflict {
                    ty,
                    id,
                    expected,
                    current,
                });
            }
        }
        // remove the index rows of the live version being replaced
        if let Some((rid, version, false)) = cur {
            let old = load_body(c, ctx.codec, tenant, rid, version)?;
            if let Some(old) = old {
                let entries = ctx.extractor.extract(&old);
                delete_entries(c, tenant, tcode, rid, &entries)?;
            }
        }
        match p.op {
            WriteOp::Put {
                resource,
                create_only,
                ..
            } => {
                if create_only && matches!(cur, Some((_, _, false))) {
                    return Err(DbError::AlreadyExists { ty, id });
                }
                let (rid, version) = match (cur, claimed) {
                    (Some((rid, v, _)), _) => (rid, v + 1),
                    (None, Some(rid)) => (rid, 1),
                    (None, None) => (alloc.rid(c)?, 1),
                };
                let created = !matches!(cur, Some((_, _, false)));
                let (json, body) = match p.body {
                    Some((v, json, body)) if v == version => (json, body),
                    _ => {
                        let json = json_with_meta(&resource, version, &lu)?;
                        let body = ctx.codec.encode(&json)?;
                        (Arc::new(json), body)
                    }
                };
                c.execute(
                    "INSERT INTO resource_version (tenant, rid, version, type, tx, last_updated, op, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[P::I(tenant), P::I(rid), P::I(version), P::I(tcode), P::I(tx), P::I(now), P::I(if created { 0 } else { 1 }), P::B(body)],
                )?;
                upsert_current(c, tenant, tcode, &id, rid, version, tx, now, false)?;
                insert_entries(c, tenant, tcode, rid, &p.entries)?;
                out.push(WriteOutcome {
                    ty,
                    id,
                    version,
                    last_updated: now,
                    created,
                    deleted: false,
                    body: Some(json),
                });
            }
            WriteOp::Delete { .. } => match cur {
                Some((rid, version, false)) => {
                    let version = version + 1;
                    c.execute(
                        "INSERT INTO resource_version (tenant, rid, version, type, tx, last_updated, op, body) VALUES ($1, $2, $3, $4, $5, $6, 2, NULL)",
                        &[P::I(tenant), P::I(rid), P::I(version), P::I(tcode), P::I(tx), P::I(now)],
                    )?;
                    upsert_current(c, tenant, tcode, &id, rid, version, tx, now, true)?;
                    out.push(WriteOutcome {
                        ty,
                        id,
                        version,
                        last_updated: now,
                        created: false,
                        deleted: true,
                        body: None,
                    });
                }
                Some((_, version, true)) => out.push(WriteOutcome {
                    ty,
                    id,
                    version,
                    last_updated: now,
                    created: false,
                    deleted: true,
                    body: None,
                }),
                None => out.push(WriteOutcome {
                    ty,
                    id,
                    version: 0,
                    last_updated: now,
                    created: false,
                    deleted: true,
                    body: None,
                }),
            },
        }
    }
    Ok(out)
}

/// The current (rid, version, deleted) of the resource a write replaces, read so that
/// concurrent writers of the same resource are serialized. SQLite has one writer, so a plain
/// read does. On PostgreSQL the row is locked (`FOR UPDATE`: a concurrent update waits and then
/// sees the committed version), and a resource about to be created is claimed first by
/// inserting its `resource` row (version 0, a placeholder that the write completes): of two
/// concurrent creations of one id, the second waits on the key, finds the row, and becomes an
/// update of the first instead of a duplicate version.
#[allow(clippy::too_many_arguments)]
fn current_for_write(
    c: &mut dyn Sql,
    alloc: &mut dyn Alloc,
    tenant: i64,
    tcode: i64,
    id: &str,
    op: &WriteOp,
    tx: i64,
    now: i64,
) -> Result<(Option<(i64, i64, bool)>, Option<i64>), DbError> {
    let pg = c.is_postgres();
    let sql = if pg {
        "SELECT rid, version, deleted FROM resource WHERE tenant = $1 AND type = $2 AND id = $3 FOR UPDATE"
    } else {
        "SELECT rid, version, deleted FROM resource WHERE tenant = $1 AND type = $2 AND id = $3"
    };
    let key = [P::I(tenant), P::I(tcode), P::T(id.to_string())];
    let read = |c: &mut dyn Sql| -> Result<Option<(i64, i64, bool)>, DbError> {
        Ok(c.query_one(sql, &key)?
            .map(|r| (r[0].i(), r[1].i(), r[2].i() != 0)))
    };
    let cur = read(c)?;
    if cur.is_some() || !pg || !matches!(op, WriteOp::Put { .. }) {
        return Ok((cur, None));
    }
    let rid = alloc.rid(c)?;
    let claimed = c.execute(
        "INSERT INTO resource (tenant, type, id, rid, version, tx, last_updated, deleted) VALUES ($1, $2, $3, $4, 0, $5, $6, 1) ON CONFLICT (tenant, type, id) DO NOTHING",
        &[P::I(tenant), P::I(tcode), P::T(id.to_string()), P::I(rid), P::I(tx), P::I(now)],
    )?;
    if claimed == 1 {
        Ok((None, Some(rid)))
    } else {
        Ok((read(c)?, None))
    }
}

#[allow(clippy::too_many_arguments)]
fn upsert_current(
    c: &mut dyn Sql,
    tenant: i64,
    tcode: i64,
    id: &str,
    rid: i64,
    version: i64,
    tx: i64,
    now: i64,
    deleted: bool,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO resource (tenant, type, id, rid, version, tx, last_updated, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant, type, id) DO UPDATE SET version = excluded.version, tx = excluded.tx, last_updated = excluded.last_updated, deleted = excluded.deleted",
        &[P::I(tenant), P::I(tcode), P::T(id.to_string()), P::I(rid), P::I(version), P::I(tx), P::I(now), P::I(deleted as i64)],
    )?;
    Ok(())
}

pub(crate) fn load_body(
    c: &mut dyn Sql,
    codec: &BodyCodec,
    tenant: i64,
    rid: i64,
    version: i64,
) -> Result<Option<Value>, DbError> {
    let row = c.query_one(
        "SELECT body FROM resource_version WHERE tenant = $1 AND rid = $2 AND version = $3",
        &[P::I(tenant), P::I(rid), P::I(version)],
    )?;
    let Some(row) = row else { return Ok(None) };
    let blob = row.into_iter().next().map(|v| v.b()).unwrap_or_default();
    if blob.is_empty() {
        return Ok(None);
    }
    let json = codec.decode(&blob)?;
    Ok(serde_json::from_slice(&json).ok())
}

/// The index table, its columns after (tenant, type), and the values of one index entry.
/// In `sp_string`, `exact` is stored empty when it equals `norm` (most values): fewer bytes.
fn entry_row(rid: i64, e: &IndexEntry) -> (&'static str, &'static [&'static str], Vec<P>) {
    let pk = P::I(param_key(&e.param));
    match &e.value {
        IndexValue::String { norm, exact } => {
            let exact = if exact == norm {
                String::new()
            } else {
                exact.clone()
            };
            (
                "sp_string",
                &["param", "norm", "rid", "exact"],
                vec![pk, P::T(norm.clone()), P::I(rid), P::T(exact)],
            )
        }
        IndexValue::Token { system, code } => (
            "sp_token",
            &["param", "code", "system", "rid"],
            vec![pk, P::T(code.clone()), P::T(system.clone()), P::I(rid)],
        ),
        IndexValue::Date { lo, hi } => (
            "sp_date",
            &["param", "lo", "hi", "rid"],
            vec![pk, P::I(*lo), P::I(*hi), P::I(rid)],
        ),
        IndexValue::Number { lo, hi } => (
            "sp_number",
            &["param", "lo", "hi", "rid"],
            vec![pk, P::F(*lo), P::F(*hi), P::I(rid)],
        ),
        IndexValue::Quantity {
            system,
            code,
            unit,
            lo,
            hi,
        } => {
            let code = if code.is_empty() { unit } else { code };
            (
                "sp_quantity",
                &["param", "code", "system", "lo", "hi", "rid"],
                vec![
                    pk,
                    P::T(code.clone()),
                    P::T(system.clone()),
                    P::F(*lo),
                    P::F(*hi),
                    P::I(rid),
                ],
            )
        }
        IndexValue::Reference { ty, id } => {
            let tc = if ty.is_empty() {
                0
            } else {
                type_code(ty).unwrap_or(-1)
            };
            (
                "sp_reference",
                &["param", "target_type", "target_id", "rid"],
                vec![pk, P::I(tc), P::T(id.clone()), P::I(rid)],
            )
        }
        IndexValue::Uri { value } => (
            "sp_uri",
            &["param", "value", "rid"],
            vec![pk, P::T(value.clone()), P::I(rid)],
        ),
    }
}

/// The INSERT of one index table's rows (SQL written once per table, so the writer neither
/// formats nor hashes a new statement text per row).
fn insert_sql(table: &str) -> &'static str {
    match table {
        "sp_string" => "INSERT INTO sp_string (tenant, type, param, norm, rid, exact) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        "sp_token" => "INSERT INTO sp_token (tenant, type, param, code, system, rid) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        "sp_date" => "INSERT INTO sp_date (tenant, type, param, lo, hi, rid) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        "sp_number" => "INSERT INTO sp_number (tenant, type, param, lo, hi, rid) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        "sp_quantity" => "INSERT INTO sp_quantity (tenant, type, param, code, system, lo, hi, rid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        "sp_reference" => "INSERT INTO sp_reference (tenant, type, param, target_type, target_id, rid) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        _ => "INSERT INTO sp_uri (tenant, type, param, value, rid) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    }
}

/// Insert index rows, one single-row statement each: on SQLite a multi-row INSERT needs a
/// statement journal (a savepoint per statement), which made a large group commit 10x slower.
pub(crate) fn insert_entries(
    c: &mut dyn Sql,
    tenant: i64,
    tcode: i64,
    rid: i64,
    entries: &[IndexEntry],
) -> Result<(), DbError> {
    let mut p = Vec::with_capacity(8);
    for e in entries {
        let (table, _, vals) = entry_row(rid, e);
        p.clear();
        p.push(P::I(tenant));
        p.push(P::I(tcode));
        p.extend(vals);
        c.execute(insert_sql(table), &p)?;
    }
    Ok(())
}

fn delete_entries(
    c: &mut dyn Sql,
    tenant: i64,
    tcode: i64,
    rid: i64,
    entries: &[IndexEntry],
) -> Result<(), DbError> {
    for e in entries {
        let (table, cols, vals) = entry_row(rid, e);
        // the primary key: every column but sp_string's non-key `exact`
        let n = if table == "sp_string" { 3 } else { cols.len() };
        let mut sql = format!("DELETE FROM {table} WHERE tenant = $1 AND type = $2");
        let mut p = vec![P::I(tenant), P::I(tcode)];
        for (col, v) in cols.iter().zip(vals).take(n) {
            p.push(v);
            sql.push_str(&format!(" AND {col} = ${}", p.len()));
        }
        c.execute(&sql, &p)?;
    }
    Ok(())
}
