//! The [`Store`]: opening an engine, scheduling reads and writes, tenants, read/vread/history.

use crate::search::{self, SearchPage, SearchRequest};
use crate::sql::{Lite, Pg, Sql, P, V};
use crate::write::{self, Alloc, WriteCtx, WriteOp, WriteOutcome};
use crate::{now_ms, schema, DbError};
use iryo_search::Extractor;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

// ------------------------------------------------------------------ type codes

static TYPES: LazyLock<(Vec<String>, HashMap<String, i64>)> = LazyLock::new(|| {
    let names: Vec<String> = iryo_fhir_spec::r4()
        .resource_types()
        .into_iter()
        .map(str::to_string)
        .collect();
    let map = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as i64 + 1))
        .collect();
    (names, map)
});

/// The stable small integer for a resource type (position in the sorted R4 list, from 1).
pub fn type_code(name: &str) -> Option<i64> {
    TYPES.1.get(name).copied()
}

/// The inverse of [`type_code`].
pub fn type_name(code: i64) -> Option<&'static str> {
    TYPES.0.get((code - 1) as usize).map(String::as_str)
}

// ------------------------------------------------------------------ body codec

/// The zstd dictionary for resource bodies (format 2), trained by `iryo-bench train-dict` on
/// JP Core / clinosim resources and the R4 examples (not on the Synthea benchmark data).
static DICT_V1: &[u8] = include_bytes!("../data/body-dict-v1.zstd");

static ENC_DICT: LazyLock<zstd::dict::EncoderDictionary<'static>> =
    LazyLock::new(|| zstd::dict::EncoderDictionary::copy(DICT_V1, 3));
static DEC_DICT: LazyLock<zstd::dict::DecoderDictionary<'static>> =
    LazyLock::new(|| zstd::dict::DecoderDictionary::copy(DICT_V1));

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Resource bodies are stored as `[format byte][zstd frame]`:
/// format 1 = zstd without dictionary, format 2 = zstd with dictionary v1 (written now).
pub struct BodyCodec;

impl BodyCodec {
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, DbError> {
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Some(zstd::bulk::Compressor::with_prepared_dictionary(&ENC_DICT)?);
            }
            let comp = c
                .as_mut()
                .ok_or_else(|| DbError::Other("compressor".into()))?;
            let z = comp.compress(json)?;
            let mut out = Vec::with_capacity(z.len() + 1);
            out.push(2u8);
            out.extend_from_slice(&z);
            Ok(out)
        })
    }
    pub fn decode(&self, blob: &[u8]) -> Result<Vec<u8>, DbError> {
        match blob.split_first() {
            Some((1, z)) => Ok(zstd::stream::decode_all(z)?),
            Some((2, z)) => DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::with_prepared_dictionary(
                        &DEC_DICT,
                    )?);
                }
                let dec = d
                    .as_mut()
                    .ok_or_else(|| DbError::Other("decompressor".into()))?;
                let cap = zstd::zstd_safe::get_frame_content_size(z)
                    .ok()
                    .flatten()
                    .unwrap_or(16 << 20)
                    .min(256 << 20) as usize;
                Ok(dec.decompress(z, cap)?)
            }),
            _ => Err(DbError::Other("unknown body format".into())),
        }
    }
}

// ------------------------------------------------------------------ public types

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    pub created: i64,
    pub settings: Value,
}

#[derive(Debug, Clone)]
pub struct StoredResource {
    pub ty: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    /// JSON with server-managed meta; None for a deleted version.
    pub json: Option<Arc<Vec<u8>>>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub ty: Option<String>,
    pub id: Option<String>,
    /// Only versions at or after this instant (ms).
    pub since: Option<i64>,
    /// Only the version current at this instant (ms), per resource.
    pub at: Option<i64>,
    /// Only versions of transactions up to this number (keeps paging stable while others write).
    pub max_tx: Option<i64>,
    pub count: usize,
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub resource: StoredResource,
    /// 0 create, 1 update, 2 delete.
    pub op: i64,
    pub tx: i64,
}

// ------------------------------------------------------------------ engines

