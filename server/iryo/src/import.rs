//! `iryo import`: NDJSON files and Bundles into a tenant, with a progress bar and a summary.

use anyhow::{bail, Context as _};
use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use iryo_db::{Store, WriteOp};
use iryo_rest_api::{bundle, AppState};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinSet;

const CHUNK: usize = 500;

fn walk(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let md = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    if md.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
    } else {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".ndjson")
            || name.ends_with(".ndjson.gz")
            || name.ends_with(".json")
            || name.ends_with(".json.gz")
        {
            out.push(p.to_path_buf());
        }
    }
    Ok(())
}

/// Counts compressed bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    pb: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

#[derive(Default)]
struct Summary {
    loaded: AtomicU64,
    rejected: AtomicU64,
    reasons: Mutex<Vec<String>>,
}

impl Summary {
    fn reject(&self, n: u64, why: String) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
        let mut r = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() < 50 {
            r.push(why);
        }
    }
}

enum Item {
    Resources(Vec<Value>, String),
    Bundle(Value, String),
}

pub async fn run(
    store: Store,
    tenant: &str,
    concurrency: usize,
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    let Some(tid) = store.tenant_id(tenant).await? else {
        bail!("テナント {tenant} はありません（iryo tenant create {tenant}） / unknown tenant {tenant}");
    };
    let mut files = vec![];
    for p in paths {
        walk(p, &mut files)?;
    }
    if files.is_empty() {
        bail!("読み込むファイルがありません（.ndjson, .json, .gz） / no input files (.ndjson, .json, .gz)");
    }
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let state = AppState::new(store, Default::default());
    let base = if tenant == "default" {
        "/fhir".to_string()
    } else {
        format!("/t/{tenant}/fhir")
    };
    let summary = Arc::new(Summary::default());
    let started = Instant::now();
    // a reader thread parses files; the runtime writes with `concurrency` requests in flight
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(concurrency * 2);
    let pb2 = pb.clone();
    let sum2 = summary.clone();
    let reader = std::thread::spawn(move || {
        for f in files {
            if let Err(e) = read_file(&f, &pb2, &tx, &sum2) {
                sum2.reject(1, format!("{}: {e}", f.display()));
            }
        }
    });
    let mut set: JoinSet<()> = JoinSet::new();
    while let Some(item) = rx.recv().await {
        while set.len() >= concurrency {
            set.join_next().await;
        }
        let (st, sum, base, tenant) = (
            state.clone(),
            summary.clone(),
            base.clone(),
            tenant.to_string(),
        );
        let pb = pb.clone();
        set.spawn(async move {
            match item {
                Item::Resources(rs, origin) => load_resources(&st, tid, rs, &origin, &sum).await,
                Item::Bundle(b, origin) => {
                    load_bundle(&st, tid, &tenant, &base, b, &origin, &sum).await
                }
            }
            let n = sum.loaded.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(0.001);
            pb.set_message(format!("{n} resources ({:.0}/s)", n as f64 / secs));
        });
    }
    while set.join_next().await.is_some() {}
    let _ = reader.join();
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let loaded = summary.loaded.load(Ordering::Relaxed);
    let rejected = summary.rejected.load(Ordering::Relaxed);
    println!(
        "取り込み完了 (import done): {loaded} 件登録 (loaded), {rejected} 件拒否 (rejected), {secs:.1} 秒, {:.0} 件/秒",
        loaded as f64 / secs.max(0.001)
    );
    if let Ok((n, versions, bytes)) = state.store.stats().await {
        if n > 0 {
            println!(
                "保存領域 (store): {n} リソース, {versions} 版, {:.1} MiB, {:.0} バイト/リソース (bytes per resource)",
                bytes as f64 / 1048576.0,
                bytes as f64 / n as f64
            );
        }
    }
    let reasons = summary.reasons.lock().unwrap_or_else(|e| e.into_inner());
    for r in reasons.iter() {
        println!("  拒否 (rejected): {r}");
    }
    if rejected > 0 && loaded == 0 {
        bail!("すべて拒否されました / everything was rejected");
    }
    Ok(())
}