/// SQLite key counters, owned by the writer thread. Other processes may write the same file
/// (`iryo import`, `iryo clins bind` … next to a running `iryo serve`), so the counters are also
/// kept in `meta` (`next_rid`, `next_tx`): each write transaction — which holds SQLite's write
/// lock from `BEGIN IMMEDIATE` to `COMMIT` — starts from the larger of its own and the stored
/// values and stores its last values before it commits.
struct LiteAlloc {
    rid: i64,
    tx: i64,
}

impl LiteAlloc {
    fn sync_from_db(&mut self, w: &mut Lite) -> Result<(), DbError> {
        for r in w.query(
            "SELECT key, value FROM meta WHERE key IN ('next_rid', 'next_tx')",
            &[],
        )? {
            let mut it = r.into_iter();
            let key = it.next().map(V::t).unwrap_or_default();
            let value: i64 = it.next().map(V::t).unwrap_or_default().parse().unwrap_or(0);
            match key.as_str() {
                "next_rid" => self.rid = self.rid.max(value),
                _ => self.tx = self.tx.max(value),
            }
        }
        Ok(())
    }

    fn store_to_db(&self, w: &mut Lite) -> Result<(), DbError> {
        w.execute(
            "INSERT INTO meta (key, value) VALUES ('next_rid', $1), ('next_tx', $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[P::T(self.rid.to_string()), P::T(self.tx.to_string())],
        )?;
        Ok(())
    }
}

impl Alloc for LiteAlloc {
    fn rid(&mut self, _: &mut dyn Sql) -> Result<i64, DbError> {
        self.rid += 1;
        Ok(self.rid)
    }
    fn tx(&mut self, _: &mut dyn Sql) -> Result<i64, DbError> {
        self.tx += 1;
        Ok(self.tx)
    }
}

struct PgAlloc;

impl Alloc for PgAlloc {
    fn rid(&mut self, c: &mut dyn Sql) -> Result<i64, DbError> {
        Ok(c.query_one("SELECT nextval('rid_seq')", &[])?
            .and_then(|r| r.into_iter().next())
            .map(|v| v.i())
            .unwrap_or(0))
    }
    fn tx(&mut self, c: &mut dyn Sql) -> Result<i64, DbError> {
        Ok(c.query_one("SELECT nextval('tx_seq')", &[])?
            .and_then(|r| r.into_iter().next())
            .map(|v| v.i())
            .unwrap_or(0))
    }
}

type JobFn = Box<
    dyn FnOnce(&mut dyn Sql, &mut dyn Alloc) -> Box<dyn FnOnce(Result<(), String>) + Send> + Send,
>;

/// A job for the SQLite writer: runs inside a savepoint; its finisher runs after the commit.
struct WriterJob {
    run: JobFn,
    ok: Arc<std::sync::atomic::AtomicBool>,
}

/// A small blocking connection pool.
struct Pool<C: Send + 'static> {
    idle: Mutex<Vec<C>>,
    make: Box<dyn Fn() -> Result<C, DbError> + Send + Sync>,
}

impl<C: Send + 'static> Drop for Pool<C> {
    /// The blocking PostgreSQL client shuts its connection down with a runtime of its own,
    /// which panics on a thread that drives async tasks (a store dropped at the end of an
    /// async command or test): idle connections are dropped on a plain thread instead.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        if idle.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        } else {
            drop(idle);
        }
    }
}

impl<C: Send + 'static> Pool<C> {
    fn get(&self) -> Result<C, DbError> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        (self.make)()
    }
    fn put(&self, c: C) {
        let mut idle = self.idle.lock();
        if idle.len() < 32 {
            idle.push(c);
        }
    }
}

enum Engine {
    Sqlite {
        writer: crossbeam_channel::Sender<WriterJob>,
        readers: Pool<Lite>,
        path: PathBuf,
    },
    Postgres {
        pool: Pool<Pg>,
    },
}

struct Inner {
    engine: Engine,
    extractor: Extractor,
    codec: BodyCodec,
    tenants: RwLock<HashMap<String, i64>>,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn open_lite(path: &Path) -> Result<Lite, DbError> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; \
         PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824; PRAGMA temp_store=MEMORY;",
    )?;
    c.set_prepared_statement_cache_capacity(512);
    Ok(Lite(c))
}

impl Store {
    /// Open a store: a PostgreSQL URL (`postgres://…`) or a directory for the embedded SQLite store.
    pub async fn open(location: &str) -> Result<Store, DbError> {
        let location = location.to_string();
        tokio::task::spawn_blocking(move || Store::open_blocking(&location))
            .await
            .map_err(|e| DbError::Other(e.to_string()))?
    }

    /// [`Store::open`] for non-async callers (CLI commands).
    pub fn open_blocking(location: &str) -> Result<Store, DbError> {
        let engine = if location.starts_with("postgres://") || location.starts_with("postgresql://")
        {
            let url = location.to_string();
            let make = move || -> Result<Pg, DbError> {
                let client = postgres::Client::connect(&url, postgres::NoTls)?;
                Ok(Pg::new(client))
            };
            let mut first = make()?;
            // Several servers may start at once: serialize schema creation with an advisory lock.
            first.batch("SELECT pg_advisory_lock(7253001)")?;
            let r = first.batch(&schema::postgres());
            first.batch("SELECT pg_advisory_unlock(7253001)")?;
            r?;
            init_meta(&mut first)?;
            let pool = Pool {
                idle: Mutex::new(vec![first]),
                make: Box::new(make),
            };
            Engine::Postgres { pool }
        } else {
            let dir = PathBuf::from(location.strip_prefix("sqlite:").unwrap_or(location));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("iryo.db");
            let mut w = open_lite(&path)?;
            w.batch(&schema::sqlite())?;
            init_meta(&mut w)?;
            let max = |w: &mut Lite, sql: &str| -> Result<i64, DbError> {
                Ok(w.query_one(sql, &[])?.map(|r| r[0].i()).unwrap_or(0))
            };
            let alloc = LiteAlloc {
                rid: max(&mut w, "SELECT COALESCE(MAX(rid), 0) FROM resource")?,
                tx: max(&mut w, "SELECT COALESCE(MAX(tx), 0) FROM resource_version")?,
            };
            let (tx, rx) = crossbeam_channel::unbounded::<WriterJob>();
            std::thread::Builder::new()
                .name("iryo-sqlite-writer".into())
                .spawn(move || writer_loop(w, alloc, rx))?;
            let p2 = path.clone();
            Engine::Sqlite {
                writer: tx,
                readers: Pool {
                    idle: Mutex::new(vec![]),
                    make: Box::new(move || open_lite(&p2)),
                },
                path,
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                engine,
                extractor: Extractor::new(iryo_search::model()),
                codec: BodyCodec,
                tenants: RwLock::new(HashMap::new()),
            }),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.engine, Engine::Postgres { .. })
    }

    /// The SQLite database file, when embedded.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.inner.engine {
            Engine::Sqlite { path, .. } => Some(path),
            _ => None,
        }
    }

    pub fn extractor(&self) -> &Extractor {
        &self.inner.extractor
    }

    /// Run `f` on a reader connection, off the async runtime.
    pub(crate) async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql, &Inner2) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(f))
            .await
            .map_err(|e| DbError::Other(e.to_string()))?
    }

    pub(crate) fn read_blocking<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql, &Inner2) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let ctx = Inner2 {
            codec: &self.inner.codec,
            extractor: &self.inner.extractor,
        };
        match &self.inner.engine {
            Engine::Sqlite { readers, .. } => {
                let mut c = readers.get()?;
                // a read transaction gives one consistent snapshot for multi-statement reads
                c.batch("BEGIN")?;
                let r = f(&mut c, &ctx);
                let _ = c.batch("COMMIT");
                readers.put(c);
                r
            }
            Engine::Postgres { pool } => {
                let mut c = pool.get()?;
                c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                let r = f(&mut c, &ctx);
                match c.batch("COMMIT") {
                    Ok(()) => pool.put(c),
                    Err(_) => {} // drop a broken connection
                }
                r
            }
        }
    }

    /// Run `f` in a write transaction (SQLite: through the group-commit writer).
    pub(crate) async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql, &mut dyn Alloc, &Inner2) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        match &self.inner.engine {
            Engine::Sqlite { writer, .. } => {
                let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, DbError>>();
                let this = self.clone();
                let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let ok2 = ok.clone();
                let run: JobFn = Box::new(move |c, alloc| {
                    let ctx = Inner2 {
                        codec: &this.inner.codec,
                        extractor: &this.inner.extractor,
                    };
                    let r = f(c, alloc, &ctx);
                    ok2.store(r.is_ok(), std::sync::atomic::Ordering::SeqCst);
                    Box::new(move |commit: Result<(), String>| {
                        let r = match commit {
                            Ok(()) => r,
                            Err(e) => Err(DbError::Other(format!("commit failed: {e}"))),
                        };
                        let _ = tx.send(r);
                    })
                });
                writer
                    .send(WriterJob { run, ok })
                    .map_err(|_| DbError::Other("writer stopped".into()))?;
                rx.await
                    .map_err(|_| DbError::Other("writer dropped the request".into()))?
            }
            Engine::Postgres { .. } => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    let Engine::Postgres { pool } = &this.inner.engine else {
                        unreachable!()
                    };
                    let ctx = Inner2 {
                        codec: &this.inner.codec,
                        extractor: &this.inner.extractor,
                    };
                    let mut c = pool.get()?;
                    c.batch("BEGIN")?;
                    let r = f(&mut c, &mut PgAlloc, &ctx);
                    let r = match r {
                        Ok(v) => c.batch("COMMIT").map(|_| v),
                        Err(e) => {
                            let _ = c.batch("ROLLBACK");
                            Err(e)
                        }
                    };
                    if r.is_ok() || !matches!(r, Err(DbError::Postgres(_))) {
                        pool.put(c);
                    }
                    r
                })
                .await
                .map_err(|e| DbError::Other(e.to_string()))?
            }
        }
    }

    // -------------------------------------------------------------- tenants

    /// The id of tenant `name`, if it exists.
    pub async fn tenant_id(&self, name: &str) -> Result<Option<i64>, DbError> {
        if let Some(id) = self.inner.tenants.read().get(name) {
            return Ok(Some(*id));
        }
        let n = name.to_string();
        let id = self
            .read_with(move |c, _| {
                Ok(
                    c.query_one("SELECT id FROM tenant WHERE name = $1", &[P::T(n)])?
                        .map(|r| r[0].i()),
                )
            })
            .await?;
        if let Some(id) = id {
            self.inner.tenants.write().insert(name.to_string(), id);
        }
        Ok(id)
    }

    /// Create a tenant (an institution). Names: 1–64 of `[A-Za-z0-9_-]`.
    pub async fn tenant_create(&self, name: &str) -> Result<Tenant, DbError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DbError::Invalid(format!(
                "テナント名 '{name}' は英数字・'-'・'_' の1〜64文字です (tenant names are 1-64 of A-Z a-z 0-9 - _)"
            )));
        }
        let n = name.to_string();
        let now = now_ms();
        self.write_with(move |c, _, _| {
            if c.query_one("SELECT id FROM tenant WHERE name = $1", &[P::T(n.clone())])?
                .is_some()
            {
                return Err(DbError::AlreadyExists {
                    ty: "Tenant".into(),
                    id: n,
                });
            }
            let id = c
                .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM tenant", &[])?
                .map(|r| r[0].i())
                .unwrap_or(1);
            c.execute(
                "INSERT INTO tenant (id, name, created, settings) VALUES ($1, $2, $3, '{}')",
                &[P::I(id), P::T(n.clone()), P::I(now)],
            )?;
            Ok(Tenant {
                id,
                name: n,
                created: now,
                settings: serde_json::json!({}),
            })
        })
        .await
    }

    pub async fn tenant_list(&self) -> Result<Vec<Tenant>, DbError> {
        self.read_with(|c, _| {
            let rows = c.query(
                "SELECT id, name, created, settings FROM tenant ORDER BY id",
                &[],
            )?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let mut it = r.into_iter();
                    let id = it.next().map(|v| v.i()).unwrap_or(0);
                    let name = it.next().map(V::t).unwrap_or_default();
                    let created = it.next().map(|v| v.i()).unwrap_or(0);
                    let settings = it
                        .next()
                        .map(V::t)
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .unwrap_or(Value::Null);
                    Tenant {
                        id,
                        name,
                        created,
                        settings,
                    }
                })
                .collect())
        })
        .await
    }

    /// A tenant's settings (JSON object; `{}` when none).
    pub async fn tenant_settings(&self, tenant: i64) -> Result<Value, DbError> {
        self.read_with(move |c, _| {
            let s = c
                .query_one("SELECT settings FROM tenant WHERE id = $1", &[P::I(tenant)])?
                .and_then(|r| r.into_iter().next())
                .map(V::t)
                .unwrap_or_default();
            Ok(serde_json::from_str(&s).unwrap_or_else(|_| serde_json::json!({})))
        })
        .await
    }

    /// Replace a tenant's settings (JSON object; e.g. `{"validation": "profiles"}`).
    pub async fn tenant_set_settings(&self, tenant: i64, settings: Value) -> Result<(), DbError> {
        let s = settings.to_string();
        self.write_with(move |c, _, _| {
            c.execute(
                "UPDATE tenant SET settings = $1 WHERE id = $2",
                &[P::T(s), P::I(tenant)],
            )?;
            Ok(())
        })
        .await
    }

    // -------------------------------------------------------------- writes

    /// Apply `ops` all-or-nothing in one transaction of `tenant`.
    pub async fn write(
        &self,
        tenant: i64,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, DbError> {
        // Index extraction of the new versions runs here, in parallel with the writer.
        let this = self.clone();
        let now = now_ms();
        let prepared = tokio::task::spawn_blocking(move || {
            ops.into_iter()
                .map(|op| write::prepare(op, &this.inner.extractor, &this.inner.codec, now))
                .collect::<Result<Vec<_>, DbError>>()
        })
        .await
        .map_err(|e| DbError::Other(e.to_string()))??;
        self.write_with(move |c, alloc, ctx| {
            let wctx = WriteCtx {
                extractor: ctx.extractor,
                codec: ctx.codec,
            };
            write::apply(c, &wctx, alloc, tenant, prepared, now)
        })
        .await
    }

    // -------------------------------------------------------------- reads

    /// The current version (a deleted resource is returned with `deleted: true`).
    pub async fn read(
        &self,
        tenant: i64,
        ty: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, DbError> {
        if let Some(r) = self.read_point(|c, ctx| read_current(c, ctx, tenant, ty, id)) {
            return r;
        }
        let (ty, id) = (ty.to_string(), id.to_string());
        self.read_with(move |c, ctx| read_current(c, ctx, tenant, &ty, &id))
            .await
    }

    /// A read of one statement on SQLite, run right here: a point lookup takes tens of
    /// microseconds, less than handing it to a blocking thread and back (two context switches
    /// per request were a quarter of the CPU of a read-heavy load), and one statement needs no
    /// explicit transaction for a consistent snapshot. The reader pool never blocks (it opens a
    /// connection when none is idle). `None` on PostgreSQL, whose client blocks on the network:
    /// the caller then uses [`Store::read_with`].
    fn read_point<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql, &Inner2) -> Result<T, DbError>,
    ) -> Option<Result<T, DbError>> {
        let Engine::Sqlite { readers, .. } = &self.inner.engine else {
            return None;
        };
        let ctx = Inner2 {
            codec: &self.inner.codec,
            extractor: &self.inner.extractor,
        };
        Some(readers.get().and_then(|mut c| {
            let r = f(&mut c, &ctx);
            readers.put(c);
            r
        }))
    }

    /// A specific version.
    pub async fn vread(
        &self,
        tenant: i64,
        ty: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>, DbError> {
        let (ty, id) = (ty.to_string(), id.to_string());
        self.read_with(move |c, ctx| {
            let Some(tcode) = type_code(&ty) else {
                return Ok(None);
            };
            let row = c.query_one(
                "SELECT v.version, v.last_updated, v.op, v.body FROM resource r JOIN resource_version v ON v.tenant = r.tenant AND v.rid = r.rid \
                 WHERE r.tenant = $1 AND r.type = $2 AND r.id = $3 AND v.version = $4",
                &[P::I(tenant), P::I(tcode), P::T(id.clone()), P::I(version)],
            )?;
            row.map(|r| stored_from(ctx, ty, id, r)).transpose()
        })
        .await
    }

    /// History of an instance, a type or the whole tenant, newest first; also returns the total.
    pub async fn history(
        &self,
        tenant: i64,
        q: HistoryQuery,
    ) -> Result<(Vec<HistoryEntry>, i64, i64), DbError> {
        self.read_with(move |c, ctx| history(c, ctx, tenant, &q))
            .await
    }

    /// Run a search; see [`crate::search`].
    pub async fn search(&self, tenant: i64, req: SearchRequest) -> Result<SearchPage, DbError> {
        self.read_with(move |c, ctx| search::run(c, ctx, tenant, &req))
            .await
    }

    /// Fetch the current versions of many resources by (type, id), skipping missing and deleted.
    pub async fn read_many(
        &self,
        tenant: i64,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<StoredResource>, DbError> {
        self.read_with(move |c, ctx| {
            let mut out = vec![];
            for (ty, id) in keys {
                if let Some(r) = read_current(c, ctx, tenant, &ty, &id)? {
                    if !r.deleted {
                        out.push(r);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Storage figures: (resources, versions, database bytes).
    pub async fn stats(&self) -> Result<(i64, i64, i64), DbError> {
        let pg = self.is_postgres();
        self.read_with(move |c, _| {
            let n = c
                .query_one("SELECT COUNT(*) FROM resource WHERE deleted = 0", &[])?
                .map(|r| r[0].i())
                .unwrap_or(0);
            let v = c
                .query_one("SELECT COUNT(*) FROM resource_version", &[])?
                .map(|r| r[0].i())
                .unwrap_or(0);
            let bytes = if pg {
                c.query_one("SELECT pg_database_size(current_database())", &[])?
                    .map(|r| r[0].i())
                    .unwrap_or(0)
            } else {
                // logical size of the database (WAL frames included, free pages excluded)
                let one = |c: &mut dyn Sql, sql: &str| -> Result<i64, DbError> {
                    Ok(c.query_one(sql, &[])?.map(|r| r[0].i()).unwrap_or(0))
                };
                let pages = one(c, "PRAGMA page_count")?;
                let free = one(c, "PRAGMA freelist_count")?;
                let size = one(c, "PRAGMA page_size")?;
                (pages - free) * size
            };
            Ok((n, v, bytes))
        })
        .await
    }
}

/// What read closures get besides the connection.
pub struct Inner2<'a> {
    pub codec: &'a BodyCodec,
    pub extractor: &'a Extractor,
}

fn init_meta(c: &mut dyn Sql) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
        &[P::T(schema::SCHEMA_VERSION.to_string())],
    )?;
    let found = c
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
        .map(|r| r.into_iter().next().map(|v| v.t()).unwrap_or_default())
        .unwrap_or_default();
    if found != schema::SCHEMA_VERSION.to_string() {
        return Err(DbError::Other(format!(
            "このデータベースは形式 {found} で、この iryo は形式 {} を使います。新しいデータディレクトリ（またはデータベース）に \
             iryo import で取り込み直してください (the store has schema version {found}; this iryo needs {}: \
             re-import the data into a new data directory or database)",
            schema::SCHEMA_VERSION,
            schema::SCHEMA_VERSION
        )));
    }
    c.execute(
        "INSERT INTO tenant (id, name, created, settings) VALUES (1, 'default', $1, '{}') ON CONFLICT DO NOTHING",
        &[P::I(now_ms())],
    )?;
    Ok(())
}

fn writer_loop(mut w: Lite, mut alloc: LiteAlloc, rx: crossbeam_channel::Receiver<WriterJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 512 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let begin = w
            .batch("BEGIN IMMEDIATE")
            .and_then(|()| alloc.sync_from_db(&mut w));
        let mut finishers = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Err(e) = &begin {
                let fin = (job.run)(&mut NoConn(e.to_string()), &mut alloc);
                finishers.push(fin);
                continue;
            }
            let _ = w.batch("SAVEPOINT job");
            let fin = (job.run)(&mut w, &mut alloc);
            if job.ok.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = w.batch("RELEASE job");
            } else {
                let _ = w.batch("ROLLBACK TO job; RELEASE job");
            }
            finishers.push(fin);
        }
        let commit = match begin {
            Ok(()) => alloc
                .store_to_db(&mut w)
                .and_then(|()| w.batch("COMMIT"))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if commit.is_err() {
            let _ = w.batch("ROLLBACK");
        }
        for f in finishers {
            f(commit.clone());
        }
    }
}

/// A connection that refuses everything (used when BEGIN itself failed).
struct NoConn(String);

impl Sql for NoConn {
    fn execute(&mut self, _: &str, _: &[P]) -> Result<u64, DbError> {
        Err(DbError::Other(self.0.clone()))
    }
    fn query(&mut self, _: &str, _: &[P]) -> Result<Vec<crate::sql::Row>, DbError> {
        Err(DbError::Other(self.0.clone()))
    }
    fn batch(&mut self, _: &str) -> Result<(), DbError> {
        Err(DbError::Other(self.0.clone()))
    }
    fn is_postgres(&self) -> bool {
        false
    }
}

fn stored_from(ctx: &Inner2, ty: String, id: String, r: Vec<V>) -> Result<StoredResource, DbError> {
    let mut it = r.into_iter();
    let version = it.next().map(|v| v.i()).unwrap_or(0);
    let last_updated = it.next().map(|v| v.i()).unwrap_or(0);
    let op = it.next().map(|v| v.i()).unwrap_or(0);
    let body = it.next().map(V::b).unwrap_or_default();
    let json = if op == 2 || body.is_empty() {
        None
    } else {
        Some(Arc::new(ctx.codec.decode(&body)?))
    };
    Ok(StoredResource {
        ty,
        id,
        version,
        last_updated,
        deleted: op == 2,
        json,
    })
}

pub(crate) fn read_current(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    ty: &str,
    id: &str,
) -> Result<Option<StoredResource>, DbError> {
    let Some(tcode) = type_code(ty) else {
        return Ok(None);
    };
    let row = c.query_one(
        "SELECT v.version, v.last_updated, v.op, v.body FROM resource r JOIN resource_version v ON v.tenant = r.tenant AND v.rid = r.rid AND v.version = r.version \
         WHERE r.tenant = $1 AND r.type = $2 AND r.id = $3",
        &[P::I(tenant), P::I(tcode), P::T(id.to_string())],
    )?;
    row.map(|r| stored_from(ctx, ty.to_string(), id.to_string(), r))
        .transpose()
}

/// Fetch current versions by resource key (rid), in the given order.
pub(crate) fn read_rids(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    rids: &[i64],
) -> Result<Vec<StoredResource>, DbError> {
    let mut out = Vec::with_capacity(rids.len());
    // Without statistics SQLite's planner prefers scanning the tenant's whole `resource` range
    // to looking each key up in `resource_rid` (2.9 ms for 20 keys at 35k resources, growing
    // with the data); the hint pins the lookup. PostgreSQL plans it right by itself.
    let hint = if c.is_postgres() {
        ""
    } else {
        " INDEXED BY resource_rid"
    };
    for chunk in rids.chunks(200) {
        let mut sql = format!(
            "SELECT r.rid, r.type, r.id, v.version, v.last_updated, v.op, v.body FROM resource r{hint} JOIN resource_version v ON v.tenant = r.tenant AND v.rid = r.rid AND v.version = r.version WHERE r.tenant = $1 AND r.rid IN (",
        );
        let mut p = vec![P::I(tenant)];
        for (i, rid) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i + 2));
            p.push(P::I(*rid));
        }
        sql.push(')');
        let mut by_rid: HashMap<i64, StoredResource> = HashMap::new();
        for r in c.query(&sql, &p)? {
            let mut it = r.into_iter();
            let rid = it.next().map(|v| v.i()).unwrap_or(0);
            let ty = it
                .next()
                .map(|v| type_name(v.i()).unwrap_or("").to_string())
                .unwrap_or_default();
            let id = it.next().map(V::t).unwrap_or_default();
            let rest: Vec<V> = it.collect();
            by_rid.insert(rid, stored_from(ctx, ty, id, rest)?);
        }
        for rid in chunk {
            if let Some(s) = by_rid.remove(rid) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn history(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    q: &HistoryQuery,
) -> Result<(Vec<HistoryEntry>, i64, i64), DbError> {
    let mut wh = String::from("v.tenant = $1");
    let mut p = vec![P::I(tenant)];
    if let Some(ty) = &q.ty {
        let t = type_code(ty).ok_or_else(|| DbError::Invalid(format!("unknown type {ty}")))?;
        p.push(P::I(t));
        wh.push_str(&format!(" AND v.type = ${}", p.len()));
        if let Some(id) = &q.id {
            p.push(P::T(id.clone()));
            wh.push_str(&format!(" AND r.id = ${} AND r.type = v.type", p.len()));
        }
    }
    if let Some(since) = q.since {
        p.push(P::I(since));
        wh.push_str(&format!(" AND v.last_updated >= ${}", p.len()));
    }
    // the newest transaction now: pages of this history stay stable while others write
    let max_tx = match q.max_tx {
        Some(m) => m,
        None => c
            .query_one(
                "SELECT COALESCE(MAX(tx), 0) FROM resource_version WHERE tenant = $1",
                &[P::I(tenant)],
            )?
            .map(|r| r[0].i())
            .unwrap_or(0),
    };
    p.push(P::I(max_tx));
    wh.push_str(&format!(" AND v.tx <= ${}", p.len()));
    if let Some(at) = q.at {
        p.push(P::I(at));
        let n = p.len();
        wh.push_str(&format!(
            " AND v.last_updated <= ${n} AND NOT EXISTS (SELECT 1 FROM resource_version v2 WHERE v2.tenant = v.tenant AND v2.rid = v.rid AND v2.version > v.version AND v2.last_updated <= ${n})"
        ));
    }
    let from = "resource_version v JOIN resource r ON r.tenant = v.tenant AND r.rid = v.rid";
    let total = c
        .query_one(&format!("SELECT COUNT(*) FROM {from} WHERE {wh}"), &p)?
        .map(|r| r[0].i())
        .unwrap_or(0);
    let mut p2 = p.clone();
    p2.push(P::I(q.count as i64));
    p2.push(P::I(q.offset as i64));
    let sql = format!(
        "SELECT r.type, r.id, v.version, v.last_updated, v.op, v.body, v.tx FROM {from} WHERE {wh} ORDER BY v.tx DESC, v.rid DESC, v.version DESC LIMIT ${} OFFSET ${}",
        p2.len() - 1,
        p2.len()
    );
    let mut out = vec![];
    for r in c.query(&sql, &p2)? {
        let mut it = r.into_iter();
        let ty = it
            .next()
            .map(|v| type_name(v.i()).unwrap_or("").to_string())
            .unwrap_or_default();
        let id = it.next().map(V::t).unwrap_or_default();
        let version = it.next().unwrap_or(V::Null);
        let lu = it.next().unwrap_or(V::Null);
        let op = it.next().unwrap_or(V::Null);
        let body = it.next().unwrap_or(V::Null);
        let tx = it.next().map(|v| v.i()).unwrap_or(0);
        let opn = op.i();
        let resource = stored_from(ctx, ty, id, vec![version, lu, op, body])?;
        out.push(HistoryEntry {
            resource,
            op: opn,
            tx,
        });
    }
    Ok((out, total, max_tx))
}