fn read_file(
    f: &Path,
    pb: &ProgressBar,
    tx: &tokio::sync::mpsc::Sender<Item>,
    sum: &Summary,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(f)?;
    let counting = Counting {
        inner: file,
        pb: pb.clone(),
    };
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(GzDecoder::new(counting))
    } else {
        Box::new(counting)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let origin = f.display().to_string();
    if name.contains(".ndjson") {
        let mut chunk = vec![];
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            n += 1;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => dispatch(v, &mut chunk, tx, &format!("{origin}:{n}"))?,
                Err(e) => sum.reject(
                    1,
                    format!("{origin}:{n}: JSON として読めません (malformed JSON): {e}"),
                ),
            }
        }
        if !chunk.is_empty() {
            tx.blocking_send(Item::Resources(chunk, origin))?;
        }
    } else {
        let mut s = Vec::new();
        reader.read_to_end(&mut s)?;
        let v: Value =
            serde_json::from_slice(&s).with_context(|| "JSON として読めません (malformed JSON)")?;
        let mut chunk = vec![];
        dispatch(v, &mut chunk, tx, &origin)?;
        if !chunk.is_empty() {
            tx.blocking_send(Item::Resources(chunk, origin))?;
        }
    }
    Ok(())
}

fn dispatch(
    v: Value,
    chunk: &mut Vec<Value>,
    tx: &tokio::sync::mpsc::Sender<Item>,
    origin: &str,
) -> anyhow::Result<()> {
    let is_bundle = v.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    if is_bundle && (kind == "transaction" || kind == "batch") {
        tx.blocking_send(Item::Bundle(v, origin.to_string()))?;
    } else if is_bundle && kind == "collection" {
        for e in v
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("resource") {
                chunk.push(r.clone());
                if chunk.len() >= CHUNK {
                    tx.blocking_send(Item::Resources(std::mem::take(chunk), origin.to_string()))?;
                }
            }
        }
    } else {
        chunk.push(v);
        if chunk.len() >= CHUNK {
            tx.blocking_send(Item::Resources(std::mem::take(chunk), origin.to_string()))?;
        }
    }
    Ok(())
}

async fn load_resources(st: &AppState, tid: i64, rs: Vec<Value>, origin: &str, sum: &Summary) {
    let mut ops = Vec::with_capacity(rs.len());
    for mut r in rs {
        if let Err(e) = iryo_rest_api::handlers::check_resource(&r, None) {
            sum.reject(
                1,
                format!(
                    "{origin}: {}",
                    e.issues
                        .iter()
                        .map(|i| format!(
                            "{} ({})",
                            i.message_ja,
                            i.expression.as_deref().unwrap_or("")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            continue;
        }
        let ty = r
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !iryo_fhir_spec::r4().is_resource_type(&ty) {
            sum.reject(1, format!("{origin}: unknown resourceType {ty}"));
            continue;
        }
        match r.get("id").and_then(Value::as_str) {
            Some(id) if iryo_rest_api::handlers::is_valid_id(id) => {}
            Some(id) => {
                sum.reject(1, format!("{origin}: {ty}/{id}: 不正な id (invalid id)"));
                continue;
            }
            None => r["id"] = Value::String(new_uuid()),
        }
        ops.push(WriteOp::put(r));
    }
    let n = ops.len() as u64;
    if n == 0 {
        return;
    }
    match st.store.write(tid, ops.clone()).await {
        Ok(_) => {
            sum.loaded.fetch_add(n, Ordering::Relaxed);
        }
        Err(_) => {
            // isolate the failing resource(s)
            for op in ops {
                match st.store.write(tid, vec![op]).await {
                    Ok(_) => {
                        sum.loaded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => sum.reject(1, format!("{origin}: {e}")),
                }
            }
        }
    }
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn load_bundle(
    st: &AppState,
    tid: i64,
    tenant: &str,
    base: &str,
    b: Value,
    origin: &str,
    sum: &Summary,
) {
    let n = b
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0) as u64;
    if b.get("type").and_then(Value::as_str) == Some("batch") {
        let resp = bundle::process_batch(st, tid, tenant, base, b).await;
        for (i, e) in resp
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let status = e
                .pointer("/response/status")
                .and_then(Value::as_str)
                .unwrap_or("");
            if status.starts_with('2') {
                sum.loaded.fetch_add(1, Ordering::Relaxed);
            } else {
                sum.reject(1, format!("{origin}: entry {i}: {status}"));
            }
        }
        return;
    }
    match bundle::process_transaction(st, tid, tenant, base, b).await {
        Ok(_) => {
            sum.loaded.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => sum.reject(
            n,
            format!(
                "{origin}: transaction ({n} entries): {}",
                e.issues
                    .iter()
                    .map(|i| format!(
                        "{} [{}]",
                        i.message_ja,
                        i.expression.as_deref().unwrap_or("")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}
